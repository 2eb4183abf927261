"""`payflow serve` as a subprocess, the way a user runs it, with its console output captured."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PAYFLOW = shutil.which("payflow", path=str(Path(sys.executable).parent)) or "payflow"
# The console renderer: "<timestamp> [<level>] <event> key=value…"
CONSOLE_LINE = re.compile(r"^\S+ \[(?P<level>\w+)\s*\] (?P<rest>.*)$")


class Daemon:
    def __init__(self, workdir: Path, env: dict[str, str], args: list[str]) -> None:
        self.workdir = workdir
        self.env = env
        self.args = args
        self.log_path = workdir / f"payflow-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = int(env["PAYFLOW_HTTP_PORT"])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait: bool = True) -> None:
        out = self.log_path.open("ab")
        self.proc = subprocess.Popen([PAYFLOW, "serve", *self.args], cwd=self.workdir,
                                     env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        out.close()
        if wait:
            self.wait_for("daemon.started", timeout=20)

    def output(self) -> str:
        return self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""

    def lines(self) -> list[str]:
        return self.output().splitlines()

    def messages(self) -> list[str]:
        """The event text of every console line (structured fields stripped off is up to the
        caller: a seed message is a prefix of its line's rest)."""
        result = []
        for line in self.lines():
            m = CONSOLE_LINE.match(line)
            if m:
                result.append(m["rest"])
        return result

    def json_lines(self) -> list[dict[str, Any]]:
        result = []
        for line in self.lines():
            if line.startswith("{"):
                result.append(json.loads(line))
        return result

    def wait_for(self, text: str, *, timeout: float = 15, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.output().count(text) >= count:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"payflow exited with {self.proc.returncode} before "
                                     f"{text!r}:\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} x{count} within {timeout} s:\n{self.output()[-4000:]}")

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"payflow did not stop within {timeout} s:\n"
                                 f"{self.output()[-4000:]}") from None
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def daemon_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYFLOW_")}
    env.update(settings)
    return env
