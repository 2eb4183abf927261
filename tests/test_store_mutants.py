"""The memory store (payflow.store.memory) where the contract suite does not look: eviction of
finished payments with everything that hangs off them, idempotency keys after deletes and
prunes, the exact boundaries of ``before``, a refund completed twice. Written against the
mutants tests/test_store_contract.py let through (scripts/mutation memory)."""

from __future__ import annotations

import pytest

from payflow.models import (
    DeliveryAttempt,
    Event,
    Payment,
    PaymentStatus,
    Refund,
    RefundStatus,
    now_iso,
    parse_iso,
)
from payflow.store import memory
from payflow.store.base import RefundCompletion, Transition
from payflow.store.memory import MemoryStore

P = PaymentStatus
T0 = "2026-03-01T12:00:00.000Z"
T1 = "2026-03-01T12:00:01.000Z"
PAST = "2000-01-01T00:00:00.000Z"
FUTURE = "2999-01-01T00:00:00.000Z"


def pay(pid: str, status: PaymentStatus = P.PENDING, amount: int | None = 1000) -> Payment:
    return Payment(id=pid, method="upi", amount=amount, currency="INR", status=status)


def go(pid: str, new: PaymentStatus, *frm: PaymentStatus, emit: bool = True) -> Transition:
    return Transition(payment_id=pid, expected=frm or (P.PENDING,), new=new, emit=emit)


def attempt(aid: str, event_id: str, at: str = T0, endpoint: str = "we_1") -> DeliveryAttempt:
    return DeliveryAttempt(id=aid, event_id=event_id, endpoint_id=endpoint, attempt=1,
                           outcome="retrying", at=at)


def test_the_default_bound() -> None:
    assert MemoryStore().max_payments == 100_000


async def test_eviction_takes_the_earliest_finished_and_everything_of_it() -> None:
    store = MemoryStore(max_payments=2)
    await store.create_payments([pay("a"), pay("b"), pay("c"), pay("pending")])
    await store.create_payment_once(pay("keyed"), "key-a", "fp")  # pending, bound to a key
    [done_a] = await store.transition([go("a", P.SUCCEEDED)])
    assert done_a is not None and done_a.event is not None
    assert await store.reserve_refund(Refund(id="re_a", payment_id="a", amount=10)) is None
    [refund_done] = await store.complete_refunds([
        RefundCompletion(refund_id="re_a", new=RefundStatus.FAILED)])
    assert refund_done is not None
    extra = Event(id="evt_extra_a", type="payment.note", timestamp=T0,
                  data={"id": "a", "object": "payment"})
    refund_extra = Event(id="evt_refund_a", type="refund.note", timestamp=T0,
                         data={"id": "re_x", "object": "refund", "payment_id": "a"})
    await store.add_events([extra, refund_extra])
    events_of_a = [done_a.event.id, refund_done.event.id, extra.id, refund_extra.id]
    await store.add_attempts([attempt("att_a", done_a.event.id)])
    await store.mark_enqueued(events_of_a[:1])

    await store.transition([go("b", P.FAILED)])
    assert len(await store.get_payments(["a", "b"])) == 2  # two finished: within the bound
    await store.transition([go("c", P.SUCCEEDED)])  # a third: the earliest finished goes

    assert set(await store.get_payments(["a", "b", "c", "pending", "keyed"])) == {
        "b", "c", "pending", "keyed"}
    assert await store.get_refunds(["re_a"]) == {}
    assert await store.list_refunds("a") == []
    assert await store.get_events(events_of_a) == {}
    assert not {e.id for e in await store.unqueued_events(FUTURE, 100)} & set(events_of_a)
    assert await store.list_attempts(done_a.event.id) == []
    assert await store.attempts_since("we_1", PAST) == []


async def test_only_a_first_terminal_state_counts_as_finishing() -> None:
    store = MemoryStore(max_payments=1)
    await store.create_payments([pay("a"), pay("b"), pay("done", P.SUCCEEDED)])
    await store.transition([go("a", P.PROCESSING, emit=False)])  # not terminal: not counted
    assert set(await store.get_payments(["a", "b", "done"])) == {"a", "b", "done"}
    await store.create_payments([pay("done", P.SUCCEEDED)])  # known: not finished again
    await store.transition([go("done", P.REFUNDED, P.SUCCEEDED)])  # terminal to terminal
    assert set(await store.get_payments(["a", "b", "done"])) == {"a", "b", "done"}
    await store.transition([go("b", P.FAILED)])
    assert set(await store.get_payments(["a", "b", "done"])) == {"a", "b"}  # "done" first


async def test_a_binding_answers_with_the_current_payment_and_its_time() -> None:
    store = MemoryStore()
    before = parse_iso(now_iso())
    first = await store.create_payment_once(pay("p1"), "k", "fp")
    assert before <= parse_iso(first.bound_at) <= parse_iso(now_iso())
    await store.transition([go("p1", P.SUCCEEDED)])
    again = await store.create_payment_once(pay("p2"), "k", "fp")
    assert again.payment.id == "p1" and again.payment.status is P.SUCCEEDED
    assert again.bound_at == first.bound_at


async def test_deleting_a_payment_frees_its_key_and_leaves_nothing_to_prune() -> None:
    store = MemoryStore()
    await store.create_payment_once(pay("p1"), "k", "fp")
    await store.delete_payments(["p1"])
    assert await store.prune(FUTURE) == 0
    assert (await store.create_payment_once(pay("p2"), "k", "fp")).payment.id == "p2"


async def test_evicting_a_payment_frees_its_key() -> None:
    store = MemoryStore(max_payments=1)
    await store.create_payment_once(pay("p1"), "k", "fp")
    await store.transition([go("p1", P.SUCCEEDED)])
    await store.create_payments([pay("p2", P.FAILED)])  # evicts p1
    assert await store.prune(FUTURE) == 0  # the key went with it
    assert (await store.create_payment_once(pay("p3"), "k", "fp")).payment.id == "p3"


async def test_a_pruned_key_bound_again_survives_deleting_its_first_payment() -> None:
    store = MemoryStore()
    await store.create_payment_once(pay("p1"), "k", "fp")
    assert await store.prune(FUTURE) == 1  # the key (p1 stays)
    await store.create_payment_once(pay("p2"), "k", "fp")
    await store.delete_payments(["p1"])
    assert (await store.create_payment_once(pay("p3"), "k", "fp")).payment.id == "p2"


async def test_a_transition_stamps_its_time_and_failure() -> None:
    store = MemoryStore()
    await store.create_payments([pay("p")])
    before = parse_iso(now_iso())
    [changed] = await store.transition([Transition(
        payment_id="p", expected=(P.PENDING,), new=P.FAILED, emit=True,
        failure_code="card_declined", failure_message="Declined")])
    assert changed is not None and changed.event is not None
    assert parse_iso(changed.payment.updated_at) >= before
    assert changed.event.timestamp == changed.payment.updated_at
    [event] = (await store.get_events([changed.event.id])).values()
    assert event.data["failure_code"] == "card_declined"


async def test_a_refund_completed_twice_is_counted_once() -> None:
    store = MemoryStore()
    await store.create_payments([pay("p", P.SUCCEEDED)])
    assert await store.reserve_refund(Refund(id="re_1", payment_id="p", amount=300)) is None
    done = RefundCompletion(refund_id="re_1", new=RefundStatus.SUCCEEDED)
    [first] = await store.complete_refunds([done])
    assert await store.complete_refunds([done]) == [None]
    [payment] = (await store.get_payments(["p"])).values()
    assert payment.amount_refunded == 300 and payment.status is P.PARTIALLY_REFUNDED
    assert first is not None and payment.updated_at == first.refund.updated_at
    assert await store.refundable("p") == 700


async def test_a_failed_refund_keeps_its_reason_and_time() -> None:
    store = MemoryStore()
    await store.create_payments([pay("p", P.SUCCEEDED)])
    await store.reserve_refund(Refund(id="re_1", payment_id="p", amount=300))
    before = parse_iso(now_iso())
    [done] = await store.complete_refunds([RefundCompletion(
        refund_id="re_1", new=RefundStatus.FAILED, failure_code="bank_down",
        failure_message="Bank down")])
    assert done is not None
    assert (done.refund.failure_code, done.refund.failure_message) == ("bank_down",
                                                                       "Bank down")
    assert parse_iso(done.refund.updated_at) >= before


async def test_stale_refunds_are_strictly_older_and_oldest_first() -> None:
    store = MemoryStore()
    await store.create_payments([pay("p", P.SUCCEEDED)])
    for rid, at in (("re_new", T1), ("re_old", T0), ("re_edge", "2026-03-01T12:00:02.000Z")):
        await store.reserve_refund(Refund(id=rid, payment_id="p", amount=10, created_at=at))
    stale = await store.stale_refunds("2026-03-01T12:00:02.000Z", 10)
    assert [r.id for r in stale] == ["re_old", "re_new"]


async def test_list_events_skips_other_types_and_keeps_looking() -> None:
    store = MemoryStore()
    await store.add_events([
        Event(id=f"evt_{i}", type=kind, timestamp=T0, data={"id": f"pay_{i}"})
        for i, kind in enumerate(["a.x", "b.y", "a.x", "b.y"])])
    assert [e.id for e in await store.list_events(limit=10, type="a.x")] == ["evt_2", "evt_0"]
    assert [e.id for e in await store.list_events(limit=10, created_gte=T1)] == []


async def test_outbox_and_prune_boundaries_are_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "now_iso", lambda: T0)
    store = MemoryStore()
    await store.create_payments([pay("p")])
    await store.create_payment_once(pay("keyed"), "k", "fp")  # bound at T0
    await store.transition([go("p", P.SUCCEEDED)])  # its event is kept as the payment, at T0
    event = Event(id="evt_1", type="x", timestamp=T0, data={"id": "p"})
    await store.add_events([event])
    assert [e.id for e in await store.unqueued_events(T0, 10)] == []  # recorded at T0
    assert len(await store.unqueued_events(T1, 10)) == 2
    await store.mark_enqueued([e.id for e in await store.unqueued_events(T1, 10)])
    await store.add_attempts([attempt("att_1", "evt_1", at=T0)])
    assert await store.prune(T0) == 0  # nothing is older than T0
    assert len(await store.list_attempts("evt_1")) == 1
    assert len(await store.attempts_since("we_1", T0)) == 1
    assert await store.prune(T1) == 4  # both events, the attempt, the key
    assert await store.list_attempts("evt_1") == []


async def test_attempts_of_a_gone_event_are_skipped_not_the_rest() -> None:
    store = MemoryStore()
    await store.add_events([Event(id="evt_1", type="x", timestamp=T0, data={"id": "p"})])
    await store.add_attempts([attempt("att_0", "evt_gone"), attempt("att_1", "evt_1")])
    assert [a.id for a in await store.list_attempts("evt_1")] == ["att_1"]
    assert await store.attempts_since("we_unknown", PAST) == []


async def test_evicting_after_a_prune_drops_what_is_left() -> None:
    store = MemoryStore(max_payments=1)
    await store.create_payments([pay("a")])
    [done] = await store.transition([go("a", P.SUCCEEDED)])
    assert done is not None and done.event is not None
    late = Event(id="evt_late", type="x", timestamp=FUTURE, data={"id": "a"})
    await store.add_events([late])
    await store.mark_enqueued([done.event.id, late.id])
    assert await store.prune(T1.replace("2026", "2990")) == 1  # the transition's event
    await store.create_payments([pay("b", P.FAILED)])  # evicts a: its pruned event is gone
    assert await store.get_events([late.id]) == {}


async def test_a_deleted_finished_payment_no_longer_counts_toward_the_bound() -> None:
    store = MemoryStore(max_payments=3)
    await store.create_payments([pay(pid, P.SUCCEEDED) for pid in ("a", "b", "c")])
    await store.delete_payments(["b"])
    await store.create_payments([pay("d", P.SUCCEEDED)])  # a, c, d: within the bound
    assert set(await store.get_payments(["a", "b", "c", "d"])) == {"a", "c", "d"}


async def test_a_payment_without_events_is_evicted_cleanly() -> None:
    store = MemoryStore(max_payments=1)
    await store.create_payments([pay("x", P.SUCCEEDED)])
    await store.create_payments([pay("y", P.FAILED)])
    assert set(await store.get_payments(["x", "y"])) == {"y"}


async def test_completing_a_refund_stamps_the_refund_and_its_payment() -> None:
    store = MemoryStore()
    await store.create_payments([Payment(id="p", method="upi", amount=1000, currency="INR",
                                         status=P.SUCCEEDED, created_at=T0, updated_at=T0)])
    await store.reserve_refund(Refund(id="re_1", payment_id="p", amount=100, created_at=T0))
    [done] = await store.complete_refunds([
        RefundCompletion(refund_id="re_1", new=RefundStatus.SUCCEEDED)])
    assert done is not None and done.refund.updated_at > T0
    [payment] = (await store.get_payments(["p"])).values()
    assert payment.updated_at == done.refund.updated_at


async def test_list_events_created_gte_looks_past_an_older_event() -> None:
    store = MemoryStore()
    await store.add_events([Event(id="evt_new", type="x", timestamp=T1, data={"id": "p1"}),
                            Event(id="evt_old", type="x", timestamp=T0, data={"id": "p2"})])
    assert [e.id for e in await store.list_events(limit=10, created_gte=T1)] == ["evt_new"]
