"""The README's shell blocks, run as written against a daemon of the test's own.

Every ```bash and ```console block of README.md is one test case, in README order, sharing one
bash process (what a reader types in one terminal: variables set in one block are there in the
next) and one `payflow serve` (the reader's other terminal). The test plays the reader:

- a checkout of its own: a directory with the repository's `payflow.toml` and `.venv` (the
  virtualenv this test runs in), where the daemon and the shell start;
- the daemon on free ports, told so through the variables the README's quick start says to
  export when a port is taken (`PAYFLOW_HTTP_PORT`, `PAYFLOW_REDIS_EMBEDDED_PORT`), which the
  shell has too, so the README's commands run unchanged; `--log-format console`, what a reader
  sees on a terminal;
- a block whose command is `payflow serve` (with `VAR=value` settings before it) restarts the
  daemon with those settings, as the README asks the reader to.

A ```bash block must succeed: every command exits 0 (an ERR trap names any that does not), and
where the README shows what it prints (the block after it, or `EXPECTED`), that is checked; where
it shows nothing, no command may print a problem+json answer. A ```console block is a transcript:
each `$ command` runs, and its lines must appear in its output in order (`…` stands for
anything; ids, secrets and local ports for any id, secret and port). Long-running commands
(`payflow listen`) run in the background until they print what the README shows, then get
Ctrl-C and must exit 0. Blocks that cannot run here are in `SKIPPED`, with the reason, and show
as skipped tests.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from conftest import REPO, free_port, need
from daemon_proc import Daemon, daemon_env

README: Final = REPO / "README.md"
SHELLS: Final = ("bash", "console")
BLOCK_SECONDS: Final = 60.0

# A block containing the key is not run, for the reason given (each key must match one block).
SKIPPED: Final = {
    "python3 -m venv .venv && .venv/bin/pip install": (
        "the install: this test runs in the virtualenv it was installed in (linked into its "
        "checkout as .venv); the block's `payflow serve` is the daemon the test starts"),
    ".venv/bin/pytest\n": "runs the whole test suite, this test included",
    "$ payflow dead list\n": (
        "a transcript of dead letters made elsewhere: its entry ids and counts are that "
        "session's (tests/test_dead.py runs `payflow dead list` on entries of its own)"),
    "$ payflow dead replay 57aae51abc5d": (
        "replays the entry ids of that session (tests/test_dead.py: test_cli_replay_one_then_all)"),
    "$ payflow dead purge\n": (
        "purges the dead letters of that session (tests/test_dead.py: test_cli_purge)"),
    "createdb -h 127.0.0.1 payflow": (
        "needs a PostgreSQL server and a database of the reader's (tests/test_postgres.py "
        "migrates a schema of its own)"),
    "payflow prune --older-than 30d": "needs a PostgreSQL database (tests/test_postgres.py)",
    "benchmarks/peers-requirements.txt": (
        "a benchmark: installs peer libraries from the network and runs for minutes"),
    "$ payflow push \"process_payment:pay_test_1001:upi\" garbage": (
        "a transcript whose rates, daemon ids and pids are that session's "
        "(tests/test_cli_ops.py runs push, pay and status)"),
    "scripts/check               # ruff": "the test suite and the linters: CI runs them",
    "-m \"not e2e and not postgres\"": "runs the test suite, this test included",
    "scripts/mutation --list": "mutation testing: up to 25 minutes (tests/test_*_mutants.py)",
    "pip install -e '.[otel]'": (
        "installs the otel extra from the network and sends traces to an OpenTelemetry "
        "collector"),
}

# What a block prints, where the README says it in prose rather than in a block after it.
EXPECTED: Final = {
    "curl -s $API/healthz": '{"status":"ok"}',
    "curl -s $API/docs | grep -o": "<title>PayFlow API</title>",
}

# Long-running blocks: run in the background until their output shows the README's lines up to
# (and without) the first one starting with ``wait_until``: the lines after it need payments,
# endpoints or an app of the reader's (tests/test_listen.py makes them). Then Ctrl-C, exit 0,
# and, ``when_stopped``, the README's last line is its last.
@dataclass(frozen=True)
class Background:
    wait_until: str
    when_stopped: bool


BACKGROUND: Final = {
    "payflow listen --port 8787": Background("verified", when_stopped=False),
    "payflow listen --forward-to": Background("verified", when_stopped=True),
}

_SERVE: Final = re.compile(r"^((?:[A-Z_][A-Z0-9_]*=\S+ )*)payflow serve$")
_ERR_MARK: Final = "payflow-readme: exit status"
# What differs from run to run: ids, secrets, local ports; `…` is anything.
_VARYING: Final = [
    (re.compile(r"\b(pay|evt|re)_[0-9a-f]{24}\b"), r"\1_[0-9a-f]{24}"),
    (re.compile(r"\bep_[0-9a-f]{16}\b"), r"ep_[0-9a-f]{16}"),
    (re.compile(r"\bwhsec_\S+"), r"whsec_\\S+"),
    (re.compile(r"127\\\.0\\\.0\\\.1:\d+"), r"127\\.0\\.0\\.1:\\d+"),
]
_PROBLEM: Final = '"type":"https://payflow.dev/problems/'


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence
    lang: str
    text: str  # without the fences and the common indentation
    shown: Block | None = None  # the output block right after it, if any

    @property
    def id(self) -> str:
        return f"README.md:{self.line}:{self.lang}"


def _fenced(lines: list[str]) -> Iterator[tuple[int, str, str]]:
    i = 0
    while i < len(lines):
        stripped = lines[i].lstrip()
        if not stripped.startswith("```"):
            i += 1
            continue
        indent = len(lines[i]) - len(stripped)
        lang = stripped[3:].strip()
        end = i + 1
        while not lines[end].lstrip().startswith("```"):
            end += 1
        body = [line[indent:] for line in lines[i + 1:end]]
        yield i + 1, lang, "\n".join(body) + "\n"
        i = end + 1


def readme_blocks() -> list[Block]:
    """The shell blocks; each with the block after it when that is output (``` or ```json)
    and comes before the next shell block."""
    fenced = list(_fenced(README.read_text("utf-8").splitlines()))
    blocks = []
    for n, (line, lang, text) in enumerate(fenced):
        if lang not in SHELLS:
            continue
        shown = None
        if n + 1 < len(fenced) and fenced[n + 1][1] in ("", "json"):
            shown = Block(fenced[n + 1][0], fenced[n + 1][1], fenced[n + 1][2])
        blocks.append(Block(line, lang, text, shown))
    return blocks


def skip_reason(block: Block) -> str | None:
    found = [reason for key, reason in SKIPPED.items() if key in block.text]
    assert len(found) <= 1, f"{block.id} matches several SKIPPED keys"
    return found[0] if found else None


def _cases() -> list[Any]:
    cases = []
    for block in readme_blocks():
        reason = skip_reason(block)
        marks = [pytest.mark.skip(reason=f"not run: {reason}")] if reason else []
        cases.append(pytest.param(block, id=block.id, marks=marks))
    return cases


# --- the reader's terminals ----------------------------------------------------------------


class Reader:
    """The reader's two terminals: a daemon and a bash process in a checkout of their own."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.checkout = home / "checkout"
        self.checkout.mkdir()
        (self.checkout / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
        (self.checkout / "payflow.toml").symlink_to(REPO / "payflow.toml")
        self.ports = {"PAYFLOW_HTTP_PORT": str(free_port()),
                      "PAYFLOW_REDIS_EMBEDDED_PORT": str(free_port())}
        self.daemon: Daemon | None = None
        self.runs = 0
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PAYFLOW_", "VIRTUAL_ENV"))}
        self.shell = subprocess.Popen(
            ["bash", "--noprofile", "--norc"], stdin=subprocess.PIPE, cwd=self.checkout,
            env={**env, **self.ports}, text=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        self._send("set -o pipefail")

    # the daemon's terminal

    def serve(self, settings: dict[str, str]) -> None:
        self.stop_daemon()
        env = daemon_env(**self.ports, **settings)
        self.daemon = Daemon(self.checkout, env, ["--log-format", "console"])
        self.daemon.start()

    def stop_daemon(self) -> None:
        if self.daemon is not None:
            assert self.daemon.stop(signal.SIGINT) == 0, self.daemon.output()[-3000:]
            self.daemon = None

    # the other terminal

    def _send(self, line: str) -> None:
        assert self.shell.stdin is not None
        self.shell.stdin.write(line + "\n")
        self.shell.stdin.flush()

    def run(self, script: str, *, errors: bool) -> tuple[str, str, int]:
        """Source ``script`` in the shell; (stdout, stderr, status). With ``errors``, an ERR
        trap writes a line naming every command that exits non-zero onto stderr."""
        self.runs += 1
        n = self.runs
        path = self.home / f"block-{n}.sh"
        path.write_text(script, "utf-8")
        out, err, done = (self.home / f"block-{n}.{ext}" for ext in ("out", "err", "rc"))
        trap = (f"trap 'echo \"{_ERR_MARK} $? of: $BASH_COMMAND\" >&2' ERR" if errors
                else "trap - ERR")
        self._send(f"{trap}; source {shlex.quote(str(path))} >{out} 2>{err} </dev/null; "
                   f"echo $? >{done}.tmp; trap - ERR; mv {done}.tmp {done}")
        deadline = time.monotonic() + BLOCK_SECONDS
        while not done.exists():
            assert self.shell.poll() is None, "the shell exited (a block ran `exit`?)"
            assert time.monotonic() < deadline, f"no end within {BLOCK_SECONDS} s:\n{script}"
            time.sleep(0.02)
        return out.read_text("utf-8"), err.read_text("utf-8"), int(done.read_text())

    def environment(self) -> dict[str, str]:
        """The shell's exported variables now."""
        stdout, _, _ = self.run("env -0", errors=False)
        return dict(item.split("=", 1) for item in stdout.split("\0") if "=" in item)

    def close(self) -> None:
        if self.shell.poll() is None:
            self._send("exit")
            try:
                self.shell.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.shell.kill()
                self.shell.wait()
        if self.shell.stdin is not None:
            self.shell.stdin.close()
        if self.daemon is not None:
            self.daemon.kill()


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reader]:
    need("redis-server", shutil.which("redis-server") is not None)
    need("redis-cli", shutil.which("redis-cli") is not None)
    need("curl", shutil.which("curl") is not None)
    r = Reader(tmp_path_factory.mktemp("readme"))
    try:
        r.serve({})  # the quick start's `payflow serve`
        yield r
    finally:
        r.close()


# --- matching what the README shows ----------------------------------------------------------


def line_pattern(expected: str) -> re.Pattern[str]:
    pattern = "".join(".*" if part == "…" else re.escape(part)
                      for part in re.split("(…)", expected.rstrip()))
    for varying, replacement in _VARYING:
        pattern = varying.sub(replacement, pattern)
    return re.compile(pattern)


def assert_lines_in_order(expected: list[str], actual: str, what: str) -> None:
    """Each expected line matches a line of ``actual``, in order (others may come between)."""
    lines = [line.rstrip("\r") for line in actual.splitlines()]
    at = 0
    for want in expected:
        pattern = line_pattern(want)
        while at < len(lines) and not pattern.fullmatch(lines[at]):
            at += 1
        assert at < len(lines), f"{what}: no line matching {want!r} (in order) in:\n{actual}"
        at += 1


def assert_same_json(expected: str, actual: str) -> None:
    """The README's example object: the same fields, with the same values but for ids and
    times."""
    want, got = json.loads(expected), json.loads(actual)
    assert sorted(want) == sorted(got), actual
    for key, value in want.items():
        if key not in ("id", "created_at", "updated_at"):
            assert got[key] == value, (key, actual)


def assert_log_lines(expected: str, daemon: Daemon) -> None:
    """The daemon's console lines shown (``[info] message key=value…``, abridged): each
    message, in order, with the fields shown."""
    messages = daemon.messages()
    at = 0
    for want in expected.strip().splitlines():
        rest = want.partition("] ")[2]
        fields = re.findall(r" (\w+=\S+)", rest)
        text = re.split(r" \w+=", rest)[0]
        while at < len(messages) and not (
                messages[at].startswith(text)
                and all(line_pattern(f).search(messages[at]) for f in fields)):
            at += 1
        assert at < len(messages), f"no log line {want!r} (in order):\n{daemon.output()[-4000:]}"
        at += 1


# --- running blocks ----------------------------------------------------------------------------


def run_transcript(reader: Reader, block: Block) -> None:
    """``$ command`` lines (``\\`` continues one), each followed by what it prints."""
    steps: list[tuple[str, list[str]]] = []
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        assert lines[i].startswith("$ "), f"{block.id}: not a command: {lines[i]!r}"
        command = [lines[i][2:]]
        while command[-1].endswith("\\"):
            i += 1
            command.append(lines[i])
        i += 1
        output: list[str] = []
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        steps.append(("\n".join(command), output))
    for typed, shown in steps:
        printed, errors, _ = reader.run(typed + "\n", errors=False)
        assert_lines_in_order(shown, printed + errors, f"{block.id}: $ {typed}")


def run_in_background(reader: Reader, block: Block, how: Background, tmp_path: Path) -> None:
    assert block.shown is not None, f"{block.id}: the README shows no output to wait for"
    shown = block.shown.text.splitlines()
    first = shown[:next((n for n, line in enumerate(shown) if line.startswith(how.wait_until)),
                        len(shown))]
    log = tmp_path / "background.out"
    with log.open("wb") as out:
        proc = subprocess.Popen(["bash", "-c", block.text], cwd=reader.checkout,
                                env=reader.environment(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            text = log.read_text("utf-8", "replace")
            try:
                assert_lines_in_order(first, text, block.id)
                break
            except AssertionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=15) == 0, log.read_text("utf-8", "replace")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if how.when_stopped:
        last = log.read_text("utf-8", "replace").splitlines()[-1]
        assert_lines_in_order([shown[-1]], last, block.id)


@pytest.mark.parametrize("block", _cases())
def test_readme_block(block: Block, reader: Reader, tmp_path: Path) -> None:
    serve = [m for line in block.text.splitlines() if (m := _SERVE.match(line.strip()))]
    if serve:  # the reader (re)starts the daemon as the block says
        assert block.text.strip() == serve[0].string.strip(), block.id
        reader.serve(dict(item.split("=", 1) for item in serve[0][1].split()))
        return
    if block.lang == "console":
        run_transcript(reader, block)
        return
    background = [how for key, how in BACKGROUND.items() if key in block.text]
    if background:
        run_in_background(reader, block, background[0], tmp_path)
        return
    stdout, stderr, _ = reader.run(block.text, errors=True)
    failed = [line for line in stderr.splitlines() if line.startswith(_ERR_MARK)]
    assert not failed, f"{block.id}:\n{block.text}\n{stderr}"
    expected = [text for key, text in EXPECTED.items() if key in block.text]
    if expected:
        assert stdout.strip() == expected[0], stdout
    elif block.shown is not None and block.shown.lang == "json":
        assert_same_json(block.shown.text, stdout)
    elif block.shown is not None and block.text.lstrip().startswith("redis-cli"):
        assert stdout.strip() in ("1", "(integer) 1"), stdout  # (integer) on a terminal
        assert reader.daemon is not None
        reader.daemon.wait_for("Webhook delivered:")
        assert_log_lines(block.shown.text, reader.daemon)
    elif block.shown is not None:
        assert_lines_in_order(block.shown.text.splitlines(), stdout, block.id)
    else:
        assert _PROBLEM not in stdout.replace(" ", ""), stdout  # an answer, not a problem


def test_every_skipped_and_expected_key_matches_one_block() -> None:
    blocks = readme_blocks()
    for table in (SKIPPED, EXPECTED, BACKGROUND):
        for key in table:
            matching = [b.id for b in blocks if key in b.text]
            assert len(matching) == 1, (key, matching)


def test_the_readme_has_shell_blocks_to_run() -> None:
    run = [b for b in readme_blocks() if skip_reason(b) is None]
    assert len(run) >= 10
