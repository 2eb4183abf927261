"""A resolver for tests: names answered from a table, lookups counted, no real DNS."""

from __future__ import annotations

import socket
from collections.abc import Sequence

from aiohttp.abc import AbstractResolver, ResolveResult


class StubResolver(AbstractResolver):
    """Answers from a table; counts lookups. Never touches real DNS."""

    def __init__(self, table: dict[str, Sequence[str]]) -> None:
        self.table = table
        self.calls: list[str] = []
        self.families: list[socket.AddressFamily] = []  # asked for, one per call

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.calls.append(host)
        self.families.append(family)
        if host not in self.table:
            raise OSError(None, f"no such host {host}")
        return [ResolveResult(hostname=host, host=address, port=port,
                              family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST)
                for address in self.table[host]]

    async def close(self) -> None:
        pass
