"""Property: whatever bytes land on either queue, the daemon stays up and every input ends
processed or dead-lettered (nothing stuck, nothing silently dropped)."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import RedisServer, free_port, need
from daemon_proc import Daemon, daemon_env
from payflow.errors import InvalidJob
from payflow.jobs import parse_job

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

QUEUES = ("payflow_jobs", "webhook_jobs")

_text_jobs = st.from_regex(
    r"\A(process_payment|webhook|refund)?:?[a-z_.]{0,16}:?[A-Za-z0-9_\-]{0,12}\s?\Z")
_envelopes = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 1, 2, "1"]),
     "kind": st.sampled_from(["payment", "webhook", "refund", None])},
    optional={
        "payment_id": st.from_regex(r"\Apay_[a-z0-9]{1,8}\Z") | st.integers(),
        "method": st.sampled_from(["upi", "card", "bitcoin"]),
        "type": st.sampled_from(["payment.success", "payment.failed", "payment.nope"]),
        "attempt": st.integers(-2, 3),
        "endpoint": st.sampled_from(["log", "ep_unknown"]),
        "event_id": st.sampled_from(["evt_unknown", "a b"]) | st.integers(),
        "refund_id": st.sampled_from(["re_unknown"]),
        "event": st.none() | st.dictionaries(st.sampled_from(["id", "type", "data"]),
                                             st.text(max_size=5)),
    }).map(lambda d: json.dumps(d).encode())
_inputs = st.one_of(st.binary(max_size=200), _text_jobs.map(str.encode), _envelopes,
                    st.sampled_from([b"", b"{}", b"null", b"[]", b"\xff", b" " * 10]))


@pytest.fixture(scope="module")
def fuzz_daemon() -> Iterator[tuple[Daemon, redis.Redis]]:
    need("redis-server", shutil.which("redis-server") is not None)
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        env = daemon_env(PAYFLOW_HTTP_PORT=str(free_port()), PAYFLOW_REDIS_URL=server.url,
                         PAYFLOW_WEBHOOKS_SIMULATE_FAILURE_RATE="0",
                         PAYFLOW_QUEUE_PROMOTE_INTERVAL_SECONDS="0.05")
        d = Daemon(Path(tmp), env, ["--log-format", "json"])
        d.start()
        client = redis.Redis(port=server.port)
        try:
            yield d, client
        finally:
            client.close()
            d.kill()
            server.kill()


def _drained(r: redis.Redis) -> bool:
    busy = [r.llen(q) for q in QUEUES] + [r.llen(k) for k in r.keys("{*}:processing:*")]
    return not any(busy) and not any(r.zcard(f"{{{q}}}:delayed") for q in QUEUES)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.tuples(st.sampled_from(QUEUES), _inputs), min_size=1, max_size=12))
def test_any_input_ends_processed_or_dead(fuzz_daemon: tuple[Daemon, redis.Redis],
                                          batch: list[tuple[str, bytes]]) -> None:
    d, r = fuzz_daemon
    dead_before = {q: int(r.llen(f"{{{q}}}:dead")) for q in QUEUES}
    for queue, raw in batch:
        r.lpush(queue, raw)
    deadline = time.monotonic() + 20
    while not _drained(r):
        assert time.monotonic() < deadline, "jobs stuck in Redis"
        time.sleep(0.02)
    assert d.proc is not None and d.proc.poll() is None  # the daemon stays up
    new_dead: list[bytes] = []
    for q in QUEUES:
        added = int(r.llen(f"{{{q}}}:dead")) - dead_before[q]
        for entry in r.lrange(f"{{{q}}}:dead", 0, added - 1) if added else []:
            body = json.loads(entry)
            new_dead.append(body["job"].encode("utf-8", "surrogateescape") if "job" in body
                            else __import__("base64").b64decode(body["job_b64"]))
    unparseable = []
    for _, raw in batch:
        try:
            parse_job(raw)
        except InvalidJob:
            unparseable.append(raw)
    # Every input that cannot even be parsed is dead-lettered, with its bytes kept; a dead
    # entry is always one of the inputs (a parseable job may still die, e.g. an unknown
    # endpoint, a payment the store does not know named without a method, an unknown refund,
    # or a webhook job naming an event the store does not have).
    assert sorted(unparseable) == sorted(j for j in new_dead if j in unparseable)
    inputs = [raw for _, raw in batch]
    assert all(j in inputs for j in new_dead)
