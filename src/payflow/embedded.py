"""The embedded Redis-protocol server of ``[redis] url = "embedded"`` (fakeredis over TCP).

It lets ``payflow serve`` and ``redis-cli`` work on a fresh machine with no Redis installed.
It keeps nothing: what is queued when the process stops is gone. Production points
``[redis] url`` at a real Redis.

Two defects of fakeredis (2.30 to 2.40) are mended here:

- ``BLMOVE`` on an empty list answers at once instead of blocking; the consumers block on it,
  so :func:`patch_fakeredis` replaces that one command with a correct one built from fakeredis'
  own blocking primitive (as its ``BRPOPLPUSH`` is);
- its TCP server closes the connection after any error reply (``NOSCRIPT``, ``WRONGTYPE``…),
  which breaks redis-py's EVALSHA-then-load fallback on a connection a consumer owns;
  :class:`_Handler` answers the error and keeps the connection.
"""

from __future__ import annotations

import errno
import functools
import threading
from typing import Any

from payflow.errors import StartupError

HOST = "127.0.0.1"


def _blmove_pass(sock: Any, source: bytes, destination: bytes, wherefrom: bytes,
                 whereto: bytes, first_pass: bool) -> Any:
    from fakeredis import _msgs as msgs
    from fakeredis._core import CommandItem
    from fakeredis._helpers import SimpleError, casematch

    src = CommandItem(source, sock._db, item=sock._db.get(source), default=[])
    if not isinstance(src.value, list):
        if first_pass:
            raise SimpleError(msgs.WRONGTYPE_MSG)
        return None
    if not src.value:
        return None
    dst = CommandItem(destination, sock._db, item=sock._db.get(destination), default=[])
    if not isinstance(dst.value, list):
        raise SimpleError(msgs.WRONGTYPE_MSG)
    el = src.value.pop() if casematch(wherefrom, b"right") else src.value.pop(0)
    if casematch(whereto, b"left"):
        dst.value.insert(0, el)
    else:
        dst.value.append(el)
    src.updated()
    src.writeback()
    if destination != source:
        dst.updated()
        dst.writeback()
    return el


@functools.cache
def patch_fakeredis() -> None:
    """Make fakeredis' BLMOVE block like Redis' (idempotent)."""
    from fakeredis import _msgs as msgs
    from fakeredis._command_args_parsing import Timeout
    from fakeredis._commands import command
    from fakeredis._helpers import SimpleError, casematch
    from fakeredis.commands_mixins.list_mixin import ListCommandsMixin

    @command(name="BLMOVE", fixed=(bytes, bytes, bytes, bytes, Timeout),
             flags=msgs.FLAG_NO_SCRIPT)
    def blmove(self: Any, source: bytes, destination: bytes, wherefrom: bytes, whereto: bytes,
               timeout: float) -> Any:
        for side in (wherefrom, whereto):
            if not (casematch(side, b"left") or casematch(side, b"right")):
                raise SimpleError(msgs.SYNTAX_ERROR_MSG)
        step = functools.partial(_blmove_pass, self, source, destination, wherefrom, whereto)
        return self._blocking(timeout, step)

    ListCommandsMixin.blmove = blmove  # type: ignore[method-assign]


def _handler_class() -> type[Any]:
    import select

    from fakeredis._clients._tcp_server import _POLL_INTERVAL, TCPFakeRequestHandler
    from redis.exceptions import ResponseError

    class _Handler(TCPFakeRequestHandler):
        """fakeredis' handler loop, except that an error reply keeps the connection open."""

        def handle(self) -> None:
            while not self.server._shutdown_event.is_set():
                try:
                    if self.current_client.can_read():
                        try:
                            response = self.current_client.read_response()
                        except ResponseError as exc:
                            self.writer.dump(exc)
                            continue
                        self.writer.dump(response)
                        continue
                    data = self.rfile.readline()
                    if data == b"":
                        readable, _, _ = select.select([self.connection], [], [], _POLL_INTERVAL)
                        if not readable:
                            continue
                        data = self.rfile.readline()
                        if data == b"":
                            break
                    self.current_client.get_socket().sendall(data)
                except ConnectionError:
                    break
                except Exception as exc:
                    self.writer.dump(exc)
                    break

    return _Handler


class EmbeddedRedis:
    """A fakeredis TCP server on 127.0.0.1:<port>, served from a background thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        patch_fakeredis()
        from fakeredis import TcpFakeServer

        try:
            self._server = TcpFakeServer((HOST, self.port), server_type="redis",
                                         server_version=(7, 4))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"cannot start the embedded Redis: port {self.port} on {HOST} is already in "
                    f"use. If a Redis server runs there, use it: PAYFLOW_REDIS_URL="
                    f"redis://{HOST}:{self.port}/0 (or [redis] url in payflow.toml); otherwise "
                    f"pick a free port with [redis] embedded_port or "
                    f"PAYFLOW_REDIS_EMBEDDED_PORT."
                ) from None
            raise StartupError(f"cannot start the embedded Redis on {HOST}:{self.port}: {exc}") \
                from None
        self._server.RequestHandlerClass = _handler_class()
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="payflow-embedded-redis", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
