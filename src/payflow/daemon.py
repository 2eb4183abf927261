"""``payflow serve``: everything in one asyncio.TaskGroup, and an ordered shutdown.

A signal only sets an Event. Then: intake answers 503, consumers stop fetching, in-flight
batches get ``[shutdown] grace_seconds`` to finish, whatever is left in this daemon's processing
lists goes back to its queue, and Redis, the HTTP client and the store are closed. A second
SIGINT exits at once; unacknowledged jobs then stay in the processing lists in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

import structlog
from aiohttp import web
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from payflow import gctune, logs, metrics
from payflow._config_parse import mask_url
from payflow.config import Config, config_summary
from payflow.embedded import EmbeddedRedis
from payflow.errors import StartupError
from payflow.operations import Operations
from payflow.payments.handler import PaymentHandler
from payflow.payments.processor import SimulatedProcessor, use_fingerprint_key
from payflow.payments.service import PaymentService
from payflow.queue.backoff import Backoff
from payflow.queue.consumer import Consumer, wait_or_stop
from payflow.queue.liveness import Liveness
from payflow.queue.producer import Producer
from payflow.queue.redis import QueueClient, Scripts
from payflow.queue.scheduler import run_promoter
from payflow.store import Store, open_store
from payflow.store.base import is_outage
from payflow.store.front import StoreFront
from payflow.web.app import create_app
from payflow.web.context import WebContext
from payflow.web.idempotency import Idempotency
from payflow.web.server import (
    ConnectionGuard,
    GuardedSite,
    quiet_accept_errors,
    raise_file_limit,
)
from payflow.webhooks.delivery import HttpDelivery, LogSink
from payflow.webhooks.endpoints import seed_endpoints
from payflow.webhooks.outbox import sweep_once, sweep_pending
from payflow.webhooks.sender import RetryPolicy, WebhookHandler
from payflow.webhooks.ssrf import AddressPolicy
from payflow.webhooks.transport import make_transport

log = structlog.get_logger("payflow.daemon")

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
SWEEP_LOCK = "payflow:sweeper:lock"
SWEEP_INTERVAL_MS = 2000


def new_daemon_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def hard_deadline(seconds: float, code: int = 1) -> threading.Timer:
    """Exit the process in ``seconds`` whatever it is doing (a thread of its own: a blocked
    event loop cannot hold it back), writing out the buffered log lines first."""

    def expire() -> None:
        log.error("daemon.shutdown_deadline", seconds=seconds,
                  detail="cleanup did not finish in time: exiting now; unacknowledged jobs "
                         "stay in their processing lists for the reaper")
        logs.flush()
        os._exit(code)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


async def supervise(name: str, loop: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
    """Run a long-lived loop; if it ever raises, log the traceback and start it again."""
    while not stop.is_set():
        try:
            await loop()
            return
        except Exception:
            log.exception("daemon.loop_crashed", loop=name)
            await wait_or_stop(stop, 1.0)


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.id = config.daemon.id or new_daemon_id()
        self.stop = asyncio.Event()
        self.hurry = asyncio.Event()  # a second SIGINT: the grace period is cut short
        self.exit_code = 0
        self._embedded: EmbeddedRedis | None = None
        self._clients: list[Redis] = []
        self._queues: list[QueueClient] = []
        self._deadline: threading.Timer | None = None

    def request_stop(self, signame: str) -> None:
        if self.stop.is_set():
            if signame != "SIGINT":
                return
            if not self.hurry.is_set():
                log.warning("daemon.hurrying",
                            detail="second SIGINT: the grace period is cut short; jobs in "
                                   "flight go back to their queues; a third SIGINT exits now")
                self.exit_code = 130
                self.hurry.set()
                if self._deadline is not None:
                    self._deadline.cancel()
                self._deadline = hard_deadline(self.config.shutdown.cleanup_seconds, code=130)
                return
            log.warning("daemon.forced_exit",
                        detail="third SIGINT: exiting now; unacknowledged jobs stay in their "
                               "processing lists (the reaper, or the next start, recovers them)")
            logs.flush()  # os._exit skips atexit: no buffered line is dropped
            os._exit(130)
        log.info("daemon.stopping", signal=signame)
        self.stop.set()
        # after the grace period, cleanup (requeueing what is left, closing connections) gets
        # [shutdown] cleanup_seconds: a stalled Redis or store must not keep the process up
        shutdown = self.config.shutdown
        self._deadline = hard_deadline(shutdown.grace_seconds + shutdown.cleanup_seconds)

    def _redis(self, url: str, *, single: bool, timeout: float, retries: int = 1,
               blocking_pool: int | None = None) -> Redis:
        """A client that fails fast when Redis is away (the callers back off themselves); one
        immediate retry replaces a connection that went stale when Redis restarted (or, behind
        Sentinel, reconnects to the promoted primary)."""
        from payflow.redis_client import connect

        client = connect(url, single_connection=single, socket_timeout=timeout,
                         connect_timeout=min(timeout, 2.0), retry=Retry(NoBackoff(), retries),
                         blocking_pool=blocking_pool)
        self._clients.append(client)
        return client

    async def run(self) -> int:
        cfg = self.config
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        quiet_accept_errors(loop)
        raise_file_limit()
        url = cfg.redis.url
        if url == "embedded":
            self._embedded = EmbeddedRedis(cfg.redis.embedded_port)
            self._embedded.start()
            url = self._embedded.url
            log.warning("redis.embedded",
                        detail=f"embedded Redis on {url}: it keeps nothing, so queued jobs are "
                               "lost when payflow stops; set [redis] url to a real Redis for "
                               "production")
        try:
            try:
                store = await open_store(cfg.store.url, secret_key=cfg.store.secret_key or None,
                                         memory_max_payments=cfg.store.memory_max_payments)
            except (OSError, ConnectionError) as exc:
                raise StartupError(f"cannot open the store {mask_url(cfg.store.url)}: "
                                   f"{exc}") from None
            try:
                await self._serve(url, store)
            finally:
                await self._close()
                await store.close()
        finally:
            if self._embedded is not None:
                self._embedded.stop()
            if self._deadline is not None:  # cleaned up in time
                self._deadline.cancel()
        log.info("daemon.stopped", daemon_id=self.id)
        return self.exit_code

    async def _serve(self, url: str, st: Store) -> None:
        cfg = self.config
        intake = self._redis(url, single=False, timeout=2.0, blocking_pool=64)
        # The API's pushes: concurrent ones share one LPUSH on a connection of their own, with
        # no retry, so that a failure tells whether the job may have reached Redis.
        producer = Producer(self._redis(url, single=True, timeout=2.0, retries=0),
                            [cfg.queue.payments, cfg.queue.webhooks])

        async def enqueue(raw: bytes) -> None:
            await producer.push(cfg.queue.payments, raw)

        async def enqueue_webhook(raw: bytes) -> None:
            await producer.push(cfg.queue.webhooks, raw)

        async def ping() -> bool:
            try:
                return bool(await intake.ping())
            except (RedisError, OSError):
                return False

        guard = AddressPolicy(cfg.webhooks.allow_networks)
        idempotency = Idempotency(intake, ttl_seconds=cfg.api.idempotency_ttl_hours * 3600,
                                  required=cfg.api.require_idempotency_key)
        ctx = WebContext(store=st, enqueue_payment=enqueue, ping=ping,
                         enqueue_webhook=enqueue_webhook,
                         max_body_bytes=cfg.http.max_body_bytes,
                         body_seconds=cfg.http.body_timeout_seconds,
                         rotation_grace_hours=cfg.webhooks.secret_rotation_grace_hours,
                         api_keys=cfg.api.keys, metrics_public=cfg.api.metrics_public,
                         idempotency=idempotency,
                         address_policy=guard,
                         operations=Operations(intake, [cfg.queue.payments, cfg.queue.webhooks],
                                               st))
        if not cfg.api.keys and cfg.http.host not in LOOPBACK_HOSTS:
            log.warning("api.open", host=cfg.http.host,
                        detail="no API key is configured and the API listens beyond loopback: "
                               "anyone who reaches it can create payments; add [[api.keys]] "
                               "or PAYFLOW_API_KEYS")
        await seed_endpoints(st, cfg.webhooks.endpoints, policy=guard)
        front = StoreFront(st)
        use_fingerprint_key(cfg.api.card_fingerprint_key or await st.setting(
            "card_fingerprint_key", secrets.token_hex(32)))
        processor = SimulatedProcessor(latency_ms=cfg.processor.latency_ms,
                                       failure_rate=cfg.processor.failure_rate)
        payments = PaymentHandler(PaymentService(front, processor,
                                                 max_attempts=cfg.processor.max_attempts),
                                  max_job_bytes=cfg.queue.max_job_bytes)
        http = HttpDelivery(make_transport(guard, limit=100),
                            timeout=cfg.webhooks.timeout_seconds, policy=guard)
        try:
            log_sink = cfg.webhooks.log_sink
            if log_sink is None:  # auto: the seed's walk-through with the embedded Redis
                log_sink = cfg.redis.url == "embedded"
            webhooks = WebhookHandler(
                store=front,
                http=http,
                sink=(LogSink(failure_rate=cfg.webhooks.simulate_failure_rate) if log_sink
                      else None),
                policy=RetryPolicy(schedule=cfg.webhooks.retry_schedule,
                                   max_attempts=cfg.webhooks.max_attempts),
                max_job_bytes=cfg.queue.max_job_bytes,
                disable_after=timedelta(hours=cfg.webhooks.disable_after_hours))
            runner = web.AppRunner(create_app(ctx), access_log=None, handle_signals=False)
            await runner.setup()
            try:
                await self._start_http(runner)
                await self._run_loops(url, payments, webhooks, ctx, st)
            finally:
                await runner.cleanup()
                await idempotency.close()  # its background releases (no request runs now)
        finally:
            await http.aclose()

    async def _start_http(self, runner: web.AppRunner) -> None:
        cfg = self.config
        guard = ConnectionGuard(header_seconds=cfg.http.header_timeout_seconds,
                                body_seconds=cfg.http.body_timeout_seconds,
                                idle_seconds=cfg.http.keepalive_seconds,
                                max_connections=cfg.http.max_connections)
        site = GuardedSite(runner, cfg.http.host, cfg.http.port, guard=guard,
                           keepalive_timeout=cfg.http.keepalive_seconds)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {cfg.http.host}:{cfg.http.port}: {exc.strerror or exc}. "
                "Choose another port with --port, PAYFLOW_HTTP_PORT or [http] port."
            ) from None
        address = runner.addresses[0]
        loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]
        log.info("daemon.started", daemon_id=self.id,
                 http=f"http://{address[0]}:{address[1]}", event_loop=loop,
                 config=config_summary(cfg))

    async def _run_loops(self, url: str, payments: PaymentHandler, webhooks: WebhookHandler,
                         ctx: WebContext, store: Store) -> None:
        cfg = self.config
        block = cfg.queue.block_timeout_seconds
        consumers: list[Consumer] = []
        for kind, queue, forward, count, handler, each in (
            ("p", cfg.queue.payments, cfg.queue.webhooks, cfg.workers.payments, payments, False),
            ("w", cfg.queue.webhooks, cfg.queue.payments, cfg.workers.webhooks, webhooks, True),
        ):
            for i in range(count):
                client = QueueClient(self._redis(url, single=True, timeout=block + 5),
                                     queue=queue, forward=forward,
                                     consumer_id=f"{self.id}:{kind}{i}",
                                     dead_max_entries=cfg.queue.dead_max_entries)
                self._queues.append(client)
                consumers.append(Consumer(client=client, handler=handler, stop=self.stop,
                                          batch_size=cfg.queue.batch_size, block_seconds=block,
                                          stream=each, outage=is_outage))
        promoter_redis = self._redis(url, single=True, timeout=5.0)
        liveness = Liveness(self._redis(url, single=True, timeout=5.0), daemon_id=self.id,
                            lists=[(q.queue, q.processing) for q in self._queues],
                            heartbeat_seconds=cfg.daemon.heartbeat_seconds,
                            ttl_seconds=cfg.daemon.heartbeat_ttl_seconds,
                            reap_interval=cfg.daemon.reap_interval_seconds,
                            max_redeliveries=cfg.queue.max_redeliveries, stop=self.stop,
                            store_kind=store.kind, store_shared=store.shared,
                            dead_max_entries=cfg.queue.dead_max_entries)
        if not await self._register(liveness):
            return
        async with asyncio.TaskGroup() as tg:
            tg.create_task(supervise("heartbeat", liveness.run_heartbeat, liveness.done))
            tasks = [tg.create_task(supervise(c.client.consumer_id, c.run, self.stop))
                     for c in consumers]
            tasks.append(tg.create_task(supervise("reaper", liveness.run_reaper, self.stop)))
            tasks.append(tg.create_task(supervise(
                "promoter",
                lambda: run_promoter(promoter_redis, [cfg.queue.payments, cfg.queue.webhooks],
                                     interval=cfg.queue.promote_interval_seconds,
                                     stop=self.stop),
                self.stop)))
            tasks.append(tg.create_task(supervise(
                "sweeper", lambda: self._sweep(promoter_redis, store), self.stop)))
            tasks.append(tg.create_task(supervise(
                "gc", lambda: gctune.run_upkeep(self.stop), self.stop)))
            tasks.append(tg.create_task(supervise(
                "metrics",
                lambda: metrics.run_sampler(promoter_redis, [cfg.queue.payments,
                                                             cfg.queue.webhooks],
                                            interval=5.0, stop=self.stop),
                self.stop)))
            await self.stop.wait()
            ctx.stopping.set()  # intake: 503 from now on
            late = await self._grace(tasks, cfg.shutdown.grace_seconds)
            if late:
                log.warning("daemon.grace_expired", cancelled=len(late),
                            grace_seconds=cfg.shutdown.grace_seconds)
                for task in late:
                    task.cancel()
                await asyncio.wait(late)
            try:
                await self._requeue_leftovers(url)
                await liveness.stop_beating()
            except (RedisError, OSError) as exc:
                log.error("daemon.requeue_failed", error=f"{type(exc).__name__}: {exc}",
                          detail="jobs stay in this daemon's processing lists; the reaper of "
                                 "another daemon, or this one's next start, recovers them")
            liveness.done.set()

    async def _sweep(self, redis: Redis, store: Store) -> None:
        """Every few seconds, one daemon at a time (a lock in Redis): queue the events whose
        webhook jobs never reached Redis, and the jobs of payments pending for too long."""
        cfg = self.config.queue

        def pusher(queue: str) -> Callable[[Sequence[bytes]], Awaitable[None]]:
            async def push_many(raws: Sequence[bytes]) -> None:
                await redis.lpush(queue, *raws)

            return push_many

        while not self.stop.is_set():
            try:
                if await redis.set(SWEEP_LOCK, self.id, nx=True, px=SWEEP_INTERVAL_MS):
                    await sweep_once(store, pusher(cfg.webhooks))
                    await sweep_pending(store, pusher(cfg.payments),
                                        after_seconds=cfg.requeue_pending_after_seconds)
            except (RedisError, OSError) as exc:
                log.warning("sweeper.failed", error=f"{type(exc).__name__}: {exc}")
            await wait_or_stop(self.stop, SWEEP_INTERVAL_MS / 1000)

    async def _grace(self, tasks: Sequence[asyncio.Task[None]], seconds: float
                     ) -> set[asyncio.Task[None]]:
        """Wait up to ``seconds`` for ``tasks`` to finish, or until a second SIGINT; the ones
        still running."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        hurry = asyncio.ensure_future(self.hurry.wait())
        try:
            pending = {t for t in tasks if not t.done()}
            while pending and not self.hurry.is_set() and (left := deadline - loop.time()) > 0:
                await asyncio.wait([*pending, hurry], timeout=left,
                                   return_when=asyncio.FIRST_COMPLETED)
                pending = {t for t in pending if not t.done()}
            return pending
        finally:
            hurry.cancel()

    async def _register(self, liveness: Liveness) -> bool:
        """Recover this id's leftovers and register, waiting for Redis if it is away (the HTTP
        API already answers, /readyz with 503). False if told to stop first."""
        backoff = Backoff("daemon.redis_unavailable", base=0.2, level="error", logger=log)
        while not self.stop.is_set():
            try:
                await liveness.start(wait_for_namesake=bool(self.config.daemon.id))
                return True
            except (RedisError, OSError) as exc:
                await wait_or_stop(self.stop, backoff.failed(exc))
        return False

    async def _requeue_leftovers(self, url: str) -> None:
        """Move whatever this daemon's consumers still hold back to the front of its queue."""
        from payflow.redis_client import connect

        sweeper = connect(url, single_connection=False, socket_timeout=5.0, connect_timeout=5)
        try:
            scripts = Scripts(sweeper)
            moved = 0
            for q in self._queues:
                moved += await scripts.requeue(keys=[q.processing, q.queue])
            log.info("daemon.requeued", jobs=moved)
        finally:
            await sweeper.aclose()

    async def _close(self) -> None:
        for client in self._clients:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()


async def run(config: Config) -> int:
    return await Daemon(config).run()
