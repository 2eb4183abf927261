"""What the contract suite and test_postgres.py left unchecked in the PostgreSQL store
(payflow.store.postgres), found by mutation testing (scripts/mutation postgres): the URL's
``pool_max`` bounds, the connect timeout and the startup errors' text, the race that
``create_payments`` reads back after, failure fields kept by refunds, and the rounding of time
bounds finer than the stored milliseconds. Where the memory store has the same behaviour the
test runs on both backends (the mutation run deselects the memory ones: ``-k "not memory"``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

import pg
from payflow.errors import ConfigError, StartupError
from payflow.models import DeliveryAttempt, Event, Payment, PaymentStatus, Refund, RefundStatus
from payflow.store import Store, migrate, open_store, pg_rows, pg_sql
from payflow.store import memory as memory_store
from payflow.store import postgres as postgres_store
from payflow.store.base import RefundCompletion, Transition
from payflow.store.postgres import PostgresStore, split_url

KEY = "postgres-mutants-secret-key"
T0 = "2026-03-01T12:00:00.000Z"  # a stored time (milliseconds)
HALF_MS_AFTER = "2026-03-01T12:00:00.000500Z"  # half a millisecond after T0: finer than stored
T1 = "2026-03-01T12:00:00.001Z"  # the next stored millisecond


@pytest.fixture(params=["memory", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    url = "memory://" if request.param == "memory" else request.getfixturevalue("postgres_url")
    opened = await open_store(url, secret_key=KEY)
    try:
        yield opened
    finally:
        await opened.close()


def pay(n: int, **changes: Any) -> Payment:
    fields: dict[str, Any] = {"id": f"pay_{n:04d}", "method": "card", "amount": 1000,
                              "currency": "INR", "metadata": {"n": str(n)}, "created_at": T0}
    fields.update(changes)
    return Payment(**fields)


async def paid(store: Store, payment: Payment) -> Payment:
    await store.create_payments([payment])
    [done] = await store.transition([Transition(payment_id=payment.id,
                                                expected=(payment.status,),
                                                new=PaymentStatus.SUCCEEDED)])
    assert done is not None
    return done.payment


# --- the URL ---------------------------------------------------------------------------------


def test_pool_max_accepts_one_to_a_thousand_and_no_more() -> None:
    assert split_url("postgresql://h/db?pool_max=1000") == ("postgresql://h/db", 1000)
    with pytest.raises(ConfigError, match="pool_max must be a whole number from 1 to 1000"):
        split_url("postgresql://h/db?pool_max=1001")


def test_an_empty_pool_max_is_refused_and_empty_settings_are_passed_on() -> None:
    with pytest.raises(ConfigError, match="got ''"):
        split_url("postgresql://h/db?pool_max=")
    assert split_url("postgresql://h/db?application_name=&pool_max=2") == (
        "postgresql://h/db?application_name=", 2)


# --- connecting and starting -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """The port of a server that accepts connections and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        with contextlib.suppress(ConnectionError):
            await reader.read()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_server_that_never_answers_fails_the_start_after_the_connect_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool (``open``) and the one-off connection (``migration_status``) both give up after
    CONNECT_TIMEOUT (here 0.3 s; asyncpg's own default would be 60 s); a cause without text is
    named by its type."""
    monkeypatch.setattr(postgres_store, "CONNECT_TIMEOUT", 0.3)
    async with silent_server() as port:
        url = f"postgresql://u:pw@127.0.0.1:{port}/db?sslmode=disable"
        with pytest.raises(StartupError) as info:
            await asyncio.wait_for(PostgresStore.open(url, secret_key=None, migrate=True), 5)
        assert str(info.value) == ("cannot connect to PostgreSQL at postgresql://u:***@"
                                   f"127.0.0.1:{port}/db?sslmode=disable: TimeoutError")
        with pytest.raises(StartupError, match=r"^cannot connect to PostgreSQL .*: TimeoutError$"):
            await asyncio.wait_for(PostgresStore.migration_status(url), 5)


async def test_a_refused_connection_is_told_in_the_causes_own_words_on_one_line() -> None:
    with pytest.raises(StartupError) as info:
        await PostgresStore.open("postgresql://u:pw@127.0.0.1:1/db", secret_key=None,
                                 migrate=True)
    cause = info.value.__cause__
    assert isinstance(cause, OSError) and str(cause)
    assert str(info.value) == ("cannot connect to PostgreSQL at postgresql://u:***@127.0.0.1:1/db"
                               f": {' '.join(str(cause).split())}")


@pytest.mark.postgres
async def test_a_failed_migration_is_a_startup_error_that_says_why(postgres_url: str) -> None:
    pg.run(lambda: pg.execute(postgres_url, "CREATE TABLE payments (x int)"))
    with pytest.raises(StartupError,
                       match=r'^migrating the store failed: relation "payments" already exists'):
        await PostgresStore.open(postgres_url, secret_key=KEY, migrate=True)


@pytest.mark.postgres
async def test_the_refusal_to_start_names_every_pending_migration(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    known = migrate.available()
    monkeypatch.setattr(migrate, "available", lambda: [
        *known, migrate.Migration(version=2, name="0002_next", sql="SELECT 1")])
    with pytest.raises(StartupError, match=r"needs migrations \(0001_initial, 0002_next\): run"):
        await PostgresStore.open(postgres_url, secret_key=KEY, migrate=False)


# --- payments --------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_create_returns_the_row_a_concurrent_transaction_committed_first(
        postgres_url: str) -> None:
    """Another transaction inserts the same id and commits while this insert waits on it: the
    insert does nothing and its own snapshot cannot see the row, so create_payments reads it
    back (the first one went in, as always)."""
    store = await PostgresStore.open(postgres_url + "&pool_max=1", secret_key=KEY,
                                     migrate=True)
    first, second = pay(1, amount=111), pay(1, amount=222)
    other = await asyncpg.connect(postgres_url)
    try:
        async with store.pool.acquire() as conn:
            waiting_pid = conn.get_server_pid()
        async with other.transaction():
            await other.fetch(pg_sql.CREATE_PAYMENTS, *pg_rows.payment_columns([first]))
            racing = asyncio.create_task(store.create_payments([second]))
            for _ in range(500):  # until the insert waits on the row this transaction holds
                if await other.fetchval("SELECT $1 = ANY(pg_blocking_pids($2))",
                                        other.get_server_pid(), waiting_pid):
                    break
                assert not racing.done(), racing
                await asyncio.sleep(0.01)
            else:
                pytest.fail("the concurrent insert never waited")
        assert await asyncio.wait_for(racing, 10) == [first]
    finally:
        await other.close()
        await store.close()


# --- refunds ---------------------------------------------------------------------------------


async def test_a_reserved_refund_is_stored_with_every_field_it_came_with(store: Store) -> None:
    payment = await paid(store, pay(1))
    refund = Refund(id="re_1", payment_id=payment.id, amount=100, currency="INR",
                    failure_code="pre_code", failure_message="a message", created_at=T0)
    assert await store.reserve_refund(refund) is None
    assert await store.get_refunds(["re_1"]) == {"re_1": refund}


async def test_a_failed_refund_keeps_its_failure_message(store: Store) -> None:
    payment = await paid(store, pay(1))
    assert await store.reserve_refund(Refund(id="re_1", payment_id=payment.id,
                                             amount=100)) is None
    [done] = await store.complete_refunds([RefundCompletion(
        refund_id="re_1", new=RefundStatus.FAILED, failure_code="declined",
        failure_message="The bank said no.")])
    assert done is not None
    assert (done.refund.failure_code, done.refund.failure_message) == (
        "declined", "The bank said no.")
    assert (await store.get_refunds(["re_1"]))["re_1"] == done.refund


async def test_stale_refunds_keeps_to_the_limit_oldest_first(store: Store) -> None:
    payment = await paid(store, pay(1))
    for n, at in ((1, T1), (2, T0), (3, T1)):
        assert await store.reserve_refund(Refund(id=f"re_{n}", payment_id=payment.id,
                                                 amount=10, created_at=at)) is None
    assert [r.id for r in await store.stale_refunds("2026-03-02T00:00:00.000Z", 1)] == ["re_2"]


# --- time bounds finer than a millisecond ----------------------------------------------------
# Stored times have milliseconds; a bound with a finer part is rounded up for `<` and `>=`, so
# that a time stored at T0 counts as before T0 + 0.5 ms (and not at or after it).


async def test_stale_pending_counts_t0_as_before_half_a_millisecond_later(store: Store) -> None:
    await store.create_payments([pay(1)])
    assert [p.id for p in await store.stale_pending(HALF_MS_AFTER, 10)] == ["pay_0001"]
    assert await store.stale_pending(T0, 10) == []


async def test_stale_refunds_counts_t0_as_before_half_a_millisecond_later(store: Store) -> None:
    payment = await paid(store, pay(1))
    assert await store.reserve_refund(Refund(id="re_1", payment_id=payment.id, amount=10,
                                             created_at=T0)) is None
    assert [r.id for r in await store.stale_refunds(HALF_MS_AFTER, 10)] == ["re_1"]
    assert await store.stale_refunds(T0, 10) == []


async def test_unqueued_events_counts_t0_as_before_half_a_millisecond_later(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (postgres_store, memory_store):  # the time an event is recorded at
        monkeypatch.setattr(module, "now_iso", lambda: T0)
    event = Event(id="evt_1", type="payment.success", timestamp=T0, data={"n": 1})
    await store.add_events([event])
    assert await store.unqueued_events(HALF_MS_AFTER, 10) == [event]
    assert await store.unqueued_events(T0, 10) == []


async def test_list_events_from_half_a_millisecond_later_leaves_out_t0(store: Store) -> None:
    early = Event(id="evt_1", type="payment.success", timestamp=T0, data={"n": 1})
    late = Event(id="evt_2", type="payment.success", timestamp=T1, data={"n": 2})
    await store.add_events([early, late])
    assert await store.list_events(limit=10, created_gte=HALF_MS_AFTER) == [late]
    assert await store.list_events(limit=10, created_gte=T0) == [late, early]


def attempt(n: int, at: str) -> DeliveryAttempt:
    return DeliveryAttempt(id=f"att_{n}", event_id="evt_1", endpoint_id="we_1", attempt=n,
                           outcome="retrying", at=at, status=500, error="HTTP 500",
                           latency_ms=1.5, response_body="", next_retry_at=None)


async def test_attempts_since_half_a_millisecond_later_leaves_out_t0(store: Store) -> None:
    await store.add_events([Event(id="evt_1", type="payment.success", timestamp=T0,
                                  data={"n": 1})])
    await store.add_attempts([attempt(1, T0), attempt(2, T1)])
    assert [a.id for a in await store.attempts_since("we_1", HALF_MS_AFTER)] == ["att_2"]
    assert [a.id for a in await store.attempts_since("we_1", T0)] == ["att_1", "att_2"]


async def test_prune_before_half_a_millisecond_later_takes_t0(store: Store) -> None:
    event = Event(id="evt_1", type="payment.success", timestamp=T0, data={"n": 1})
    await store.add_events([event])
    await store.mark_enqueued([event.id])
    await store.add_attempts([attempt(1, T0)])
    assert await store.prune(T0) == 0
    assert await store.prune(HALF_MS_AFTER) == 2  # the event and its attempt
    assert await store.get_events([event.id]) == {}
    assert await store.list_attempts(event.id) == []
