"""Mutation testing of PayFlow's money-and-trust modules: mutmut for Python, a small operator set
of our own for the queue's Lua scripts.

Nothing here touches the working tree's ``src/``: every module is mutated in a copy of ``src/``
and ``tests/`` under ``--workdir`` (default ``$TMPDIR/payflow-mutation``), and only the tests
mapped to it run (``MODULES``). Prints each module's kill rate and every surviving mutant (file,
line, diff); exits 1 when the kill rate of the run is below ``--fail-under`` (default 90).

    scripts/mutation                 everything in scope
    scripts/mutation signing auth    some modules
    scripts/mutation lua             the six Lua scripts (lua.settle: one of them)
    scripts/mutation --list          the module -> tests map
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import contextlib
import dataclasses
import difflib
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LUA_DIR = "src/payflow/queue/lua"


@dataclasses.dataclass(frozen=True)
class Module:
    path: str  # relative to the repository
    tests: tuple[str, ...]  # test files (or node ids) that exercise it
    args: tuple[str, ...] = ()  # more pytest arguments (a marker selection)


def _m(path: str, *tests: str, args: tuple[str, ...] = ()) -> Module:
    return Module(path, tuple(f"tests/{t}" for t in tests), args)


MODULES: dict[str, Module] = {
    "signing": _m("src/payflow/webhooks/signing.py", "test_signing.py",
                  "test_signing_mutants.py"),
    "ssrf": _m("src/payflow/webhooks/ssrf.py", "test_ssrf.py", "test_ssrf_mutants.py"),
    "delivery": _m("src/payflow/webhooks/delivery.py", "test_delivery_mutants.py",
                   "test_webhook_sender.py"),
    "transport": _m("src/payflow/webhooks/transport.py", "test_transport.py",
                    "test_delivery_mutants.py", "test_ssrf.py"),
    "auth": _m("src/payflow/web/auth.py", "test_web_auth.py"),
    "idempotency": _m("src/payflow/idempotency.py", "test_idempotency_service.py",
                      "test_idempotency.py", "test_idempotency_mutants.py"),
    "idempotency.web": _m("src/payflow/web/idempotency.py", "test_idempotency.py",
                          "test_idempotency_mutants.py"),
    "validation": _m("src/payflow/payments/validation.py", "test_web_validation.py",
                     "test_validation_mutants.py"),
    "currencies": _m("src/payflow/payments/currencies.py", "test_web_validation.py"),
    "intake": _m("src/payflow/payments/intake.py", "test_intake_mutants.py",
                 "test_payment_idempotency.py", "test_web_api.py", "test_sweepers.py"),
    "memory": _m("src/payflow/store/memory.py", "test_store_contract.py", "test_sweepers.py",
                 "test_store_mutants.py", args=("-m", "not postgres")),
    "postgres": _m("src/payflow/store/postgres.py", "test_store_contract.py", "test_postgres.py",
                   "test_postgres_mutants.py", args=("-k", "not memory")),
    "pg_sql": _m("src/payflow/store/pg_sql.py", "test_store_contract.py", "test_postgres.py",
                 "test_pg_sql_mutants.py", args=("-k", "not memory")),
    "consumer": _m("src/payflow/queue/consumer.py", "test_consumer.py", "test_queue.py",
                   "test_consumer_mutants.py"),
    "payments": _m("src/payflow/payments/service.py", "test_payments.py",
                   "test_store_contract.py", "test_payments_mutants.py",
                   args=("-k", "not store_contract or memory")),
    "handler": _m("src/payflow/payments/handler.py", "test_payments.py", "test_tracing.py",
                  "test_payments_mutants.py"),
    "sender": _m("src/payflow/webhooks/sender.py", "test_webhook_sender.py", "test_tracing.py",
                 "test_sender_mutants.py"),
    "lua.fetch": _m(f"{LUA_DIR}/fetch.lua", "test_queue.py"),
    "lua.settle": _m(f"{LUA_DIR}/settle.lua", "test_queue.py", "test_lua_mutants.py"),
    "lua.promote": _m(f"{LUA_DIR}/promote.lua", "test_queue.py", "test_lua_mutants.py"),
    "lua.requeue": _m(f"{LUA_DIR}/requeue.lua", "test_queue.py"),
    "lua.reap": _m(f"{LUA_DIR}/reap.lua", "test_liveness.py", "test_lua_mutants.py",
                   args=("-k", "reap or poison or leftovers")),
    "lua.replay": _m(f"{LUA_DIR}/replay.lua", "test_dead.py", "test_lua_mutants.py",
                     args=("-k", "replay")),
}
# The default run: the PostgreSQL backend is opt-in (`scripts/mutation postgres pg_sql`), as its
# tests need a server and take most of the time.
DEFAULT = [name for name in MODULES if name not in ("postgres", "pg_sql")]
KILLED = frozenset({"killed", "timeout", "segfault", "caught by type check"})
PYTEST_ARGS = ["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]


@dataclasses.dataclass
class Survivor:
    file: str
    line: int
    diff: str
    status: str = "survived"


@dataclasses.dataclass
class Report:
    name: str
    counts: Counter[str]
    survivors: list[Survivor]
    seconds: float

    @property
    def total(self) -> int:
        return sum(n for status, n in self.counts.items() if status != "skipped")

    @property
    def killed(self) -> int:
        return sum(n for status, n in self.counts.items() if status in KILLED)


# --- the copy mutations run in ---------------------------------------------------------------


def make_copy(dest: Path) -> None:
    """``src/`` and ``tests/`` (no caches) and pyproject.toml, in ``dest`` (emptied first)."""
    if dest.exists():
        shutil.rmtree(dest)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info")
    for part in ("src", "tests"):
        shutil.copytree(ROOT / part, dest / part, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")


def _nice_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUTANT_UNDER_TEST")}
    env.update(extra)
    return env


def _runnable(tests: Sequence[str]) -> list[str]:
    return [t for t in tests if (ROOT / t.split("::")[0]).exists()]


# --- Python: mutmut ---------------------------------------------------------------------------


def mutmut_config(module: Module) -> str:
    """The ``[tool.mutmut]`` table for one module (replaces the one in pyproject.toml)."""
    base = _base_mutmut_config()
    base["only_mutate"] = [module.path]
    base["pytest_add_cli_args_test_selection"] = [*_runnable(module.tests), *module.args]
    lines = ["[tool.mutmut]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in base.items()]
    return "\n".join(lines) + "\n"


def _base_mutmut_config() -> dict[str, object]:
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    config: dict[str, object] = dict(data.get("tool", {}).get("mutmut", {}))
    # pyproject's patterns leave out the calls of the module's logger (`log.info(...)`); those
    # of a logger bound to an object (the consumer's `self.log.warning(...)`) and of one got
    # on the spot (the PostgreSQL store's `structlog.get_logger(name).warning(...)`) are log
    # calls too
    patterns = config.get("do_not_mutate_patterns")
    if isinstance(patterns, list):
        logs = [p for p in patterns if p.startswith(r"^\s*log\.")]
        config["do_not_mutate_patterns"] = [
            *patterns, *(p.replace(r"^\s*log\.", r"^\s*self\.log\.") for p in logs),
            *(p.replace(r"^\s*log\.", r"^\s*structlog\.get_logger\([^()]*\)\.")
              for p in logs)]
    return config


def _without_mutmut_table(text: str) -> str:
    out: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        if line.startswith("["):
            skipping = line.strip() == "[tool.mutmut]"
        if not skipping:
            out.append(line)
    return "".join(out)


def run_python(name: str, module: Module, workdir: Path, jobs: int) -> Report:
    started = time.monotonic()
    dest = workdir / name
    make_copy(dest)
    pyproject = dest / "pyproject.toml"
    pyproject.write_text(_without_mutmut_table(pyproject.read_text("utf-8")) + "\n"
                         + mutmut_config(module), "utf-8")
    mutmut = [sys.executable, "-m", "mutmut"]
    env = _nice_env(PYTHONDONTWRITEBYTECODE="1")
    print(f"--- {name}: mutmut on {module.path} with {' '.join(module.tests + module.args)}",
          flush=True)
    # A session of its own: what a killed mutant's tests leave behind (a redis-server) goes too.
    run = subprocess.Popen([*mutmut, "run", "--max-children", str(jobs)], cwd=dest, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    output, _ = run.communicate()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(run.pid, signal.SIGKILL)
    if run.returncode != 0:
        print(output[-4000:])
        raise SystemExit(f"mutmut failed on {name} (exit {run.returncode})")
    results = subprocess.run([*mutmut, "results", "--all", "true"], cwd=dest, env=env,
                             capture_output=True, text=True, check=True).stdout
    counts: Counter[str] = Counter()
    survivors: list[Survivor] = []
    source = (ROOT / module.path).read_text("utf-8")
    for mutant, status in re.findall(r"^\s+(\S+): (.+)$", results, re.MULTILINE):
        counts[status] += 1
        if status in KILLED or status == "skipped":
            continue
        diff = subprocess.run([*mutmut, "show", mutant], cwd=dest, env=env,
                              capture_output=True, text=True).stdout
        diff = "\n".join(line for line in diff.splitlines()
                         if line.startswith(("-", "+", "@@"))
                         and not line.startswith(("---", "+++")))
        survivors.append(Survivor(module.path, _line_of(source, mutant, diff), diff, status))
    survivors.sort(key=lambda s: s.line)
    for s in survivors:  # the hunk header only served to find the line
        s.diff = "\n".join(line for line in s.diff.splitlines() if not line.startswith("@@"))
    return Report(name, counts, survivors, time.monotonic() - started)


def _line_of(source: str, mutant: str, diff: str) -> int:
    """The line of ``source`` a mutmut diff changes (its first removed line, looked up in the
    mutated function's span)."""
    removed = next((line[1:].strip() for line in diff.splitlines()
                    if line.startswith("-") and not line.startswith("---")), None)
    hunk = re.search(r"@@ -(\d+)", diff)
    offset = int(hunk.group(1)) if hunk else 1
    # payflow.web.auth.x_find_key__mutmut_3, payflow.x.xǁClassǁmethod__mutmut_1
    qualname = mutant.rsplit("__mutmut_", 1)[0].rsplit(".", 1)[-1]
    parts = qualname[1:].split("ǁ") if qualname.startswith("xǁ") else [qualname[2:]]
    parts = [p for p in parts if p]
    span = _function_span(source, parts)
    lines = source.splitlines()
    if removed is None or span is None:
        return span[0] if span else 0
    start, end = span
    candidates = [i + 1 for i in range(start - 1, end) if lines[i].strip() == removed]
    if not candidates:
        return start
    guess = start + offset
    return min(candidates, key=lambda n: abs(n - guess))


def _function_span(source: str, parts: list[str]) -> tuple[int, int] | None:
    body: list[ast.stmt] = ast.parse(source).body
    found: ast.AST | None = None
    for part in parts:
        found = next((node for node in body if isinstance(
            node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.name == part),
            None)
        if found is None:
            return None
        body = found.body if isinstance(found, ast.ClassDef) else []
    if not isinstance(found, ast.FunctionDef | ast.AsyncFunctionDef):
        return None
    first = min([found.lineno, *(d.lineno for d in found.decorator_list)])
    return first, found.end_lineno or found.lineno


# --- Lua: our own operators -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LuaMutant:
    line: int
    operator: str
    text: str  # the whole mutated script


_SWAPS: list[tuple[str, str, str]] = [
    # (operator, pattern, replacement); each match is one mutant
    ("LPUSH->RPUSH", r"'LPUSH'", "'RPUSH'"),
    ("RPUSH->LPUSH", r"'RPUSH'", "'LPUSH'"),
    ("swap LMOVE ends", r"'(LEFT|RIGHT)', '(LEFT|RIGHT)'", r"'\2', '\1'"),
    ("<= -> <", r"<=", "<"),
    (">= -> >", r">=", ">"),
    ("< -> <=", r"<(?!=)", "<="),
    ("> -> >=", r">(?!=)", ">="),
    ("== -> ~=", r"==", "~="),
    ("~= -> ==", r"~=", "=="),
    ("+ -> -", r"(?<=\s)\+(?=\s)", "-"),
    ("- -> +", r"(?<=\s)-(?=\s)", "+"),
    ("and -> or", r"\band\b", "or"),
    ("or -> and", r"\bor\b", "and"),
    ("not removed", r"\bnot\s+", ""),
    ("break removed", r"\bbreak\b", ""),
]
_NUMBER = re.compile(r"(?<![\w.\[])(\d+)(?![\w.])")
_INDEX = re.compile(r"\b(ARGV)\[(\d+)")
_KEYS = re.compile(r"\bKEYS\[(\d+)\]")
_CALL_STATEMENT = re.compile(r"^(\s*)(?:return )?redis\.(?:call|error_reply)\(.*?\)(\s*;\s*|\s*$)")


def _code_part(line: str) -> str:
    """``line`` without its ``--`` comment (no Lua string here contains ``--``)."""
    return line.split("--", 1)[0]


def lua_mutants(text: str) -> list[LuaMutant]:
    lines = text.split("\n")
    keys_used = sorted({int(k) for k in _KEYS.findall(text)})
    out: list[LuaMutant] = []

    def add(i: int, operator: str, new_code: str) -> None:
        code = _code_part(lines[i])
        if new_code == code:
            return
        mutated = [*lines[:i], new_code + lines[i][len(code):], *lines[i + 1:]]
        out.append(LuaMutant(i + 1, operator, "\n".join(mutated)))

    for i, line in enumerate(lines):
        code = _code_part(line)
        if not code.strip():
            continue
        for operator, pattern, replacement in _SWAPS:
            for match in re.finditer(pattern, code):
                new = match.expand(replacement)
                add(i, operator, code[:match.start()] + new + code[match.end():])
        for match in _NUMBER.finditer(code):
            n = int(match.group(1))
            for m in (n + 1, n - 1) if n > 0 else (n + 1,):
                add(i, f"{n} -> {m}", code[:match.start()] + str(m) + code[match.end():])
        for match in _INDEX.finditer(code):
            n = int(match.group(2))
            add(i, f"ARGV[{n}] -> ARGV[{n + 1}]",
                code[:match.start(2)] + str(n + 1) + code[match.end(2):])
        for match in _KEYS.finditer(code):
            k = int(match.group(1))
            others = [j for j in keys_used if j != k]
            if others:
                j = next((j for j in others if j > k), others[0])
                add(i, f"KEYS[{k}] -> KEYS[{j}]",
                    code[:match.start(1)] + str(j) + code[match.end(1):])
        if (statement := _CALL_STATEMENT.match(code)) is not None:
            rest = code[statement.end():]
            add(i, "statement removed", statement.group(1) + (rest if rest.strip() else ""))
    return out


def _run_tests(copy: Path, tests: Sequence[str], timeout: float) -> str:
    """``killed``, ``survived`` or ``timeout`` for the tests in ``copy``."""
    cmd = [sys.executable, "-m", "pytest", *PYTEST_ARGS, "--timeout", "20", *tests]
    # (the Lua scripts run their tests as they are: on fakeredis and on a real redis-server)
    env = _nice_env(PYTHONPATH=str(copy / "src"), PYTHONDONTWRITEBYTECODE="1")
    # A session of its own: on a timeout the redis-server its tests started goes too (a
    # mutated script may loop for ever inside it).
    proc = subprocess.Popen(cmd, cwd=copy, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return "timeout"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything the tests left behind
    # 1: a test failed; 3: pytest's internal error (a hung mutant can cause one, like mutmut
    # this counts it as killed); anything else (no tests, usage error) is not a kill
    return {0: "survived", 1: "killed", 3: "killed"}.get(code, f"error (pytest exit {code})")


def _try_lua_mutant(mutant: LuaMutant, *, free: list[Path], path: str, original: str,
                    tests: Sequence[str], budget: float) -> tuple[LuaMutant, str]:
    """Run ``tests`` in a free copy with ``mutant`` in place of the script at ``path``."""
    copy = free.pop()  # one copy per worker thread: list.pop/append are atomic
    target = copy / path
    try:
        target.write_text(mutant.text, "utf-8")
        return mutant, _run_tests(copy, tests, budget)
    finally:
        target.write_text(original, "utf-8")
        free.append(copy)


def run_lua(names: Sequence[str], workdir: Path, jobs: int) -> list[Report]:
    copies = [workdir / f"lua-{n}" for n in range(jobs)]
    for copy in copies:
        make_copy(copy)
    reports = []
    for name in names:
        started = time.monotonic()
        module = MODULES[name]
        tests = [*_runnable(module.tests), *module.args]
        print(f"--- {name}: {module.path} with {' '.join(module.tests + module.args)}",
              flush=True)
        baseline_started = time.monotonic()
        if _run_tests(copies[0], tests, timeout=600) != "survived":
            raise SystemExit(f"{name}: the tests fail without any mutation; fix them first")
        budget = max(30.0, 3 * (time.monotonic() - baseline_started))
        original = (ROOT / module.path).read_text("utf-8")
        mutants = lua_mutants(original)
        one = functools.partial(_try_lua_mutant, free=list(copies), path=module.path,
                                original=original, tests=tests, budget=budget)
        counts: Counter[str] = Counter()
        survivors: list[Survivor] = []
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            for mutant, status in pool.map(one, mutants):
                counts[status] += 1
                if status not in KILLED:
                    survivors.append(Survivor(module.path, mutant.line,
                                              _text_diff(original, mutant), status))
        reports.append(Report(name, counts, survivors, time.monotonic() - started))
        _print_report(reports[-1])
    return reports


def _text_diff(original: str, mutant: LuaMutant) -> str:
    diff = difflib.unified_diff(original.split("\n"), mutant.text.split("\n"), lineterm="", n=0)
    body = [line for line in diff if not line.startswith(("---", "+++"))]
    return f"[{mutant.operator}]\n" + "\n".join(body)


# --- output -----------------------------------------------------------------------------------


def _rate(killed: int, total: int) -> str:
    return f"{100 * killed / total:5.1f} %" if total else "    - "


def _print_report(report: Report) -> None:
    print(f"{report.name}: {report.killed}/{report.total} killed "
          f"({_rate(report.killed, report.total).strip()}) in {report.seconds:.0f} s", flush=True)


def print_summary(reports: Sequence[Report]) -> tuple[int, int]:
    print("\n=== surviving mutants")
    for report in reports:
        for s in report.survivors:
            print(f"\n{s.file}:{s.line} ({report.name}, {s.status})")
            print(_indent(s.diff))
    print("\n=== kill rates")
    print(f"{'module':<14} {'killed':>7} {'total':>6} {'rate':>8}  {'time':>6}  other")
    killed = total = 0
    for r in reports:
        other = ", ".join(f"{n} {status}" for status, n in sorted(r.counts.items())
                          if status not in ("killed", "survived"))
        print(f"{r.name:<14} {r.killed:>7} {r.total:>6} {_rate(r.killed, r.total):>8}  "
              f"{r.seconds:>5.0f}s  {other}")
        killed += r.killed
        total += r.total
    print(f"{'all':<14} {killed:>7} {total:>6} {_rate(killed, total):>8}  "
          f"{sum(r.seconds for r in reports):>5.0f}s")
    return killed, total


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def _expand(names: Sequence[str]) -> Iterator[str]:
    for name in names:
        if name == "lua":
            yield from (n for n in MODULES if n.startswith("lua."))
        elif name in MODULES:
            yield name
        else:
            raise SystemExit(f"unknown module {name!r}; scripts/mutation --list names them")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/mutation", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("modules", nargs="*",
                        help="module names (default: all but postgres and pg_sql); 'lua': "
                             "all six scripts")
    parser.add_argument("--list", action="store_true", help="print the module -> tests map")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2,
                        help="mutants tested at once (default: the CPU count)")
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "payflow-mutation",
                        help="where the copies are made (default: %(default)s)")
    parser.add_argument("--deselect", action="append", default=[], metavar="NODEID",
                        help="leave out a test (pytest --deselect) that fails without any "
                             "mutation, e.g. while someone is changing what it checks")
    parser.add_argument("--fail-under", type=float, default=90.0,
                        help="exit 1 when the kill rate is below this percentage")
    args = parser.parse_args(argv)
    if args.list:
        for name, module in MODULES.items():
            print(f"{name:<12} {module.path}\n{'':<12} <- {' '.join(module.tests + module.args)}")
        return 0
    names = list(dict.fromkeys(_expand(args.modules or DEFAULT)))
    extra = tuple(arg for nodeid in args.deselect for arg in ("--deselect", nodeid))
    for name in names:  # a deselected test only matters where it would run
        MODULES[name] = dataclasses.replace(MODULES[name], args=MODULES[name].args + extra)
    started = time.monotonic()
    reports: list[Report] = []
    for name in names:
        if not name.startswith("lua."):
            reports.append(run_python(name, MODULES[name], args.workdir, args.jobs))
            _print_report(reports[-1])
    lua = [name for name in names if name.startswith("lua.")]
    if lua:
        reports += run_lua(lua, args.workdir, args.jobs)
    killed, total = print_summary(reports)
    print(f"\nfull run: {time.monotonic() - started:.0f} s")
    return 0 if not total or 100 * killed / total >= args.fail_under else 1


if __name__ == "__main__":
    sys.exit(main())
