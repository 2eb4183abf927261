"""validate_payment_request, rule by rule (pure: no HTTP), and the currency table."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from payflow.errors import ValidationError
from payflow.payments.currencies import MINOR_UNITS, minor_units, normalize_currency
from payflow.payments.processor import card_fingerprint
from payflow.payments.validation import (
    PaymentRequest,
    card_brand,
    luhn_valid,
    validate_payment_request,
)

TODAY = date(2026, 6, 15)
VISA = "4242424242424242"


def body(**overrides: Any) -> dict[str, object]:
    base: dict[str, object] = {"amount": 1000, "currency": "INR", "method": "upi"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def card(**overrides: Any) -> dict[str, object]:
    details: dict[str, object] = {"number": VISA, "exp_month": 12, "exp_year": 2030}
    details.update(overrides)
    return {k: v for k, v in details.items() if v is not ...}


def ok(data: dict[str, object]) -> PaymentRequest:
    return validate_payment_request(data, today=TODAY)


def fails(data: dict[str, object], param: str | None, code: str) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        validate_payment_request(data, today=TODAY)
    assert (info.value.param, info.value.code) == (param, code), info.value.detail
    assert info.value.status == 422
    return info.value


# --- top level -------------------------------------------------------------------------------


def test_minimal_body() -> None:
    req = ok(body())
    assert req == PaymentRequest(amount=1000, currency="INR", method="upi",
                                 method_details={}, metadata={})


def test_unknown_top_level_field_is_named() -> None:
    fails(body(amout=5), "amout", "unknown_field")


def test_details_key_of_chosen_method_is_not_unknown() -> None:
    assert ok(body(upi={"vpa": "a.b@okhdfc"})).method_details == {"vpa": "a.b@okhdfc"}


@pytest.mark.parametrize("amount", [1, 500, 99_999_999])
def test_amount_in_range(amount: int) -> None:
    assert ok(body(amount=amount)).amount == amount


@pytest.mark.parametrize(
    ("amount", "code"),
    [
        (..., "missing"),
        (None, "missing"),
        (0, "out_of_range"),
        (-1, "out_of_range"),
        (100_000_000, "out_of_range"),
        (True, "invalid_type"),
        (False, "invalid_type"),
        (10.0, "invalid_type"),
        ("100", "invalid_type"),
        ([100], "invalid_type"),
    ],
)
def test_amount_invalid(amount: object, code: str) -> None:
    fails(body(amount=amount), "amount", code)


@pytest.mark.parametrize(("given", "stored"), [("INR", "INR"), ("usd", "USD"), ("jPy", "JPY"),
                                              ("clf", "CLF")])
def test_currency_case_insensitive_stored_upper(given: str, stored: str) -> None:
    assert ok(body(currency=given)).currency == stored


@pytest.mark.parametrize(
    ("currency", "code"),
    [
        (..., "missing"),
        ("XYZ", "invalid_currency"),
        ("HRK", "invalid_currency"),  # withdrawn in 2023
        ("XAU", "invalid_currency"),  # gold: no minor unit
        ("US", "invalid_currency"),
        ("USD ", "invalid_currency"),
        ("", "invalid_currency"),
        ("ınr", "invalid_currency"),  # dotless i upper-cases to I: still not accepted
        (840, "invalid_type"),
    ],
)
def test_currency_invalid(currency: object, code: str) -> None:
    fails(body(currency=currency), "currency", code)


@pytest.mark.parametrize("method", ["upi", "card", "netbanking", "wallet"])
def test_every_method_without_details(method: str) -> None:
    req = ok(body(method=method))
    assert (req.method, req.method_details) == (method, {})


@pytest.mark.parametrize(
    ("method", "code"),
    [(..., "missing"), ("cash", "invalid_method"), ("UPI", "invalid_method"),
     (1, "invalid_type")],
)
def test_method_invalid(method: object, code: str) -> None:
    fails(body(method=method), "method", code)


@pytest.mark.parametrize("other", ["card", "netbanking", "wallet"])
def test_details_for_another_method_are_named(other: str) -> None:
    fails(body(method="upi", **{other: {}}), other, "method_mismatch")


def test_details_must_be_an_object() -> None:
    fails(body(upi="a@b"), "upi", "invalid_type")


def test_unknown_field_inside_details() -> None:
    fails(body(method="card", card=card(cvc="123")), "card.cvc", "unknown_field")


def test_first_error_wins_in_a_fixed_order() -> None:
    fails({"currency": "nope", "method": "cash"}, "amount", "missing")
    fails({"amount": 1, "currency": "nope", "method": "cash"}, "currency", "invalid_currency")


# --- upi -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vpa", ["name@bank", "first.last-1_x@okicici", "ab@ybl", "9876543210@paytm"]
)
def test_vpa_valid(vpa: str) -> None:
    assert ok(body(upi={"vpa": vpa})).method_details == {"vpa": vpa}


@pytest.mark.parametrize(
    "vpa",
    ["name", "a@bank", "name@b", "name@1bank", "na me@bank", "name@@bank", "name@bank.com",
     "name@bank\n", "x" * 257 + "@bank", "name@" + "b" * 66, ""],
)
def test_vpa_invalid(vpa: str) -> None:
    fails(body(upi={"vpa": vpa}), "upi.vpa", "invalid_vpa")


def test_vpa_missing_and_wrong_type() -> None:
    fails(body(upi={}), "upi.vpa", "missing")
    fails(body(upi={"vpa": 5}), "upi.vpa", "invalid_type")


# --- card ------------------------------------------------------------------------------------


def test_card_details_keep_no_number() -> None:
    details = ok(body(method="card", card=card())).method_details
    assert details == {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030,
                       "fingerprint": card_fingerprint(VISA)}
    assert VISA not in repr(details)


def test_card_number_spaces_are_removed() -> None:
    details = ok(body(method="card", card=card(number="4242 4242 4242 4242"))).method_details
    assert details["fingerprint"] == card_fingerprint(VISA)
    assert details["last4"] == "4242"


@pytest.mark.parametrize(
    "number",
    ["4242424242424241",  # Luhn fails
     "42424242424",  # 11 digits
     "4" + "0" * 18 + "1",  # 20 digits
     "4242-4242-4242-4242", "4242424242424242a", "", "   ",
     "４２４２４２４２４２４２４２４２"],  # full-width digits are not ASCII digits
)
def test_card_number_invalid(number: str) -> None:
    err = fails(body(method="card", card=card(number=number)), "card.number",
                "invalid_card_number")
    assert VISA not in err.detail


def test_card_number_never_echoed_in_errors() -> None:
    bad = "4242424242424241"
    err = fails(body(method="card", card=card(number=bad)), "card.number", "invalid_card_number")
    assert bad not in err.detail


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("number", ..., "missing"), ("number", 4242424242424242, "invalid_type"),
        ("exp_month", ..., "missing"), ("exp_month", "12", "invalid_type"),
        ("exp_month", True, "invalid_type"), ("exp_month", 0, "out_of_range"),
        ("exp_month", 13, "out_of_range"),
        ("exp_year", ..., "missing"), ("exp_year", 2030.0, "invalid_type"),
        ("exp_year", 30, "out_of_range"), ("exp_year", 2077, "out_of_range"),
    ],
)
def test_card_field_errors(field: str, value: object, code: str) -> None:
    fails(body(method="card", card=card(**{field: value})), f"card.{field}", code)


def test_card_expiry_boundaries() -> None:
    assert ok(body(method="card", card=card(exp_month=6, exp_year=2026))).method_details
    assert ok(body(method="card", card=card(exp_month=1, exp_year=2076))).method_details
    fails(body(method="card", card=card(exp_month=5, exp_year=2026)), "card.exp_month",
          "card_expired")
    fails(body(method="card", card=card(exp_month=12, exp_year=2025)), "card.exp_year",
          "card_expired")


def test_card_expiry_defaults_to_today() -> None:
    with pytest.raises(ValidationError) as info:
        validate_payment_request(body(method="card", card=card(exp_month=1, exp_year=2001)))
    assert info.value.code == "card_expired"


@pytest.mark.parametrize(
    ("number", "brand"),
    [("4111111111111111", "visa"), ("5555555555554444", "mastercard"),
     ("5105105105105100", "mastercard"), ("2221000000000009", "mastercard"),
     ("2720990000000007", "mastercard"), ("378282246310005", "amex"),
     ("341111111111111", "amex"), ("6070000000000008", "rupay"), ("6521000000000004", "rupay"),
     ("8100000000000003", "rupay"), ("5085000000000005", "rupay"),
     ("3530111333300000", "unknown"), ("2720999999999996", "mastercard"),
     ("2721000000000004", "unknown"), ("5600000000000003", "unknown")],
)
def test_card_brand(number: str, brand: str) -> None:
    assert card_brand(number) == brand


def test_luhn() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert luhn_valid("4000000000000002")


# --- netbanking and wallet -------------------------------------------------------------------


@pytest.mark.parametrize("code", ["HDFC", "SBIN", "ICICI0", "AB", "A" * 11])
def test_bank_code_valid(code: str) -> None:
    details = ok(body(method="netbanking", netbanking={"bank_code": code})).method_details
    assert details == {"bank_code": code}


@pytest.mark.parametrize("code", ["hdfc", "H", "A" * 12, "HD FC", "HDFC-1", ""])
def test_bank_code_invalid(code: str) -> None:
    fails(body(method="netbanking", netbanking={"bank_code": code}), "netbanking.bank_code",
          "invalid_bank_code")


@pytest.mark.parametrize("wallet",
                         ["paytm", "phonepe", "amazonpay", "mobikwik", "freecharge", "airtel",
                          "googlepay"])
def test_wallet_valid(wallet: str) -> None:
    assert ok(body(method="wallet", wallet={"wallet": wallet})).method_details == {
        "wallet": wallet}


@pytest.mark.parametrize(("wallet", "code"), [("PayTM", "invalid_wallet"),
                                              ("applepay", "invalid_wallet"),
                                              (..., "missing"), (1, "invalid_type")])
def test_wallet_invalid(wallet: object, code: str) -> None:
    details = {} if wallet is ... else {"wallet": wallet}
    fails(body(method="wallet", wallet=details), "wallet.wallet", code)


# --- metadata --------------------------------------------------------------------------------


def test_metadata_limits_accepted() -> None:
    metadata = {f"k{i:02d}".ljust(40, "x"): "v" * 500 for i in range(50)}
    assert ok(body(metadata=metadata)).metadata == metadata
    assert ok(body(metadata=None)).metadata == {}
    assert ok(body(metadata={})).metadata == {}


@pytest.mark.parametrize(
    ("metadata", "param", "code"),
    [
        ([], "metadata", "invalid_type"),
        ("x", "metadata", "invalid_type"),
        ({f"k{i}": "v" for i in range(51)}, "metadata", "too_many_keys"),
        ({"k" * 41: "v"}, "metadata", "invalid_key"),
        ({"": "v"}, "metadata", "invalid_key"),
        ({"order": 5}, "metadata.order", "invalid_type"),
        ({"order": None}, "metadata.order", "invalid_type"),
        ({"order": {"a": "b"}}, "metadata.order", "invalid_type"),
        ({"order": "v" * 501}, "metadata.order", "too_long"),
    ],
)
def test_metadata_invalid(metadata: object, param: str, code: str) -> None:
    fails(body(metadata=metadata), param, code)


# --- currencies ------------------------------------------------------------------------------


def test_currency_table() -> None:
    expected = {"INR": 2, "USD": 2, "EUR": 2, "JPY": 0, "KRW": 0, "KWD": 3, "BHD": 3, "OMR": 3,
                "TND": 3, "CLF": 4, "UYW": 4, "XCG": 2, "ZWG": 2}
    assert {code: MINOR_UNITS[code] for code in expected} == expected
    assert 150 < len(MINOR_UNITS) < 200
    assert all(len(c) == 3 and c.isascii() and c.isupper() for c in MINOR_UNITS)
    assert set(MINOR_UNITS.values()) == {0, 2, 3, 4}
    assert minor_units("jpy") == 0
    assert normalize_currency("eur") == "EUR"
    assert normalize_currency("EURO") is None


# ISO 4217 List One (amendments through 2025): every active code has two minor-unit digits
# except these.
NOT_TWO = {
    0: "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF",
    3: "BHD IQD JOD KWD LYD OMR TND",
    4: "CLF UYW",
}


def test_every_iso_4217_exponent() -> None:
    """The whole table: a wrong exponent anywhere charges 100 times too much or too little."""
    exceptions = {code: digits for digits, codes in NOT_TWO.items() for code in codes.split()}
    assert set(exceptions) <= set(MINOR_UNITS)
    assert {code: e for code, e in MINOR_UNITS.items() if e != 2} == exceptions
    assert len(MINOR_UNITS) == 166
    for withdrawn in ("HRK", "CUC", "SLL", "ZWL", "XAU", "XDR", "XTS", "XXX"):
        assert withdrawn not in MINOR_UNITS
    for code, digits in MINOR_UNITS.items():
        assert minor_units(code.lower()) == digits
        assert normalize_currency(code.lower()) == code


def test_card_fingerprints_are_keyed_by_the_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib
    import hmac

    from payflow.payments import processor

    monkeypatch.setattr(processor, "_fingerprint_key", processor._fingerprint_key)
    # The key that was in the public source: a fingerprint keyed by it gives a card away.
    public = hmac.new(b"payflow-card-fingerprint-v1", VISA.encode(), hashlib.sha256)
    assert card_fingerprint(VISA) != public.hexdigest()[:32]
    processor.use_fingerprint_key("deployment-a-secret-key")
    a = card_fingerprint(VISA)
    processor.use_fingerprint_key("deployment-b-secret-key")
    assert card_fingerprint(VISA) != a
    processor.use_fingerprint_key("deployment-a-secret-key")
    assert card_fingerprint(VISA) == a  # stable for one deployment
