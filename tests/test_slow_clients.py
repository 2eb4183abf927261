"""Slow and hostile HTTP clients against `payflow serve`: half-sent heads, bodies that never
come, idle keep-alives, more connections than allowed, requests aiohttp cannot parse.
/healthz answers throughout, the deadlines close what stalls, and the log stays small."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Callable

import pytest

from daemon_proc import Daemon

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

LIMITS = {"PAYFLOW_HTTP_HEADER_TIMEOUT_SECONDS": "1", "PAYFLOW_HTTP_BODY_TIMEOUT_SECONDS": "1",
          "PAYFLOW_HTTP_KEEPALIVE_SECONDS": "1", "PAYFLOW_HTTP_MAX_CONNECTIONS": "100"}


def healthz(d: Daemon) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(d.base_url + "/healthz", timeout=3) as resp:
        assert resp.status == 200
    return time.monotonic() - started


def open_socket(d: Daemon, data: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
    s.sendall(data)
    return s


def closed_by_server(s: socket.socket) -> bool:
    s.settimeout(0.05)
    try:
        s.recv(65536)  # an answer (408) or EOF: the server acted
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


def test_slowloris_and_floods_do_not_stop_healthz(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(**LIMITS)
    half_heads = [open_socket(d, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                  for _ in range(300)]  # three times the connection limit
    no_body = [open_socket(d, b"POST /v1/payments HTTP/1.1\r\nHost: x\r\nContent-Type: "
                              b"application/json\r\nContent-Length: 100\r\n\r\n{")
               for _ in range(20)]
    assert healthz(d) < 1.0  # a new connection evicts an idle or slow one
    time.sleep(1.5)  # past the head and body deadlines
    stalled = half_heads + no_body
    assert all(closed_by_server(s) for s in stalled)
    for s in stalled:
        s.close()
    # A body that never came is a 408 (when its connection was not evicted first).
    late = open_socket(d, b"POST /v1/payments HTTP/1.1\r\nHost: x\r\nContent-Type: "
                          b"application/json\r\nContent-Length: 100\r\n\r\n{")
    time.sleep(1.5)
    answer = late.recv(65536)
    late.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert b'"code":"body_timeout"' in answer
    assert healthz(d) < 1.0
    log = d.output()
    assert "Traceback" not in log
    assert log.count("http.connections_evicted") <= 10  # throttled: once a second at most


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"A" * 20_000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200))
    + b"\r\n",
    b"POST /v1/payments HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz<script>\r\n",
    b"GET /\x00<script> HTTP/1.1\r\n\r\n",
], ids=["huge-header", "too-many-headers", "bad-chunking", "bad-request-line"])
def test_unparseable_requests_are_problem_json_without_echo(
        make_daemon: Callable[..., Daemon], request_bytes: bytes) -> None:
    d = make_daemon(**LIMITS)
    s = open_socket(d, request_bytes)
    answer = b""
    while chunk := s.recv(65536):
        answer += chunk
    s.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400", head
    assert b"application/problem+json" in head
    problem = json.loads(body)
    assert problem["status"] == 400 and problem["code"] == "bad_request"
    assert b"AAAA" not in answer and b"<script>" not in answer and b"X-199" not in answer
    assert healthz(d) < 1.0
    assert "Traceback" not in d.output()
