"""Dead letters: payflow.queue.deadletters on fakeredis and on a real redis-server, and the
`payflow dead` command run as a subprocess against a real redis-server."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
from redis.asyncio import Redis

from conftest import RedisServer, free_port
from daemon_proc import Daemon, daemon_env
from payflow.cli import dead as cli_dead
from payflow.jobs import PaymentJob, WebhookJob
from payflow.queue import deadletters, keys
from payflow.queue.deadletters import (
    UNREADABLE,
    DeadEntry,
    list_dead,
    purge,
    replay,
    replay_payload,
)
from payflow.queue.liveness import Liveness
from payflow.queue.redis import dead_entry

Q, W = "payflow_jobs", "webhook_jobs"
DEAD_Q, DEAD_W = keys.dead(Q), keys.dead(W)
BINARY_JOB = b"\xff\xfe\x00garbage\n\x1b[31m"  # not UTF-8, with control characters
# A job with invalid UTF-8 as reap.lua dead-letters it: Lua's cjson copies the bytes as they are.
CJSON_JOB = b"webhook:payment.success:pay_\xff\xc3(/1"
CJSON_ENTRY = (b'{"queue":"webhook_jobs","job":"' + CJSON_JOB.replace(b"/", b"\\/")
               + b'","failed_at":"2025-01-01T00:00:00.000Z","consumer":"d1:w0",'
               + b'"reason":"poison"}')
CJSON_LPUSH = """return redis.call('LPUSH', KEYS[1], cjson.encode({queue = ARGV[1], job = ARGV[2],
    failed_at = '2025-01-01T00:00:00.000Z', consumer = 'd1:w0', reason = 'poison'}))"""


@pytest.fixture(params=["fakeredis", "redis-server"])
def r(request: pytest.FixtureRequest) -> Redis:
    client: Redis = request.getfixturevalue(
        "fake_redis" if request.param == "fakeredis" else "real_redis")
    return client


def sha12(raw: bytes) -> str:
    return hashlib.sha1(raw).hexdigest()[:12]


async def push_dead(r: Redis, queue: str, job: bytes, reason: str = "broken",
                    consumer: str = "d1:p0") -> bytes:
    entry = dead_entry(queue, job, reason, consumer=consumer)
    await r.lpush(keys.dead(queue), entry)
    return entry


async def push_cjson_entry(r: Redis) -> bytes:
    """LPUSH a dead entry for CJSON_JOB written by Lua's cjson, as reap.lua writes it; returns
    the entry as stored. fakeredis' cjson.encode cannot encode bytes that are not UTF-8 (it
    raises UnicodeDecodeError): there the bytes real Redis writes are pushed instead."""
    if isinstance(r, fakeredis.FakeAsyncRedis):
        with pytest.raises(UnicodeDecodeError):
            await r.eval(CJSON_LPUSH, 1, DEAD_W, W, CJSON_JOB)
        await r.lpush(DEAD_W, CJSON_ENTRY)
    else:
        await r.eval(CJSON_LPUSH, 1, DEAD_W, W, CJSON_JOB)
    return as_bytes((await r.lrange(DEAD_W, 0, 0))[0])


def as_bytes(value: object) -> bytes:
    assert isinstance(value, bytes), value
    return value


async def dead_list(r: Redis, queue: str) -> list[bytes]:
    return [as_bytes(x) for x in await r.lrange(keys.dead(queue), 0, -1)]


async def queue_items(r: Redis, queue: str) -> list[bytes]:
    return [as_bytes(x) for x in await r.lrange(queue, 0, -1)]


# --- reading entries ------------------------------------------------------------------------


async def test_entries_of_dead_entry_text_and_binary(r: Redis) -> None:
    text_raw = await push_dead(r, Q, b"process_payment:pay_1:bitcoin", "unknown method",
                               consumer="d1:p3")
    binary_raw = await push_dead(r, Q, BINARY_JOB, "job is not UTF-8 text")
    assert b"job_b64" in binary_raw and b"job_b64" not in text_raw
    newest, oldest = await list_dead(r, Q)
    assert newest == DeadEntry(id=sha12(binary_raw), queue=Q, reason="job is not UTF-8 text",
                               failed_at=json.loads(binary_raw)["failed_at"],
                               consumer="d1:p0", job=BINARY_JOB, raw=binary_raw)
    assert oldest.job == b"process_payment:pay_1:bitcoin"
    assert (oldest.reason, oldest.consumer, oldest.raw) == ("unknown method", "d1:p3", text_raw)
    assert oldest.id == sha12(text_raw) and len(oldest.id) == 12
    assert oldest.failed_at.endswith("Z")


async def test_cjson_entry_with_invalid_utf8_keeps_the_job_bytes(r: Redis) -> None:
    stored = await push_cjson_entry(r)
    (entry,) = await list_dead(r, W)
    assert entry.job == CJSON_JOB
    assert (entry.queue, entry.reason, entry.consumer) == (W, "poison", "d1:w0")
    assert entry.raw == stored and entry.id == sha12(stored)
    assert await replay(r, W, [entry.id]) == (1, [])
    assert await queue_items(r, W) == [CJSON_JOB]
    assert await r.llen(DEAD_W) == 0


async def test_cjson_entry_with_utf8_and_escapes(r: Redis) -> None:
    job = 'webhook:payment.success:pay_é/1\n\x00"'.encode()
    await r.eval(CJSON_LPUSH, 1, DEAD_W, W, job)
    (entry,) = await list_dead(r, W)
    assert entry.job == job and entry.reason == "poison"


async def test_reap_lua_dead_letters_a_binary_job_that_replays_exactly(r: Redis) -> None:
    """A poison job recovered by the reaper: its entry is built in Python (job_b64 for bytes
    that are not UTF-8), so it works on every Redis-protocol server."""
    processing = keys.processing(W, "gone:w0")
    await r.lpush(processing, CJSON_JOB)
    await r.hset(keys.DAEMONS, "gone", json.dumps({"lists": [[W, processing]]}))
    reaper = Liveness(r, daemon_id="reaper", lists=[], heartbeat_seconds=1, ttl_seconds=2,
                      reap_interval=1, max_redeliveries=0, stop=asyncio.Event())
    assert await reaper.reap_once() == 1
    (entry,) = await list_dead(r, W)
    assert entry.job == CJSON_JOB and entry.reason.startswith("poison")
    assert b'"job_b64"' in entry.raw
    assert await replay(r, W, None) == (1, [])
    assert await queue_items(r, W) == [CJSON_JOB]


@pytest.mark.parametrize("raw", [
    b"not json at all",
    b"\xff\xfe",
    b"[1, 2]",
    b'{"queue": "payflow_jobs", "reason": "no job"}',
    b'{"job_b64": "not base64!"}',
    b'{"job": "\\ud800"}',  # a lone surrogate that is not an escaped byte
    b"[" * 100_000,  # deep enough for RecursionError
])
async def test_unreadable_entries_do_not_crash(r: Redis, raw: bytes) -> None:
    await r.lpush(DEAD_Q, raw)
    (entry,) = await list_dead(r, Q)
    assert entry == DeadEntry(id=sha12(raw), queue=Q, reason=UNREADABLE, failed_at="",
                              consumer="", job=raw, raw=raw)
    assert await replay(r, Q, [entry.id]) == (1, [])
    assert await queue_items(r, Q) == [raw]


async def test_list_is_newest_first_and_limited(r: Redis) -> None:
    raws = [await push_dead(r, Q, f"job-{i}".encode()) for i in range(5)]
    assert [e.raw for e in await list_dead(r, Q)] == raws[::-1]
    assert [e.job for e in await list_dead(r, Q, limit=2)] == [b"job-4", b"job-3"]
    assert await list_dead(r, Q, limit=0) == []
    assert await list_dead(r, W) == []


# --- replay ---------------------------------------------------------------------------------


def test_replay_payload_resets_the_attempt_of_envelopes_only() -> None:
    webhook = WebhookJob(event_id="evt_1", event_type="payment.success", subject_id="pay_1",
                         endpoint="ep_2", attempt=7, jid="job_abc").encode()
    body = json.loads(replay_payload(webhook))
    assert body == {**json.loads(webhook), "attempt": 0}
    assert body["jid"] == "job_abc" and body["endpoint"] == "ep_2"
    fresh = PaymentJob(payment_id="pay_1", method="upi", jid="job_x").encode()
    assert replay_payload(fresh) == fresh  # attempt already 0: byte for byte
    for job in (b"process_payment:pay_1:upi", BINARY_JOB, b'{"v": 2, "attempt": 3}',
                b'{"attempt": 3}', b"[1]", b"{broken"):
        assert replay_payload(job) == job


async def test_replay_by_id(r: Redis) -> None:
    text = await push_dead(r, Q, b"process_payment:pay_1:upi")
    binary = await push_dead(r, Q, BINARY_JOB)
    envelope_job = WebhookJob(event_id="evt_2", event_type="payment.success",
                              subject_id="pay_2", endpoint="ep_1", attempt=8, jid="job_w").encode()
    envelope = await push_dead(r, Q, envelope_job)
    await r.lpush(Q, b"waiting")

    assert await replay(r, Q, [sha12(binary), "000000000000", sha12(envelope)]) == (
        2, ["000000000000"])
    items = await queue_items(r, Q)
    assert items[-1] == b"waiting"
    assert BINARY_JOB in items  # byte for byte
    (requeued,) = [json.loads(x) for x in items if x.startswith(b"{")]
    assert requeued == {**json.loads(envelope_job), "attempt": 0}
    assert await dead_list(r, Q) == [text]

    assert await replay(r, Q, [sha12(binary)]) == (0, [sha12(binary)])  # once only
    assert len(await queue_items(r, Q)) == 3


async def test_replay_all_in_pages(r: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deadletters, "PAGE", 2)
    jobs = [f"process_payment:pay_{i}:upi".encode() for i in range(7)]
    for job in jobs:
        await push_dead(r, Q, job)
    await push_dead(r, W, b"webhook:payment.success:pay_9")
    assert await replay(r, Q, None) == (7, [])
    assert sorted(await queue_items(r, Q)) == sorted(jobs)
    assert await r.llen(DEAD_Q) == 0
    assert await r.llen(DEAD_W) == 1  # another queue's dead letters are left alone
    assert await replay(r, Q, None) == (0, [])


async def test_replay_all_reports_progress_entry_by_entry(
        r: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deadletters, "PAGE", 2)
    for i in range(5):
        await push_dead(r, Q, f"process_payment:pay_{i}:upi".encode())
    seen: list[tuple[int, int]] = []
    assert await replay(r, Q, None, progress=lambda done, total: seen.append((done, total))) == (
        5, [])
    assert seen == [(n, 5) for n in range(1, 6)]
    seen.clear()
    assert await replay(r, Q, None, progress=lambda *a: seen.append(a)) == (0, [])
    assert seen == []  # nothing to go through: no progress at all


class FakeTty(io.StringIO):
    """What a terminal's stderr looks like to the progress line."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [True, False])
async def test_cli_replay_all_shows_progress_on_a_terminal_only(
        fake_redis: Redis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tty: bool) -> None:
    monkeypatch.setattr(cli_dead, "PROGRESS_SECONDS", 0.0)  # draw every update
    for i in range(1200):  # three pages of deadletters.PAGE
        await push_dead(fake_redis, Q, f"process_payment:pay_{i}:upi".encode())
    await push_dead(fake_redis, W, b"webhook:payment.success:pay_9")
    stderr = FakeTty() if tty else io.StringIO()
    args = argparse.Namespace(all=True, ids=[])
    assert await cli_dead._replay(fake_redis, [Q, W], args, stderr=stderr) == 0
    assert capsys.readouterr() == ("replayed 1201\n", "")  # stdout as without a terminal
    if not tty:
        assert stderr.getvalue() == ""
        return
    text = stderr.getvalue()
    assert "\n" not in text  # redrawn in place
    draws = [d.rstrip() for d in text.split("\r") if d.strip()]
    assert draws[0] == f"replaying {DEAD_Q}  [{'.' * 30}]  1/1,200  0%"
    assert f"replaying {DEAD_Q}  [{'#' * 15}{'.' * 15}]  600/1,200  50%" in draws
    assert draws[1199] == f"replaying {DEAD_Q}  [{'#' * 30}]  1,200/1,200  100%"
    assert draws[1200:] == [f"replaying {DEAD_W}  [{'#' * 30}]  1/1  100%"]
    assert text.endswith(" " * len(draws[-1]) + "\r")  # the line is erased at the end


def test_progress_line_is_drawn_at_most_ten_times_a_second() -> None:
    stream = FakeTty()
    line = cli_dead.ProgressLine.on(stream, "replaying x")
    assert line is not None
    for done in range(1, 10001):
        line.update(done, 10000)
    draws = [d for d in stream.getvalue().split("\r") if d.strip()]
    assert 2 <= len(draws) <= 5  # the first, the last, and one per 0.1 s between
    assert draws[-1].startswith("replaying x  [") and "10,000/10,000  100%" in draws[-1]
    assert cli_dead.ProgressLine.on(io.StringIO(), "x") is None
    closed = io.StringIO()
    closed.close()  # its isatty() raises ValueError
    assert cli_dead.ProgressLine.on(closed, "x") is None


async def test_identical_entries_share_an_id_and_are_all_replayed(r: Redis) -> None:
    raw = dead_entry(Q, b"process_payment:pay_1:upi", "x", consumer="c")
    await r.lpush(DEAD_Q, raw, b"other", raw)
    assert await replay(r, Q, [sha12(raw)]) == (2, [])
    assert await queue_items(r, Q) == [b"process_payment:pay_1:upi"] * 2
    assert await dead_list(r, Q) == [b"other"]


async def test_concurrent_replays_of_one_entry_queue_it_once(r: Redis) -> None:
    raw = await push_dead(r, Q, b"process_payment:pay_1:upi")
    results = await asyncio.gather(*(replay(r, Q, [sha12(raw)]) for _ in range(4)),
                                   replay(r, Q, None))
    assert sum(count for count, _ in results) == 1
    assert await queue_items(r, Q) == [b"process_payment:pay_1:upi"]


async def test_purge_returns_the_count(r: Redis) -> None:
    for i in range(3):
        await push_dead(r, Q, f"j{i}".encode())
    await push_dead(r, W, b"w")
    assert await purge(r, Q) == 3
    assert await r.exists(DEAD_Q) == 0
    assert await purge(r, Q) == 0
    assert await r.llen(DEAD_W) == 1


# --- the command ----------------------------------------------------------------------------

PAYFLOW = shutil.which("payflow", path=str(Path(sys.executable).parent)) or "payflow"


def run_payflow(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PAYFLOW, "dead", *args], cwd=cwd, env=daemon_env(**env),
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          check=False)


def sync_dead_entry(client: redis.Redis, queue: str, job: bytes, reason: str) -> bytes:
    entry = dead_entry(queue, job, reason, consumer="host-1:p0")
    client.lpush(keys.dead(queue), entry)
    return entry


@pytest.fixture
def server(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis(port=redis_server.port)


def test_cli_list(tmp_path: Path, redis_server: RedisServer, server: redis.Redis) -> None:
    long_job = b"process_payment:" + b"x" * 500 + b":upi"
    first = sync_dead_entry(server, Q, long_job, "too long")
    second = sync_dead_entry(server, Q, BINARY_JOB, "job is not UTF-8 text")
    done = run_payflow(tmp_path, "list", "--redis-url", redis_server.url)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:7] == [
        f"{DEAD_Q}: 2 entries",
        f"{sha12(second)}  {Q}  {json.loads(second)['failed_at']}",
        "  reason: job is not UTF-8 text",
        "  job: \\xff\\xfe\\x00garbage\\x0a\\x1b[31m",  # escaped: no raw control characters
        f"{sha12(first)}  {Q}  {json.loads(first)['failed_at']}",
        "  reason: too long",
        f"  job: {long_job[:200].decode()}… ({len(long_job)} bytes)",
    ]
    assert lines[7:] == ["", f"{DEAD_W}: 0 entries"]

    limited = run_payflow(tmp_path, "list", "--redis-url", redis_server.url, "--queue", Q,
                          "--limit", "1")
    assert limited.returncode == 0, limited.stderr
    assert limited.stdout.splitlines()[:2] == [f"{DEAD_Q}: 2 entries, newest 1 shown",
                                               f"{sha12(second)}  {Q}  "
                                               f"{json.loads(second)['failed_at']}"]
    assert len(limited.stdout.splitlines()) == 4


def test_cli_list_json(tmp_path: Path, redis_server: RedisServer, server: redis.Redis) -> None:
    text = sync_dead_entry(server, W, b"webhook:payment.success:pay_1", "gave up")
    binary = sync_dead_entry(server, Q, b"\xffpay", "job is not UTF-8 text")
    done = run_payflow(tmp_path, "list", "--json", "--redis-url", redis_server.url)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = [json.loads(line) for line in done.stdout.splitlines()]
    assert rows == [
        {"id": sha12(binary), "queue": Q, "failed_at": json.loads(binary)["failed_at"],
         "reason": "job is not UTF-8 text", "consumer": "host-1:p0", "job": "\\xffpay"},
        {"id": sha12(text), "queue": W, "failed_at": json.loads(text)["failed_at"],
         "reason": "gave up", "consumer": "host-1:p0", "job": "webhook:payment.success:pay_1"},
    ]


def test_cli_replay_one_then_all(tmp_path: Path, redis_server: RedisServer,
                                 server: redis.Redis) -> None:
    envelope = WebhookJob(event_id="evt_3", event_type="payment.failed", subject_id="pay_3",
                          endpoint="ep_1", attempt=8, jid="job_9").encode()
    one = sync_dead_entry(server, W, envelope, "gave up after 8 attempts")
    sync_dead_entry(server, Q, b"process_payment:pay_1:upi", "a")
    sync_dead_entry(server, Q, BINARY_JOB, "b")

    done = run_payflow(tmp_path, "replay", sha12(one), "--redis-url", redis_server.url)
    assert (done.returncode, done.stdout, done.stderr) == (0, "replayed 1\n", "")
    (job,) = server.lrange(W, 0, -1)
    assert json.loads(job) == {**json.loads(envelope), "attempt": 0}

    again = run_payflow(tmp_path, "replay", sha12(one), "abcdef012345",
                        "--redis-url", redis_server.url)
    assert again.returncode == 1
    assert again.stdout == "replayed 0\n"
    assert sha12(one) in again.stderr and "abcdef012345" in again.stderr

    every = run_payflow(tmp_path, "replay", "--all", "--redis-url", redis_server.url)
    assert (every.returncode, every.stdout, every.stderr) == (0, "replayed 2\n", "")  # no tty
    assert sorted(server.lrange(Q, 0, -1)) == sorted([b"process_payment:pay_1:upi", BINARY_JOB])
    assert server.llen(DEAD_Q) == server.llen(DEAD_W) == 0

    neither = run_payflow(tmp_path, "replay", "--redis-url", redis_server.url)
    both = run_payflow(tmp_path, "replay", "--all", "x", "--redis-url", redis_server.url)
    assert neither.returncode == both.returncode == 2


def test_cli_purge_needs_yes(tmp_path: Path, redis_server: RedisServer,
                             server: redis.Redis) -> None:
    for i in range(3):
        sync_dead_entry(server, Q, f"j{i}".encode(), "x")
    sync_dead_entry(server, W, b"w", "x")

    dry = run_payflow(tmp_path, "purge", "--redis-url", redis_server.url)
    assert dry.returncode == 1
    assert dry.stdout.splitlines() == [f"{DEAD_Q}: 3 entries would be deleted",
                                       f"{DEAD_W}: 1 entry would be deleted"]
    assert "--yes" in dry.stderr
    assert (server.llen(DEAD_Q), server.llen(DEAD_W)) == (3, 1)

    only_w = run_payflow(tmp_path, "purge", "--yes", "--queue", W,
                         "--redis-url", redis_server.url)
    assert (only_w.returncode, only_w.stdout) == (0, f"{DEAD_W}: deleted 1 entry\n")
    assert (server.llen(DEAD_Q), server.llen(DEAD_W)) == (3, 0)

    done = run_payflow(tmp_path, "purge", "--yes", "--redis-url", redis_server.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{DEAD_Q}: deleted 3 entries",
                                        f"{DEAD_W}: deleted 0 entries"]
    assert server.exists(DEAD_Q) == 0


def test_cli_unknown_queue(tmp_path: Path, redis_server: RedisServer) -> None:
    for action in ("list", "replay --all", "purge --yes"):
        done = run_payflow(tmp_path, *action.split(), "--queue", "payments",
                           "--redis-url", redis_server.url)
        assert done.returncode == 2, action
        assert "'payments'" in done.stderr and "payflow_jobs" in done.stderr


def test_cli_queue_names_come_from_the_config(tmp_path: Path, redis_server: RedisServer,
                                              server: redis.Redis) -> None:
    sync_dead_entry(server, "orders", b"j", "x")
    done = run_payflow(tmp_path, "list", "--queue", "orders", "--redis-url", redis_server.url,
                       PAYFLOW_QUEUE_PAYMENTS="orders")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("{orders}:dead: 1 entry\n")


@pytest.mark.parametrize("action", ["list", "replay --all", "purge --yes"])
def test_cli_unreachable_redis(tmp_path: Path, action: str) -> None:
    port = free_port()  # nothing listens there
    done = run_payflow(tmp_path, *action.split(), "--redis-url",
                       f"redis://user:s3cret@127.0.0.1:{port}/0")
    assert done.returncode == 1
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"payflow: cannot reach Redis at redis://user:***@127.0.0.1:{port}/0: ")
    assert "Traceback" not in done.stderr and "s3cret" not in done.stderr


def test_cli_embedded_without_a_daemon(tmp_path: Path) -> None:
    port = free_port()
    done = run_payflow(tmp_path, "list", PAYFLOW_REDIS_URL="embedded",
                       PAYFLOW_REDIS_EMBEDDED_PORT=str(port))
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"payflow: cannot reach Redis at redis://127.0.0.1:{port}/0: ")
    assert "payflow serve" in line


def test_cli_bad_config_exits_2(tmp_path: Path) -> None:
    done = run_payflow(tmp_path, "list", "--redis-url", "http://nope")
    assert done.returncode == 2
    assert done.stderr.startswith("payflow: configuration error: [redis] url")


@pytest.mark.e2e
def test_cli_on_the_embedded_redis_of_a_running_daemon(
        tmp_path: Path, make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()
    port = d.env["PAYFLOW_REDIS_EMBEDDED_PORT"]
    client = redis.Redis(port=int(port))
    try:
        client.lpush(Q, b"garbage job")
        deadline = time.monotonic() + 15
        while client.llen(DEAD_Q) == 0:
            assert time.monotonic() < deadline, d.output()
            time.sleep(0.05)
        env = {"PAYFLOW_REDIS_EMBEDDED_PORT": port}
        listed = run_payflow(tmp_path, "list", "--json", "--queue", Q, **env)
        assert listed.returncode == 0, listed.stderr
        (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
        assert row["job"] == "garbage job" and row["reason"].startswith("unrecognised job")
        replayed = run_payflow(tmp_path, "replay", row["id"], **env)
        assert (replayed.returncode, replayed.stdout) == (0, "replayed 1\n"), replayed.stderr
        # It is garbage still: the daemon dead-letters it again, as a new entry.
        while client.llen(DEAD_Q) == 0:
            assert time.monotonic() < deadline, d.output()
            time.sleep(0.05)
        assert sha12(as_bytes(client.lindex(DEAD_Q, 0))) != row["id"]
        purged = run_payflow(tmp_path, "purge", "--yes", "--queue", Q, **env)
        assert purged.returncode == 0, purged.stderr
    finally:
        client.close()

