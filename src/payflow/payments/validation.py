"""Validation of a ``POST /v1/payments`` body: pure functions, no web framework, no I/O.

:func:`validate_payment_request` turns a decoded JSON object into a :class:`PaymentRequest` or
raises :class:`~payflow.errors.ValidationError` (status 422) naming the first offending field in
``param`` (a dotted path such as ``card.exp_month``) with a stable ``code``:

=================== ==========================================================================
``unknown_field``   a field the API does not know (top level or inside method details)
``missing``         a required field is absent (or ``null``)
``invalid_type``    a field has the wrong JSON type (``true`` is not an integer)
``out_of_range``    a number outside its bounds
``invalid_currency`` not an active ISO 4217 code
``invalid_method``  not one of ``upi``, ``card``, ``netbanking``, ``wallet``
``method_mismatch`` details given for a method other than the chosen one
``invalid_vpa``     a UPI address that is not ``name@handle``
``invalid_card_number`` not 12-19 digits or failing the Luhn check
``card_expired``    the expiry month is in the past
``invalid_bank_code``, ``invalid_wallet``
``too_many_keys``, ``invalid_key``, ``too_long``  metadata limits
=================== ==========================================================================

A card number never leaves this module: the stored details are brand, last 4, expiry and a
fingerprint, and no error message echoes the number.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Any, Final, NotRequired, TypedDict, cast, get_args

from payflow.errors import ValidationError
from payflow.models import (
    METHODS,
    CardBrand,
    CardDetails,
    MethodDetails,
    NetbankingDetails,
    UpiDetails,
    WalletDetails,
)
from payflow.payments.currencies import MINOR_UNITS, normalize_currency
from payflow.payments.processor import card_fingerprint
from payflow.schema import Meta, anchored

MIN_AMOUNT: Final = 1
MAX_AMOUNT: Final = 99_999_999
MIN_REFUND_AMOUNT: Final = 1  # minor units (RefundCreate; web.refunds checks it)
MAX_METADATA_KEYS: Final = 50
MAX_METADATA_KEY_LENGTH: Final = 40
MAX_METADATA_VALUE_LENGTH: Final = 500
MAX_EXPIRY_YEARS_AHEAD: Final = 50
WALLETS: Final = ("paytm", "phonepe", "amazonpay", "mobikwik", "freecharge", "airtel", "googlepay")

VPA_RE: Final = re.compile(r"[A-Za-z0-9.\-_]{2,256}@[A-Za-z][A-Za-z0-9]{1,64}")
BANK_CODE_RE: Final = re.compile(r"[A-Z0-9]{2,11}")
_CARD_DIGITS_RE: Final = re.compile(r"[0-9]{12,19}")
_CURRENCY_CODES: Final = ", ".join(sorted(MINOR_UNITS))


# --- the body, declared once: the fields known below and the OpenAPI components -------------


class UpiInput(TypedDict):
    vpa: Annotated[str, Meta("name@handle.", pattern=anchored(VPA_RE.pattern))]


class CardInput(TypedDict):
    number: Annotated[str, Meta(
        "12-19 digits (spaces allowed) passing the Luhn check (422 invalid_card_number "
        "otherwise). Never stored nor echoed.", pattern="^ *(?:[0-9] *){12,19}$")]
    exp_month: Annotated[int, Meta(minimum=1, maximum=12)]
    exp_year: Annotated[int, Meta(
        f"A four-digit year up to {MAX_EXPIRY_YEARS_AHEAD} years from now; an expiry in the "
        "past is 422 card_expired.", minimum=2000)]


class NetbankingInput(TypedDict):
    bank_code: Annotated[str, Meta(pattern=anchored(BANK_CODE_RE.pattern))]


class WalletInput(TypedDict):
    wallet: Annotated[str, Meta(enum=WALLETS)]


class PaymentCreate(TypedDict):
    """A payment to make. Errors name the first offending field in `param` (a dotted path
    such as `card.exp_month`); null counts as absent."""

    amount: Annotated[int, Meta("In minor units of the currency (1000 INR is ₹10.00).",
                                minimum=MIN_AMOUNT, maximum=MAX_AMOUNT)]
    currency: Annotated[str, Meta(
        "An active ISO 4217 code, in any case (stored upper-case); anything else is 422 "
        f"invalid_currency. The codes: {_CURRENCY_CODES}.", pattern="^[A-Za-z]{3}$",
        examples=["INR", "usd"])]
    method: Annotated[str, Meta(enum=METHODS)]
    metadata: NotRequired[Annotated[
        dict[Annotated[str, Meta(minLength=1, maxLength=MAX_METADATA_KEY_LENGTH)],
             Annotated[str, Meta(maxLength=MAX_METADATA_VALUE_LENGTH)]] | None,
        Meta(f"Your own string values (at most {MAX_METADATA_KEYS} keys of 1-"
             f"{MAX_METADATA_KEY_LENGTH} characters, values of at most "
             f"{MAX_METADATA_VALUE_LENGTH}); null is the same as absent.",
             maxProperties=MAX_METADATA_KEYS)]]
    # one per method (METHODS), each only with that method (422 method_mismatch)
    upi: NotRequired[Annotated[UpiInput | None, Meta(
        "Details of a upi payment (optional); only with the same method.")]]
    card: NotRequired[Annotated[CardInput | None, Meta(
        "Details of a card payment (optional); only with the same method.")]]
    netbanking: NotRequired[Annotated[NetbankingInput | None, Meta(
        "Details of a netbanking payment (optional); only with the same method.")]]
    wallet: NotRequired[Annotated[WalletInput | None, Meta(
        "Details of a wallet payment (optional); only with the same method.")]]


class RefundCreate(TypedDict):  # POST /v1/payments/{id}/refunds (web.refunds checks it)
    amount: NotRequired[Annotated[int, Meta(
        "Minor units, at most what is left to refund (422 amount_too_large). Default: "
        "everything left.", minimum=MIN_REFUND_AMOUNT)]]


DETAIL_INPUTS: Final[Mapping[str, Any]] = {
    "upi": UpiInput, "card": CardInput, "netbanking": NetbankingInput, "wallet": WalletInput,
}
TOP_LEVEL_FIELDS: Final = frozenset(PaymentCreate.__annotations__)
DETAIL_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    method: tuple(body.__annotations__) for method, body in DETAIL_INPUTS.items()}


@dataclass(frozen=True, kw_only=True, slots=True)
class PaymentRequest:
    """A valid payment-create body, normalised (currency upper-case, card reduced to safe
    details)."""

    amount: int
    currency: str
    method: str
    method_details: dict[str, Any]
    metadata: dict[str, str]


def validate_payment_request(
    body: dict[str, object], *, today: date | None = None
) -> PaymentRequest:
    """Validate a decoded JSON object; ``today`` (UTC by default) decides card expiry."""
    for key in body:
        if key not in TOP_LEVEL_FIELDS:
            raise ValidationError(f"Unknown field {_show(key)}.", param=key, code="unknown_field")
    amount = _int(body, "amount", "amount")
    if not MIN_AMOUNT <= amount <= MAX_AMOUNT:
        raise ValidationError(
            f"amount must be between {MIN_AMOUNT} and {MAX_AMOUNT} (minor units).",
            param="amount", code="out_of_range",
        )
    currency = _str(body, "currency", "currency")
    normalized = normalize_currency(currency)
    if normalized is None:
        raise ValidationError(
            f"currency {_show(currency)} is not an active ISO 4217 code.",
            param="currency", code="invalid_currency",
        )
    method = _str(body, "method", "method")
    if method not in METHODS:
        raise ValidationError(
            f"method {_show(method)} is not one of {', '.join(METHODS)}.",
            param="method", code="invalid_method",
        )
    for other in METHODS:
        if other != method and body.get(other) is not None:
            raise ValidationError(
                f"Details for {other!r} were given but method is {method!r}.",
                param=other, code="method_mismatch",
            )
    details = _method_details(method, body.get(method), today or datetime.now(UTC).date())
    return PaymentRequest(
        amount=amount, currency=normalized, method=method, method_details=details,
        metadata=_metadata(body.get("metadata")),
    )


# --- method details ------------------------------------------------------------------------


def _method_details(method: str, raw: object, today: date) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValidationError(f"{method} must be an object.", param=method, code="invalid_type")
    allowed = DETAIL_FIELDS[method]
    for key in raw:
        if key not in allowed:
            raise ValidationError(
                f"Unknown field {_show(key)} in {method} (allowed: {', '.join(allowed)}).",
                param=f"{method}.{key}", code="unknown_field",
            )
    return cast("dict[str, Any]", _DETAIL_VALIDATORS[method](raw, today))


def _upi(raw: dict[str, Any], today: date) -> UpiDetails:
    vpa = _str(raw, "vpa", "upi.vpa")
    if not VPA_RE.fullmatch(vpa):
        raise ValidationError(
            f"upi.vpa {_show(vpa)} is not a valid UPI address (name@handle).",
            param="upi.vpa", code="invalid_vpa",
        )
    return {"vpa": vpa}


def _card(raw: dict[str, Any], today: date) -> CardDetails:
    number = _str(raw, "number", "card.number").replace(" ", "")
    if not _CARD_DIGITS_RE.fullmatch(number) or not luhn_valid(number):
        raise ValidationError(
            "card.number must be 12-19 digits (spaces allowed) and pass the Luhn check.",
            param="card.number", code="invalid_card_number",
        )
    exp_month = _int(raw, "exp_month", "card.exp_month")
    if not 1 <= exp_month <= 12:
        raise ValidationError("card.exp_month must be between 1 and 12.",
                              param="card.exp_month", code="out_of_range")
    exp_year = _int(raw, "exp_year", "card.exp_year")
    latest = today.year + MAX_EXPIRY_YEARS_AHEAD
    if not 2000 <= exp_year <= latest:
        raise ValidationError(f"card.exp_year must be a four-digit year up to {latest}.",
                              param="card.exp_year", code="out_of_range")
    if (exp_year, exp_month) < (today.year, today.month):
        param = "card.exp_year" if exp_year < today.year else "card.exp_month"
        raise ValidationError(f"The card expired in {exp_month:02d}/{exp_year}.",
                              param=param, code="card_expired")
    return {
        "brand": card_brand(number),
        "last4": number[-4:],
        "exp_month": exp_month,
        "exp_year": exp_year,
        "fingerprint": card_fingerprint(number),
    }


def _netbanking(raw: dict[str, Any], today: date) -> NetbankingDetails:
    bank_code = _str(raw, "bank_code", "netbanking.bank_code")
    if not BANK_CODE_RE.fullmatch(bank_code):
        raise ValidationError(
            f"netbanking.bank_code {_show(bank_code)} must be 2-11 upper-case letters or digits.",
            param="netbanking.bank_code", code="invalid_bank_code",
        )
    return {"bank_code": bank_code}


def _wallet(raw: dict[str, Any], today: date) -> WalletDetails:
    wallet = _str(raw, "wallet", "wallet.wallet")
    if wallet not in WALLETS:
        raise ValidationError(
            f"wallet.wallet {_show(wallet)} is not one of {', '.join(WALLETS)}.",
            param="wallet.wallet", code="invalid_wallet",
        )
    return {"wallet": wallet}


_DETAIL_VALIDATORS: Final[Mapping[str, Callable[[dict[str, Any], date], MethodDetails]]] = {
    "upi": _upi, "card": _card, "netbanking": _netbanking, "wallet": _wallet,
}


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a string of ASCII digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


CARD_BRANDS: Final[tuple[CardBrand, ...]] = get_args(CardBrand)


def card_brand(number: str) -> CardBrand:
    """One of :data:`CARD_BRANDS`, from the number's leading digits."""
    if number.startswith("4"):
        return "visa"
    if number[:2] in ("34", "37"):
        return "amex"
    if "51" <= number[:2] <= "55" or "2221" <= number[:4] <= "2720":
        return "mastercard"
    if number[:2] in ("60", "65", "81", "82") or number.startswith("508"):
        return "rupay"
    return "unknown"


# --- metadata ------------------------------------------------------------------------------


def _metadata(raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValidationError("metadata must be an object.", param="metadata",
                              code="invalid_type")
    if len(raw) > MAX_METADATA_KEYS:
        raise ValidationError(f"metadata may have at most {MAX_METADATA_KEYS} keys.",
                              param="metadata", code="too_many_keys")
    for key, value in raw.items():
        if not 1 <= len(key) <= MAX_METADATA_KEY_LENGTH:
            raise ValidationError(
                f"metadata key {_show(key)} must be 1-{MAX_METADATA_KEY_LENGTH} characters.",
                param="metadata", code="invalid_key",
            )
        if not isinstance(value, str):
            raise ValidationError(f"metadata.{key} must be a string.",
                                  param=f"metadata.{key}", code="invalid_type")
        if len(value) > MAX_METADATA_VALUE_LENGTH:
            raise ValidationError(
                f"metadata.{key} may be at most {MAX_METADATA_VALUE_LENGTH} characters.",
                param=f"metadata.{key}", code="too_long",
            )
    return dict(raw)


# --- helpers -------------------------------------------------------------------------------


def _int(obj: Mapping[str, object], key: str, param: str) -> int:
    value = _required(obj, key, param)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(f"{param} must be an integer.", param=param, code="invalid_type")
    return value


def _str(obj: Mapping[str, object], key: str, param: str) -> str:
    value = _required(obj, key, param)
    if not isinstance(value, str):
        raise ValidationError(f"{param} must be a string.", param=param, code="invalid_type")
    return value


def _required(obj: Mapping[str, object], key: str, param: str) -> object:
    value = obj.get(key)
    if value is None:
        raise ValidationError(f"{param} is required.", param=param, code="missing")
    return value


def _show(value: str, limit: int = 60) -> str:
    """A bounded repr of user input for an error message."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "…"
