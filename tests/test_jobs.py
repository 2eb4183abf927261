from __future__ import annotations

import json

import pytest

from payflow.errors import InvalidJob
from payflow.jobs import PaymentJob, RefundJob, WebhookJob, describe, parse_job


def test_legacy_payment_job() -> None:
    job = parse_job(b"process_payment:pay_test_1001:upi")
    assert job == PaymentJob(payment_id="pay_test_1001", method="upi")
    assert job.legacy_text == "process_payment:pay_test_1001:upi"


def test_legacy_webhook_job() -> None:
    job = parse_job(b"webhook:payment.success:pay_test_1001")
    assert job == WebhookJob(event_type="payment.success", payment_id="pay_test_1001")
    assert job.legacy_text == "webhook:payment.success:pay_test_1001"


def test_envelopes_round_trip() -> None:
    pjob = PaymentJob(payment_id="pay_1", method="card", payment={"id": "pay_1",
                                                                  "method": "card"},
                      attempt=2, jid="job_x")
    assert parse_job(pjob.encode()) == pjob
    event = {"id": "evt_1", "type": "payment.failed", "timestamp": "t", "data": {"id": "pay_1"}}
    wjob = WebhookJob(event_type="payment.failed", payment_id="pay_1", event=event,
                      endpoint="ep_1", attempt=3, jid="job_y")
    assert parse_job(wjob.encode()) == wjob


def test_encode_assigns_a_job_id() -> None:
    body = json.loads(PaymentJob(payment_id="pay_1", method="upi").encode())
    assert body["jid"].startswith("job_")
    assert body == {"v": 1, "kind": "payment", "jid": body["jid"], "attempt": 0,
                    "payment_id": "pay_1", "method": "upi"}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty job"),
        (b"hello world", "unrecognised job"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"x" * 70000, "exceeds the limit"),
        (b"process_payment:pay_1:bitcoin", "unknown payment method 'bitcoin'"),
        (b"process_payment::upi", "unrecognised job"),
        (b"webhook:payment.exploded:pay_1", "unknown event type 'payment.exploded'"),
        (b"{not json", "malformed JSON"),
        (b"[1,2]", "unrecognised job"),
        (b'{"v":2,"kind":"payment"}', "unsupported envelope version 2"),
        (b'{"v":1,"kind":"chargeback"}', "unknown job kind 'chargeback'"),
        (b'{"v":1,"kind":"payment","payment_id":"a b"}', "invalid payment_id"),
        (b'{"v":1,"kind":"payment","payment_id":"p","attempt":-1}', "invalid attempt"),
        (b'{"v":1,"kind":"webhook","event":{"id":"e","timestamp":"t","type":"payment.success",'
         b'"data":[]}}', "'data' must be an object"),
        (b'{"v":1,"kind":"payment","payment_id":"p","payment":{"id":"q"}}', "snapshot"),
    ],
)
def test_invalid_jobs_say_why(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidJob) as info:
        parse_job(raw, max_bytes=65536)
    assert reason in info.value.reason


def test_describe_bounds_and_escapes() -> None:
    assert describe(b"abc") == "abc"
    shown = describe(b"\xff" * 500)
    assert shown.startswith("\\xff") and shown.endswith("(500 bytes)")


def test_refund_envelope_round_trips() -> None:
    job = RefundJob(refund_id="re_1", payment_id="pay_1",
                    refund={"id": "re_1", "payment_id": "pay_1", "amount": 5}, attempt=1,
                    jid="job_r")
    assert parse_job(job.encode()) == job
    with pytest.raises(InvalidJob, match="snapshot"):
        parse_job(b'{"v":1,"kind":"refund","refund_id":"re_1","payment_id":"p","refund":[]}')
