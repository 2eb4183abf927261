"""The payments service (payflow.payments.intake) directly over a memory store: what each
refusal says, what a failed push leaves behind (nothing), refund amounts at their bounds, the
in-flight window of an idempotency key to the second. Written against the mutants the API
tests let through (scripts/mutation intake)."""

from __future__ import annotations

from datetime import datetime, timedelta, tzinfo

import pytest

from payflow.errors import (
    Conflict,
    KeyInFlight,
    KeyReused,
    NotFound,
    QueueUnavailable,
    ValidationError,
)
from payflow.models import Payment, PaymentStatus, Refund, parse_iso
from payflow.payments import intake
from payflow.payments.intake import Payments, push_or_refuse
from payflow.payments.validation import PaymentRequest
from payflow.queue.producer import NotSent
from payflow.store.memory import MemoryStore

REQ = PaymentRequest(amount=1000, currency="KWD", method="upi", method_details={},
                     metadata={})


class Pushes:
    """Records pushed jobs; raises ``fail`` when set."""

    def __init__(self) -> None:
        self.raws: list[bytes] = []
        self.fail: BaseException | None = None

    async def __call__(self, raw: bytes) -> None:
        if self.fail is not None:
            raise self.fail
        self.raws.append(raw)


async def service(*, webhook: bool = True) -> tuple[Payments, MemoryStore, Pushes]:
    store, pushes = MemoryStore(), Pushes()
    await store.create_payments([
        Payment(id="pay_ok", method="upi", amount=1000, currency="KWD",
                status=PaymentStatus.SUCCEEDED),
        Payment(id="pay_new", method="upi", amount=1000, currency="KWD"),
        Payment(id="pay_legacy", method="upi", status=PaymentStatus.SUCCEEDED),
    ])
    return (Payments(store, push_payment=pushes, push_webhook=pushes if webhook else None),
            store, pushes)


async def test_push_or_refuse_pushes_the_job_or_says_why() -> None:
    pushes = Pushes()
    await push_or_refuse(pushes, b"job", "unused")
    assert pushes.raws == [b"job"]
    pushes.fail = NotSent("down")
    with pytest.raises(QueueUnavailable) as info:
        await push_or_refuse(pushes, b"job", "Nothing was queued.")
    assert info.value.detail == "Nothing was queued."


async def test_a_payment_keeps_its_currency_and_a_refused_push_keeps_nothing() -> None:
    payments, store, pushes = await service()
    payment, replayed = await payments.create(REQ)
    assert (payment.currency, payment.amount, replayed) == ("KWD", 1000, False)
    pushes.fail = NotSent("down")
    with pytest.raises(QueueUnavailable) as info:
        await payments.create(REQ)
    assert info.value.detail == ("The payment could not be queued and was not accepted; "
                                 "retry shortly.")
    assert len(await store.list_payments(limit=10)) == 4  # the 3 seeded and the first


async def test_idempotency_refusals_say_why() -> None:
    payments, _, pushes = await service()
    await payments.create(REQ, idempotency=("scope:k", "fp-1"))
    with pytest.raises(KeyReused, match=r"^the Idempotency-Key was used for another request$"):
        await payments.create(REQ, idempotency=("scope:k", "fp-2"))
    pushes.fail = RuntimeError("crashed before answering")
    with pytest.raises(RuntimeError):
        await payments.create(REQ, idempotency=("scope:k2", "fp-1"))
    pushes.fail = None  # the key was forgotten with its payment: a retry runs again
    assert (await payments.create(REQ, idempotency=("scope:k2", "fp-1")))[1] is False


async def test_an_unconfirmed_key_is_in_flight_for_just_under_30_seconds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    payments, store, _ = await service()
    first = Payment(id="pay_first", method="upi", amount=1000, currency="KWD")
    bound = await store.create_payment_once(first, "scope:k", "fp")  # never confirmed
    bound_at = parse_iso(bound.bound_at)

    def at(seconds: float) -> type[datetime]:
        class Clock(datetime):
            @classmethod
            def now(cls, tz: tzinfo | None = None) -> Clock:
                moment = bound_at + timedelta(seconds=seconds)
                return cls.fromtimestamp(moment.timestamp(), tz)

        return Clock

    monkeypatch.setattr(intake, "datetime", at(29.999))
    with pytest.raises(KeyInFlight, match=r"^the first request with this key is not answered"
                                          r" yet$"):
        await payments.create(REQ, idempotency=("scope:k", "fp"))
    monkeypatch.setattr(intake, "datetime", at(30.0))
    stored, replayed = await payments.create(REQ, idempotency=("scope:k", "fp"))
    assert (stored.id, replayed) == ("pay_first", True)


async def test_get_page_and_not_found() -> None:
    payments, _, _ = await service()
    with pytest.raises(NotFound) as info:
        await payments.get("pay_nope")
    assert (info.value.kind, info.value.resource_id) == ("payment", "pay_nope")
    with pytest.raises(NotFound) as refund:
        await payments.get_refund("re_nope")
    assert (refund.value.kind, refund.value.resource_id) == ("refund", "re_nope")
    assert len(await payments.page(limit=2, starting_after=None, status=None,
                                   created_gte=None, created_lte=None)) == 2
    assert await payments.page(limit=10, starting_after=None, status=None, created_gte=None,
                               created_lte="2000-01-01T00:00:00.000Z") == []


async def test_cancel_without_a_webhook_queue_and_its_refusal() -> None:
    payments, _, _ = await service(webhook=False)
    assert (await payments.cancel("pay_new")).status is PaymentStatus.CANCELED
    with pytest.raises(Conflict) as info:
        await payments.cancel("pay_ok")
    assert (info.value.detail, info.value.code, info.value.status) == (
        "Only a pending payment can be canceled; this one is succeeded.",
        "payment_not_cancelable", "succeeded")


async def test_refund_refusals_say_why() -> None:
    payments, _, _ = await service()
    with pytest.raises(Conflict) as info:
        await payments.refund("pay_new", None)
    assert (info.value.detail, info.value.code, info.value.status) == (
        "Only a succeeded payment can be refunded; this one is pending.",
        "payment_not_refundable", "pending")
    with pytest.raises(Conflict) as legacy:
        await payments.refund("pay_legacy", None)
    assert legacy.value.detail == ("This payment has no amount (it was created from a "
                                   "legacy job).")
    with pytest.raises(ValidationError) as zero:
        await payments.refund("pay_ok", 0)
    assert (zero.value.detail, zero.value.param, zero.value.code) == (
        "amount must be a positive integer in minor units (nothing is left to refund).",
        "amount", "invalid_amount")
    with pytest.raises(ValidationError) as big:
        await payments.refund("pay_ok", 1001)
    assert (big.value.detail, big.value.param, big.value.code) == (
        "amount 1001 exceeds what is left to refund (1000).", "amount", "amount_too_large")


async def test_a_refund_of_one_minor_unit_in_the_payments_currency() -> None:
    payments, _, pushes = await service()
    refund = await payments.refund("pay_ok", 1)
    assert (refund.amount, refund.currency, refund.payment_id) == (1, "KWD", "pay_ok")
    assert len(pushes.raws) == 1


class RacingStore(MemoryStore):
    """Another request reserves everything between the check and the reservation."""

    async def reserve_refund(self, refund: Refund) -> str | None:
        return "amount_too_large"


async def test_a_lost_reservation_race_says_so() -> None:
    store = RacingStore()
    await store.create_payments([Payment(id="pay_ok", method="upi", amount=1000,
                                         currency="KWD", status=PaymentStatus.SUCCEEDED)])
    payments = Payments(store, push_payment=Pushes(), push_webhook=None)
    with pytest.raises(ValidationError) as info:
        await payments.refund("pay_ok", 10)
    assert (info.value.detail, info.value.param, info.value.code) == (
        "The refund could not be reserved (amount_too_large); retry.", "amount",
        "amount_too_large")


async def test_a_refused_refund_push_keeps_nothing_reserved() -> None:
    payments, store, pushes = await service()
    pushes.fail = NotSent("down")
    with pytest.raises(QueueUnavailable) as info:
        await payments.refund("pay_ok", 10)
    assert info.value.detail == ("The refund could not be queued and was not accepted; "
                                 "retry shortly.")
    assert await store.list_refunds("pay_ok") == []
    assert await store.refundable("pay_ok") == 1000


async def test_a_refund_whose_push_raises_anything_is_not_kept() -> None:
    payments, store, pushes = await service()
    pushes.fail = RuntimeError("cancelled mid-push")
    with pytest.raises(RuntimeError):
        await payments.refund("pay_ok", 10)
    assert await store.list_refunds("pay_ok") == []
    assert await store.refundable("pay_ok") == 1000


async def test_the_job_carries_the_trace_only_when_tracing_is_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from payflow import tracing
    from payflow.jobs import parse_job

    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    monkeypatch.setattr(tracing, "current_traceparent", lambda: parent)
    payments, _, pushes = await service()
    monkeypatch.setattr(tracing, "ON", False)
    await payments.create(REQ)
    monkeypatch.setattr(tracing, "ON", True)
    await payments.create(REQ)
    off, on = (parse_job(raw) for raw in pushes.raws)
    assert getattr(off, "traceparent", None) is None
    assert getattr(on, "traceparent", None) == parent
