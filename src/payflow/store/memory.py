"""``memory://``: the seed's fake database. Fast, for one daemon only, gone on restart, bounded.

It keeps at most ``max_payments`` finished payments (with their refunds, events and delivery
attempts), evicting the one that finished first, so that a long run cannot exhaust memory.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import TypeVar

from payflow.models import (
    DeliveryAttempt,
    Event,
    Payment,
    PaymentStatus,
    Refund,
    RefundStatus,
    WebhookEndpoint,
    now_iso,
    parse_iso,
)
from payflow.store.base import (
    REFUNDABLE,
    Changed,
    KeyBinding,
    RefundCompletion,
    RefundDone,
    Transition,
)

T = TypeVar("T")


class MemoryStore:
    """Dicts. No method awaits, so on one event loop every call is atomic."""

    kind = "memory"
    shared = False

    def __init__(self, *, max_payments: int = 100_000) -> None:
        self.max_payments = max_payments
        self._payments: dict[str, Payment] = {}  # insertion order: oldest first
        self._finished: OrderedDict[str, None] = OrderedDict()  # terminal, by finishing order
        self._refunds: dict[str, Refund] = {}
        self._refunds_of: dict[str, list[str]] = {}  # payment id -> refund ids
        # insertion order: oldest first. An event recorded with a state change is kept as the
        # payment (or refund) it is the event of, and made again when read: a third of the
        # memory a stored payment takes, and the store is what bounds a daemon's memory.
        self._events: dict[str, Event | Payment | Refund] = {}
        self._events_of: dict[str, list[str]] = {}  # payment id -> event ids
        self._unqueued: dict[str, str] = {}  # event id -> when recorded (outbox)
        self._endpoints: dict[str, WebhookEndpoint] = {}
        self._keys: dict[str, KeyBinding] = {}
        self._key_of: dict[str, str] = {}  # payment id -> its idempotency key
        self._settings: dict[str, str] = {}
        self._attempts: dict[str, list[DeliveryAttempt]] = {}  # by event id
        # endpoint id -> attempt id -> attempt, oldest first
        self._attempts_by_endpoint: dict[str, dict[str, DeliveryAttempt]] = {}

    # --- payments ------------------------------------------------------------------------

    async def create_payments(self, payments: Sequence[Payment]) -> list[Payment]:
        stored = []
        for payment in payments:
            known = self._payments.setdefault(payment.id, payment)
            if known is payment and payment.status.terminal:
                self._finish(payment.id)
            stored.append(known)
        return stored

    async def create_payment_once(self, payment: Payment, key: str,
                                  fingerprint: str) -> KeyBinding:
        bound = self._keys.get(key)
        if bound is not None and bound.payment.id in self._payments:
            return dataclasses.replace(bound, payment=self._payments[bound.payment.id])
        [stored] = await self.create_payments([payment])
        binding = KeyBinding(payment=stored, fingerprint=fingerprint, confirmed=False,
                             bound_at=now_iso())
        self._keys[key] = binding
        self._key_of[stored.id] = key
        return binding

    async def confirm_key(self, key: str) -> None:
        if (bound := self._keys.get(key)) is not None:
            self._keys[key] = dataclasses.replace(bound, confirmed=True)

    async def get_payments(self, ids: Sequence[str]) -> dict[str, Payment]:
        return {i: p for i in ids if (p := self._payments.get(i)) is not None}

    async def delete_payments(self, ids: Sequence[str]) -> None:
        for payment_id in ids:
            self._payments.pop(payment_id, None)
            self._finished.pop(payment_id, None)
            self._keys.pop(self._key_of.pop(payment_id, ""), None)

    async def transition(self, transitions: Sequence[Transition]) -> list[Changed | None]:
        return [self._transition(t) for t in transitions]

    def _transition(self, t: Transition) -> Changed | None:
        current = self._payments.get(t.payment_id)
        if current is None or current.status not in t.expected:
            return None
        updated = current.moved(t.new, now_iso(), t.failure_code, t.failure_message)
        self._payments[updated.id] = updated
        event = None
        if t.emit:
            event = Event.for_payment(updated)
            self._record(event.id, updated, updated.id)
        if t.new.terminal and not current.status.terminal:
            self._finish(updated.id)
        return Changed(payment=updated, event=event)

    async def list_payments(self, *, limit: int, starting_after: str | None = None,
                            status: PaymentStatus | None = None,
                            created_gte: str | None = None,
                            created_lte: str | None = None) -> list[Payment]:
        low = parse_iso(created_gte) if created_gte else None
        high = parse_iso(created_lte) if created_lte else None
        page: list[Payment] = []
        for payment in _before(self._payments, starting_after):
            if status is not None and payment.status is not status:
                continue
            if low or high:
                created = parse_iso(payment.created_at)
                if (low and created < low) or (high and created > high):
                    continue
            page.append(payment)
            if len(page) == limit:
                break
        return page

    async def stale_pending(self, before: str, limit: int) -> list[Payment]:
        moment = parse_iso(before)
        stale = [p for p in self._payments.values()
                 if p.status is PaymentStatus.PENDING and parse_iso(p.updated_at) < moment]
        return sorted(stale, key=lambda p: p.updated_at)[:limit]

    # --- refunds -------------------------------------------------------------------------

    async def reserve_refund(self, refund: Refund) -> str | None:
        payment = self._payments.get(refund.payment_id)
        if payment is None:
            return "payment_not_found"
        if payment.amount is None or payment.status not in REFUNDABLE:
            return "not_refundable"
        if refund.amount > self._refundable(payment):
            return "amount_too_large"
        self._refunds[refund.id] = refund
        self._refunds_of.setdefault(refund.payment_id, []).append(refund.id)
        return None

    def _refundable(self, payment: Payment) -> int:
        pending = sum(r.amount for r in self._refunds_for(payment.id)
                      if r.status is RefundStatus.PENDING)
        return (payment.amount or 0) - payment.amount_refunded - pending

    def _refunds_for(self, payment_id: str) -> list[Refund]:
        return [self._refunds[i] for i in self._refunds_of.get(payment_id, ())
                if i in self._refunds]

    async def refundable(self, payment_id: str) -> int:
        payment = self._payments.get(payment_id)
        return 0 if payment is None or payment.amount is None else self._refundable(payment)

    async def delete_refund(self, refund_id: str) -> None:
        refund = self._refunds.pop(refund_id, None)
        if refund is not None:
            self._refunds_of.get(refund.payment_id, []).remove(refund_id)

    async def get_refunds(self, ids: Sequence[str]) -> dict[str, Refund]:
        return {i: r for i in ids if (r := self._refunds.get(i)) is not None}

    async def list_refunds(self, payment_id: str) -> list[Refund]:
        return self._refunds_for(payment_id)

    async def stale_refunds(self, before: str, limit: int) -> list[Refund]:
        moment = parse_iso(before)
        stale = [r for r in self._refunds.values()
                 if r.status is RefundStatus.PENDING and parse_iso(r.updated_at) < moment]
        return sorted(stale, key=lambda r: r.updated_at)[:limit]

    async def complete_refunds(self, completions: Sequence[RefundCompletion]
                               ) -> list[RefundDone | None]:
        return [self._complete_refund(c) for c in completions]

    def _complete_refund(self, c: RefundCompletion) -> RefundDone | None:
        current = self._refunds.get(c.refund_id)
        if current is None or current.status is not RefundStatus.PENDING:
            return None
        done = dataclasses.replace(current, status=c.new, updated_at=now_iso(),
                                   failure_code=c.failure_code,
                                   failure_message=c.failure_message)
        self._refunds[done.id] = done
        payment = self._payments.get(done.payment_id)
        if c.new is RefundStatus.SUCCEEDED and payment is not None and payment.amount is not None:
            refunded = payment.amount_refunded + done.amount
            status = (PaymentStatus.REFUNDED if refunded >= payment.amount
                      else PaymentStatus.PARTIALLY_REFUNDED)
            self._payments[payment.id] = dataclasses.replace(
                payment, amount_refunded=refunded, status=status, updated_at=done.updated_at,
                sequence=payment.sequence + 1)
        event = Event.for_refund(done)
        self._record(event.id, done, done.payment_id)
        return RefundDone(refund=done, event=event)

    # --- events --------------------------------------------------------------------------

    async def add_events(self, events: Sequence[Event]) -> None:
        for event in events:
            self._record(event.id, event, _owner(event))

    def _record(self, event_id: str, event: Event | Payment | Refund, payment_id: str) -> None:
        if event_id in self._events:
            return
        self._events[event_id] = event
        self._unqueued[event_id] = now_iso()
        self._events_of.setdefault(payment_id, []).append(event_id)

    async def get_events(self, ids: Sequence[str]) -> dict[str, Event]:
        return {i: _event(e) for i in ids if (e := self._events.get(i)) is not None}

    async def list_events(self, *, limit: int, starting_after: str | None = None,
                          type: str | None = None,
                          created_gte: str | None = None) -> list[Event]:
        low = parse_iso(created_gte) if created_gte else None
        page: list[Event] = []
        for event in map(_event, _before(self._events, starting_after)):
            if type is not None and event.type != type:
                continue
            if low is not None and parse_iso(event.timestamp) < low:
                continue
            page.append(event)
            if len(page) == limit:
                break
        return page

    async def mark_enqueued(self, event_ids: Sequence[str]) -> None:
        for event_id in event_ids:
            self._unqueued.pop(event_id, None)

    async def unqueued_events(self, before: str, limit: int) -> list[Event]:
        moment = parse_iso(before)
        out: list[Event] = []
        for event_id, recorded in self._unqueued.items():  # recording order: oldest first
            if parse_iso(recorded) >= moment or len(out) == limit:
                break
            out.append(_event(self._events[event_id]))
        return out

    # --- endpoints and attempts ----------------------------------------------------------

    async def put_endpoint(self, endpoint: WebhookEndpoint) -> None:
        self._endpoints[endpoint.id] = endpoint

    async def get_endpoints(self, ids: Sequence[str]) -> dict[str, WebhookEndpoint]:
        return {i: e for i in ids if (e := self._endpoints.get(i)) is not None}

    async def list_endpoints(self) -> list[WebhookEndpoint]:
        return list(self._endpoints.values())

    async def delete_endpoint(self, endpoint_id: str) -> bool:
        return self._endpoints.pop(endpoint_id, None) is not None

    async def add_attempts(self, attempts: Sequence[DeliveryAttempt]) -> None:
        for attempt in attempts:
            if attempt.event_id not in self._events:
                continue  # its event was evicted meanwhile
            self._attempts.setdefault(attempt.event_id, []).append(attempt)
            self._attempts_by_endpoint.setdefault(attempt.endpoint_id, {})[attempt.id] = attempt

    async def list_attempts(self, event_id: str) -> list[DeliveryAttempt]:
        return list(self._attempts.get(event_id, ()))

    async def attempts_since(self, endpoint_id: str, since: str) -> list[DeliveryAttempt]:
        moment = parse_iso(since)
        return [a for a in self._attempts_by_endpoint.get(endpoint_id, {}).values()
                if parse_iso(a.at) >= moment]

    # --- retention -----------------------------------------------------------------------

    async def setting(self, name: str, default: str) -> str:
        return self._settings.setdefault(name, default)

    async def prune(self, before: str) -> int:
        moment = parse_iso(before)
        old_keys = [k for k, b in self._keys.items() if parse_iso(b.bound_at) < moment]
        for key in old_keys:
            self._key_of.pop(self._keys.pop(key).payment.id, None)
        old = [i for i, e in self._events.items()
               if i not in self._unqueued and parse_iso(_timestamp(e)) < moment]
        gone = self._drop_events(old)
        for endpoint_id, by_id in list(self._attempts_by_endpoint.items()):
            kept = {i: a for i, a in by_id.items() if parse_iso(a.at) >= moment}
            gone += len(by_id) - len(kept)
            self._attempts_by_endpoint[endpoint_id] = kept
        for event_id, attempts in list(self._attempts.items()):
            self._attempts[event_id] = [a for a in attempts if parse_iso(a.at) >= moment]
        return gone + len(old_keys)

    def _finish(self, payment_id: str) -> None:
        """Count a payment as finished; evict the earliest finished ones over the bound."""
        self._finished[payment_id] = None
        while len(self._finished) > self.max_payments:
            oldest, _ = self._finished.popitem(last=False)
            self._payments.pop(oldest, None)
            self._keys.pop(self._key_of.pop(oldest, ""), None)
            for refund_id in self._refunds_of.pop(oldest, ()):
                self._refunds.pop(refund_id, None)
            self._drop_events(self._events_of.pop(oldest, ()))

    def _drop_events(self, event_ids: Iterable[str]) -> int:
        gone = 0
        for event_id in list(event_ids):
            if self._events.pop(event_id, None) is None:
                continue
            gone += 1
            self._unqueued.pop(event_id, None)
            for attempt in self._attempts.pop(event_id, ()):
                gone += 1
                self._attempts_by_endpoint.get(attempt.endpoint_id, {}).pop(attempt.id, None)
        return gone

    async def close(self) -> None:
        return None


def _event(kept: Event | Payment | Refund) -> Event:
    if isinstance(kept, Payment):
        return Event.for_payment(kept)
    if isinstance(kept, Refund):
        return Event.for_refund(kept)
    return kept


def _timestamp(kept: Event | Payment | Refund) -> str:
    return kept.timestamp if isinstance(kept, Event) else kept.updated_at


def _owner(event: Event) -> str:
    """The payment an event belongs to (a refund event's data is the refund)."""
    data = event.data
    return str(data.get("payment_id") if data.get("object") == "refund" else data.get("id"))


def _before(items: dict[str, T], starting_after: str | None) -> Iterable[T]:
    """The values of ``items`` newest first, after the key ``starting_after`` (none if unknown)."""
    keys = list(items)
    end = len(keys)
    if starting_after is not None:
        if starting_after not in items:
            return []
        end = keys.index(starting_after)
    return (items[k] for k in reversed(keys[:end]))
