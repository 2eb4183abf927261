"""`payflow status`, `payflow push` and `payflow pay` (run in-process through payflow.cli.main)
against a real redis-server and a running daemon."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from conftest import RedisServer
from daemon_proc import Daemon
from payflow.cli.main import main
from payflow.queue import keys

Q, W = "payflow_jobs", "webhook_jobs"


@pytest.fixture(autouse=True)
def _no_payflow_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no payflow.toml
    for name in ("PAYFLOW_CONFIG", "PAYFLOW_REDIS_URL", "PAYFLOW_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.e2e
def test_status_and_push_with_a_running_daemon(
        redis_server: RedisServer, make_daemon: Callable[..., Daemon],
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    d = make_daemon(redis_server.url)
    client = redis.Redis(port=redis_server.port)
    try:
        url = ("--redis-url", redis_server.url)
        assert run(capsys, "push", "garbage 1", "garbage 2", *url)[:2] == (
            0, "pushed 2 jobs onto payflow_jobs\n")
        monkeypatch.setattr("sys.stdin", io.StringIO("garbage 3\n\n"))
        assert run(capsys, "push", "-", *url)[:2] == (0, "pushed 1 job onto payflow_jobs\n")
        deadline = time.monotonic() + 15
        while client.llen(keys.dead(Q)) < 3:
            assert time.monotonic() < deadline, d.output()
            time.sleep(0.05)

        # The dead jobs show in the rates the daemon publishes with its next heartbeats.
        deadline = time.monotonic() + 10
        while True:
            code, out, err = run(capsys, "status", "--json", *url)
            assert (code, err) == (0, "")
            report = json.loads(out)
            if report["rates"][Q]["dead"] > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert report["queues"] == {Q: {"ready": 0, "processing": 0, "delayed": 0, "dead": 3},
                                    W: {"ready": 0, "processing": 0, "delayed": 0, "dead": 0}}
        # 3 dead jobs over the time since the daemon started (< the 60 s window)
        assert 3 / 60 <= report["rates"][Q]["dead"] <= 3 / 0.1
        assert report["rates"][Q]["done"] == report["rates"][Q]["retried"] == 0
        assert report["rates"][W] == {"done": 0, "retried": 0, "dead": 0}
        assert report["rate_window_seconds"] == 60
        (daemon,) = report["daemons"]
        (raw_id,) = client.hkeys(keys.DAEMONS)
        assert isinstance(raw_id, bytes)
        daemon_id = raw_id.decode()
        assert daemon["id"] == daemon_id
        assert (daemon["alive"], daemon["store"], report["stores"]) == (True, "memory", ["memory"])
        assert d.proc is not None and daemon["pid"] == d.proc.pid
        assert 0 <= daemon["heartbeat_age_seconds"] < 10
        assert daemon["in_flight"] == {Q: 0, W: 0}
        assert daemon["rates"] == report["rates"]  # the one live daemon

        code, out, err = run(capsys, "status", *url)
        assert (code, err) == (0, "")
        lines = out.splitlines()
        assert lines[0].split() == ["QUEUE", "READY", "PROCESSING", "DELAYED", "DEAD", "DONE/S",
                                    "RETRIED/S", "DEAD/S"]
        assert lines[1].split()[:7] == [Q, "0", "0", "0", "3", "0.00", "0.00"]
        assert float(lines[1].split()[7]) > 0
        assert lines[2].split() == [W, "0", "0", "0", "0", "0.00", "0.00", "0.00"]
        assert lines[3] == "(per second: jobs over the last minute, summed over the live daemons)"
        assert lines[5].split() == ["DAEMON", "HOST", "PID", "STORE", "HEARTBEAT", "STATE",
                                    "IN", "FLIGHT"]
        row = lines[6].split()
        assert row[0] == daemon_id and row[3] == "memory" and row[6:] == ["alive", "0"]
        assert lines[-1] == "store: memory"
    finally:
        client.close()


@pytest.mark.parametrize("command", ["status", "dead list", "dead purge --yes"])
def test_a_redis_that_never_saw_payflow_exits_3(
        redis_server: RedisServer, capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, err = run(capsys, *command.split(), "--redis-url", redis_server.url)
    assert (code, out) == (3, "")
    assert err.splitlines() == [f"payflow: no PayFlow daemon has registered on "
                                f"{redis_server.url}: is --redis-url right?"]


def test_push_arguments_and_stdin(redis_server: RedisServer, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    url = ("--redis-url", redis_server.url)
    assert run(capsys, "push", "a", "b", "--queue", W, *url)[:2] == (
        0, "pushed 2 jobs onto webhook_jobs\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("process_payment:pay_1:upi\r\n\nx y\n"))
    assert run(capsys, "push", "first", "-", *url)[:2] == (0, "pushed 3 jobs onto payflow_jobs\n")
    client = redis.Redis(port=redis_server.port)
    try:
        assert client.lrange(W, 0, -1) == [b"b", b"a"]
        assert client.lrange(Q, 0, -1) == [b"x y", b"process_payment:pay_1:upi", b"first"]
    finally:
        client.close()


@pytest.mark.e2e
def test_pay_wait(make_daemon: Callable[..., Daemon],
                  capsys: pytest.CaptureFixture[str]) -> None:
    d = make_daemon()
    base = ("pay", "--amount", "1000", "--currency", "INR", "--method", "upi",
            "--url", d.base_url, "--wait", "15")
    code, out, err = run(capsys, *base, "--vpa", "asha@okbank")
    assert (code, err) == (0, ""), d.output()
    payment = json.loads(out)
    assert (payment["status"], payment["amount"], payment["method_details"]) == (
        "succeeded", 1000, {"vpa": "asha@okbank"})

    code, out, err = run(capsys, *base, "--vpa", "failure@okbank")
    assert code == 1 and err == ""
    assert json.loads(out)["status"] == "failed"

    # "failure@x" is not a UPI address (the handle needs 2+ characters): refused, 422.
    code, out, err = run(capsys, *base, "--vpa", "failure@x")
    assert (code, out) == (2, "")
    assert json.loads(err)["code"] == "invalid_vpa"

    code, out, err = run(capsys, *base[:-2], "--card", "4242424242424242", "--exp", "01/2001")
    assert (code, out) == (2, "")
    assert json.loads(err)["status"] in (400, 422)
