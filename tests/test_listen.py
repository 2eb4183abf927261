"""`payflow listen` run as a subprocess: it verifies signed deliveries, rejects bad ones,
answers duplicates with 200 and stops cleanly on SIGTERM/SIGINT; with --forward-to, against a
running daemon: it registers an endpoint, forwards what it verifies and deletes the endpoint."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from conftest import free_port
from daemon_proc import PAYFLOW, Daemon
from payflow.webhooks import new_secret, verify
from payflow.webhooks.signing import signature_header

SECRET = new_secret()


class Listener:
    def __init__(self, workdir: Path, args: list[str], env: dict[str, str] | None = None, *,
                 port: int | None = None) -> None:
        self.port = free_port() if port is None else port
        self.log = workdir / f"listen-{time.monotonic_ns()}.out"
        environ = {k: v for k, v in os.environ.items()
                   if k not in ("PAYFLOW_LISTEN_SECRET", "PAYFLOW_API_KEY")}
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


# --- --forward-to: registered with a running daemon -------------------------------------------


class Target:
    """The developer's local app that ``--forward-to`` points at: records what it receives and
    answers each request with the next of ``statuses`` (then 200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.statuses = list(statuses or [])
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks"

    async def start(self) -> None:
        async def receive(request: web.Request) -> web.Response:
            self.received.append((await request.read(), dict(request.headers)))
            return web.json_response({}, status=self.statuses.pop(0) if self.statuses else 200)

        app = web.Application()
        app.router.add_post("/webhooks", receive)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def wait(self, count: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"{len(self.received)} of {count} received"
            await asyncio.sleep(0.05)


async def api(daemon: Daemon, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.request(
            method, daemon.base_url + path, json=body, headers={"Authorization": f"Bearer {KEY}"},
    ) as resp:
        return resp.status, await resp.json(content_type=None)


async def wait_line(proc: Listener, text: str, timeout: float = 20) -> str:
    return await asyncio.to_thread(proc.wait_for, text, timeout)


KEY = "sk_test_listen_0123456789"


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    t = Target()
    await t.start()
    yield t
    await t.stop()


async def test_forward_to_registers_forwards_and_cleans_up(
        tmp_path: Path, make_daemon: Callable[..., Daemon], target: Target) -> None:
    daemon = make_daemon(PAYFLOW_API_KEYS=f"dev:{KEY}", PAYFLOW_WEBHOOKS_LOG_SINK="false")
    proc = Listener(tmp_path, ["--forward-to", target.url, "--api", daemon.base_url,
                               "--path", "/hooks/payflow"], env={"PAYFLOW_API_KEY": KEY})
    try:
        line = await wait_line(proc, "signing secret")
        match = re.fullmatch(r"endpoint (ep_\w+) created on (\S+) for \*; signing secret "
                             r"(whsec_\S+)", line)
        assert match and match[2] == daemon.base_url, line
        endpoint_id, secret = match[1], match[3]
        await wait_line(proc, f"forwarding verified events to {target.url}")
        status, listing = await api(daemon, "GET", "/v1/webhook_endpoints")
        assert [(e["id"], e["url"], e["description"]) for e in listing["data"]] == [
            (endpoint_id, proc.url, "payflow listen")]

        status, payment = await api(daemon, "POST", "/v1/payments", {
            "amount": 1999, "currency": "INR", "method": "upi"})
        assert status == 202
        await target.wait(1)
        body, headers = target.received[0]
        sent = verify(body, headers, secret)  # the body and signature headers, unchanged
        assert sent["type"] == "payment.success" and sent["data"]["id"] == payment["id"]
        assert headers["webhook-id"] == sent["id"]
        assert headers["Content-Type"] == "application/json"
        await wait_line(proc, f"forwarded  {sent['id']}  200  {target.url}")
        assert f"verified  {sent['id']}  payment.success  {payment['id']}  status=succeeded" in (
            proc.lines())
        _, attempts = await api(daemon, "GET", f"/v1/events/{sent['id']}/attempts")
        assert [a["outcome"] for a in attempts["data"]] == ["succeeded"]
    finally:
        assert proc.stop(signal.SIGINT) == 0
    assert proc.lines()[-1] == f"endpoint {endpoint_id} deleted"
    assert (await api(daemon, "GET", "/v1/webhook_endpoints"))[1]["data"] == []


async def test_forward_failures_are_answered_502_and_retried(
        tmp_path: Path, make_daemon: Callable[..., Daemon]) -> None:
    target = Target(statuses=[500])
    await target.start()
    daemon = make_daemon(PAYFLOW_WEBHOOKS_LOG_SINK="false",
                         PAYFLOW_WEBHOOKS_RETRY_SCHEDULE="0.2,0.2")
    port = free_port()
    # an endpoint left at the listener's address (a listener that was killed): reused
    _, left = await api(daemon, "POST", "/v1/webhook_endpoints", {
        "url": f"http://127.0.0.1:{port}/", "enabled_events": ["refund.success"],
        "disabled": True})
    proc = Listener(tmp_path, ["--forward-to", target.url, "--api", daemon.base_url,
                               "--events", "payment.success,payment.failed"], port=port)
    try:
        line = await wait_line(proc, "signing secret")
        assert line.startswith(f"endpoint {left['id']} reused on {daemon.base_url} for "
                               "payment.success,payment.failed; signing secret whsec_")
        _, endpoint = await api(daemon, "GET", f"/v1/webhook_endpoints/{left['id']}")
        assert endpoint["disabled"] is False
        assert endpoint["enabled_events"] == ["payment.success", "payment.failed"]
        status, _ = await api(daemon, "POST", "/v1/payments", {
            "amount": 1999, "currency": "INR", "method": "upi"})
        assert status == 202
        await target.wait(2)
        event_id = target.received[0][1]["webhook-id"]
        assert target.received[1][1]["webhook-id"] == event_id
        await wait_line(proc, f"forwarded  {event_id}  200")
        assert f"forwarded  {event_id}  500  {target.url}" in proc.lines()
        assert not any(line.startswith("duplicate") for line in proc.lines())
        _, attempts = await api(daemon, "GET", f"/v1/events/{event_id}/attempts")
        assert [(a["outcome"], a["status"]) for a in attempts["data"]] == [
            ("retrying", 502), ("succeeded", 200)]
        await target.stop()  # the local app is down: said so, and retried
        await api(daemon, "POST", "/v1/payments", {
            "amount": 1999, "currency": "INR", "method": "upi"})
        await wait_line(proc, "forward FAILED")
    finally:
        assert proc.stop() == 0
        await target.stop()
    assert (await api(daemon, "GET", "/v1/webhook_endpoints"))[1]["data"] == []


async def test_forward_to_with_a_daemon_that_is_not_there(tmp_path: Path,
                                                         target: Target) -> None:
    proc = Listener(tmp_path, ["--forward-to", target.url, "--api",
                               f"http://127.0.0.1:{free_port()}"])
    assert await asyncio.to_thread(proc.proc.wait, 15) == 1
    assert "payflow listen: cannot reach http://127.0.0.1:" in proc.lines()[-1]


@pytest.mark.parametrize(("args", "message"), [
    (["--forward-to", "ftp://x"], "--forward-to must be an http:// or https:// URL"),
    (["--forward-to", "http://127.0.0.1:1/", "--secret", SECRET], "--secret goes without"),
    (["--forward-to", "http://127.0.0.1:1/", "--events", ","], "--events needs"),
])
def test_forward_to_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    proc = Listener(tmp_path, args)
    assert proc.proc.wait(timeout=15) == 2
    assert message in proc.lines()[-1]
