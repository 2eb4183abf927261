"""Security properties of webhook verification (payflow.webhooks.signing), asserted directly:
constant-time comparison, strict base64 for secrets and signatures, exact reasons. Written
against the mutants tests/test_signing.py let through (scripts/mutation signing)."""

from __future__ import annotations

import base64
import hmac
import re

import pytest

from payflow.webhooks import WebhookVerificationError, verify
from payflow.webhooks.signing import sign

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
PAYLOAD = '{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def headers(signature: str = SIGNATURE, timestamp: str = str(TIMESTAMP)) -> dict[str, str]:
    return {"webhook-id": MSG_ID, "webhook-timestamp": timestamp,
            "webhook-signature": signature}


def test_signatures_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every candidate signature goes through hmac.compare_digest (never ``==``)."""
    calls: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # what the module calls
    assert verify(PAYLOAD, headers(), SECRET, now=TIMESTAMP) == {"test": 2432232314}
    expected = base64.b64decode(SIGNATURE[3:])
    assert calls == [(expected, expected)]
    calls.clear()
    with pytest.raises(WebhookVerificationError):
        verify(PAYLOAD, headers("v1," + base64.b64encode(b"x" * 32).decode()), SECRET,
               now=TIMESTAMP)
    assert calls == [(b"x" * 32, expected)]


@pytest.mark.parametrize(("offset", "message"), [
    (-301, "timestamp too old: 301 s ago (tolerance 300 s)"),
    (301, "timestamp too new: 301 s ahead (tolerance 300 s)"),
])
def test_the_tolerance_reasons_say_how_far_off(offset: int, message: str) -> None:
    with pytest.raises(WebhookVerificationError, match=rf"^{re.escape(message)}$"):
        verify(PAYLOAD, headers(timestamp=str(TIMESTAMP + offset)), SECRET, now=TIMESTAMP)


def test_a_bad_timestamp_is_shown_cut_to_40_characters() -> None:
    with pytest.raises(WebhookVerificationError) as info:
        verify(PAYLOAD, headers(timestamp="x" * 50), SECRET, now=TIMESTAMP)
    assert str(info.value) == f"bad webhook-timestamp {'x' * 40!r}: expected integer unix seconds"


def test_exact_reasons() -> None:
    with pytest.raises(WebhookVerificationError, match=r"^no matching signature$"):
        verify(PAYLOAD, headers(signature="v1,AAAA"), SECRET, now=TIMESTAMP)
    body = b"[1]"
    signed = headers(signature=sign(SECRET, MSG_ID, TIMESTAMP, body))
    with pytest.raises(WebhookVerificationError,
                       match=r"^signature ok but the body is not a JSON object$"):
        verify(body, signed, SECRET, now=TIMESTAMP)
    with pytest.raises(ValueError, match=r"^no secret to verify with$"):
        verify(PAYLOAD, headers(), [], now=TIMESTAMP)
    with pytest.raises(ValueError, match=r"^empty webhook secret$"):
        verify(PAYLOAD, headers(), "", now=TIMESTAMP)


def test_a_whsec_secret_with_a_non_base64_character_is_unusable() -> None:
    """Strict base64: a stray character is an error, not silently dropped (which would turn
    ``whsec_MfKQ!9r8…`` into the key of ``whsec_MfKQ9r8…``)."""
    with pytest.raises(ValueError, match="must be base64"):
        verify(PAYLOAD, headers(), "whsec_MfKQ!9r8GKYqrTwjUPD8ILPZIo2LaLaSw", now=TIMESTAMP)
    # a bare secret with a stray character is only its UTF-8 bytes, never the base64 key
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(PAYLOAD, headers(), "MfKQ!9r8GKYqrTwjUPD8ILPZIo2LaLaSw", now=TIMESTAMP)


def test_an_unpadded_secret_missing_one_pad_character_is_accepted() -> None:
    key = bytes(range(32))  # 44 base64 characters, the last one "="
    padded = "whsec_" + base64.b64encode(key).decode()
    assert padded.endswith("=") and not padded.endswith("==")
    signature = sign(padded, MSG_ID, TIMESTAMP, PAYLOAD.encode())
    assert verify(PAYLOAD, headers(signature), padded.rstrip("="), now=TIMESTAMP)


def test_a_signature_with_a_non_base64_character_is_rejected() -> None:
    tampered = SIGNATURE[:10] + "!" + SIGNATURE[10:]
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(PAYLOAD, headers(tampered), SECRET, now=TIMESTAMP)


def test_a_malformed_entry_does_not_hide_the_valid_one_after_it() -> None:
    assert verify(PAYLOAD, headers(f"v1,not-base64! v1 {SIGNATURE}"), SECRET, now=TIMESTAMP)
