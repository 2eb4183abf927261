"""PostgreSQL for tests: a schema of the test's own in the server of $PAYFLOW_TEST_POSTGRES_URL
(default: postgresql://root@127.0.0.1:5432/test), selected through the URL's ``search_path``
(which asyncpg passes on as a server setting). The `postgres_url` fixture of conftest.py uses
these; they run in a thread of their own, so that sync fixtures can call them."""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import asyncpg

DEFAULT_URL = "postgresql://root@127.0.0.1:5432/test"
T = TypeVar("T")


def server_url() -> str:
    return os.environ.get("PAYFLOW_TEST_POSTGRES_URL") or DEFAULT_URL


def with_params(url: str, **params: str) -> str:
    """``url`` with these query parameters set."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(params)
    return parts._replace(query=urlencode(query)).geturl()


def run(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine in a thread with an event loop of its own (callable from anywhere)."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        async def main() -> T:
            return await make()

        try:
            result.append(asyncio.run(main()))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


async def execute(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def create_schema(url: str) -> str | None:
    """A new empty schema ``payflow_t_<random>``; None when the server is unreachable."""
    schema = "payflow_t_" + secrets.token_hex(6)
    try:
        run(lambda: execute(url, f"CREATE SCHEMA {schema}"))
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return None
    return schema


def drop_schema(url: str, schema: str) -> None:
    run(lambda: execute(url, f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
