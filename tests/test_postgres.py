"""What only the PostgreSQL store has: migrations, the CLI around them, sealed secrets, the
number of statements per call, and index use (the behaviour is test_store_contract.py's)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from payflow.cli import main as cli
from payflow.errors import ConfigError, StartupError
from payflow.models import (
    DeliveryAttempt,
    EndpointSecret,
    Event,
    Payment,
    PaymentStatus,
    Refund,
    RefundStatus,
    WebhookEndpoint,
    iso,
)
from payflow.store import migrate, open_store
from payflow.store.base import RefundCompletion, Transition
from payflow.store.postgres import PostgresStore, split_url
from payflow.store.sealing import SecretKeyError

P = PaymentStatus
KEY = "a test key of some length"


def test_memory_store_never_imports_asyncpg() -> None:
    code = ("import asyncio, sys\nfrom payflow.store import open_store\n"
            "asyncio.run(open_store('memory://'))\nassert 'asyncpg' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_url_pool_max_is_ours_the_rest_goes_to_asyncpg() -> None:
    assert split_url("postgresql://u@h/db?pool_max=3&search_path=s") == (
        "postgresql://u@h/db?search_path=s", 3)
    assert split_url("postgres://h/db") == ("postgres://h/db", 10)
    with pytest.raises(ConfigError, match="pool_max"):
        split_url("postgresql://h/db?pool_max=0")


async def test_unreachable_server_is_a_startup_error() -> None:
    with pytest.raises(StartupError, match=r"cannot connect to PostgreSQL at postgresql://u:\*\*\*@"):
        await PostgresStore.open("postgresql://u:pw@127.0.0.1:1/db", secret_key=None,
                                 migrate=True)


@pytest.mark.postgres
async def test_two_daemons_migrate_at_once(postgres_url: str) -> None:
    stores = await asyncio.gather(*(PostgresStore.open(postgres_url, secret_key=KEY,
                                                       migrate=True) for _ in range(3)))
    try:
        rows = await stores[0].pool.fetch("SELECT version, name FROM schema_migrations")
        assert [tuple(r) for r in rows] == [(1, "0001_initial")]
        status = await PostgresStore.migration_status(postgres_url)
        assert [s.line.rsplit(" ", 1)[0] for s in status] == ["applied 0001_initial"]
        async with stores[0].pool.acquire() as conn:
            assert await migrate.apply(conn) == []  # nothing left
    finally:
        for store in stores:
            await store.close()


@pytest.mark.postgres
async def test_pending_migrations_refuse_without_migrate(postgres_url: str) -> None:
    with pytest.raises(StartupError, match=r"0001_initial.*run `payflow migrate`"):
        await open_store(postgres_url, migrate=False)
    assert [s.line for s in await PostgresStore.migration_status(postgres_url)] == [
        "pending 0001_initial"]
    store = await open_store(postgres_url + "&pool_max=3", secret_key=KEY)
    assert store.kind == "postgresql" and store.shared
    assert isinstance(store, PostgresStore) and store.pool.get_max_size() == 3
    await store.close()
    store = await open_store(postgres_url, secret_key=KEY, migrate=False)  # now it opens
    await store.close()


# --- the command line ------------------------------------------------------------------------


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
            capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """``run_cli(*args)``: ``payflow.cli.main.main(args)`` in tmp_path (no ./payflow.toml), without
    reconfiguring structlog for the whole test session; returns (code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PAYFLOW_CONFIG", raising=False)
    monkeypatch.setattr("payflow.logs.configure", lambda *a, **k: "console")

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.mark.postgres
def test_cli_migrate_and_status(postgres_url: str, tmp_path: Path,
                                run_cli: Callable[..., tuple[int, str, str]]) -> None:
    config = tmp_path / "payflow.toml"
    config.write_text(f'[store]\nurl = "{postgres_url}"\nsecret_key = "{KEY}"\n')
    assert run_cli("migrate", "--config", str(config), "--status") == (
        0, "pending 0001_initial\n", "")
    code, out, _ = run_cli("migrate", "--config", str(config))
    assert code == 0 and out.startswith("applied 0001_initial 20") and out.endswith("Z\n")
    assert run_cli("migrate", "--config", str(config), "--status") == (0, out, "")
    code, out, _ = run_cli("prune", "--older-than", "30d", "--config", str(config))
    assert code == 0 and out.startswith("pruned 0 rows")


@pytest.mark.postgres
def test_cli_reads_the_store_url_from_the_environment(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch,
        run_cli: Callable[..., tuple[int, str, str]]) -> None:
    monkeypatch.setenv("PAYFLOW_STORE_URL", postgres_url)
    assert run_cli("migrate", "--status") == (0, "pending 0001_initial\n", "")
    config = Path("payflow.toml")  # in tmp_path
    config.write_text('[store]\nurl = "memory://"\n')
    assert run_cli("migrate", "--status", "--config", str(config)) == (
        0, "pending 0001_initial\n", "")  # the environment wins over the file


def test_cli_memory_and_bad_ages(monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str],
                                 run_cli: Callable[..., tuple[int, str, str]]) -> None:
    monkeypatch.setenv("PAYFLOW_STORE_URL", "memory://")
    code, out, _ = run_cli("migrate")
    assert code == 0 and "nothing to migrate" in out
    code, out, _ = run_cli("prune", "--older-than", "12h")
    assert code == 0 and "nothing to prune" in out
    with pytest.raises(SystemExit) as info:
        run_cli("prune", "--older-than", "30 days")
    assert info.value.code == 2
    assert "expected a whole number and a unit" in capsys.readouterr().err


# --- sealed endpoint secrets -----------------------------------------------------------------

ENDPOINT = WebhookEndpoint(id="we_1", url="https://example.com/hook",
                           secrets=(EndpointSecret(secret="whsec_topsecret1"),
                                    EndpointSecret(secret="whsec_oldsecret2",
                                                   expires_at="2026-03-01T00:00:00.000Z")))


async def raw_secrets(store: PostgresStore) -> str:
    raw: str = await store.pool.fetchval("SELECT secrets::text FROM webhook_endpoints")
    return raw


@pytest.mark.postgres
async def test_secrets_are_sealed_with_a_key(postgres_url: str) -> None:
    with structlog.testing.capture_logs() as logs:
        store = await PostgresStore.open(postgres_url, secret_key=KEY, migrate=True)
    try:
        assert logs == []
        await store.put_endpoint(ENDPOINT)
        raw = await raw_secrets(store)
        assert "whsec_" not in raw and raw.count('"sealed":"v1:') == 2
        assert await store.get_endpoints(["we_1"]) == {"we_1": ENDPOINT}
    finally:
        await store.close()
    store = await PostgresStore.open(postgres_url, secret_key=KEY, migrate=False)  # reopens
    assert await store.list_endpoints() == [ENDPOINT]
    await store.close()
    with pytest.raises(SecretKeyError, match="secret_key is missing"):
        await PostgresStore.open(postgres_url, secret_key=None, migrate=False)
    with pytest.raises(SecretKeyError, match="secret_key is wrong") as info:
        await PostgresStore.open(postgres_url, secret_key="not the right key!", migrate=False)
    assert "whsec_" not in str(info.value)


@pytest.mark.postgres
async def test_reads_refuse_a_sealed_secret_without_the_key(postgres_url: str) -> None:
    store = await PostgresStore.open(postgres_url, secret_key=KEY, migrate=True)
    await store.put_endpoint(ENDPOINT)
    keyless = PostgresStore(store.pool, None)  # as if the check at open had not run
    with pytest.raises(SecretKeyError, match="secret_key is missing"):
        await keyless.get_endpoints(["we_1"])
    with pytest.raises(SecretKeyError, match="secret_key is missing"):
        await keyless.list_endpoints()
    await store.close()


@pytest.mark.postgres
async def test_without_a_key_secrets_are_plain_and_one_warning_says_so(
        postgres_url: str) -> None:
    with structlog.testing.capture_logs() as logs:
        store = await PostgresStore.open(postgres_url, secret_key=None, migrate=True)
        try:
            await store.put_endpoint(ENDPOINT)
            assert "whsec_topsecret1" in await raw_secrets(store)
            assert await store.list_endpoints() == [ENDPOINT]
        finally:
            await store.close()
    assert [entry["event"] for entry in logs] == ["store.secrets_unencrypted"]
    assert logs[0]["log_level"] == "warning" and "whsec_" not in repr(logs)
    store = await PostgresStore.open(postgres_url, secret_key=KEY, migrate=False)
    assert await store.list_endpoints() == [ENDPOINT]  # plain ones still read with a key
    await store.close()


# --- statements per call ---------------------------------------------------------------------


@pytest.fixture
async def counted(postgres_url: str) -> AsyncIterator[tuple[PostgresStore, list[Any]]]:
    """A store of one pooled connection whose statements are logged (asyncpg's query logger:
    one record per statement sent, BEGIN and COMMIT included)."""
    store = await PostgresStore.open(postgres_url + "&pool_max=1", secret_key=KEY,
                                     migrate=True)
    statements: list[Any] = []
    async with store.pool.acquire() as conn:
        conn.add_query_logger(statements.append)
    try:
        yield store, statements
    finally:
        await store.close()


async def statements_of(statements: list[Any], call: Awaitable[Any]) -> int:
    statements.clear()
    await call
    return len(statements)


def payments(start: int, count: int) -> list[Payment]:
    return [Payment(id=f"pay_{n:05d}", method="card", amount=1000, currency="INR",
                    metadata={"n": str(n)}, created_at=at(n))
            for n in range(start, start + count)]


def at(seconds: int) -> str:
    return iso(datetime(2026, 3, 1, tzinfo=UTC) + timedelta(seconds=seconds))


@pytest.mark.postgres
async def test_statements_do_not_grow_with_the_batch(
        counted: tuple[PostgresStore, list[Any]]) -> None:
    store, statements = counted

    async def count(call: Callable[[int, int], Awaitable[Any]]) -> tuple[int, int]:
        await call(0, 1)  # prepares the statements (asyncpg caches them per connection)
        return (await statements_of(statements, call(1, 1)),
                await statements_of(statements, call(2, 200)))

    async def create(start: int, n: int) -> Any:
        return await store.create_payments(payments(start * 1000, n))

    async def go(start: int, n: int) -> Any:
        ids = [p.id for p in payments(start * 1000, n)]
        return await store.transition(
            [Transition(payment_id=i, expected=(P.PENDING,), new=P.PROCESSING) for i in ids]
            + [Transition(payment_id=i, expected=(P.PROCESSING,), new=P.SUCCEEDED, emit=True)
               for i in ids])

    async def complete(start: int, n: int) -> Any:
        batch = payments(start * 1000, n)
        for p in batch:
            assert await store.reserve_refund(Refund(id=f"re_{p.id}", payment_id=p.id,
                                                     amount=10)) is None
        statements.clear()
        return await store.complete_refunds(
            [RefundCompletion(refund_id=f"re_{p.id}", new=RefundStatus.SUCCEEDED)
             for p in batch])

    async def events(start: int, n: int) -> Any:
        batch = [Event(id=f"evt_{start}_{i}", type="payment.success", timestamp=at(i), data={})
                 for i in range(n)]
        await store.add_events(batch)
        await store.mark_enqueued([e.id for e in batch])
        return await store.get_events([e.id for e in batch])

    async def attempts(start: int, n: int) -> Any:
        return await store.add_attempts([
            DeliveryAttempt(id=f"att_{start}_{i}", event_id=f"evt_{start}_{i}",
                            endpoint_id="we_1", attempt=1, outcome="succeeded")
            for i in range(n)])

    assert await count(create) == (1, 1)
    assert await count(go) == (4, 4)  # BEGIN, lock, update + insert events, COMMIT
    assert [s.query.split()[0] for s in statements] == ["BEGIN;", "SELECT", "WITH", "COMMIT;"]
    assert await count(complete) == (4, 4)
    assert await count(events) == (3, 3)  # add_events, mark_enqueued, get_events: one each
    assert await count(attempts) == (1, 1)
    ids = [f"pay_{n:05d}" for n in range(2000, 2200)]
    assert await statements_of(statements, store.get_payments(ids)) == 1
    assert await statements_of(statements, store.delete_payments(ids)) == 1


# --- index use -------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_list_queries_use_indexes(counted: tuple[PostgresStore, list[Any]]) -> None:
    store, statements = counted
    batch = payments(0, 3000)
    await store.create_payments(batch)
    await store.transition([Transition(payment_id=p.id, expected=(P.PENDING,), new=P.SUCCEEDED,
                                       emit=True) for p in batch[::3]])
    await store.add_events([Event(id=f"evt_r{n}", type="refund.success", timestamp=at(n),
                                  data={}) for n in range(3000)])
    await store.mark_enqueued([f"evt_r{n}" for n in range(2990)])
    await store.add_attempts([DeliveryAttempt(id=f"att_{n}", event_id=f"evt_r{n}",
                                              endpoint_id=f"we_{n % 20}", attempt=1,
                                              outcome="succeeded", at=at(n))
                              for n in range(3000)])
    await store.pool.execute(  # 3000 refunds, as reserve_refund would write them
        "INSERT INTO refunds (id, payment_id, amount, status, created_at, updated_at) "
        "SELECT 're_' || n, 'pay_' || lpad((n % 1000 * 3)::text, 5, '0'), 1, 'pending', $1, $1 "
        "FROM generate_series(1, 3000) AS n", at(0))
    await store.pool.execute("ANALYZE")
    middle = batch[1500]
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.list_payments(limit=10),
        lambda: store.list_payments(limit=10, starting_after=middle.id),
        lambda: store.list_payments(limit=10, status=P.SUCCEEDED),
        lambda: store.list_payments(limit=10, status=P.PENDING, starting_after=middle.id),
        lambda: store.list_payments(limit=10, created_gte=at(1500), created_lte=at(1510)),
        lambda: store.stale_pending(at(1500), 10),
        lambda: store.list_events(limit=10),
        lambda: store.list_events(limit=10, type="payment.success", starting_after="evt_r5"),
        lambda: store.list_events(limit=10, created_gte=at(2990)),
        lambda: store.unqueued_events("2999-01-01T00:00:00.000Z", 100),
        lambda: store.list_refunds(batch[3].id),
        lambda: store.list_attempts("evt_r7"),
        lambda: store.attempts_since("we_3", at(2900)),
        lambda: store.get_payments([middle.id]),
        lambda: store.get_events(["evt_r9"]),
    ]
    for call in calls:
        statements.clear()
        await call()
        [record] = statements
        plan = "\n".join(r[0] for r in await store.pool.fetch(f"EXPLAIN {record.query}",
                                                              *record.args))
        assert "Index" in plan and "Seq Scan" not in plan, (record.query, plan)
