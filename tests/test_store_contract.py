"""The Store contract: every test runs against each backend (memory://, postgresql://), and one
scenario runs against both with the same clock to check that they answer exactly alike."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from payflow.models import (
    DeliveryAttempt,
    EndpointSecret,
    Event,
    Payment,
    PaymentStatus,
    Refund,
    RefundStatus,
    WebhookEndpoint,
    event_id_for,
    iso,
)
from payflow.store import Store, open_store
from payflow.store.base import Changed, RefundCompletion, Transition

P = PaymentStatus
BASE = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
KEY = "contract-suite-secret-key"
FUTURE = "2999-01-01T00:00:00.000Z"
PAST = "2000-01-01T00:00:00.000Z"


def at(seconds: float) -> str:
    return iso(BASE + timedelta(seconds=seconds))


def pay(n: int, **changes: Any) -> Payment:
    fields: dict[str, Any] = {"id": f"pay_{n:04d}", "method": "card", "amount": 1000,
                              "currency": "INR", "metadata": {"order": str(n), "a": "b"},
                              "method_details": {"network": "visa", "last4": "4242"},
                              "created_at": at(n)}
    fields.update(changes)
    return Payment(**fields)


def go(payment_id: str, frm: tuple[PaymentStatus, ...], new: PaymentStatus, *,
       emit: bool = False, **failure: str) -> Transition:
    return Transition(payment_id=payment_id, expected=frm, new=new, emit=emit, **failure)


async def succeeded(store: Store, payment: Payment) -> Payment:
    """``payment`` created and taken to succeeded (no event)."""
    await store.create_payments([payment])
    done = await store.transition([go(payment.id, (P.PENDING,), P.SUCCEEDED)])
    assert done[0] is not None
    return done[0].payment


def evt(n: int, *, type: str = "payment.success", seconds: float | None = None) -> Event:
    return Event(id=f"evt_{n:04d}", type=type, timestamp=at(n if seconds is None else seconds),
                 data={"id": f"pay_{n:04d}", "object": "payment", "n": n})


def attempt(n: int, event_id: str, *, endpoint: str = "we_1", seconds: float = 0,
            outcome: str = "retrying") -> DeliveryAttempt:
    return DeliveryAttempt(id=f"att_{n:04d}", event_id=event_id, endpoint_id=endpoint,
                           attempt=n, outcome=outcome, at=at(seconds), status=500,
                           error="HTTP 500", latency_ms=12.345, response_body="oops",
                           next_retry_at=at(seconds + 30))


@pytest.fixture(params=["memory", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await open_store(store_url, secret_key=KEY)
    try:
        yield opened
    finally:
        await opened.close()


# --- payments --------------------------------------------------------------------------------


async def test_create_is_idempotent_and_keeps_the_first(store: Store) -> None:
    a, b = pay(1), pay(2)
    assert await store.create_payments([a, b]) == [a, b]
    other_a = dataclasses.replace(a, amount=5, metadata={"x": "y"})
    c = pay(3)
    assert await store.create_payments([other_a, c, dataclasses.replace(c, amount=7)]) == [a, c, c]
    assert await store.get_payments([c.id, "pay_nope", a.id, b.id]) == {c.id: c, a.id: a, b.id: b}
    assert await store.create_payments([]) == []


async def test_get_and_delete(store: Store) -> None:
    a, b = pay(1), await succeeded(store, pay(2))
    await store.create_payments([a])
    assert await store.reserve_refund(Refund(id="re_1", payment_id=b.id, amount=10)) is None
    await store.delete_payments([a.id, b.id, "pay_nope"])
    assert await store.get_payments([a.id, b.id]) == {}
    assert [r.id for r in await store.list_refunds(b.id)] == ["re_1"]  # and nothing else
    await store.delete_payments([])


async def test_transition_is_compare_and_set(store: Store) -> None:
    a = pay(1)
    await store.create_payments([a])
    assert await store.transition([go(a.id, (P.PROCESSING,), P.SUCCEEDED),
                                   go("pay_nope", (P.PENDING,), P.PROCESSING)]) == [None, None]
    assert (await store.get_payments([a.id]))[a.id] == a
    [changed] = await store.transition([go(a.id, (P.PENDING, P.PROCESSING), P.FAILED,
                                           failure_code="card_declined",
                                           failure_message="Declined.")])
    assert changed is not None and changed.event is None
    want = dataclasses.replace(a, status=P.FAILED, sequence=1, failure_code="card_declined",
                               failure_message="Declined.", updated_at=changed.payment.updated_at)
    assert changed.payment == want
    assert changed.payment.updated_at >= a.created_at and TIME.match(changed.payment.updated_at)
    assert (await store.get_payments([a.id]))[a.id] == want
    assert await store.list_events(limit=10) == []
    assert await store.transition([]) == []


async def test_transition_with_emit_records_the_derived_event(store: Store) -> None:
    a = pay(1)
    await store.create_payments([a])
    [changed] = await store.transition([go(a.id, (P.PENDING,), P.SUCCEEDED, emit=True)])
    assert changed is not None and changed.event is not None
    assert changed.event == Event.for_payment(changed.payment)
    assert changed.event.id == event_id_for(a.id, "payment.success")
    assert changed.event.data["status"] == "succeeded" and changed.event.data["sequence"] == 1
    assert await store.get_events([changed.event.id, "evt_nope"]) == {
        changed.event.id: changed.event}
    assert await store.list_events(limit=10) == [changed.event]
    assert await store.unqueued_events(FUTURE, 10) == [changed.event]


async def test_transitions_on_one_payment_apply_in_order(store: Store) -> None:
    a, b = pay(1), pay(2)
    await store.create_payments([a, b])
    results = await store.transition([
        go(a.id, (P.PENDING,), P.PROCESSING),
        go(b.id, (P.PROCESSING,), P.FAILED),  # b is pending: no
        go(a.id, (P.PROCESSING,), P.SUCCEEDED, emit=True),
        go(a.id, (P.PENDING,), P.CANCELED, emit=True),  # no longer pending
        go(b.id, (P.PENDING,), P.CANCELED, emit=True),
    ])
    assert [r and (r.payment.id, r.payment.status, r.payment.sequence) for r in results] == [
        (a.id, P.PROCESSING, 1), None, (a.id, P.SUCCEEDED, 2), None, (b.id, P.CANCELED, 1)]
    assert results[0] is not None and results[0].event is None
    stored = await store.get_payments([a.id, b.id])
    assert stored[a.id].status is P.SUCCEEDED and stored[a.id].sequence == 2
    assert stored[b.id].status is P.CANCELED
    events = await store.list_events(limit=10)
    assert [e.type for e in events] == ["payment.canceled", "payment.success"]  # newest first


async def test_concurrent_transitions_only_one_wins(store: Store) -> None:
    payments = [pay(n) for n in range(20)]
    await store.create_payments(payments)
    batch = [go(p.id, (P.PENDING,), P.PROCESSING) for p in payments]
    first, second = await asyncio.gather(store.transition(batch), store.transition(batch[::-1]))
    for mine, theirs in zip(first, second[::-1], strict=True):
        assert (mine is None) != (theirs is None)
    stored = await store.get_payments([p.id for p in payments])
    assert {p.sequence for p in stored.values()} == {1}


async def test_list_payments_pages_newest_first(store: Store) -> None:
    payments = [pay(n) for n in range(5)]
    await store.create_payments(payments)
    ids = [p.id for p in payments]

    async def page(**kw: Any) -> list[str]:
        return [p.id for p in await store.list_payments(**kw)]

    assert await page(limit=2) == [ids[4], ids[3]]
    assert await page(limit=2, starting_after=ids[3]) == [ids[2], ids[1]]
    assert await page(limit=2, starting_after=ids[1]) == [ids[0]]
    assert await page(limit=2, starting_after=ids[0]) == []
    assert await page(limit=2, starting_after="pay_unknown") == []


async def test_list_payments_filters(store: Store) -> None:
    payments = [pay(n) for n in range(6)]
    await store.create_payments(payments)
    await store.transition([go(payments[n].id, (P.PENDING,), P.SUCCEEDED) for n in (1, 2, 4)])

    async def page(limit: int = 10, **kw: Any) -> list[int]:
        return [int(p.id[4:]) for p in await store.list_payments(limit=limit, **kw)]

    assert await page(status=P.SUCCEEDED) == [4, 2, 1]
    assert await page(status=P.SUCCEEDED, limit=1, starting_after=payments[4].id) == [2]
    assert await page(status=P.REFUNDED) == []
    assert await page(created_gte=at(2), created_lte=at(4)) == [4, 3, 2]  # inclusive
    assert await page(created_gte="2026-03-01T12:00:02.000001Z") == [5, 4, 3]  # finer than ms
    assert await page(created_lte="2026-03-01T12:00:00.999999Z") == [0]
    assert await page(created_lte="2026-03-01T17:30:03+05:30") == [3, 2, 1, 0]  # other zone
    assert await page(created_gte=at(1), created_lte=at(3), status=P.PENDING) == [3]
    assert await page(created_gte=at(5), starting_after=payments[5].id) == []


async def test_stale_pending(store: Store) -> None:
    payments = [pay(n, created_at=at(10 - n)) for n in range(4)]  # pay_0003 oldest
    await store.create_payments(payments)
    await store.transition([go(payments[0].id, (P.PENDING,), P.PROCESSING)])
    stale = await store.stale_pending(at(9.5), 10)
    assert [p.id for p in stale] == ["pay_0003", "pay_0002", "pay_0001"]
    assert [p.id for p in await store.stale_pending(at(9.5), 2)] == ["pay_0003", "pay_0002"]
    assert await store.stale_pending(at(7), 10) == []


# --- refunds ---------------------------------------------------------------------------------


async def test_reserve_refund_rules(store: Store) -> None:
    def refund(n: int, payment_id: str, amount: int) -> Refund:
        return Refund(id=f"re_{n}", payment_id=payment_id, amount=amount, currency="INR",
                      created_at=at(100 + n))

    pending, legacy = pay(1), await succeeded(store, pay(2, amount=None))
    await store.create_payments([pending])
    paid = await succeeded(store, pay(3))
    assert await store.reserve_refund(refund(1, "pay_nope", 1)) == "payment_not_found"
    assert await store.reserve_refund(refund(2, pending.id, 1)) == "not_refundable"
    assert await store.reserve_refund(refund(3, legacy.id, 1)) == "not_refundable"
    assert await store.reserve_refund(refund(4, paid.id, 1001)) == "amount_too_large"
    assert await store.refundable(paid.id) == 1000
    assert await store.reserve_refund(refund(5, paid.id, 600)) is None
    assert await store.refundable(paid.id) == 400  # the pending refund counts
    assert await store.reserve_refund(refund(6, paid.id, 401)) == "amount_too_large"
    assert await store.reserve_refund(refund(7, paid.id, 400)) is None
    assert await store.refundable(paid.id) == 0
    assert [r.id for r in await store.list_refunds(paid.id)] == ["re_5", "re_7"]
    assert await store.get_refunds(["re_7", "re_6", "re_5"]) == {
        "re_7": refund(7, paid.id, 400), "re_5": refund(5, paid.id, 600)}
    await store.delete_refund("re_7")
    await store.delete_refund("re_nope")
    assert await store.refundable(paid.id) == 400
    assert [r.id for r in await store.list_refunds(paid.id)] == ["re_5"]
    assert await store.refundable("pay_nope") == 0
    assert await store.refundable(legacy.id) == 0
    assert await store.list_refunds("pay_nope") == []


async def test_complete_refunds(store: Store) -> None:
    paid = await succeeded(store, pay(1))
    for n, amount in ((1, 300), (2, 200), (3, 500)):
        assert await store.reserve_refund(Refund(id=f"re_{n}", payment_id=paid.id,
                                                 amount=amount)) is None
    first = await store.complete_refunds([
        RefundCompletion(refund_id="re_1", new=RefundStatus.SUCCEEDED),
        RefundCompletion(refund_id="re_2", new=RefundStatus.FAILED, failure_code="declined",
                         failure_message="The bank said no."),
        RefundCompletion(refund_id="re_1", new=RefundStatus.FAILED),  # no longer pending
        RefundCompletion(refund_id="re_nope", new=RefundStatus.SUCCEEDED),
    ])
    assert first[2] is None and first[3] is None
    done, failed = first[0], first[1]
    assert done is not None and failed is not None
    assert done.refund.status is RefundStatus.SUCCEEDED and TIME.match(done.refund.updated_at)
    assert done.event == Event.for_refund(done.refund) and done.event.type == "refund.success"
    assert failed.refund.failure_code == "declined" and failed.event.type == "refund.failed"
    after = (await store.get_payments([paid.id]))[paid.id]
    assert (after.status, after.amount_refunded, after.sequence) == (
        P.PARTIALLY_REFUNDED, 300, paid.sequence + 1)
    assert after.updated_at == done.refund.updated_at
    assert await store.refundable(paid.id) == 200  # 1000 - 300 done - 500 pending
    assert await store.get_events([done.event.id, failed.event.id]) == {
        done.event.id: done.event, failed.event.id: failed.event}
    [last] = await store.complete_refunds([RefundCompletion(refund_id="re_3",
                                                            new=RefundStatus.SUCCEEDED)])
    assert last is not None
    after = (await store.get_payments([paid.id]))[paid.id]
    assert (after.status, after.amount_refunded) == (P.PARTIALLY_REFUNDED, 800)
    assert await store.refundable(paid.id) == 200
    assert await store.complete_refunds([RefundCompletion(refund_id="re_3",
                                                          new=RefundStatus.SUCCEEDED)]) == [None]
    assert (await store.get_payments([paid.id]))[paid.id].amount_refunded == 800  # not 1300
    assert [r.status for r in await store.list_refunds(paid.id)] == [
        RefundStatus.SUCCEEDED, RefundStatus.FAILED, RefundStatus.SUCCEEDED]
    assert await store.complete_refunds([]) == []


async def test_a_refund_completed_twice_in_one_batch_counts_once(store: Store) -> None:
    paid = await succeeded(store, pay(1))
    assert await store.reserve_refund(Refund(id="re_1", payment_id=paid.id, amount=400)) is None
    twice = RefundCompletion(refund_id="re_1", new=RefundStatus.SUCCEEDED)
    first, second = await store.complete_refunds([twice, twice])
    assert first is not None and second is None
    after = (await store.get_payments([paid.id]))[paid.id]
    assert (after.status, after.amount_refunded, after.sequence) == (
        P.PARTIALLY_REFUNDED, 400, paid.sequence + 1)
    assert await store.refundable(paid.id) == 600


async def test_full_refund_in_one_batch(store: Store) -> None:
    paid = await succeeded(store, pay(1))
    for n in (1, 2):
        assert await store.reserve_refund(Refund(id=f"re_{n}", payment_id=paid.id,
                                                 amount=500)) is None
    results = await store.complete_refunds([
        RefundCompletion(refund_id=f"re_{n}", new=RefundStatus.SUCCEEDED) for n in (1, 2)])
    assert all(r is not None for r in results)
    after = (await store.get_payments([paid.id]))[paid.id]
    assert (after.status, after.amount_refunded, after.sequence) == (P.REFUNDED, 1000, 3)
    assert await store.refundable(paid.id) == 0


# --- events and the outbox -------------------------------------------------------------------


async def test_add_events_is_idempotent(store: Store) -> None:
    e1 = evt(1)
    await store.add_events([e1, evt(2)])
    await store.add_events([dataclasses.replace(e1, data={"other": True}), e1])
    assert await store.get_events([e1.id]) == {e1.id: e1}
    assert [e.id for e in await store.list_events(limit=10)] == ["evt_0002", "evt_0001"]
    await store.add_events([])


async def test_list_events_filters_and_pages(store: Store) -> None:
    events = [evt(n, type="refund.success" if n % 2 else "payment.success") for n in range(6)]
    await store.add_events(events)

    async def page(**kw: Any) -> list[int]:
        return [int(e.id[4:]) for e in await store.list_events(**kw)]

    assert await page(limit=3) == [5, 4, 3]
    assert await page(limit=3, starting_after="evt_0003") == [2, 1, 0]
    assert await page(limit=3, starting_after="evt_nope") == []
    assert await page(limit=10, type="refund.success") == [5, 3, 1]
    assert await page(limit=1, type="refund.success", starting_after="evt_0005") == [3]
    assert await page(limit=10, created_gte=at(3)) == [5, 4, 3]
    assert await page(limit=10, created_gte=at(2), type="payment.success") == [4, 2]


async def test_outbox(store: Store) -> None:
    await store.add_events([evt(n) for n in range(4)])
    assert await store.unqueued_events(PAST, 10) == []  # recorded now, not before 2000
    assert [e.id for e in await store.unqueued_events(FUTURE, 10)] == [
        "evt_0000", "evt_0001", "evt_0002", "evt_0003"]  # oldest first
    assert [e.id for e in await store.unqueued_events(FUTURE, 2)] == ["evt_0000", "evt_0001"]
    await store.mark_enqueued(["evt_0000", "evt_0002", "evt_nope"])
    await store.mark_enqueued([])
    assert [e.id for e in await store.unqueued_events(FUTURE, 10)] == ["evt_0001", "evt_0003"]
    await store.add_events([evt(0)])  # known: stays enqueued
    assert [e.id for e in await store.unqueued_events(FUTURE, 10)] == ["evt_0001", "evt_0003"]


# --- endpoints and attempts ------------------------------------------------------------------


def endpoint(n: int, **changes: Any) -> WebhookEndpoint:
    fields: dict[str, Any] = {
        "id": f"we_{n}", "url": f"https://example.com/hooks/{n}",
        "secrets": (EndpointSecret(secret=f"whsec_current{n}"),
                    EndpointSecret(secret=f"whsec_old{n}", expires_at=at(3600))),
        "enabled_events": ("payment.success", "refund.failed"), "description": f"shop {n}",
        "created_at": at(n)}
    fields.update(changes)
    return WebhookEndpoint(**fields)


async def test_endpoints(store: Store) -> None:
    one, two, three = endpoint(1), endpoint(2, source="config", secrets=()), endpoint(3)
    for e in (one, two, three):
        await store.put_endpoint(e)
    assert await store.list_endpoints() == [one, two, three]
    assert await store.get_endpoints(["we_3", "we_9", "we_1"]) == {"we_3": three, "we_1": one}
    rotated = dataclasses.replace(
        one, secrets=(EndpointSecret(secret="whsec_new"),
                      EndpointSecret(secret="whsec_current1", expires_at=at(7200))),
        disabled=True, disabled_reason="gone", updated_at=at(99), failing_since=at(50),
        enabled_events=("*",))
    await store.put_endpoint(rotated)
    assert await store.list_endpoints() == [rotated, two, three]  # replaced in place
    assert (await store.get_endpoints(["we_1"]))["we_1"].active_secrets(BASE) == [
        "whsec_new", "whsec_current1"]
    assert await store.delete_endpoint("we_2") is True
    assert await store.delete_endpoint("we_2") is False
    assert await store.list_endpoints() == [rotated, three]


async def test_attempts(store: Store) -> None:
    await store.add_events([evt(1), evt(2)])
    attempts = [attempt(1, "evt_0001", seconds=10), attempt(2, "evt_0002", seconds=20),
                attempt(3, "evt_0001", seconds=30, outcome="succeeded"),
                attempt(4, "evt_0002", endpoint="we_2", seconds=40),
                attempt(5, "evt_gone", seconds=50)]  # its event is unknown: dropped
    await store.add_attempts(attempts)
    await store.add_attempts([])
    assert await store.list_attempts("evt_0001") == [attempts[0], attempts[2]]
    assert await store.list_attempts("evt_gone") == []
    assert await store.attempts_since("we_1", at(20)) == [attempts[1], attempts[2]]
    assert await store.attempts_since("we_1", at(0)) == attempts[:3]
    assert await store.attempts_since("we_2", at(41)) == []
    assert (await store.list_attempts("evt_0002"))[0].to_dict() == attempts[1].to_dict()


async def test_prune(store: Store) -> None:
    paid = await succeeded(store, pay(1))
    await store.add_events([evt(n, seconds=n * 100) for n in range(4)])  # at 0, 100, 200, 300
    await store.mark_enqueued(["evt_0000", "evt_0001", "evt_0003"])  # evt_0002 is not
    await store.add_attempts([attempt(1, "evt_0000", seconds=250),  # goes with its event
                              attempt(2, "evt_0002", seconds=50),  # old
                              attempt(3, "evt_0002", seconds=210),
                              attempt(4, "evt_0003", seconds=310)])
    assert await store.prune(at(200)) == 4  # evt_0000, evt_0001, att_0001, att_0002
    assert [e.id for e in await store.list_events(limit=10)] == ["evt_0003", "evt_0002"]
    assert [a.id for a in await store.list_attempts("evt_0002")] == ["att_0003"]
    assert await store.list_attempts("evt_0000") == []
    assert await store.get_payments([paid.id]) == {paid.id: paid}
    assert await store.prune(at(200)) == 0


# --- time formats ----------------------------------------------------------------------------


async def test_every_time_comes_back_in_the_one_format(store: Store) -> None:
    a = Payment(id="pay_t", method="upi", amount=100, currency="INR")  # created now
    await store.create_payments([a])
    changed = await store.transition([go(a.id, (P.PENDING,), P.SUCCEEDED, emit=True)])
    assert await store.reserve_refund(Refund(id="re_t", payment_id=a.id, amount=1)) is None
    [done] = await store.complete_refunds([RefundCompletion(refund_id="re_t",
                                                            new=RefundStatus.SUCCEEDED)])
    await store.put_endpoint(WebhookEndpoint(id="we_t", url="https://example.com/"))
    times: list[str] = []
    stored = (await store.get_payments([a.id]))[a.id]
    times += [stored.created_at, stored.updated_at]
    assert changed[0] is not None and changed[0].event is not None and done is not None
    times += [changed[0].payment.updated_at, changed[0].event.timestamp]
    for refund in await store.list_refunds(a.id):
        times += [refund.created_at, refund.updated_at]
    times += [e.timestamp for e in await store.list_events(limit=10)]
    times += [e.data["updated_at"] for e in await store.list_events(limit=10)]
    for ep in await store.list_endpoints():
        times += [ep.created_at, ep.updated_at]
    assert len(times) == 12 and all(TIME.match(t) for t in times), times


# --- both backends, one clock: the same answers ----------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = at(1000)

    def __call__(self) -> str:
        return self.now


Step = Callable[[Store, Clock], Awaitable[list[Any]]]


async def scenario(store: Store, clock: Clock) -> list[Any]:
    """Every method once or more; the answers as plain data."""
    out: list[Any] = []

    def plain(value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, Changed):
            return {"payment": value.payment.to_dict(), "event": plain(value.event)}
        if hasattr(value, "to_dict"):
            return value.to_dict()
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return plain(dataclasses.asdict(value))
        return value

    async def note(call: Awaitable[Any]) -> None:
        out.append(plain(await call))

    payments = [pay(n) for n in range(6)]
    await note(store.create_payments(payments[:4]))
    await note(store.create_payments([dataclasses.replace(payments[0], amount=1), *payments[4:]]))
    clock.now = at(1001)
    await note(store.transition([go(p.id, (P.PENDING,), P.PROCESSING) for p in payments]))
    clock.now = at(1002)
    await note(store.transition([go(payments[0].id, (P.PROCESSING,), P.SUCCEEDED, emit=True),
                                 go(payments[1].id, (P.PROCESSING,), P.FAILED, emit=True,
                                    failure_code="x", failure_message="y"),
                                 go(payments[2].id, (P.PENDING,), P.CANCELED, emit=True),
                                 go(payments[3].id, (P.PROCESSING,), P.SUCCEEDED)]))
    await note(store.get_payments([p.id for p in payments]))
    await note(store.list_payments(limit=3, status=P.PROCESSING))
    await note(store.list_payments(limit=10, created_gte=at(2), starting_after=payments[4].id))
    await note(store.stale_pending(at(2000), 10))
    for n, (payment_id, amount) in enumerate(((payments[0].id, 400), (payments[0].id, 700),
                                              (payments[3].id, 1000), (payments[1].id, 1))):
        await note(store.reserve_refund(Refund(id=f"re_{n}", payment_id=payment_id,
                                               amount=amount, created_at=at(1003 + n))))
    await note(store.refundable(payments[0].id))
    clock.now = at(1010)
    await note(store.complete_refunds([RefundCompletion(refund_id="re_0",
                                                        new=RefundStatus.SUCCEEDED),
                                       RefundCompletion(refund_id="re_2",
                                                        new=RefundStatus.FAILED)]))
    await note(store.get_refunds(["re_0", "re_1", "re_2", "re_3"]))
    await note(store.list_refunds(payments[0].id))
    await note(store.list_events(limit=10))
    await note(store.list_events(limit=10, type="payment.success"))
    await note(store.unqueued_events(FUTURE, 10))
    events = await store.list_events(limit=10)
    await note(store.mark_enqueued([e.id for e in events[:2]]))
    await note(store.unqueued_events(FUTURE, 10))
    await store.put_endpoint(endpoint(1))
    await note(store.list_endpoints())
    await note(store.add_attempts([attempt(1, events[0].id, seconds=1011),
                                   attempt(2, events[1].id, seconds=1020)]))
    await note(store.list_attempts(events[0].id))
    await note(store.attempts_since("we_1", at(1000)))
    await note(store.prune(at(1015)))
    await note(store.list_events(limit=10))
    await note(store.delete_endpoint("we_1"))
    await note(store.delete_payments([payments[5].id]))
    await note(store.list_payments(limit=10))
    return out


@pytest.mark.postgres
async def test_both_backends_answer_alike(postgres_url: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    clocks = Clock(), Clock()
    monkeypatch.setattr("payflow.store.memory.now_iso", clocks[0])
    monkeypatch.setattr("payflow.store.postgres.now_iso", clocks[1])
    answers = []
    for url, clock in zip(("memory://", postgres_url), clocks, strict=True):
        store = await open_store(url, secret_key=KEY)
        try:
            answers.append(await scenario(store, clock))
        finally:
            await store.close()
    memory, postgres = answers
    assert len(memory) == len(postgres) == 30
    for n, (mine, theirs) in enumerate(zip(memory, postgres, strict=True)):
        assert mine == theirs, f"answer {n} differs"


async def test_a_setting_is_stored_once_and_the_first_value_wins(store: Store) -> None:
    assert await store.setting("card_fingerprint_key", "first") == "first"
    assert await store.setting("card_fingerprint_key", "second") == "first"
    assert await store.setting("other", "x") == "x"


async def test_an_idempotency_key_binds_one_payment(store: Store) -> None:
    first = Payment(id="pay_k1", method="upi", amount=100, currency="INR")
    bound = await store.create_payment_once(first, "scope:k", "fp1")
    assert (bound.payment, bound.fingerprint, bound.confirmed) == (first, "fp1", False)
    other = Payment(id="pay_k2", method="upi", amount=999, currency="INR")
    again = await store.create_payment_once(other, "scope:k", "fp2")
    assert (again.payment.id, again.payment.amount, again.fingerprint) == ("pay_k1", 100, "fp1")
    assert again.bound_at == bound.bound_at and not again.confirmed
    assert "pay_k2" not in await store.get_payments(["pay_k2"])  # nothing inserted
    await store.confirm_key("scope:k")
    assert (await store.create_payment_once(other, "scope:k", "fp2")).confirmed
    await store.delete_payments(["pay_k1"])  # its binding goes with it: the key is free
    freed = await store.create_payment_once(other, "scope:k", "fp2")
    assert (freed.payment.id, freed.fingerprint) == ("pay_k2", "fp2")


async def test_stale_refunds_are_the_old_pending_ones(store: Store) -> None:
    old = "2026-01-01T00:00:00.000Z"
    await store.create_payments([Payment(id="pay_r", method="upi", amount=100, currency="INR",
                                         status=PaymentStatus.SUCCEEDED)])
    for refund_id in ("re_a", "re_b"):
        assert await store.reserve_refund(Refund(id=refund_id, payment_id="pay_r", amount=10,
                                                 created_at=old)) is None
    assert await store.reserve_refund(Refund(id="re_new", payment_id="pay_r",
                                             amount=10)) is None
    await store.complete_refunds([RefundCompletion(refund_id="re_b",
                                                   new=RefundStatus.SUCCEEDED)])
    stale = await store.stale_refunds("2026-06-01T00:00:00.000Z", 10)
    assert [r.id for r in stale] == ["re_a"]
