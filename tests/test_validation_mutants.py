"""Every validation error of ``POST /v1/payments`` says exactly what is wrong (the ``detail`` a
client shows), and the edges the rule-by-rule tests skip: year 2000, one-character metadata
keys, Luhn doubling of a 5, RuPay's 82, the UTC date. Written against the mutants
tests/test_web_validation.py let through (scripts/mutation validation)."""

from __future__ import annotations

from datetime import date, datetime, tzinfo
from typing import Any

import pytest

from payflow.errors import ValidationError
from payflow.payments import validation
from payflow.payments.validation import card_brand, luhn_valid, validate_payment_request

TODAY = date(2026, 3, 15)
VISA = "4242424242424242"
BASE: dict[str, Any] = {"amount": 1000, "currency": "INR", "method": "upi"}


def card(**details: Any) -> dict[str, Any]:
    return {**BASE, "method": "card", "card": {"number": VISA, **details}}


WALLETS = "paytm, phonepe, amazonpay, mobikwik, freecharge, airtel, googlepay"
CASES: list[tuple[dict[str, Any], str, str, str]] = [
    ({**BASE, "bogus": 1}, "bogus", "unknown_field", "Unknown field 'bogus'."),
    ({**BASE, "amount": 0}, "amount", "out_of_range",
     "amount must be between 1 and 99999999 (minor units)."),
    ({**BASE, "currency": "XYZ"}, "currency", "invalid_currency",
     "currency 'XYZ' is not an active ISO 4217 code."),
    ({**BASE, "method": "cash"}, "method", "invalid_method",
     "method 'cash' is not one of upi, card, netbanking, wallet."),
    ({**BASE, "card": {"number": VISA}}, "card", "method_mismatch",
     "Details for 'card' were given but method is 'upi'."),
    ({**BASE, "upi": "x"}, "upi", "invalid_type", "upi must be an object."),
    ({**BASE, "upi": {"nope": 1}}, "upi.nope", "unknown_field",
     "Unknown field 'nope' in upi (allowed: vpa)."),
    ({**card(exp_month=1, exp_year=2030), "card": {"cvv": 1}}, "card.cvv", "unknown_field",
     "Unknown field 'cvv' in card (allowed: number, exp_month, exp_year)."),
    ({**BASE, "upi": {"vpa": "bad"}}, "upi.vpa", "invalid_vpa",
     "upi.vpa 'bad' is not a valid UPI address (name@handle)."),
    (card(number="123"), "card.number", "invalid_card_number",
     "card.number must be 12-19 digits (spaces allowed) and pass the Luhn check."),
    (card(exp_month=13, exp_year=2030), "card.exp_month", "out_of_range",
     "card.exp_month must be between 1 and 12."),
    (card(exp_month=1, exp_year=1999), "card.exp_year", "out_of_range",
     "card.exp_year must be a four-digit year up to 2076."),
    (card(exp_month=1, exp_year=2000), "card.exp_year", "card_expired",
     "The card expired in 01/2000."),
    (card(exp_month=2, exp_year=2026), "card.exp_month", "card_expired",
     "The card expired in 02/2026."),
    ({**BASE, "method": "netbanking", "netbanking": {"bank_code": "x"}},
     "netbanking.bank_code", "invalid_bank_code",
     "netbanking.bank_code 'x' must be 2-11 upper-case letters or digits."),
    ({**BASE, "method": "netbanking", "netbanking": {"bank_code": 5}},
     "netbanking.bank_code", "invalid_type", "netbanking.bank_code must be a string."),
    ({**BASE, "method": "wallet", "wallet": {"wallet": "cash"}}, "wallet.wallet",
     "invalid_wallet", f"wallet.wallet 'cash' is not one of {WALLETS}."),
    ({**BASE, "metadata": []}, "metadata", "invalid_type", "metadata must be an object."),
    ({**BASE, "metadata": {str(i): "v" for i in range(51)}}, "metadata", "too_many_keys",
     "metadata may have at most 50 keys."),
    ({**BASE, "metadata": {"": "v"}}, "metadata", "invalid_key",
     "metadata key '' must be 1-40 characters."),
    ({**BASE, "metadata": {"k": 1}}, "metadata.k", "invalid_type",
     "metadata.k must be a string."),
    ({**BASE, "metadata": {"k": "v" * 501}}, "metadata.k", "too_long",
     "metadata.k may be at most 500 characters."),
    ({**BASE, "amount": "1"}, "amount", "invalid_type", "amount must be an integer."),
    ({**BASE, "currency": 1}, "currency", "invalid_type", "currency must be a string."),
    ({"currency": "INR", "method": "upi"}, "amount", "missing", "amount is required."),
    ({**BASE, "currency": "X" * 60}, "currency", "invalid_currency",
     f"currency {'X' * 60!r} is not an active ISO 4217 code."),
    ({**BASE, "currency": "X" * 61}, "currency", "invalid_currency",
     f"currency {'X' * 60!r}… is not an active ISO 4217 code."),
]


@pytest.mark.parametrize(("body", "param", "code", "detail"), CASES,
                         ids=[f"{c[1]}-{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_every_error_names_param_code_and_detail(body: dict[str, Any], param: str, code: str,
                                                 detail: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_payment_request(body, today=TODAY)
    assert (info.value.param, info.value.code, info.value.detail) == (param, code, detail)


def test_a_one_character_metadata_key_is_accepted() -> None:
    req = validate_payment_request({**BASE, "metadata": {"k": "v"}}, today=TODAY)
    assert req.metadata == {"k": "v"}


def test_luhn_doubles_a_5_into_1() -> None:
    assert luhn_valid("59")  # 9 + (5*2 - 9) = 10
    assert not luhn_valid("58")
    assert luhn_valid("4000056655665556")  # a published test Visa with doubled 5s


def test_rupay_prefixes() -> None:
    for prefix in ("60", "65", "81", "82", "508"):
        assert card_brand(prefix + "0" * 14) == "rupay", prefix


def test_card_expiry_uses_the_utc_date(monkeypatch: pytest.MonkeyPatch) -> None:
    """Just after midnight UTC on 1 March, a card expiring in February is expired whatever
    the server's local time zone says (here: still 28 February)."""

    class Clock(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Clock:
            if tz is None:  # local time, a zone behind UTC
                return cls(2026, 2, 28, 23, 30)
            return cls(2026, 3, 1, 0, 30, tzinfo=tz)

    monkeypatch.setattr(validation, "datetime", Clock)
    with pytest.raises(ValidationError) as info:
        validate_payment_request(card(exp_month=2, exp_year=2026))
    assert info.value.code == "card_expired"
