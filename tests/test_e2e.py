"""End to end: `payflow serve` as a subprocess, driven as a user drives it."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import redis
from aiohttp import web

from conftest import REPO, RedisServer, free_port
from daemon_proc import PAYFLOW, Daemon, daemon_env
from payflow.models import event_id_for

pytestmark = pytest.mark.e2e

SEED_JOB = "process_payment:pay_test_1001:upi"
SEED_LINES = [
    "Job received: process_payment:pay_test_1001:upi",
    "Processing payment: pay_test_1001",
    "PAYMENT SUCCESS for pay_test_1001",
    "Webhook job queued: webhook:payment.success:pay_test_1001",
    "Delivering webhook: webhook:payment.success:pay_test_1001",
    "Webhook delivered: webhook:payment.success:pay_test_1001",
]


def lpush(port: int, queue: str, *jobs: bytes | str) -> None:
    """LPUSH as the seed's users do: with redis-cli when it is installed."""
    cli = shutil.which("redis-cli")
    if cli and all(isinstance(j, str) for j in jobs):
        subprocess.run([cli, "-p", str(port), "LPUSH", queue, *map(str, jobs)], check=True,
                       capture_output=True, timeout=10)
        return
    client = redis.Redis(port=port)
    client.lpush(queue, *jobs)
    client.close()


def seed_lines_in_order(messages: list[str]) -> list[str]:
    """The messages that are seed lines (a message may carry fields after the text)."""
    found = []
    for message in messages:
        for seed in SEED_LINES:
            if message == seed or message.startswith(seed + " "):
                found.append(seed)
    return found


def test_seed_walkthrough_on_the_shipped_config(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(args=["--config", str(REPO / "payflow.toml"), "--log-format", "console"])
    assert "it keeps nothing" in d.output()  # the embedded mode warns
    port = int(d.env["PAYFLOW_REDIS_EMBEDDED_PORT"])
    lpush(port, "payflow_jobs", SEED_JOB)
    d.wait_for("Webhook delivered: webhook:payment.success:pay_test_1001")
    assert seed_lines_in_order(d.messages()) == SEED_LINES
    assert d.stop() == 0


def test_seed_lines_in_json_on_a_real_redis(make_daemon: Callable[..., Daemon],
                                            redis_server: RedisServer) -> None:
    # With a real Redis the log sink is off unless configured.
    d = make_daemon(redis_server.url, args=["--log-format", "json"],
                    PAYFLOW_WEBHOOKS_LOG_SINK="true")
    lpush(redis_server.port, "payflow_jobs", SEED_JOB)
    d.wait_for("Webhook delivered: webhook:payment.success:pay_test_1001")
    events = [line["event"] for line in d.json_lines()]
    assert [e for e in events if e in SEED_LINES] == SEED_LINES
    assert "it keeps nothing" not in d.output()
    # A legacy webhook job is delivered when the store backs it (the event it names is true)...
    lpush(redis_server.port, "webhook_jobs", "webhook:payment.success:pay_test_1001")
    d.wait_for("Webhook delivered: webhook:payment.success:pay_test_1001", count=2)
    # ...and dead-lettered when it does not (no such payment in that state)
    lpush(redis_server.port, "webhook_jobs", "webhook:payment.failed:pay_legacy_7")
    d.wait_for("Job rejected: dead-lettered")
    assert "Webhook delivered: webhook:payment.failed:pay_legacy_7" not in d.output()
    r = redis.Redis(port=redis_server.port)
    (entry,) = [json.loads(e) for e in r.lrange("{webhook_jobs}:dead", 0, -1)]
    r.close()
    assert entry["job"] == "webhook:payment.failed:pay_legacy_7"
    assert "the store does not have it in that state" in entry["reason"]
    assert d.stop() == 0


def test_without_the_log_sink_an_event_nobody_subscribes_to_stays_recorded(
        make_daemon: Callable[..., Daemon], redis_server: RedisServer) -> None:
    d = make_daemon(redis_server.url)  # a real Redis: the log sink is off by default
    lpush(redis_server.port, "payflow_jobs", SEED_JOB)
    d.wait_for("webhook.no_subscribers")
    assert "Webhook delivered" not in d.output()
    event_id = event_id_for("pay_test_1001", "payment.success")
    with urllib.request.urlopen(f"{d.base_url}/v1/events/{event_id}", timeout=10) as resp:
        assert json.load(resp)["data"]["id"] == "pay_test_1001"  # an endpoint may recover it
    with urllib.request.urlopen(f"{d.base_url}/v1/events/{event_id}/attempts",
                                timeout=10) as resp:
        assert json.load(resp)["data"] == []  # never tried
    r = redis.Redis(port=redis_server.port)
    assert r.llen("{webhook_jobs}:dead") == 0
    r.close()
    assert d.stop() == 0


async def _receiver(hits: list[dict[str, Any]], statuses: list[int]) -> web.AppRunner:
    async def hook(request: web.Request) -> web.Response:
        hits.append({"headers": dict(request.headers), "body": await request.json()})
        return web.Response(status=statuses.pop(0) if statuses else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    return runner


async def _wait(pred: Callable[[], bool], timeout: float, what: str, d: Daemon) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.05)
    assert pred(), what + "\n" + d.output()[-3000:]


async def test_posted_payment_reaches_a_local_receiver(
        make_daemon: Callable[..., Daemon], redis_server: RedisServer) -> None:
    hits: list[dict[str, Any]] = []
    runner = await _receiver(hits, [])
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        d = make_daemon(redis_server.url,
                        PAYFLOW_WEBHOOKS_ENDPOINTS=f"http://127.0.0.1:{port}/hook")
        async with aiohttp.ClientSession() as http:
            body = {"amount": 1999, "currency": "INR", "method": "upi",
                    "upi": {"vpa": "asha@okbank"}, "metadata": {"order": "42"}}
            async with http.post(f"{d.base_url}/v1/payments", json=body) as resp:
                assert resp.status == 202
                created = await resp.json()
                assert resp.headers["Location"] == f"/v1/payments/{created['id']}"
            assert created["status"] == "pending"
            await _wait(lambda: len(hits) >= 1, 15, "no webhook arrived", d)
            async with http.get(f"{d.base_url}/v1/payments/{created['id']}") as resp:
                assert resp.status == 200
                assert (await resp.json())["status"] == "succeeded"
        (hit,) = hits
        event = hit["body"]
        assert event["type"] == "payment.success"
        assert event["id"] == event_id_for(created["id"], "payment.success")
        assert event["data"]["id"] == created["id"]
        assert event["data"]["amount"] == 1999 and event["data"]["metadata"] == {"order": "42"}
        assert hit["headers"]["webhook-id"] == event["id"]
        assert int(hit["headers"]["webhook-timestamp"]) > 0
        async with aiohttp.ClientSession() as http, http.get(f"{d.base_url}/metrics") as resp:
            text = await resp.text()
        assert 'payflow_payments_total{status="succeeded"} 1.0' in text
        assert 'payflow_webhook_attempts_total{outcome="succeeded",status="2xx"} 1.0' in text
        assert 'payflow_jobs_total{outcome="done",queue="payflow_jobs"} 1.0' in text
        assert d.stop() == 0
    finally:
        await runner.cleanup()


async def test_failing_receiver_is_retried_with_delay_then_dead(
        make_daemon: Callable[..., Daemon], redis_server: RedisServer) -> None:
    hits: list[dict[str, Any]] = []
    runner = await _receiver(hits, [500, 503, 500, 500, 500, 500])
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        d = make_daemon(redis_server.url,
                        PAYFLOW_WEBHOOKS_ENDPOINTS=f"http://127.0.0.1:{port}/hook",
                        PAYFLOW_WEBHOOKS_MAX_ATTEMPTS="3",
                        PAYFLOW_WEBHOOKS_RETRY_SCHEDULE="0.2,0.2",
                        PAYFLOW_QUEUE_PROMOTE_INTERVAL_SECONDS="0.05")
        lpush(redis_server.port, "payflow_jobs", "process_payment:pay_flaky_1:card")
        r = redis.Redis(port=redis_server.port)
        await _wait(lambda: r.llen("{webhook_jobs}:dead") == 1, 20, "not dead-lettered", d)
        assert len(hits) == 3  # max_attempts, then no more
        ids = {h["headers"]["webhook-id"] for h in hits}
        assert ids == {event_id_for("pay_flaky_1", "payment.success")}  # stable across retries
        entry = json.loads(r.lindex("{webhook_jobs}:dead", 0) or b"{}")
        assert "gave up after 3 attempts" in entry["reason"] and "HTTP 500" in entry["reason"]
        assert json.loads(entry["job"])["event_id"] in ids  # the job names the event
        assert d.output().count("Webhook delivery failed: webhook:payment.success:pay_flaky_1") == 2
        r.close()
        assert d.stop() == 0
    finally:
        await runner.cleanup()


def test_bad_jobs_go_to_dead_and_the_daemon_keeps_running(
        make_daemon: Callable[..., Daemon], redis_server: RedisServer) -> None:
    d = make_daemon(redis_server.url, PAYFLOW_WEBHOOKS_LOG_SINK="true")
    bad: list[bytes] = [b"garbage", b"", b"\xff\xfe\x00\x01", b"x" * 2_000_000, b"y" * 1_000_000,
                        b'{"v":1,"kind":"chargeback"}', b"process_payment:pay_1:bitcoin"]
    # Jobs that parse but name what the store does not have (each on its own kind's queue).
    unknown: dict[str, list[bytes]] = {
        "payflow_jobs": [b'{"v":1,"kind":"payment","payment_id":"pay_nope"}',
                         b'{"v":1,"kind":"refund","refund_id":"re_nope","payment_id":"pay_x"}'],
        "webhook_jobs": [b'{"v":1,"kind":"webhook","event_id":"evt_nope"}',
                         b"webhook:payment.success:pay_nope"],
    }
    for queue in ("payflow_jobs", "webhook_jobs"):
        lpush(redis_server.port, queue, *bad, *unknown[queue])
    lpush(redis_server.port, "payflow_jobs", SEED_JOB)
    d.wait_for("Webhook delivered: webhook:payment.success:pay_test_1001")
    total = 2 * len(bad) + sum(map(len, unknown.values()))
    d.wait_for("Job rejected: dead-lettered", count=total)
    r = redis.Redis(port=redis_server.port)
    expected = {"payflow_jobs": ("unknown payment 'pay_nope'", "unknown refund 're_nope'"),
                "webhook_jobs": ("unknown event 'evt_nope'",
                                 "the store does not have it in that state")}
    for queue in ("payflow_jobs", "webhook_jobs"):
        entries = [json.loads(e) for e in r.lrange(f"{{{queue}}}:dead", 0, -1)]
        assert len(entries) == len(bad) + len(unknown[queue])
        assert all(e["reason"] and e["queue"] == queue and e["failed_at"] for e in entries)
        reasons = " | ".join(e["reason"] for e in entries)
        for part in ("empty job", "not UTF-8", "exceeds the limit", "unknown job kind",
                     "unrecognised job", "unknown payment method 'bitcoin'", *expected[queue]):
            assert part in reasons
    assert d.output().count("Job rejected: dead-lettered") == total  # one line each
    r.close()
    assert d.stop() == 0


def test_sigterm_finishes_or_requeues_every_job(make_daemon: Callable[..., Daemon],
                                                redis_server: RedisServer) -> None:
    d = make_daemon(redis_server.url, PAYFLOW_PROCESSOR_LATENCY_MS="3000",
                    PAYFLOW_SHUTDOWN_GRACE_SECONDS="0.5", PAYFLOW_WORKERS_PAYMENTS="2",
                    PAYFLOW_QUEUE_BATCH_SIZE="5")
    jobs = [f"process_payment:pay_s{i}:upi" for i in range(40)]
    lpush(redis_server.port, "payflow_jobs", *jobs)
    d.wait_for("Job received:", count=10)  # both consumers hold a batch in flight
    assert d.stop(signal.SIGTERM) == 0
    r = redis.Redis(port=redis_server.port)
    assert r.keys("{payflow_jobs}:processing:*") == []
    left = [j.decode() for j in cast(list[bytes], r.lrange("payflow_jobs", 0, -1))]
    out = d.output()
    done = [j for j in jobs if f"PAYMENT SUCCESS for {j.split(':')[1]}" in out]
    # Every job is either finished or back in the queue, once; the in-flight ones were put back.
    assert sorted(left + done) == sorted(jobs)
    assert "daemon.grace_expired" in out and "daemon.requeued" in out
    requeued = int(out.split("daemon.requeued")[1].split("jobs=")[1].split()[0])
    assert requeued == 10  # two consumers x a batch of five were in flight
    assert r.hkeys("payflow:daemons") == []  # deregistered
    assert r.keys("payflow:heartbeat:*") == []
    r.close()


def test_restart_after_sigterm_processes_what_was_requeued(
        make_daemon: Callable[..., Daemon], redis_server: RedisServer) -> None:
    d = make_daemon(redis_server.url, PAYFLOW_PROCESSOR_LATENCY_MS="2000",
                    PAYFLOW_SHUTDOWN_GRACE_SECONDS="0.2", PAYFLOW_WORKERS_PAYMENTS="1",
                    PAYFLOW_WEBHOOKS_LOG_SINK="true")
    lpush(redis_server.port, "payflow_jobs", SEED_JOB)
    d.wait_for("Processing payment: pay_test_1001")
    assert d.stop() == 0
    again = make_daemon(redis_server.url, PAYFLOW_WEBHOOKS_LOG_SINK="true")
    again.wait_for("Webhook delivered: webhook:payment.success:pay_test_1001")
    assert seed_lines_in_order(again.messages()) == SEED_LINES
    assert again.stop() == 0


def test_bad_configuration_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    env = daemon_env(PAYFLOW_HTTP_PORT="eighty")
    done = subprocess.run([PAYFLOW, "serve"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "[http] port" in done.stderr and "PAYFLOW_HTTP_PORT" in done.stderr
    assert "Traceback" not in done.stderr


def test_busy_embedded_port_says_what_to_do(tmp_path: Path,
                                            redis_server: RedisServer) -> None:
    env = daemon_env(PAYFLOW_REDIS_EMBEDDED_PORT=str(redis_server.port),
                     PAYFLOW_HTTP_PORT=str(free_port()))
    done = subprocess.run([PAYFLOW, "serve"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 1
    assert f"port {redis_server.port}" in done.stderr and "already in use" in done.stderr
    assert "PAYFLOW_REDIS_URL" in done.stderr and "embedded_port" in done.stderr
    assert "Traceback" not in done.stderr


def test_version_and_help() -> None:
    version = subprocess.run([PAYFLOW, "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.startswith("payflow ")
    helptext = subprocess.run([PAYFLOW, "serve", "--help"], capture_output=True, text=True,
                              timeout=30)
    assert helptext.returncode == 0
    for flag in ("--config", "--redis-url", "--host", "--port", "--log-format"):
        assert flag in helptext.stdout


def test_a_second_sigint_cuts_the_grace_short_and_a_third_exits_at_once(
        make_daemon: Callable[..., Daemon], redis_server: RedisServer) -> None:
    jobs = [f"process_payment:pay_i{i}:upi" for i in range(10)]
    env = {"PAYFLOW_PROCESSOR_LATENCY_MS": "20000", "PAYFLOW_SHUTDOWN_GRACE_SECONDS": "60",
           "PAYFLOW_WORKERS_PAYMENTS": "1", "PAYFLOW_QUEUE_BATCH_SIZE": "3"}
    r = redis.Redis(port=redis_server.port)
    # Second SIGINT: no waiting out the 60 s grace, but cleanup runs: the jobs in flight go
    # back to the queue, the daemon deregisters, the buffered log lines are written, exit 130.
    d = make_daemon(redis_server.url, **env)
    lpush(redis_server.port, "payflow_jobs", *jobs)
    d.wait_for("Processing payment:", count=1)
    d.send(signal.SIGINT)
    d.wait_for("daemon.stopping")
    started = time.monotonic()
    assert d.stop(signal.SIGINT, timeout=15) == 130
    assert time.monotonic() - started < 5
    out = d.output()
    assert "daemon.hurrying" in out and "daemon.requeued" in out and "daemon.stopped" in out
    assert r.keys("{payflow_jobs}:processing:*") == []
    queued = [j.decode() for j in cast(list[bytes], r.lrange("payflow_jobs", 0, -1))]
    assert sorted(queued) == sorted(jobs)  # every one back, none processed
    assert r.hkeys("payflow:daemons") == []
    # A third SIGINT while that cleanup hangs (Redis frozen): out at once.
    r.delete("payflow_jobs")
    d = make_daemon(redis_server.url, **env)
    lpush(redis_server.port, "payflow_jobs", *jobs)
    d.wait_for("Processing payment:", count=1)
    d.send(signal.SIGINT)
    d.wait_for("daemon.stopping")
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        d.send(signal.SIGINT)
        d.wait_for("daemon.hurrying")
        started = time.monotonic()
        assert d.stop(signal.SIGINT, timeout=10) == 130
        assert time.monotonic() - started < 3
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    assert "daemon.forced_exit" in d.output()
    r.close()


def test_a_stalled_redis_cannot_keep_a_stopping_daemon_up(
        make_daemon: Callable[..., Daemon], redis_server: RedisServer) -> None:
    # Redis frozen (SIGSTOP) while the daemon stops: after the grace period, cleanup gets
    # [shutdown] cleanup_seconds, then the process exits anyway, saying so in its last line.
    d = make_daemon(redis_server.url, PAYFLOW_SHUTDOWN_GRACE_SECONDS="0.5",
                    PAYFLOW_SHUTDOWN_CLEANUP_SECONDS="1.5")
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        code = d.stop(signal.SIGTERM)
        took = time.monotonic() - started
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    assert code == 1
    assert took < 8, took  # 0.5 + 1.5 s, and the process's own start-up of the exit
    assert "daemon.shutdown_deadline" in d.lines()[-1]
