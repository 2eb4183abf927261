"""Standard Webhooks signing and verification (payflow.webhooks.signing), checked against the
published test vector and cross-checked with the independent ``standardwebhooks`` package.

The vector comes from github.com/standard-webhooks/standard-webhooks,
libraries/python/tests/test_webhooks.py (``test_sign_function``; the same values are in
libraries/javascript/src/webhook.test.ts "sign function works"). The signed-content example
is from spec/standard-webhooks.md, "Signature scheme"."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as RefVerificationError

from payflow.webhooks import WebhookVerificationError, new_secret, verify
from payflow.webhooks.signing import sign, signature_header

# --- the reference vector ---
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BARE_SECRET = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
PAYLOAD = '{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
# test_invalid_signature_raises_error: one base64 character off
NEAR_MISS = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="
# test_multi_sig_payload_is_valid: junk entries around the valid one
JUNK_SIGNATURES = ["v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
                   "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="]
# spec/standard-webhooks.md, "Example headers": an asymmetric signature, which v1 ignores
SPEC_V1A = ("v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8E"
            "M+m7TBAg==")


def vector_headers(**changes: str) -> dict[str, str]:
    headers = {"webhook-id": MSG_ID, "webhook-timestamp": str(TIMESTAMP),
               "webhook-signature": SIGNATURE}
    headers.update({key.replace("_", "-"): value for key, value in changes.items()})
    return headers


def test_sign_reproduces_the_reference_vector() -> None:
    assert sign(SECRET, MSG_ID, TIMESTAMP, PAYLOAD.encode()) == SIGNATURE
    assert signature_header([SECRET], MSG_ID, TIMESTAMP, PAYLOAD.encode()) == SIGNATURE


def test_signed_content_is_the_specs_id_dot_timestamp_dot_payload() -> None:
    body = (b'{"type":"contact.created","timestamp":"2022-11-03T20:26:10.344522Z",'
            b'"data":{"id":"1f81eb52-5198-4599-803e-771906343485"}}')
    content = b"msg_2KWPBgLlAfxdpx2AI54pPJ85f4W.1674087231." + body  # the spec's example
    digest = hmac.new(base64.b64decode(BARE_SECRET), content, hashlib.sha256).digest()
    assert sign(SECRET, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", 1674087231, body) == (
        "v1," + base64.b64encode(digest).decode())


@pytest.mark.parametrize("secret", [SECRET, BARE_SECRET, [SECRET], ["whsec_AAAA", BARE_SECRET]])
@pytest.mark.parametrize("payload", [PAYLOAD, PAYLOAD.encode()])
def test_verify_accepts_the_reference_vector(secret: str | list[str],
                                             payload: str | bytes) -> None:
    assert verify(payload, vector_headers(), secret, now=TIMESTAMP) == {"test": 2432232314}


@pytest.mark.parametrize("prefix", ["webhook", "Webhook", "WEBHOOK", "svix", "Svix"])
def test_header_names_are_case_insensitive_and_svix_aliases_work(prefix: str) -> None:
    headers = {f"{prefix}-{key.split('-')[1]}": value for key, value in vector_headers().items()}
    assert verify(PAYLOAD, headers, SECRET, now=TIMESTAMP) == {"test": 2432232314}


@pytest.mark.parametrize("offset", [-300, -1, 0, 1, 300])
def test_timestamps_within_the_tolerance_pass(offset: int) -> None:
    assert verify(PAYLOAD, vector_headers(), SECRET, now=TIMESTAMP + offset)


@pytest.mark.parametrize(("offset", "tolerance", "reason"), [
    (301, 300, "too old"), (-301, 300, "too new"), (3600 * 24, 300, "too old"),
    (11, 10, "too old"), (-11, 10, "too new"),
])
def test_stale_and_future_timestamps_are_rejected(offset: int, tolerance: int,
                                                  reason: str) -> None:
    with pytest.raises(WebhookVerificationError, match=reason):
        verify(PAYLOAD, vector_headers(), SECRET, now=TIMESTAMP + offset,
               tolerance_seconds=tolerance)


def test_the_default_clock_rejects_the_2021_vector() -> None:
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify(PAYLOAD, vector_headers(), SECRET)


@pytest.mark.parametrize(("payload", "headers"), [
    ('{"test": 2432232315}', vector_headers()),  # tampered body
    (PAYLOAD + " ", vector_headers()),  # re-serialised body
    (PAYLOAD, vector_headers(webhook_id="msg_other")),  # another id
    (PAYLOAD, vector_headers(webhook_timestamp=str(TIMESTAMP + 1))),  # another timestamp
    (PAYLOAD, vector_headers(webhook_signature=NEAR_MISS)),
    (PAYLOAD, vector_headers(webhook_signature="v2," + SIGNATURE[3:])),  # unknown version
    (PAYLOAD, vector_headers(webhook_signature=SIGNATURE[:8])),  # partial (JS tests)
    (PAYLOAD, vector_headers(webhook_signature="v1,")),
    (PAYLOAD, vector_headers(webhook_signature="v1,dawfeoifkpqwoekfpqoekf")),
    (PAYLOAD, vector_headers(webhook_signature="v1,not base64!")),
    (PAYLOAD, vector_headers(webhook_signature="v1")),
    (PAYLOAD, vector_headers(webhook_signature=SIGNATURE[3:])),  # no version
])
def test_tampering_is_rejected(payload: str, headers: dict[str, str]) -> None:
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(payload, headers, SECRET, now=TIMESTAMP)


@pytest.mark.parametrize("secret", ["whsec_" + base64.b64encode(b"x" * 24).decode(),
                                    "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSv", "another secret"])
def test_a_wrong_secret_is_rejected(secret: str) -> None:
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(PAYLOAD, vector_headers(), secret, now=TIMESTAMP)
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(PAYLOAD, vector_headers(), [secret, new_secret()], now=TIMESTAMP)


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_or_empty_header_is_rejected(header: str) -> None:
    headers = vector_headers()
    del headers[header]
    with pytest.raises(WebhookVerificationError, match=f"missing header {header}"):
        verify(PAYLOAD, headers, SECRET, now=TIMESTAMP)
    headers[header] = ""
    with pytest.raises(WebhookVerificationError, match=f"missing header {header}"):
        verify(PAYLOAD, headers, SECRET, now=TIMESTAMP)


def test_no_headers_at_all() -> None:
    with pytest.raises(WebhookVerificationError,
                       match="missing header webhook-id, webhook-timestamp, webhook-signature"):
        verify(PAYLOAD, {}, SECRET, now=TIMESTAMP)


@pytest.mark.parametrize("value", ["hello", "1614265330.0", "-1614265330", " 1614265330",
                                   "1_614_265_330", "١٦١٤٢٦٥٣٣٠", "9" * 40])
def test_a_bad_timestamp_is_rejected(value: str) -> None:
    with pytest.raises(WebhookVerificationError, match="bad webhook-timestamp"):
        verify(PAYLOAD, vector_headers(webhook_timestamp=value), SECRET, now=TIMESTAMP)


def test_several_signatures_in_one_header() -> None:
    header = " ".join([*JUNK_SIGNATURES, SIGNATURE, JUNK_SIGNATURES[0]])
    assert verify(PAYLOAD, vector_headers(webhook_signature=header), SECRET, now=TIMESTAMP)
    header = f"{SPEC_V1A}  {SIGNATURE}"  # the spec's v1a entry is skipped, extra space too
    assert verify(PAYLOAD, vector_headers(webhook_signature=header), SECRET, now=TIMESTAMP)
    header = " ".join([*JUNK_SIGNATURES, SPEC_V1A, NEAR_MISS])
    with pytest.raises(WebhookVerificationError):
        verify(PAYLOAD, vector_headers(webhook_signature=header), SECRET, now=TIMESTAMP)


def test_rotation_either_secret_verifies_a_header_signed_with_both() -> None:
    old, new, unrelated = new_secret(), new_secret(), new_secret()
    now = int(time.time())
    body = b'{"id": "evt_1", "type": "payment.success"}'
    header = signature_header([old, new], "evt_1", now, body)
    assert len(header.split(" ")) == 2
    headers = {"webhook-id": "evt_1", "webhook-timestamp": str(now), "webhook-signature": header}
    for secrets in (old, new, [old], [new], [unrelated, new], [old, unrelated]):
        assert verify(body, headers, secrets)["id"] == "evt_1"
    with pytest.raises(WebhookVerificationError):
        verify(body, headers, unrelated)
    # and a receiver that already moved to the new secret accepts a sender still on the old
    # one only when it keeps the old secret too
    headers["webhook-signature"] = signature_header([old], "evt_1", now, body)
    assert verify(body, headers, [new, old])
    with pytest.raises(WebhookVerificationError):
        verify(body, headers, new)


def test_payflows_own_bare_secret_signatures_verify() -> None:
    """``sign`` uses a secret without ``whsec_`` as its UTF-8 bytes (the daemon's
    ``secret = "…"``); ``verify`` accepts that as well as the reference's base64 reading."""
    for bare in ("a shared secret, not base64", BARE_SECRET):
        signature = sign(bare, MSG_ID, TIMESTAMP, PAYLOAD.encode())
        headers = vector_headers(webhook_signature=signature)
        assert verify(PAYLOAD, headers, bare, now=TIMESTAMP) == {"test": 2432232314}
    assert sign(BARE_SECRET, MSG_ID, TIMESTAMP, PAYLOAD.encode()) != SIGNATURE


def test_a_verified_body_must_be_a_json_object() -> None:
    for body, reason in ((b"[1, 2]", "not a JSON object"), (b"not json", "not JSON"),
                         (b"\xff\xfe", "not JSON")):
        headers = vector_headers(webhook_signature=sign(SECRET, MSG_ID, TIMESTAMP, body))
        with pytest.raises(WebhookVerificationError, match=reason):
            verify(body, headers, SECRET, now=TIMESTAMP)


@pytest.mark.parametrize("secret", ["", "whsec_", "whsec_not base64!", "whsec_A", []])
def test_unusable_secrets_are_a_value_error(secret: str | list[str]) -> None:
    with pytest.raises(ValueError, match="secret") as info:
        verify(PAYLOAD, vector_headers(), secret, now=TIMESTAMP)
    assert not isinstance(info.value, WebhookVerificationError)


def test_unpadded_whsec_secrets_are_accepted_like_the_reference() -> None:
    unpadded = "whsec_" + base64.b64encode(b"k" * 25).decode().rstrip("=")
    assert not unpadded.endswith("=")
    now = int(time.time())
    signature = Webhook(unpadded).sign(MSG_ID, datetime.fromtimestamp(now, UTC), PAYLOAD)
    headers = vector_headers(webhook_timestamp=str(now), webhook_signature=signature)
    assert verify(PAYLOAD, headers, unpadded) == {"test": 2432232314}


# --- cross-checks with the independent `standardwebhooks` package -----------------------------


def test_the_reference_package_signs_the_vector_like_us() -> None:
    stamp = datetime.fromtimestamp(TIMESTAMP, UTC)
    assert Webhook(SECRET).sign(MSG_ID, stamp, PAYLOAD) == SIGNATURE
    assert Webhook(BARE_SECRET).sign(MSG_ID, stamp, PAYLOAD) == SIGNATURE


@pytest.mark.parametrize("nbytes", [24, 32, 64])
def test_the_reference_package_verifies_our_signature_header(nbytes: int) -> None:
    secret, old = new_secret(nbytes), new_secret()
    now = int(time.time())
    body = '{"id": "evt_x", "type": "payment.failed", "data": {"amount": 1999, "note": "é"}}'
    for signers in ([secret], [old, secret], [secret, old]):
        headers = {"webhook-id": "evt_x", "webhook-timestamp": str(now),
                   "webhook-signature": signature_header(signers, "evt_x", now, body.encode())}
        assert Webhook(secret).verify(body.encode(), headers)["data"]["note"] == "é"
    headers["webhook-signature"] = signature_header([old], "evt_x", now, body.encode())
    with pytest.raises(RefVerificationError):
        Webhook(secret).verify(body.encode(), headers)


@pytest.mark.parametrize("nbytes", [24, 32, 64])
def test_we_verify_the_reference_packages_signature(nbytes: int) -> None:
    secret = new_secret(nbytes)
    now = int(time.time())
    body = '{"type": "example.event", "data": {"foo": "bar", "fizzbuzz": 2}}'
    signature = Webhook(secret).sign("msg_ref", datetime.fromtimestamp(now, UTC), body)
    headers = {"webhook-id": "msg_ref", "webhook-timestamp": str(now),
               "webhook-signature": signature}
    assert verify(body, headers, secret)["data"] == {"foo": "bar", "fizzbuzz": 2}
    assert verify(body, headers, secret.removeprefix("whsec_"))["type"] == "example.event"
    with pytest.raises(WebhookVerificationError):
        verify(body, headers, new_secret(nbytes))


# --- new_secret --------------------------------------------------------------------------------


@pytest.mark.parametrize("nbytes", [24, 25, 32, 63, 64])
def test_new_secret_format(nbytes: int) -> None:
    secret = new_secret(nbytes)
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]+={0,2}", secret)
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == nbytes


def test_new_secret_default_is_32_random_bytes() -> None:
    secrets = {new_secret() for _ in range(20)}
    assert len(secrets) == 20
    assert all(len(base64.b64decode(s[6:])) == 32 for s in secrets)


@pytest.mark.parametrize("nbytes", [-1, 0, 16, 23, 65, 512])
def test_new_secret_bounds(nbytes: int) -> None:
    with pytest.raises(ValueError, match="24 to 64 bytes"):
        new_secret(nbytes)
