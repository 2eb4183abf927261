"""PayFlow's benchmark: `payflow serve` end to end on a real Redis, with arq and saq as peers.

Everything runs on 127.0.0.1: a redis-server of its own on a free port (nothing saved), `payflow
serve` started as a user starts it (PAYFLOW_* environment, JSON logs to a file), a webhook
receiver in another process (benchmarks/receiver.py, which verifies every signature), wrk for the
HTTP intake, and the peers' own worker CLIs. Each measurement is repeated --repeat times, each
time on a fresh daemon (or worker) and a flushed Redis, and printed as one line: median (min,
max) of the runs.

Measurements (--only, comma-separated; default: queue,queue-quiet,http,intake,latency,peers,
peers-http):

  queue        --jobs legacy jobs `process_payment:pay_b_<i>:upi` LPUSHed (pipelined chunks)
               until every payment is terminal and every webhook delivered to the log sink:
               payments/s and the daemon's CPU µs per payment (utime+stime, /proc/<pid>/stat)
  queue-quiet  the same with PAYFLOW_LOG_LEVEL=warning
  http         --http-jobs jobs, delivered to a real endpoint (the receiver; log sink off)
  intake       POST /v1/payments with an API key, by wrk (benchmarks/post_payment.lua, 50
               connections, --wrk-seconds): accepted (202) req/s, latency p50/p99, and payments
               processed/s by the same daemon meanwhile
  latency      an open-loop client at --rate payments/s for --latency-seconds: p50/p99/max from
               the 202 to the webhook's arrival at the receiver
  memory       the daemon's RSS after --memory-payments payments through the queue path (memory
               store; minutes: only when asked)
  peers        the same two-stage work with arq and with saq (benchmarks/peers/), --peer-jobs
               payments, log lines only: payments/s and PayFlow/peer (PayFlow's `queue` rate)
  peers-http   the same, webhooks POSTed to the receiver (compared with PayFlow's `http` rate)

--daemons N adds the queue measurement with 1, 2, … N daemons on one Redis and a shared
PostgreSQL store (--store; a schema of its own per run, dropped after).

Usage:
  .venv/bin/python -m benchmarks.pipeline [--repeat 3] [--jobs 50000] [--only queue,http,...]
                                          [--daemons 2] [--peer-python PATH]
Needs redis-server and wrk on PATH (apt-get install redis-server wrk). The peers need arq and
saq, which pin redis-py below PayFlow's (arq: redis<6), so they live in a venv of their own,
not an extra of the project: `python3 -m venv /tmp/payflow-peers && /tmp/payflow-peers/bin/pip
install -r benchmarks/peers-requirements.txt`, then `--peer-python
/tmp/payflow-peers/bin/python` (the peers import PayFlow's signing module from src/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import redis

from benchmarks.receiver import new_event_loop
from payflow.webhooks.signing import new_secret

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
PAYFLOW = shutil.which("payflow", path=str(Path(sys.executable).parent)) or "payflow"
PY_SPY = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
CLK_TCK = os.sysconf("SC_CLK_TCK")
API_KEY = "sk_bench_" + secrets.token_hex(16)  # PAYFLOW_API_KEYS=bench:<this>
AUTH = {"Authorization": f"Bearer {API_KEY}"}
PAYMENT_BODY = json.dumps({"amount": 1999, "currency": "INR", "method": "upi",
                           "upi": {"vpa": "bench@okbank"}}).encode()
PEER_READY = "peer worker ready"  # benchmarks/peers/common.py READY
PEER_DELIVERED = "Webhook delivered"  # benchmarks/peers/common.py DELIVERED
PEERS = ("arq", "saq")
ALL = ("queue", "queue-quiet", "http", "intake", "latency", "memory", "peers", "peers-http")
DEFAULT_ONLY = "queue,queue-quiet,http,intake,latency,peers,peers-http"
POLL = 0.05  # seconds between polls of /metrics or the receiver


class BenchError(Exception):
    """A measurement could not be made; the message says why."""


def progress(text: str) -> None:
    print(f"  … {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- processes --------------------------------------------------------------------------------


class Proc:
    """A process the benchmark started, its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path,
                 log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdout=out,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise BenchError(f"{self.name} exited with {code}:\n{self.tail()}")

    def tail(self, size: int = 3000) -> str:
        try:
            return self.log.read_bytes()[-size:].decode("utf-8", "replace")
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        """utime + stime of the process (all its threads), from /proc/<pid>/stat."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()  # from field 3 (state) on
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def status_kib(self, key: str) -> int:
        """A kB field of /proc/<pid>/status (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise BenchError(f"no {key} in /proc/{self.pid}/status")

    def stop(self, timeout: float = 30.0) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


async def wait_until(check: Callable[[], Awaitable[bool]], within: float,
                     what: Callable[[], str], procs: Sequence[Proc] = ()) -> float:
    """Poll ``check`` until it is true; the seconds it took, or BenchError after ``within``
    (or when one of ``procs`` exits)."""
    started = time.perf_counter()
    while not await check():
        for proc in procs:
            proc.check()
        if time.perf_counter() - started > within:
            raise BenchError(f"timed out after {within:.0f} s: {what()}")
        await asyncio.sleep(POLL)
    return time.perf_counter() - started


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    series = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels))
        series.append((name, found, float(value)))
    return series


def metric(series: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(value for n, found, value in series
               if n == name and all(found.get(k) == v for k, v in labels.items()))


@dataclass
class Progress:
    delivered: float = 0.0  # webhook jobs done
    terminal: float = 0.0  # payments that reached a terminal state


class Daemon:
    """`payflow serve` as a user runs it: PAYFLOW_* settings, JSON logs to a file."""

    def __init__(self, bench: Bench, tag: str, *, store: str, log_sink: bool,
                 level: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAYFLOW_")}
        env.update(PAYFLOW_REDIS_URL=bench.redis_url, PAYFLOW_HTTP_PORT=str(self.port),
                   PAYFLOW_LOG_FORMAT="json", PAYFLOW_LOG_LEVEL=level,
                   PAYFLOW_STORE_URL=store,
                   PAYFLOW_WEBHOOKS_LOG_SINK="true" if log_sink else "false",
                   PAYFLOW_WEBHOOKS_ALLOW_NETWORKS="127.0.0.0/8",  # the receiver
                   PAYFLOW_API_KEYS=f"bench:{API_KEY}")
        self.proc = bench.spawn(f"payflow serve ({tag})", [PAYFLOW, "serve"], env=env,
                                cwd=bench.workdir, log=f"payflow-{tag}-{self.port}.log")
        self.profiler: Proc | None = None  # py-spy, with --profile

    async def ready(self, http: aiohttp.ClientSession, within: float = 60.0) -> None:
        async def up() -> bool:
            try:
                async with http.get(self.url + "/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(up, within, lambda: f"{self.proc.name} not ready\n{self.proc.tail()}",
                         [self.proc])

    async def progress(self, http: aiohttp.ClientSession) -> Progress:
        async with http.get(self.url + "/metrics") as resp:
            series = parse_metrics(await resp.text())
        return Progress(metric(series, "payflow_jobs_total", queue="webhook_jobs",
                               outcome="done"),
                        metric(series, "payflow_payments_total"))

    async def create_endpoint(self, http: aiohttp.ClientSession, url: str) -> str:
        """POST /v1/webhook_endpoints for ``url``; its signing secret."""
        body = {"url": url, "enabled_events": ["*"], "description": "benchmark receiver"}
        async with http.post(self.url + "/v1/webhook_endpoints", json=body,
                             headers=AUTH) as resp:
            answer = await resp.json()
            if resp.status != 201:
                raise BenchError(f"POST /v1/webhook_endpoints answered {resp.status}: {answer}")
        return str(answer["secret"])


async def total_progress(daemons: Sequence[Daemon], http: aiohttp.ClientSession) -> Progress:
    total = Progress()
    for d in daemons:
        p = await d.progress(http)
        total.delivered += p.delivered
        total.terminal += p.terminal
    return total


# --- the bench: Redis, the receiver, every process, and the measurements --------------------


Sample = dict[str, float]


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.procs: list[Proc] = []
        self.redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.redis = redis.Redis.from_url(self.redis_url)
        self.receiver: Proc | None = None
        self.receiver_url = ""
        self.rates: dict[str, float] = {}  # measurement -> median payments/s, for the ratios
        self.http = aiohttp.ClientSession()  # control traffic: /readyz, /metrics, receiver

    def spawn(self, name: str, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path,
              log: str) -> Proc:
        proc = Proc(name, argv, env=env, cwd=cwd, log=self.workdir / log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)
        if not self.args.keep_logs and proc is not self.receiver:
            proc.log.unlink(missing_ok=True)

    async def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        await self.http.close()
        self.redis.close()

    # redis-server -----------------------------------------------------------------------------

    async def start_redis(self) -> None:
        self.spawn("redis-server", ["redis-server", "--port", str(self.redis_port), "--bind",
                                    "127.0.0.1", "--save", "", "--appendonly", "no",
                                    "--dir", str(self.workdir)],
                   env=os.environ, cwd=self.workdir, log="redis.log")

        async def pong() -> bool:
            try:
                return bool(self.redis.ping())
            except redis.RedisError:
                return False

        await wait_until(pong, 20, lambda: "redis-server does not answer", self.procs)

    def flush(self) -> None:
        self.redis.flushall()

    def push(self, count: int, first: int = 0, chunk: int = 5000,
             per_round_trip: int = 10) -> None:
        """LPUSH legacy jobs for payments ``first`` … ``first + count - 1`` onto payflow_jobs:
        chunks of ``chunk``, pipelined."""
        pipe = self.redis.pipeline(transaction=False)
        end = first + count
        for n, start in enumerate(range(first, end, chunk), 1):
            pipe.lpush("payflow_jobs", *(f"process_payment:pay_b_{i}:upi"
                                         for i in range(start, min(start + chunk, end))))
            if n % per_round_trip == 0:
                pipe.execute()
        pipe.execute()

    # the receiver -----------------------------------------------------------------------------

    async def start_receiver(self) -> str:
        """The receiver process (started once); its hook URL."""
        if self.receiver is None:
            port = free_port()
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            self.receiver = self.spawn("receiver", [sys.executable, "-m", "benchmarks.receiver",
                                                    "--port", str(port)],
                                       env=env, cwd=ROOT, log="receiver.log")
            self.receiver_url = f"http://127.0.0.1:{port}"

            async def up() -> bool:
                try:
                    async with self.http.get(self.receiver_url + "/_stats") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until(up, 30, lambda: "the receiver does not answer", [self.receiver])
        return self.receiver_url + "/hook"

    async def receiver_reset(self, secret: str) -> None:
        async with self.http.post(self.receiver_url + "/_reset",
                                  json={"secrets": [secret]}) as resp:
            if resp.status != 200:
                raise BenchError(f"receiver /_reset answered {resp.status}")

    async def receiver_stats(self) -> dict[str, int]:
        async with self.http.get(self.receiver_url + "/_stats") as resp:
            stats: dict[str, int] = await resp.json()
        return stats

    async def receiver_arrivals(self) -> dict[str, float]:
        async with self.http.get(self.receiver_url + "/_arrivals") as resp:
            arrivals: dict[str, float] = await resp.json()
        return arrivals

    async def wait_received(self, count: int, within: float, procs: Sequence[Proc]) -> float:
        stats: dict[str, int] = {}

        async def enough() -> bool:
            nonlocal stats
            stats = await self.receiver_stats()
            return stats["count"] >= count

        return await wait_until(enough, within,
                                lambda: f"the receiver has {stats} of {count}", procs)

    # daemons ----------------------------------------------------------------------------------

    async def start_daemons(self, count: int, tag: str, *, store: str = "memory://",
                            log_sink: bool = True, level: str = "info") -> list[Daemon]:
        """``count`` daemons, ready; the first alone first (it migrates a fresh store)."""
        daemons = [Daemon(self, f"{tag}-1", store=store, log_sink=log_sink, level=level)]
        try:
            await daemons[0].ready(self.http)
            daemons += [Daemon(self, f"{tag}-{i}", store=store, log_sink=log_sink, level=level)
                        for i in range(2, count + 1)]
            for d in daemons[1:]:
                await d.ready(self.http)
        except BaseException:
            for d in daemons:
                self.stop(d.proc)
            raise
        if self.args.profile:
            for d in daemons:
                self.attach_profiler(d)
        return daemons

    def attach_profiler(self, daemon: Daemon) -> None:
        """py-spy, sampling ``daemon`` until it stops (--profile DIR: one raw file each, its
        summary printed by scripts/profile_summary.py)."""
        out = Path(self.args.profile) / f"{daemon.proc.name.split('(')[1].rstrip(')')}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        daemon.profiler = self.spawn(
            f"py-spy of {daemon.proc.name}",
            [PY_SPY, "record", "--pid", str(daemon.proc.pid), "--rate", "200", "--format",
             "raw", "--output", str(out), "--nonblocking"],
            env=os.environ, cwd=self.workdir, log=f"py-spy-{daemon.port}.log")

    def stop_daemons(self, daemons: Sequence[Daemon]) -> None:
        for d in daemons:
            if d.profiler is not None:  # it writes its file on SIGINT
                d.profiler.popen.send_signal(signal.SIGINT)
                d.profiler.popen.wait(30)
                self.stop(d.profiler)
            self.stop(d.proc)

    async def wait_done(self, daemons: Sequence[Daemon], count: int, within: float) -> float:
        """Until ``count`` payments are terminal and their webhooks delivered."""
        seen = Progress()

        async def done() -> bool:
            nonlocal seen
            seen = await total_progress(daemons, self.http)
            return seen.terminal >= count and seen.delivered >= count

        return await wait_until(done, within,
                                lambda: f"{seen.terminal:.0f} terminal, {seen.delivered:.0f} "
                                        f"delivered of {count}", [d.proc for d in daemons])

    # measurements -----------------------------------------------------------------------------

    async def queue_once(self, count: int, tag: str, *, level: str = "info",
                         daemons: int = 1, store: str = "memory://") -> Sample:
        self.flush()
        ds = await self.start_daemons(daemons, tag, store=store, level=level)
        try:
            cpu = sum(d.proc.cpu_seconds() for d in ds)
            started = time.perf_counter()
            self.push(count)
            await self.wait_done(ds, count, max(60.0, count / 250))
            took = time.perf_counter() - started
            cpu = sum(d.proc.cpu_seconds() for d in ds) - cpu
        finally:
            self.stop_daemons(ds)
        return {"rate": count / took, "cpu": cpu * 1e6 / count, "seconds": took}

    async def http_once(self, count: int, tag: str) -> Sample:
        self.flush()
        hook = await self.start_receiver()
        (d,) = await self.start_daemons(1, tag, log_sink=False)
        try:
            await self.receiver_reset(await d.create_endpoint(self.http, hook))
            assert self.receiver is not None
            cpu, receiver_cpu = d.proc.cpu_seconds(), self.receiver.cpu_seconds()
            started = time.perf_counter()
            self.push(count)
            await self.wait_received(count, max(60.0, count / 150), [d.proc, self.receiver])
            took = time.perf_counter() - started
            cpu = d.proc.cpu_seconds() - cpu
            receiver_cpu = self.receiver.cpu_seconds() - receiver_cpu
            stats = await self.receiver_stats()
        finally:
            self.stop_daemons([d])
        return {"rate": count / took, "cpu": cpu * 1e6 / count, "seconds": took,
                "receiver_cpu": receiver_cpu * 1e6 / count, "rejected": stats["rejected"],
                "duplicates": stats["duplicates"]}

    async def intake_once(self, tag: str) -> Sample:
        self.flush()
        seconds = self.args.wrk_seconds
        (d,) = await self.start_daemons(1, tag)
        try:
            before = await d.progress(self.http)
            env = dict(os.environ, PAYFLOW_BENCH_API_KEY=API_KEY)
            started = time.perf_counter()
            wrk = await asyncio.create_subprocess_exec(
                "wrk", "-t2", f"-c{self.args.wrk_connections}", f"-d{seconds}s", "--latency",
                "-s", str(HERE / "post_payment.lua"), d.url + "/v1/payments", env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            try:
                out, _ = await asyncio.wait_for(wrk.communicate(), seconds + 60)
            finally:
                if wrk.returncode is None:
                    wrk.kill()
                    await wrk.wait()
            window = time.perf_counter() - started
            after = await d.progress(self.http)
            text = out.decode("utf-8", "replace")
            if wrk.returncode != 0:
                raise BenchError(f"wrk exited with {wrk.returncode}:\n{text}")
            result = parse_wrk(text)
            accepted = result["answered"] - result["non202"]
            drain = await self.wait_done([d], int(accepted), max(60.0, accepted / 250))
            final = await d.progress(self.http)
            # requests still in flight when wrk stopped were accepted but not counted by wrk
            unread = final.terminal - accepted
            if not 0 <= unread <= self.args.wrk_connections:
                raise BenchError(f"wrk counted {accepted:.0f} answers 202, the daemon's "
                                 f"payflow_payments_total says {final.terminal:.0f}")
        finally:
            self.stop_daemons([d])
        return {"accepted": accepted / result["duration"], "p50": result["p50"],
                "p99": result["p99"], "processed": (after.terminal - before.terminal) / window,
                "non202": result["non202"], "errors": result["socket_errors"], "drain": drain}

    async def latency_once(self, tag: str) -> Sample:
        self.flush()
        rate, seconds = self.args.rate, self.args.latency_seconds
        hook = await self.start_receiver()
        (d,) = await self.start_daemons(1, tag, log_sink=False)
        try:
            await self.receiver_reset(await d.create_endpoint(self.http, hook))
            accepted: dict[str, float] = {}
            answer_seconds: list[float] = []
            failures = 0
            last_answer = 0.0
            headers = {**AUTH, "Content-Type": "application/json"}
            connector = aiohttp.TCPConnector(limit=self.args.latency_connections)
            async with aiohttp.ClientSession(connector=connector) as client:

                async def post() -> None:
                    nonlocal failures, last_answer
                    sent = time.time()
                    try:
                        async with client.post(d.url + "/v1/payments", data=PAYMENT_BODY,
                                               headers=headers) as resp:
                            answered = time.time()
                            await resp.read()
                            location = resp.headers.get("Location", "")
                            if resp.status != 202 or not location:
                                failures += 1
                                return
                    except aiohttp.ClientError:
                        failures += 1
                        return
                    accepted[location.rsplit("/", 1)[-1]] = answered
                    answer_seconds.append(answered - sent)
                    last_answer = max(last_answer, answered)

                total = int(rate * seconds)
                loop = asyncio.get_running_loop()
                tasks: set[asyncio.Task[None]] = set()
                begin, begin_wall, cpu = loop.time(), time.time(), time.process_time()
                for i in range(total):  # open loop: on schedule, whatever the answers
                    delay = begin + i / rate - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    task = asyncio.create_task(post())
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                offered = total / (loop.time() - begin)
                if tasks:
                    await asyncio.wait_for(asyncio.gather(*tasks), 120)
                client_cpu = (time.process_time() - cpu) / (time.time() - begin_wall)
            assert self.receiver is not None
            await self.wait_received(len(accepted), max(60.0, len(accepted) / 150),
                                     [d.proc, self.receiver])
            arrivals = await self.receiver_arrivals()
        finally:
            self.stop_daemons([d])
        latencies = sorted(arrivals[pid] - at for pid, at in accepted.items() if pid in arrivals)
        if len(latencies) < 2:
            raise BenchError(f"only {len(latencies)} webhooks matched a 202")
        q = statistics.quantiles(latencies, n=100)
        answers = statistics.quantiles(answer_seconds, n=100)
        return {"offered": offered, "answered": len(accepted) / (last_answer - begin_wall),
                "p50": q[49] * 1000, "p99": q[98] * 1000,
                "max": latencies[-1] * 1000, "http_p99": answers[98] * 1000,
                "client_cpu": client_cpu * 100,
                "failures": failures}

    async def memory_once(self, count: int, tag: str) -> Sample:
        self.flush()
        (d,) = await self.start_daemons(1, tag)
        try:
            baseline = d.proc.status_kib("VmRSS")
            started = time.perf_counter()
            chunk = 100_000
            for start in range(0, count, chunk):  # a chunk at a time, so Redis holds less
                self.push(min(chunk, count - start), first=start)
                if start + chunk < count:  # keep ~2 chunks queued ahead of the daemon
                    await self.wait_done([d], max(0, start - chunk), max(60.0, count / 200))
            await self.wait_done([d], count, max(120.0, count / 200))
            took = time.perf_counter() - started
            rss, peak = d.proc.status_kib("VmRSS"), d.proc.status_kib("VmHWM")
        finally:
            self.stop_daemons([d])
        return {"rss": rss / 1024, "peak": peak / 1024, "baseline": baseline / 1024,
                "rate": count / took}

    async def peer_once(self, lib: str, count: int, tag: str, *, http: bool) -> Sample:
        self.flush()
        py = self.args.peer_python
        env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
        env.update(BENCH_REDIS_URL=self.redis_url,
                   PYTHONPATH=os.pathsep.join((str(ROOT), str(ROOT / "src"))))
        if http:
            secret = new_secret()
            env.update(BENCH_WEBHOOK_URL=await self.start_receiver(),
                       BENCH_WEBHOOK_SECRET=secret)
            await self.receiver_reset(secret)
        cli = Path(py).parent / lib
        target = {"arq": "benchmarks.peers.arq_worker.WorkerSettings",
                  "saq": "benchmarks.peers.saq_worker.settings"}[lib]
        argv = [str(cli), target] if cli.exists() else [py, "-m", lib, target]
        worker = self.spawn(f"{lib} worker", argv, env=env, cwd=ROOT, log=f"{lib}-{tag}.log")
        try:
            async def ready() -> bool:
                return PEER_READY in worker.tail(100_000)

            await wait_until(ready, 30, lambda: f"{lib} worker not ready\n{worker.tail()}",
                             [worker])
            cpu = worker.cpu_seconds()
            timeout = max(120.0, count / 20)
            driver = await asyncio.create_subprocess_exec(
                py, "-m", f"benchmarks.peers.{lib}_worker", str(count), "--timeout",
                str(timeout), cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT)
            try:
                out, _ = await asyncio.wait_for(driver.communicate(), timeout + 30)
            finally:
                if driver.returncode is None:
                    driver.kill()
                    await driver.wait()
            cpu = worker.cpu_seconds() - cpu
            worker.check()
            text = out.decode("utf-8", "replace")
            if driver.returncode != 0:
                raise BenchError(f"{lib} enqueuer exited with {driver.returncode}:\n{text}\n"
                                 f"worker:\n{worker.tail()}")
            timing = json.loads(text.strip().splitlines()[-1])
            if http:
                delivered = (await self.receiver_stats())["count"]
            else:
                delivered = worker.log.read_bytes().count(PEER_DELIVERED.encode())
            if delivered != count:
                raise BenchError(f"{lib}: {delivered} webhooks delivered of {count}\n"
                                 f"{worker.tail()}")
        finally:
            self.stop(worker)
        return {"rate": count / timing["seconds"], "cpu": cpu * 1e6 / count,
                "enqueue": timing["enqueue_seconds"]}

    async def repeat(self, name: str, once: Callable[[str], Awaitable[Sample]],
                     times: int | None = None) -> list[Sample]:
        samples = []
        times = self.args.repeat if times is None else times
        for i in range(1, times + 1):
            progress(f"{name} run {i}/{times}")
            samples.append(await once(f"{name}-{i}"))
        return samples


# --- output -----------------------------------------------------------------------------------


def spread(samples: Sequence[Sample], key: str, unit: str, fmt: str = ",.0f") -> str:
    """``median unit (min …, max …)`` of one value over the runs."""
    values = [s[key] for s in samples]
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:{fmt}} {unit}"
    return f"{med:{fmt}} {unit} (min {min(values):{fmt}}, max {max(values):{fmt}})"


def total_of(samples: Sequence[Sample], key: str) -> int:
    return int(sum(s.get(key, 0) for s in samples))


def line(name: str, text: str) -> None:
    print(f"{name:<15} {text}", flush=True)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def parse_wrk(text: str) -> Sample:
    """Requests, duration, p50/p99 (ms), socket errors and the Lua script's counts."""
    got = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text)
    lua = re.search(r"answered (\d+) non202 (\d+)", text)
    p50 = re.search(r"^\s*50(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)", text, re.M)
    p99 = re.search(r"^\s*99(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)", text, re.M)
    if not (got and lua and p50 and p99):
        raise BenchError(f"cannot read wrk's output:\n{text}")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       text)
    return {"requests": float(got[1]),
            "duration": float(got[2]) * _UNITS[got[3]] / 1000,
            "answered": float(lua[1]), "non202": float(lua[2]),
            "p50": float(p50[1]) * _UNITS[p50[2]], "p99": float(p99[1]) * _UNITS[p99[2]],
            "socket_errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0}


def notes(samples: Sequence[Sample], **labels: str) -> str:
    found = [f"{total_of(samples, key)} {label}" for key, label in labels.items()
             if total_of(samples, key)]
    return f" [{', '.join(found)}]" if found else ""


# --- the run ----------------------------------------------------------------------------------


async def measure(bench: Bench, name: str) -> None:
    args = bench.args
    n, hn = args.jobs, args.http_jobs
    if name in ("queue", "queue-quiet"):
        level = "warning" if name == "queue-quiet" else "info"
        samples = await bench.repeat(name, lambda tag: bench.queue_once(n, tag, level=level))
        bench.rates[name] = statistics.median(s["rate"] for s in samples)
        line(name, f"{n} legacy jobs, log sink, log level {level}: "
                   f"{spread(samples, 'rate', 'payments/s')}; daemon CPU "
                   f"{spread(samples, 'cpu', 'µs/payment')}")
    elif name == "http":
        samples = await bench.repeat(name, lambda tag: bench.http_once(hn, tag))
        bench.rates[name] = statistics.median(s["rate"] for s in samples)
        line(name, f"{hn} legacy jobs, webhooks POSTed to a verifying receiver: "
                   f"{spread(samples, 'rate', 'payments/s')}; daemon CPU "
                   f"{spread(samples, 'cpu', 'µs/payment')}; the receiver's CPU "
                   f"{spread(samples, 'receiver_cpu', 'µs/payment')}"
                   + notes(samples, rejected="rejected", duplicates="duplicates"))
    elif name == "intake":
        samples = await bench.repeat(name, bench.intake_once)
        line(name, f"wrk POST /v1/payments, {args.wrk_connections} connections, "
                   f"{args.wrk_seconds} s: {spread(samples, 'accepted', '202/s')}, p50 "
                   f"{spread(samples, 'p50', 'ms', '.1f')}, p99 "
                   f"{spread(samples, 'p99', 'ms', '.1f')}; processed meanwhile "
                   f"{spread(samples, 'processed', 'payments/s')}; backlog done after "
                   f"{spread(samples, 'drain', 's', '.1f')}"
                   + notes(samples, non202="answers not 202", errors="socket errors"))
    elif name == "latency":
        samples = await bench.repeat(name, bench.latency_once)
        line(name, f"open loop {args.rate:,.0f} POST/s for {args.latency_seconds} s (sent "
                   f"{spread(samples, 'offered', '/s')}, 202s {spread(samples, 'answered', '/s')})"
                   f", 202 -> webhook at the receiver: p50 "
                   f"{spread(samples, 'p50', 'ms', '.1f')}, p99 "
                   f"{spread(samples, 'p99', 'ms', '.1f')}, max "
                   f"{spread(samples, 'max', 'ms', '.1f')}; HTTP p99 "
                   f"{spread(samples, 'http_p99', 'ms', '.1f')}; the client's CPU "
                   f"{spread(samples, 'client_cpu', '%')}"
                   + notes(samples, failures="requests not answered 202"))
    elif name == "memory":
        m = args.memory_payments
        samples = await bench.repeat(name, lambda tag: bench.memory_once(m, tag))
        line(name, f"{m:,} payments through the queue, memory store: RSS "
                   f"{spread(samples, 'rss', 'MiB')} (peak {spread(samples, 'peak', 'MiB')}, "
                   f"at start {spread(samples, 'baseline', 'MiB')}); "
                   f"{spread(samples, 'rate', 'payments/s')}")
    elif name in ("peers", "peers-http"):
        http = name == "peers-http"
        ours = bench.rates["http" if http else "queue"]
        pn = args.peer_jobs

        def runs_of(lib: str) -> Callable[[str], Awaitable[Sample]]:
            return lambda tag: bench.peer_once(lib, pn, tag, http=http)

        for lib in PEERS:
            samples = await bench.repeat(f"{name}-{lib}", runs_of(lib))
            rate = statistics.median(s["rate"] for s in samples)
            what = "webhooks POSTed to the receiver" if http else "log lines"
            line(f"{name}-{lib}", f"{pn} payments with {lib}, {what}: "
                                  f"{spread(samples, 'rate', 'payments/s')}; worker CPU "
                                  f"{spread(samples, 'cpu', 'µs/payment')}; PayFlow/{lib} "
                                  f"x{ours / rate:.1f}")


async def scale(bench: Bench) -> None:
    args = bench.args
    n = args.jobs
    first = 0.0
    for k in range(1, args.daemons + 1):
        async def once(tag: str, k: int = k) -> Sample:
            schema = f"payflow_bench_{os.getpid()}_{tag.replace('-', '_')}"
            await pg_schema(args.store, schema, create=True)
            try:
                sep = "&" if "?" in args.store else "?"
                return await bench.queue_once(n, tag, daemons=k,
                                              store=f"{args.store}{sep}search_path={schema}")
            finally:
                await pg_schema(args.store, schema, create=False)

        samples = await bench.repeat(f"daemons-{k}", once)
        rate = statistics.median(s["rate"] for s in samples)
        first = first or rate
        line(f"daemons-{k}", f"{n} legacy jobs, {k} daemon{'s' if k > 1 else ''}, one Redis, "
                             f"PostgreSQL store: {spread(samples, 'rate', 'payments/s')} "
                             f"(x{rate / first:.2f} of 1 daemon); CPU "
                             f"{spread(samples, 'cpu', 'µs/payment')} (all daemons)")


async def pg_schema(url: str, schema: str, *, create: bool) -> None:
    import asyncpg

    conn = await asyncio.wait_for(asyncpg.connect(url), 30)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}" if create
                           else f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


def peer_versions(python: str) -> str:
    code = "import arq.version, saq; print(f'arq {arq.version.VERSION}, saq {saq.__version__}')"
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60,
                              check=False)
    except OSError as exc:
        raise BenchError(f"cannot run {python}: {exc}") from None
    if done.returncode != 0:
        raise BenchError(f"arq and saq cannot be imported by {python} (--peer-python): "
                         f"install the `benchmark` extra there (see --help)")
    return done.stdout.strip()


async def run(args: argparse.Namespace, selected: list[str], workdir: Path) -> int:
    bench = Bench(args, workdir)
    failed = 0
    try:
        await bench.start_redis()
        info = bench.redis.info("server")
        peers = ""
        if any(name.startswith("peers") for name in selected):
            try:
                peers = ", " + peer_versions(args.peer_python)
            except BenchError as exc:
                print(f"peers: {exc}", flush=True)
                selected = [name for name in selected if not name.startswith("peers")]
                failed += 1
        print(f"payflow serve, redis-server {info['redis_version']} on 127.0.0.1, "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, Python "
              f"{sys.version.split()[0]}{peers}; each line: median (min, max) of "
              f"{args.repeat} run{'s' if args.repeat > 1 else ''}, each on a fresh daemon and a "
              f"flushed Redis", flush=True)
        for name in selected:
            try:
                await measure(bench, name)
            except (BenchError, KeyError, TimeoutError, OSError, redis.RedisError,
                    aiohttp.ClientError) as exc:
                failed += 1
                line(name, f"FAILED: {type(exc).__name__}: {exc}")
        if args.daemons:
            try:
                await scale(bench)
            except (BenchError, TimeoutError, OSError, redis.RedisError,
                    aiohttp.ClientError) as exc:
                failed += 1
                line("daemons", f"FAILED: {type(exc).__name__}: {exc}")
    finally:
        await bench.close()
    return 1 if failed else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pipeline", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--only", default=DEFAULT_ONLY,
                        help=f"measurements, comma-separated, from {', '.join(ALL)} "
                             f"(default {DEFAULT_ONLY})")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement")
    parser.add_argument("--jobs", type=int, default=50_000, help="payments of `queue`")
    parser.add_argument("--http-jobs", type=int, help="payments of `http` (default jobs/5)")
    parser.add_argument("--peer-jobs", type=int, help="payments of the peers (default jobs/10)")
    parser.add_argument("--wrk-seconds", type=int, default=15)
    parser.add_argument("--wrk-connections", type=int, default=50)
    parser.add_argument("--rate", type=float, default=2000.0, help="`latency`: POSTs per second")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--latency-connections", type=int, default=256,
                        help="`latency`: the client's connection pool")
    parser.add_argument("--memory-payments", type=int, default=1_000_000)
    parser.add_argument("--daemons", type=int, default=0,
                        help="also run `queue` with 1..N daemons on a PostgreSQL --store")
    parser.add_argument("--store", default="postgresql://root@127.0.0.1:5432/test",
                        help="the shared store of --daemons (a schema of its own per run)")
    parser.add_argument("--peer-python",
                        default=os.environ.get("PAYFLOW_BENCH_PEER_PYTHON", sys.executable),
                        help="a Python with arq and saq ($PAYFLOW_BENCH_PEER_PYTHON, else "
                             "this one)")
    parser.add_argument("--profile", metavar="DIR",
                        help="sample each daemon with py-spy (pip install py-spy) into "
                             "DIR/<run>.txt; summarise with scripts/profile_summary.py "
                             "DIR/<run>.txt")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the work directory with every process's log")
    args = parser.parse_args()
    args.http_jobs = args.http_jobs or max(1, args.jobs // 5)
    args.peer_jobs = args.peer_jobs or max(1, args.jobs // 10)
    selected = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in selected if name not in ALL]
    if unknown or args.repeat < 1:
        parser.error(f"unknown measurement {', '.join(unknown)}" if unknown
                     else "--repeat must be at least 1")
    if args.daemons and not args.store.startswith(("postgresql://", "postgres://")):
        parser.error("--daemons needs a postgresql:// --store")
    # the peers are compared with PayFlow's rate in the same run
    for peer, ours in (("peers", "queue"), ("peers-http", "http")):
        if peer in selected and ours not in selected:
            selected.insert(selected.index(peer), ours)
    selected = sorted(dict.fromkeys(selected), key=ALL.index)
    for tool in ("redis-server", *(["wrk"] if "intake" in selected else [])):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed on PATH (apt-get install -y {tool})")
    workdir = Path(tempfile.mkdtemp(prefix="payflow-bench-"))
    signal.signal(signal.SIGTERM, _interrupt)  # stop every process started, as on Ctrl-C
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            code = runner.run(run(args, selected, workdir))
    except KeyboardInterrupt:
        code = 130
    finally:
        if args.keep_logs:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
