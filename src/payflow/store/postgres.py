"""``postgresql://``: the store that several daemons share, with asyncpg and a pool.

Every method is one statement, batch-shaped (``= ANY($1::text[])``, ``unnest(…)``), except the
two that change many rows under compare-and-set: :meth:`PostgresStore.transition` and
:meth:`PostgresStore.complete_refunds` run BEGIN, one ``SELECT … ORDER BY id FOR UPDATE`` of
every row they touch (locked in id order, so two batches cannot deadlock), apply the batch in
order in Python (exactly as the memory store does: a later item on the same row sees the
earlier's result), then one statement that updates the rows and inserts the events
(``Event.for_payment`` / ``Event.for_refund``, built here), and COMMIT: four statements
whatever the batch size.

The pool skips asyncpg's ``RESET ALL`` on release (the store keeps no session state), so a
call costs just its statements. ``pool_max`` in the URL's query sets the pool size (default
10); every other query parameter (e.g. ``search_path``) is a server setting of the session.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import structlog

from payflow._config_parse import mask_url
from payflow.errors import ConfigError, StartupError
from payflow.models import (
    DeliveryAttempt,
    Event,
    Payment,
    PaymentStatus,
    Refund,
    RefundStatus,
    WebhookEndpoint,
    now_iso,
)
from payflow.store import migrate as migrations
from payflow.store import pg_rows as rows
from payflow.store import pg_sql as sql
from payflow.store.base import (
    REFUNDABLE,
    Changed,
    KeyBinding,
    RefundCompletion,
    RefundDone,
    Transition,
)
from payflow.store.sealing import Sealer

T = TypeVar("T")

POOL_MIN = 1
POOL_MAX = 10
CONNECT_TIMEOUT = 10.0  # seconds


def split_url(url: str) -> tuple[str, int]:
    """The DSN for asyncpg (without the store's own query parameters) and ``pool_max``."""
    parts = urlsplit(url)
    kept: list[tuple[str, str]] = []
    pool_max = POOL_MAX
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key != "pool_max":
            kept.append((key, value))
        elif value.isascii() and value.isdigit() and 1 <= int(value) <= 1000:
            pool_max = int(value)
        else:
            raise ConfigError(f"[store] url: pool_max must be a whole number from 1 to 1000, "
                              f"got {value!r}")
    return urlunsplit(parts._replace(query=urlencode(kept))), pool_max


async def _keep_session(conn: Any) -> None:
    """Release without ``RESET ALL`` (asyncpg still rolls back an unfinished transaction)."""


async def _connect(url: str, *, pool: bool) -> Any:
    dsn, pool_max = split_url(url)
    try:
        if pool:
            return await asyncpg.create_pool(dsn, min_size=POOL_MIN, max_size=pool_max,
                                             reset=_keep_session, timeout=CONNECT_TIMEOUT)
        return await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise StartupError(f"cannot connect to PostgreSQL at {mask_url(url)}: {detail}") from exc


class PostgresStore:
    kind = "postgresql"
    shared = True

    def __init__(self, pool: Any, sealer: Sealer | None) -> None:
        self._pool = pool
        self._sealer = sealer

    @property
    def pool(self) -> Any:
        """The asyncpg pool (for tools and tests)."""
        return self._pool

    @classmethod
    async def open(cls, url: str, *, secret_key: str | None, migrate: bool) -> PostgresStore:
        """Connect the pool; apply the pending migrations (``migrate``) or refuse to start when
        some are pending; refuse when the sealed endpoint secrets do not open with
        ``secret_key``."""
        sealer = Sealer(secret_key) if secret_key else None
        pool = await _connect(url, pool=True)
        try:
            async with pool.acquire() as conn:
                if migrate:
                    try:
                        await migrations.apply(conn)
                    except asyncpg.PostgresError as exc:
                        raise StartupError(f"migrating the store failed: {exc}") from exc
                elif pending := await migrations.pending(conn):
                    raise StartupError(f"the store at {mask_url(url)} needs migrations "
                                       f"({', '.join(pending)}): run `payflow migrate`")
                row = await conn.fetchrow(sql.SOME_SEALED_ENDPOINT)
                if row is not None:
                    rows.endpoint(row, sealer)  # raises SecretKeyError: missing or wrong key
        except BaseException:
            await pool.close()
            raise
        if sealer is None:
            structlog.get_logger("payflow.store").warning(
                "store.secrets_unencrypted",
                detail="[store] secret_key is empty: webhook endpoint secrets are stored "
                       "unencrypted in PostgreSQL")
        return cls(pool, sealer)

    @classmethod
    async def migration_status(cls, url: str) -> list[migrations.MigrationStatus]:
        """Applied and pending migrations (``payflow migrate --status``), changing nothing."""
        conn = await _connect(url, pool=False)
        try:
            return await migrations.status(conn)
        finally:
            await conn.close()

    # --- payments ------------------------------------------------------------------------

    async def create_payments(self, payments: Sequence[Payment]) -> list[Payment]:
        if not payments:
            return []
        found = await self._pool.fetch(sql.CREATE_PAYMENTS, *rows.payment_columns(payments))
        inserted = set(found[0]["inserted"] or ())
        stored = {r["id"]: rows.payment(r) for r in found if r["id"] is not None}
        for payment in payments:
            if payment.id in inserted:
                stored.setdefault(payment.id, payment)  # the first of duplicates went in
        missing = [p.id for p in payments if p.id not in stored]
        if missing:  # another transaction inserted them after this one's snapshot
            stored.update(await self.get_payments(missing))
        return [stored[p.id] for p in payments]

    async def get_payments(self, ids: Sequence[str]) -> dict[str, Payment]:
        if not ids:
            return {}
        found = await self._pool.fetch(sql.GET_PAYMENTS, list(ids))
        return _in_order(ids, {r["id"]: rows.payment(r) for r in found})

    async def delete_payments(self, ids: Sequence[str]) -> None:
        if ids:
            await self._pool.execute(sql.DELETE_PAYMENTS, list(ids))

    async def create_payment_once(self, payment: Payment, key: str,
                                  fingerprint: str) -> KeyBinding:
        at = now_iso()
        async with self._pool.acquire() as conn, conn.transaction():
            if await conn.fetchrow(sql.BIND_KEY, key, payment.id, fingerprint, at):
                await conn.fetch(sql.CREATE_PAYMENTS, *rows.payment_columns([payment]))
                return KeyBinding(payment=payment, fingerprint=fingerprint, confirmed=False,
                                  bound_at=at)
            bound = await conn.fetchrow(sql.GET_BINDING, key)
            found = await conn.fetch(sql.GET_PAYMENTS, [bound["payment_id"]])
        return KeyBinding(payment=rows.payment(found[0]), fingerprint=str(bound["fingerprint"]),
                          confirmed=bool(bound["confirmed"]), bound_at=str(bound["created_at"]))

    async def confirm_key(self, key: str) -> None:
        await self._pool.execute("UPDATE idempotency_keys SET confirmed = true WHERE key = $1",
                                 key)

    async def transition(self, transitions: Sequence[Transition]) -> list[Changed | None]:
        if not transitions:
            return []
        async with self._pool.acquire() as conn, conn.transaction():
            locked = await conn.fetch(sql.LOCK_PAYMENTS,
                                      sorted({t.payment_id for t in transitions}))
            current = {r["id"]: rows.payment(r) for r in locked}
            results: list[Changed | None] = []
            events: list[Event] = []
            for t in transitions:
                payment = current.get(t.payment_id)
                if payment is None or payment.status not in t.expected:
                    results.append(None)
                    continue
                payment = current[payment.id] = dataclasses.replace(
                    payment, status=t.new, updated_at=now_iso(), sequence=payment.sequence + 1,
                    failure_code=t.failure_code, failure_message=t.failure_message)
                event = Event.for_payment(payment) if t.emit else None
                if event is not None:
                    events.append(event)
                results.append(Changed(payment=payment, event=event))
            changed = list({c.payment.id: c.payment for c in results if c is not None}.values())
            if changed:
                await conn.execute(
                    sql.TRANSITION, [p.id for p in changed], [p.status.value for p in changed],
                    [p.updated_at for p in changed], [p.sequence for p in changed],
                    [p.failure_code for p in changed], [p.failure_message for p in changed],
                    *rows.event_columns(events), now_iso())
        return results

    async def list_payments(self, *, limit: int, starting_after: str | None = None,
                            status: PaymentStatus | None = None,
                            created_gte: str | None = None,
                            created_lte: str | None = None) -> list[Payment]:
        q = sql.Query()
        if status is not None:
            q.where("status = {}", status.value)
        if created_gte:
            q.where("created_at >= {}", rows.time_bound(created_gte, up=True))
        if created_lte:
            q.where("created_at <= {}", rows.time_bound(created_lte, up=False))
        if starting_after is not None:
            q.where("seq < (SELECT seq FROM payments WHERE id = {})", starting_after)
        text = q.text(f"SELECT {rows.PAYMENT} FROM payments", "ORDER BY seq DESC", limit)
        return [rows.payment(r) for r in await self._pool.fetch(text, *q.args)]

    async def stale_pending(self, before: str, limit: int) -> list[Payment]:
        found = await self._pool.fetch(sql.STALE_PENDING, rows.time_bound(before, up=True),
                                       limit)
        return [rows.payment(r) for r in found]

    # --- refunds -------------------------------------------------------------------------

    async def reserve_refund(self, refund: Refund) -> str | None:
        row = await self._pool.fetchrow(
            sql.RESERVE_REFUND, refund.id, refund.payment_id, refund.amount, refund.currency,
            refund.status.value, refund.failure_code, refund.failure_message,
            refund.created_at, refund.updated_at, [s.value for s in REFUNDABLE])
        if row["done"]:
            return None
        if row["status"] is None:
            return "payment_not_found"
        if row["amount"] is None or PaymentStatus(row["status"]) not in REFUNDABLE:
            return "not_refundable"
        return "amount_too_large"

    async def refundable(self, payment_id: str) -> int:
        left = await self._pool.fetchval(sql.REFUNDABLE, payment_id)
        return int(left or 0)

    async def delete_refund(self, refund_id: str) -> None:
        await self._pool.execute(sql.DELETE_REFUND, refund_id)

    async def get_refunds(self, ids: Sequence[str]) -> dict[str, Refund]:
        if not ids:
            return {}
        found = await self._pool.fetch(f"SELECT {rows.REFUND} FROM refunds "
                                       "WHERE id = ANY($1::text[])", list(ids))
        return _in_order(ids, {r["id"]: rows.refund(r) for r in found})

    async def stale_refunds(self, before: str, limit: int) -> list[Refund]:
        found = await self._pool.fetch(sql.STALE_REFUNDS, rows.time_bound(before, up=True),
                                       limit)
        return [rows.refund(r) for r in found]

    async def list_refunds(self, payment_id: str) -> list[Refund]:
        found = await self._pool.fetch(f"SELECT {rows.REFUND} FROM refunds "
                                       "WHERE payment_id = $1 ORDER BY seq", payment_id)
        return [rows.refund(r) for r in found]

    async def complete_refunds(self, completions: Sequence[RefundCompletion]
                               ) -> list[RefundDone | None]:
        if not completions:
            return []
        async with self._pool.acquire() as conn, conn.transaction():
            locked = await conn.fetch(sql.LOCK_REFUNDS,
                                      sorted({c.refund_id for c in completions}))
            refunds = {r["id"]: rows.refund(r) for r in locked}
            payments = {r["p_id"]: (rows.payment(r, "p_"), r["p_amount_reserved"])
                        for r in locked if r["p_id"] is not None}
            results: list[RefundDone | None] = []
            touched: dict[str, None] = {}
            for c in completions:
                current = refunds.get(c.refund_id)
                if current is None or current.status is not RefundStatus.PENDING:
                    results.append(None)
                    continue
                done = refunds[current.id] = dataclasses.replace(
                    current, status=c.new, updated_at=now_iso(), failure_code=c.failure_code,
                    failure_message=c.failure_message)
                if done.payment_id in payments:
                    payment, reserved = payments[done.payment_id]
                    if c.new is RefundStatus.SUCCEEDED and payment.amount is not None:
                        refunded = payment.amount_refunded + done.amount
                        payment = dataclasses.replace(
                            payment, amount_refunded=refunded, updated_at=done.updated_at,
                            sequence=payment.sequence + 1,
                            status=PaymentStatus.REFUNDED if refunded >= payment.amount
                            else PaymentStatus.PARTIALLY_REFUNDED)
                    payments[payment.id] = (payment, reserved - done.amount)
                    touched[payment.id] = None
                results.append(RefundDone(refund=done, event=Event.for_refund(done)))
            if any(results):
                done_refunds = list({d.refund.id: d.refund for d in results if d}.values())
                moved = [payments[i] for i in touched]
                await conn.execute(
                    sql.COMPLETE_REFUNDS, [r.id for r in done_refunds],
                    [r.status.value for r in done_refunds],
                    [r.failure_code for r in done_refunds],
                    [r.failure_message for r in done_refunds],
                    [r.updated_at for r in done_refunds], [p.id for p, _ in moved],
                    [p.status.value for p, _ in moved], [p.amount_refunded for p, _ in moved],
                    [reserved for _, reserved in moved], [p.sequence for p, _ in moved],
                    [p.updated_at for p, _ in moved],
                    *rows.event_columns([d.event for d in results if d]), now_iso())
        return results

    # --- events: the outbox --------------------------------------------------------------

    async def add_events(self, events: Sequence[Event]) -> None:
        if events:
            await self._pool.execute(sql.ADD_EVENTS, *rows.event_columns(events), now_iso())

    async def get_events(self, ids: Sequence[str]) -> dict[str, Event]:
        if not ids:
            return {}
        found = await self._pool.fetch(f"SELECT {rows.EVENT} FROM events "
                                       "WHERE id = ANY($1::text[])", list(ids))
        return _in_order(ids, {r["id"]: rows.event(r) for r in found})

    async def list_events(self, *, limit: int, starting_after: str | None = None,
                          type: str | None = None,
                          created_gte: str | None = None) -> list[Event]:
        q = sql.Query()
        if type is not None:
            q.where("type = {}", type)
        if created_gte:
            q.where("timestamp >= {}", rows.time_bound(created_gte, up=True))
        if starting_after is not None:
            q.where("seq < (SELECT seq FROM events WHERE id = {})", starting_after)
        text = q.text(f"SELECT {rows.EVENT} FROM events", "ORDER BY seq DESC", limit)
        return [rows.event(r) for r in await self._pool.fetch(text, *q.args)]

    async def mark_enqueued(self, event_ids: Sequence[str]) -> None:
        if event_ids:
            await self._pool.execute("UPDATE events SET enqueued = true "
                                     "WHERE id = ANY($1::text[]) AND NOT enqueued",
                                     list(event_ids))

    async def unqueued_events(self, before: str, limit: int) -> list[Event]:
        found = await self._pool.fetch(sql.UNQUEUED_EVENTS, rows.time_bound(before, up=True),
                                       limit)
        return [rows.event(r) for r in found]

    # --- webhook endpoints ---------------------------------------------------------------

    async def put_endpoint(self, endpoint: WebhookEndpoint) -> None:
        await self._pool.execute(sql.PUT_ENDPOINT, *rows.endpoint_values(endpoint,
                                                                         self._sealer))

    async def get_endpoints(self, ids: Sequence[str]) -> dict[str, WebhookEndpoint]:
        if not ids:
            return {}
        found = await self._pool.fetch(f"SELECT {rows.ENDPOINT} FROM webhook_endpoints "
                                       "WHERE id = ANY($1::text[])", list(ids))
        return _in_order(ids, {r["id"]: rows.endpoint(r, self._sealer) for r in found})

    async def list_endpoints(self) -> list[WebhookEndpoint]:
        found = await self._pool.fetch(f"SELECT {rows.ENDPOINT} FROM webhook_endpoints "
                                       "ORDER BY seq")
        return [rows.endpoint(r, self._sealer) for r in found]

    async def delete_endpoint(self, endpoint_id: str) -> bool:
        status = await self._pool.execute("DELETE FROM webhook_endpoints WHERE id = $1",
                                          endpoint_id)
        return bool(status != "DELETE 0")

    # --- delivery attempts ---------------------------------------------------------------

    async def add_attempts(self, attempts: Sequence[DeliveryAttempt]) -> None:
        if attempts:
            await self._pool.execute(sql.ADD_ATTEMPTS, *rows.attempt_columns(attempts))

    async def list_attempts(self, event_id: str) -> list[DeliveryAttempt]:
        found = await self._pool.fetch(f"SELECT {rows.ATTEMPT} FROM delivery_attempts "
                                       "WHERE event_id = $1 ORDER BY seq", event_id)
        return [rows.attempt(r) for r in found]

    async def attempts_since(self, endpoint_id: str, since: str) -> list[DeliveryAttempt]:
        found = await self._pool.fetch(sql.ATTEMPTS_SINCE, endpoint_id,
                                       rows.time_bound(since, up=True))
        return [rows.attempt(r) for r in found]

    # --- retention -----------------------------------------------------------------------

    async def setting(self, name: str, default: str) -> str:
        return str(await self._pool.fetchval(sql.SETTING, name, default))

    async def prune(self, before: str) -> int:
        return int(await self._pool.fetchval(sql.PRUNE, rows.time_bound(before, up=True)))

    async def close(self) -> None:
        await self._pool.close()


def _in_order(ids: Sequence[str], found: dict[str, T]) -> dict[str, T]:
    """``found`` in the order of ``ids`` (as the memory store answers)."""
    return {i: found[i] for i in ids if i in found}
