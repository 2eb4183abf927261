"""The payment processor interface, and its one implementation today: a deterministic simulator.

Test values (like Stripe's): card ``4000000000000002`` is declined, a VPA starting with
``failure@`` fails, everything else succeeds; on top, ``failure_rate`` declines at random.
The API keeps no card number: it stores brand, last 4 and a fingerprint, and the simulator
recognises its test cards by fingerprint. The fingerprint is an HMAC keyed by a secret of the
deployment (``[api] card_fingerprint_key``, or one generated at the first start and kept in the
store), set with :func:`use_fingerprint_key` at start: with the key in the public source, a
fingerprint and the last 4 digits would give the card number away in seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import random
import secrets
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from payflow.errors import RetryLater
from payflow.models import Payment, Refund

DECLINED_CARDS = ("4000000000000002",)
REFUND_FAILING_CARDS = ("4000000000005126",)  # charges succeed, refunds fail (as Stripe's)
_REMEMBERED = 100_000


# Until the deployment's key is set: a random one, so that nothing is derivable from the source.
_fingerprint_key = secrets.token_bytes(32)


def use_fingerprint_key(key: str) -> None:
    """Key every card fingerprint of this process with ``key`` (the deployment's secret)."""
    global _fingerprint_key
    _fingerprint_key = hashlib.sha256(b"payflow-card-fingerprint\x00" + key.encode()).digest()


def card_fingerprint(number: str) -> str:
    """A stable, non-reversible tag of a card number (the number itself is never stored)."""
    return hmac.new(_fingerprint_key, number.encode(), hashlib.sha256).hexdigest()[:32]


def _is_one_of(fingerprint: object, cards: tuple[str, ...]) -> bool:
    return fingerprint is not None and any(fingerprint == card_fingerprint(n) for n in cards)


@dataclasses.dataclass(frozen=True, slots=True)
class ChargeResult:
    succeeded: bool
    failure_code: str | None = None
    failure_message: str | None = None


SUCCEEDED = ChargeResult(True)  # one object for every success (the simulator keeps 100,000)


class Processor(Protocol):
    async def charge_many(self, payments: Sequence[Payment]
                          ) -> list[ChargeResult | RetryLater]:
        """Charge each payment, its id the idempotency key (the same key never charges
        twice); a transient failure is a :class:`payflow.errors.RetryLater` in its place."""
        ...

    async def charge(self, payment: Payment, *, idempotency_key: str) -> ChargeResult:
        """Charge ``payment``. The same ``idempotency_key`` never charges twice. A transient
        failure raises :class:`payflow.errors.RetryLater`."""
        ...

    async def refund(self, payment: Payment, refund: Refund, *,
                     idempotency_key: str) -> ChargeResult:
        """Refund ``refund.amount`` of ``payment``; idempotent by key, like :meth:`charge`."""
        ...


class SimulatedProcessor:
    def __init__(self, *, latency_ms: int = 0, failure_rate: float = 0.0,
                 rng: random.Random | None = None) -> None:
        self._latency = latency_ms / 1000
        self._failure_rate = failure_rate
        self._rng = rng or random.Random()
        # Remembered outcomes by idempotency key, as a real processor keeps them (bounded).
        self._results: OrderedDict[str, ChargeResult] = OrderedDict()

    async def charge_many(self, payments: Sequence[Payment]
                          ) -> list[ChargeResult | RetryLater]:
        """One simulated latency for the batch (a real processor's calls would overlap)."""
        if self._latency and any(p.id not in self._results for p in payments):
            await asyncio.sleep(self._latency)
        results: list[ChargeResult | RetryLater] = []
        for payment in payments:
            if (known := self._results.get(payment.id)) is None:
                known = self._decide(payment)
                self._remember(payment.id, known)
            results.append(known)
        return results

    async def charge(self, payment: Payment, *, idempotency_key: str) -> ChargeResult:
        if (known := self._results.get(idempotency_key)) is not None:
            return known
        if self._latency:
            await asyncio.sleep(self._latency)
        result = self._decide(payment)
        self._remember(idempotency_key, result)
        return result

    async def refund(self, payment: Payment, refund: Refund, *,
                     idempotency_key: str) -> ChargeResult:
        if (known := self._results.get(idempotency_key)) is not None:
            return known
        if self._latency:
            await asyncio.sleep(self._latency)
        if _is_one_of(payment.method_details.get("fingerprint"), REFUND_FAILING_CARDS):
            result = ChargeResult(False, "refund_failed", "The card issuer refused the refund.")
        else:
            result = SUCCEEDED
        self._remember(idempotency_key, result)
        return result

    def _remember(self, key: str, result: ChargeResult) -> None:
        self._results[key] = result
        if len(self._results) > _REMEMBERED:
            self._results.popitem(last=False)

    def _decide(self, payment: Payment) -> ChargeResult:
        details = payment.method_details
        if payment.method == "card" and _is_one_of(details.get("fingerprint"), DECLINED_CARDS):
            return ChargeResult(False, "card_declined", "The card was declined.")
        vpa = details.get("vpa")
        if payment.method == "upi" and isinstance(vpa, str) and vpa.startswith("failure@"):
            return ChargeResult(False, "upi_declined", "The UPI payment was declined by the payer.")
        if self._failure_rate and self._rng.random() < self._failure_rate:
            return ChargeResult(False, "processor_declined", "Declined by the simulator.")
        return SUCCEEDED
