from __future__ import annotations

import json
from unittest.mock import ANY

import pytest

from payflow.errors import InvalidJob
from payflow.jobs import PaymentJob, RefundJob, WebhookJob, describe, parse_job
from payflow.models import Event, Payment, PaymentStatus


def test_legacy_payment_job() -> None:
    job = parse_job(b"process_payment:pay_test_1001:upi")
    assert job == PaymentJob(payment_id="pay_test_1001", method="upi")
    assert job.legacy_text == "process_payment:pay_test_1001:upi"


def test_legacy_webhook_job() -> None:
    job = parse_job(b"webhook:payment.success:pay_test_1001")
    assert job == WebhookJob(event_type="payment.success", subject_id="pay_test_1001")
    assert job.legacy_text == "webhook:payment.success:pay_test_1001"


def test_envelopes_round_trip() -> None:
    pjob = PaymentJob(payment_id="pay_1", method="card", attempt=2, jid="job_x")
    assert parse_job(pjob.encode()) == pjob
    assert parse_job(PaymentJob(payment_id="pay_1").encode()) == PaymentJob(payment_id="pay_1",
                                                                            jid=ANY)
    wjob = WebhookJob(event_id="evt_1", endpoint="ep_1", attempt=3, jid="job_y")
    assert parse_job(wjob.encode()) == wjob
    # the legacy form inside an envelope: the type and the payment (or refund) instead of an id
    legacy = WebhookJob(event_type="payment.failed", subject_id="pay_1", endpoint="ep_1",
                        attempt=3, jid="job_z")
    assert parse_job(legacy.encode()) == legacy


def test_a_webhook_job_names_its_event_and_carries_nothing_else() -> None:
    event = Event.for_payment(Payment(id="pay_1", method="upi", amount=100, currency="INR",
                                      status=PaymentStatus.SUCCEEDED))
    raw = WebhookJob.for_event(event, endpoint="ep_1", attempt=2, jid="job_w").encode()
    body = json.loads(raw)
    assert body == {"v": 1, "kind": "webhook", "jid": "job_w", "attempt": 2,
                    "event_id": event.id, "type": "payment.success", "payment_id": "pay_1",
                    "endpoint": "ep_1"}
    assert "data" not in raw.decode() and "amount" not in raw.decode()  # no snapshot
    # The id is what counts: the event itself is read from the store by whoever handles the
    # job; the type and payment id only label its log lines.
    assert parse_job(raw) == WebhookJob(event_id=event.id, event_type="payment.success",
                                        subject_id="pay_1", endpoint="ep_1", attempt=2,
                                        jid="job_w")


def test_snapshots_of_earlier_envelopes_are_ignored() -> None:
    old_webhook = json.dumps({"v": 1, "kind": "webhook", "attempt": 1, "jid": "job_1",
                              "type": "payment.success", "payment_id": "pay_1",
                              "event": {"id": "evt_old", "type": "payment.success",
                                        "timestamp": "t", "data": {"id": "pay_1",
                                                                   "amount": 10**9}}})
    assert parse_job(old_webhook.encode()) == WebhookJob(
        event_id="evt_old", event_type="payment.success", subject_id="pay_1", attempt=1,
        jid="job_1")
    old_payment = (b'{"v":1,"kind":"payment","payment_id":"p","jid":"job_2",'
                   b'"payment":{"id":"q","amount":5}}')
    assert parse_job(old_payment) == PaymentJob(payment_id="p", jid="job_2")
    old_refund = (b'{"v":1,"kind":"refund","refund_id":"re_1","payment_id":"p","jid":"job_3",'
                  b'"refund":[]}')
    assert parse_job(old_refund) == RefundJob(refund_id="re_1", payment_id="p", jid="job_3")


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
        (b'{"v":1,"kind":"webhook","event_id":"a b"}', "invalid event_id"),
        (b'{"v":1,"kind":"webhook","event":{"id":7}}', "invalid event_id 7"),
        (b'{"v":1,"kind":"webhook"}', "unknown event type None"),
        (b'{"v":1,"kind":"webhook","type":"payment.success"}', "invalid payment_id None"),
        (b'{"v":1,"kind":"webhook","event_id":"e","endpoint":"a/b"}', "invalid endpoint"),
        (b'{"v":1,"kind":"payment","payment_id":"p","method":"cash"}',
         "unknown payment method 'cash'"),
        (b'{"v":1,"kind":"refund","refund_id":"re_1"}', "invalid payment_id None"),
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
    job = RefundJob(refund_id="re_1", payment_id="pay_1", attempt=1, jid="job_r")
    assert parse_job(job.encode()) == job
    assert json.loads(job.encode()) == {"v": 1, "kind": "refund", "jid": "job_r", "attempt": 1,
                                        "refund_id": "re_1", "payment_id": "pay_1"}
