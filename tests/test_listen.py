"""`payflow listen` run as a subprocess: it verifies signed deliveries, rejects bad ones,
answers duplicates with 200 and stops cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conftest import free_port
from daemon_proc import PAYFLOW
from payflow.webhooks import new_secret
from payflow.webhooks.signing import signature_header

SECRET = new_secret()


class Listener:
    def __init__(self, workdir: Path, args: list[str], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log = workdir / f"listen-{time.monotonic_ns()}.out"
        environ = {k: v for k, v in os.environ.items() if k != "PAYFLOW_LISTEN_SECRET"}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([PAYFLOW, "listen", "--port", str(self.port), *args],
                                         stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env={**environ, **(env or {})})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/payflow"

    def lines(self) -> list[str]:
        return self.log.read_text("utf-8", "replace").splitlines()

    def wait_for(self, text: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines():
                if text in line:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"no {text!r} (exit {self.proc.poll()}):\n" + "\n".join(self.lines()))

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    proc = Listener(tmp_path, ["--secret", SECRET, "--path", "/hooks/payflow"])
    proc.wait_for("listening on")
    yield proc
    proc.stop(signal.SIGKILL)


def event(event_id: str, status: str = "succeeded") -> bytes:
    return json.dumps({
        "id": event_id, "type": "payment.success", "timestamp": "2026-11-24T09:34:39.436Z",
        "data": {"id": f"pay_{event_id}", "status": status, "amount": 1999},
    }).encode()


def signed(event_id: str, body: bytes, secrets: list[str], *,
           timestamp: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if timestamp is None else timestamp
    return {"Content-Type": "application/json", "webhook-id": event_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": signature_header(secrets, event_id, stamp, body)}


async def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(url, data=body,
                                                                headers=headers) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if text.startswith("{") else text


def test_startup_line(listener: Listener) -> None:
    assert listener.lines() == [
        f"listening on http://127.0.0.1:{listener.port}/hooks/payflow (Ctrl-C to stop)"]


async def test_a_signed_event_is_verified(listener: Listener) -> None:
    body = event("evt_1")
    assert await post(listener.url, body, signed("evt_1", body, [SECRET])) == (
        200, {"received": True})
    assert listener.wait_for("verified") == (
        "verified  evt_1  payment.success  pay_evt_1  status=succeeded")
    assert len(listener.lines()) == 2  # no body without --print-body


async def test_bad_deliveries_are_rejected_with_400(listener: Listener) -> None:
    body = event("evt_2")
    cases: list[tuple[bytes, dict[str, str], str]] = [
        (body, signed("evt_bad", body, [new_secret()]), "REJECTED  evt_bad  no matching"),
        (event("evt_x", "failed"), signed("evt_tampered", body, [SECRET]),
         "REJECTED  evt_tampered  no matching signature"),
        (body, signed("evt_old", body, [SECRET], timestamp=int(time.time()) - 3600),
         "REJECTED  evt_old  timestamp too old"),
        (body, {"Content-Type": "application/json"},
         "REJECTED  -  missing header webhook-id, webhook-timestamp, webhook-signature"),
    ]
    for payload, headers, line in cases:
        status, answer = await post(listener.url, payload, headers)
        assert status == 400 and "error" in answer
        assert listener.wait_for(line).startswith(line)
    assert not any(line.startswith("verified") for line in listener.lines())
    # a rejected id was not remembered: the genuine delivery is verified afterwards
    assert (await post(listener.url, body, signed("evt_bad", body, [SECRET])))[0] == 200
    listener.wait_for("verified  evt_bad")


async def test_the_same_id_twice_is_a_duplicate(listener: Listener) -> None:
    body = event("evt_3")
    for _ in range(2):  # a redelivery is signed again with a new timestamp
        assert await post(listener.url, body, signed("evt_3", body, [SECRET])) == (
            200, {"received": True})
    listener.wait_for("duplicate")
    assert listener.lines()[1:] == ["verified  evt_3  payment.success  pay_evt_3  status=succeeded",
                                    "duplicate  evt_3"]


async def test_other_methods_and_paths(listener: Listener) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(listener.url) as resp:
            assert resp.status == 405
        async with session.post(listener.url.replace("payflow", "other"), data=b"{}") as resp:
            assert resp.status == 404
    assert len(listener.lines()) == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_it_with_exit_0(listener: Listener, sig: signal.Signals) -> None:
    assert listener.stop(sig) == 0


async def test_rotation_secret_from_env_and_print_body(tmp_path: Path) -> None:
    old, new = new_secret(), new_secret()
    proc = Listener(tmp_path, ["--print-body", "--path", "/hooks/payflow"],
                    env={"PAYFLOW_LISTEN_SECRET": f"{old} {new}"})
    try:
        proc.wait_for("listening on")
        for event_id, secrets in (("evt_old", [old]), ("evt_new", [new]),
                                  ("evt_both", [old, new])):
            body = event(event_id)
            assert (await post(proc.url, body, signed(event_id, body, secrets)))[0] == 200
            proc.wait_for(f"verified  {event_id}")
        text = "\n".join(proc.lines())
        assert '  "type": "payment.success",' in text and '"amount": 1999' in text
    finally:
        assert proc.stop() == 0


def test_no_secret_is_a_usage_error(tmp_path: Path) -> None:
    proc = Listener(tmp_path, [])
    assert proc.proc.wait(timeout=15) == 2
    assert "--secret" in proc.lines()[-1]
