"""Daemon liveness: a heartbeat, a registry of daemons and their processing lists, and a reaper.

Each daemon keeps ``payflow:heartbeat:<id>`` alive (a key with a TTL) and lists its processing
lists in the hash ``payflow:daemons``. The reaper (one daemon at a time, under a ``SET NX`` lock)
moves the processing lists of daemons whose heartbeat expired back to their queues; a job that
was in flight at more than ``max_redeliveries`` deaths is poison and goes to ``{<q>}:dead``
(trimmed, as by the consumers, to ``dead_max_entries``).

With each heartbeat a daemon also publishes, in its registry entry, how many jobs per second
it finished over the last minute, by queue and outcome (:class:`JobRates`, sampled from its
``payflow_jobs`` counters); ``payflow status`` and the dashboard sum those of the live daemons.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from payflow import metrics
from payflow.errors import ConfigError, StartupError
from payflow.models import now_iso
from payflow.queue import keys
from payflow.queue.backoff import Backoff
from payflow.queue.consumer import wait_or_stop
from payflow.queue.redis import Scripts, check_dead_max_entries, dead_entry

log = structlog.get_logger("payflow.liveness")

# How long the reaper remembers a job's redeliveries after its last one.
REDELIVERY_MEMORY_SECONDS = 7 * 24 * 3600
RATE_WINDOW_SECONDS: Final = 60.0
RATE_OUTCOMES: Final = ("done", "retried", "dead")

Counts = Mapping[tuple[str, str], float]  # (queue, outcome) -> jobs since the process started


def job_counts() -> dict[tuple[str, str], float]:
    """This process's ``payflow_jobs`` counters."""
    return {(s.labels["queue"], s.labels["outcome"]): s.value
            for metric in metrics.JOBS.collect() for s in metric.samples
            if s.name.endswith("_total")}


class JobRates:
    """Jobs per second by queue and outcome over the last :data:`RATE_WINDOW_SECONDS`, from
    samples of the counters taken at each :meth:`sample` (a heartbeat); until a window has
    passed, over the time since the first sample."""

    def __init__(self, queues: Sequence[str], *, window: float = RATE_WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic,
                 read: Callable[[], Counts] = job_counts) -> None:
        self.queues = list(dict.fromkeys(queues))
        self.window = window
        self._clock = clock
        self._read = read
        self._samples: deque[tuple[float, Counts]] = deque([(clock(), read())])

    def sample(self) -> dict[str, dict[str, float]]:
        """Take a sample; the rates: queue -> outcome -> jobs per second."""
        now, counts = self._clock(), self._read()
        self._samples.append((now, counts))
        # Keep the newest sample at least a window old: it is where the window starts.
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()
        then, old = self._samples[0]
        elapsed = now - then
        return {queue: {outcome: round(max(0.0, counts.get((queue, outcome), 0.0)
                                           - old.get((queue, outcome), 0.0)) / elapsed, 3)
                        if elapsed > 0 else 0.0
                        for outcome in RATE_OUTCOMES}
                for queue in self.queues}


class Liveness:
    def __init__(self, redis: Redis, *, daemon_id: str, lists: Sequence[tuple[str, str]],
                 heartbeat_seconds: float, ttl_seconds: float, reap_interval: float,
                 max_redeliveries: int, stop: asyncio.Event, store_kind: str = "memory",
                 store_shared: bool = False, dead_max_entries: int = 100_000) -> None:
        self.redis = redis
        self.id = daemon_id
        self.lists = list(lists)  # (queue, processing list) of each of this daemon's consumers
        self.heartbeat_seconds = heartbeat_seconds
        self.ttl_ms = max(1, round(ttl_seconds * 1000))
        self.reap_interval = reap_interval
        self.max_redeliveries = max_redeliveries
        self.dead_max_entries = check_dead_max_entries(dead_max_entries)
        self.stop = stop
        self.done = asyncio.Event()  # set after shutdown emptied this daemon's lists
        self.scripts = Scripts(redis)
        self.store_kind = store_kind
        self.store_shared = store_shared
        self.rates = JobRates([queue for queue, _ in self.lists])
        self._info: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(),
                                      "started_at": now_iso(), "lists": self.lists,
                                      "store": store_kind, "shared": store_shared}

    def registry_entry(self) -> str:
        """Who this daemon is, its processing lists, and its rates now (a new sample)."""
        return json.dumps({**self._info, "rates": self.rates.sample(),
                           "rate_window_seconds": self.rates.window})

    async def start(self, *, wait_for_namesake: bool) -> None:
        """Recover what an earlier daemon of the same id left, then register. With an explicit
        id whose heartbeat is still alive, wait up to one TTL for it to lapse (the earlier
        process died moments ago) or refuse to start (another daemon uses the id)."""
        if wait_for_namesake:
            deadline = asyncio.get_running_loop().time() + self.ttl_ms / 1000 + 1
            while await self.redis.exists(keys.heartbeat(self.id)):
                if asyncio.get_running_loop().time() > deadline:
                    raise StartupError(
                        f"another daemon with [daemon] id {self.id!r} is alive (its heartbeat "
                        "keeps being renewed): give each daemon its own id")
                await asyncio.sleep(0.2)
        previous = await self.redis.hget(keys.DAEMONS, self.id)
        if previous is not None:
            requeued, dead = await self._reap(self.id, _bytes(previous))
            log.info("daemon.recovered_own", daemon_id=self.id, requeued=requeued, dead=dead)
        await self._refuse_unshareable()
        await self.beat()
        try:
            await self._refuse_unshareable()  # another one may have registered meanwhile
        except ConfigError:
            await self.stop_beating()
            raise

    async def _refuse_unshareable(self) -> None:
        """A store that is not shared (memory://) cannot serve two daemons on one Redis: each
        would know only its own payments and endpoints. Refuse to start beside a live daemon
        when either of the two has such a store."""
        for raw_id, info in (await self.redis.hgetall(keys.DAEMONS)).items():
            other = _bytes(raw_id).decode()
            if other == self.id or not await self.redis.exists(keys.heartbeat(other)):
                continue
            try:
                theirs = json.loads(info)
                shared, kind = bool(theirs.get("shared")), str(theirs.get("store", "memory"))
                if _gone(theirs):  # killed on this host: its heartbeat has not lapsed yet
                    continue
            except (ValueError, AttributeError):
                shared, kind = False, "unknown"
            if not self.store_shared:
                raise ConfigError(
                    f"[store] url: {self.store_kind}:// keeps state in this process, and daemon "
                    f"{other} already runs on this Redis; configure [store] url = "
                    '"postgresql://…" to run several daemons')
            if not shared:
                raise ConfigError(
                    f"[store] url: daemon {other} runs on this Redis with the {kind}:// store, "
                    "which cannot be shared; stop it or configure it with postgresql:// too")

    async def beat(self) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(keys.heartbeat(self.id), now_iso(), px=self.ttl_ms)
            # again, in case a reaper removed us
            pipe.hset(keys.DAEMONS, self.id, self.registry_entry())
            await pipe.execute()

    async def stop_beating(self) -> None:
        """Deregister (after this daemon's lists were emptied at shutdown)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hdel(keys.DAEMONS, self.id)
            pipe.delete(keys.heartbeat(self.id))
            await pipe.execute()

    async def run_heartbeat(self) -> None:
        """Beat until :attr:`done`: through the shutdown grace period too, so that no reaper
        takes the jobs this daemon is still finishing."""
        backoff = Backoff("daemon.heartbeat_failed", cap=min(2.0, self.heartbeat_seconds))
        while not self.done.is_set():
            try:
                await self.beat()
                backoff.succeeded()
                await wait_or_stop(self.done, self.heartbeat_seconds)
            except (RedisError, OSError) as exc:
                await wait_or_stop(self.done, backoff.failed(exc))

    async def run_reaper(self) -> None:
        while not self.stop.is_set():
            try:
                await self.reap_once()
            except (RedisError, OSError) as exc:
                log.warning("daemon.reap_failed", error=f"{type(exc).__name__}: {exc}")
            await wait_or_stop(self.stop, self.reap_interval)

    async def reap_once(self) -> int:
        """If this daemon wins the reaper lock, recover every dead daemon's lists. Returns how
        many dead daemons were reaped."""
        lock_ms = max(100, round(self.reap_interval * 1000))
        if not await self.redis.set(keys.REAPER_LOCK, self.id, nx=True, px=lock_ms):
            return 0
        reaped = 0
        daemons = await self.redis.hgetall(keys.DAEMONS)
        for raw_id, info in daemons.items():
            other = _bytes(raw_id).decode()
            if other == self.id or await self.redis.exists(keys.heartbeat(other)):
                continue
            requeued, dead = await self._reap(other, _bytes(info))
            await self.redis.hdel(keys.DAEMONS, other)
            reaped += 1
            log.warning("daemon.reaped", dead_daemon=other, requeued=requeued, poison=dead)
        return reaped

    async def _reap(self, daemon_id: str, info: bytes) -> tuple[int, int]:
        try:
            lists = [(str(q), str(p)) for q, p in json.loads(info)["lists"]]
        except (ValueError, KeyError, TypeError):
            log.error("daemon.bad_registry_entry", daemon_id=daemon_id)
            return 0, 0
        requeued = dead = 0
        reason = (f"poison: in flight each of the {self.max_redeliveries + 1} times its "
                  f"consumer died (max_redeliveries {self.max_redeliveries})")
        for queue, processing in lists:
            jobs = [_bytes(job) for job in await self.redis.lrange(processing, 0, -1)]
            pairs: list[bytes | str] = []
            for job in jobs:
                pairs += [hashlib.sha1(job).hexdigest(),
                          dead_entry(queue, job, reason, consumer=daemon_id)]
            moved, poisoned, trimmed = await self.scripts.reap(
                keys=[processing, queue, keys.dead(queue), keys.redeliveries(queue)],
                args=[self.max_redeliveries, REDELIVERY_MEMORY_SECONDS, self.dead_max_entries,
                      *pairs])
            requeued += int(moved)
            dead += int(poisoned)
            if trimmed:
                metrics.DEAD_TRIMMED.labels(queue).inc(int(trimmed))
                log.warning("queue.dead_trimmed", queue=queue, trimmed=int(trimmed),
                            limit=self.dead_max_entries)
        return requeued, dead


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _gone(info: dict[str, object]) -> bool:
    """A registered daemon of this host whose process no longer exists."""
    pid = info.get("pid")
    if info.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
