"""Operating PayFlow: what ``payflow status`` and the dashboard show and do, for every caller.

- :func:`queue_status`: the queues (ready, processing, delayed, dead), the registered daemons
  (heartbeat, in-flight jobs, processing rates) and the store kinds, read from Redis alone;
  ``payflow status`` prints it (:func:`gather`: as a plain dict), ``GET /v1/queues`` answers
  it.
- :class:`Operations`: the service behind the dashboard's routes: that overview, the dead
  letters of a queue (list, replay one or all, purge; built on
  :mod:`payflow.queue.deadletters`), the events of a payment and the delivery health of a
  webhook endpoint.

Rates come from the daemons: each publishes, with its heartbeat, the jobs it finished per
second over the last minute (:class:`payflow.queue.liveness.JobRates`); :func:`queue_status`
sums those of the live daemons. :class:`Operations` raises :class:`ValidationError` (an unknown
queue), :class:`NotFound` and :class:`QueueUnavailable` (Redis does not answer); never a Redis
error.

What they answer is declared once, below, as the ``TypedDict`` each returns (the OpenAPI
components are generated from them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal, NotRequired, TypedDict

from redis.asyncio import Redis
from redis.exceptions import RedisError

from payflow.errors import NotFound, QueueUnavailable, ValidationError
from payflow.models import FAILED_DELIVERY_OUTCOMES, ApiEventJSON, Event, iso
from payflow.queue import deadletters, keys
from payflow.queue.deadletters import ENTRY_ID_DIGITS, DeadEntry
from payflow.queue.liveness import RATE_OUTCOMES, RATE_WINDOW_SECONDS
from payflow.schema import Meta, SchemaOf, anchored
from payflow.store.base import Store

__all__ = ["DEAD_LETTERS_SHOWN", "ENTRY_ID", "ENTRY_ID_DIGITS", "FAILED_OUTCOMES",
           "HEALTH_WINDOW_HOURS", "Daemon", "DeadLetter", "DeadLetterList", "DeadLetterPurged",
           "DeadLetterReplay", "DeadLetterReplayed", "Operations", "PaymentEventList",
           "QueueDepths", "QueueOverview", "QueueRates", "QueueStatus", "WebhookEndpointHealth",
           "entry_dict", "gather", "queue_status"]

ENTRY_ID: Final = re.compile(f"[0-9a-f]{{{ENTRY_ID_DIGITS}}}")
HEALTH_WINDOW_HOURS: Final = 24
# Attempts that count against an endpoint ("skipped": it was disabled, nothing was sent).
FAILED_OUTCOMES: Final = FAILED_DELIVERY_OUTCOMES
EVENTS_SCANNED: Final = 10_000  # events looked at to find those of one payment
DEAD_LETTERS_SHOWN: Final = 50  # the entries of a dead list shown when no limit is given
_PAGE: Final = 500
_REDIS_ERRORS: Final = (RedisError, OSError)


# --- what they answer ------------------------------------------------------------------------

Count = Annotated[int, Meta(minimum=0)]
PerSecond = Annotated[float, Meta(minimum=0)]
EntryId = Annotated[str, Meta(pattern=anchored(ENTRY_ID.pattern))]


class QueueDepths(TypedDict):
    ready: Count
    processing: Count
    delayed: Count
    dead: Count


class QueueRates(TypedDict):  # its keys: liveness.RATE_OUTCOMES (test_operations.py)
    """Jobs per second over the last minute, by outcome."""

    done: PerSecond
    retried: PerSecond
    dead: PerSecond


# Queue name -> outcome -> jobs per second: built from RATE_OUTCOMES, documented as QueueRates.
Rates = Annotated[dict[str, dict[str, float]], SchemaOf(dict[str, QueueRates])]


class Daemon(TypedDict):
    """A daemon registered on the Redis."""

    id: str
    host: str | None
    pid: int | None
    started_at: str | None
    store: Annotated[str | None, Meta("memory, postgresql.")]
    shared: bool | None
    alive: Annotated[bool, Meta("Its heartbeat has not expired.")]
    heartbeat_age_seconds: Annotated[float | None, Meta(minimum=0)]
    in_flight: Annotated[dict[str, Count], Meta("Queue name -> jobs its consumers hold.")]
    rates: Annotated[Rates, Meta("Queue name -> rates.")]


class QueueStatus(TypedDict):
    """What ``payflow status`` prints (:func:`queue_status`)."""

    queues: Annotated[dict[str, QueueDepths], Meta("Queue name -> jobs in each state.")]
    rates: Annotated[Rates, Meta("Queue name -> rates, summed over the live daemons.")]
    rate_window_seconds: Annotated[float, Meta(minimum=0)]
    daemons: list[Daemon]
    stores: Annotated[list[str], Meta("The store kinds the daemons report.")]


class QueueOverview(QueueStatus):
    """What `payflow status` shows: the queues and the daemons."""

    object: Literal["queue_overview"]


class DeadLetter(TypedDict):
    """A job that will not be tried again, and why."""

    object: Literal["dead_letter"]
    id: Annotated[EntryId, Meta(f"{ENTRY_ID_DIGITS} hex digits derived from the entry's "
                                "content.")]
    queue: str
    failed_at: str
    reason: str
    consumer: Annotated[str, Meta("The consumer (or daemon) that gave up on the job.")]
    job: Annotated[str, Meta("The job as it was queued (bytes that are not UTF-8 as \\xNN).")]


class DeadLetterList(TypedDict):
    """The newest entries of a queue's dead list."""

    object: Literal["list"]
    queue: str
    total: Count
    data: list[DeadLetter]
    has_more: Annotated[bool, Meta("true when total is more than the entries shown.")]


class DeadLetterReplay(TypedDict):  # the body of POST /v1/dead_letters/replay
    """Either "id" or "all": true."""

    queue: str
    id: NotRequired[Annotated[EntryId, Meta("The entry to replay.")]]
    all: NotRequired[Annotated[bool, Meta("true: replay every entry.")]]


class DeadLetterReplayed(TypedDict):
    object: Literal["dead_letter_replay"]
    queue: str
    replayed: Count


class DeadLetterPurged(TypedDict):
    object: Literal["dead_letter_purge"]
    queue: str
    deleted: Count


class PaymentEventList(TypedDict):
    """The events of a payment and of its refunds, oldest first."""

    object: Literal["list"]
    data: list[ApiEventJSON]
    has_more: Annotated[bool, Meta("true when the scan stopped at its limit: older events may "
                                   "be missing.")]


Moment = Annotated[str | None, Meta(format="date-time")]


class WebhookEndpointHealth(TypedDict):
    """How deliveries to an endpoint went in the window."""

    object: Literal["webhook_endpoint_health"]
    endpoint_id: str
    window_hours: Annotated[int, Meta(minimum=1)]
    attempts: Count
    failures: Count
    last_success_at: Annotated[Moment, Meta("The last delivery that succeeded.")]
    last_failure_at: Annotated[Moment, Meta("The last attempt that failed.")]
    failure_streak: Annotated[Count, Meta("Failed attempts since the last success.")]
    failing_since: Annotated[Moment, Meta("Start of the current run of failures.")]
    disabled: bool
    disabled_reason: str | None


# --- the status ------------------------------------------------------------------------------


async def gather(redis: Redis, queues: Sequence[str]) -> dict[str, Any]:
    """:func:`queue_status` as a plain dict, as ``payflow status`` renders it."""
    return dict(await queue_status(redis, queues))


async def queue_status(redis: Redis, queues: Sequence[str]) -> QueueStatus:
    """The status: ``queues`` (name -> ready, processing, delayed, dead),
    ``rates`` (name -> done, retried, dead: jobs per second over the last minute, summed over
    the live daemons), ``rate_window_seconds``, ``daemons`` (id, host, pid, started_at,
    store, shared, alive, heartbeat_age_seconds, in_flight: queue -> jobs, rates: queue ->
    outcome -> per second) and ``stores`` (the store kinds the daemons report)."""
    registry = await redis.hgetall(keys.DAEMONS)
    daemons: list[Daemon] = []
    processing = dict.fromkeys(queues, 0)
    rates = {queue: dict.fromkeys(RATE_OUTCOMES, 0.0) for queue in queues}
    now = datetime.now(UTC)
    for raw_id, raw_info in sorted(registry.items()):
        daemon_id = _text(raw_id)
        try:
            info = json.loads(raw_info)
            lists = [(str(q), str(p)) for q, p in info.get("lists", [])]
        except (ValueError, TypeError, AttributeError):
            info, lists = {}, []
        beat = await redis.get(keys.heartbeat(daemon_id))
        in_flight: dict[str, int] = {}
        for queue, plist in lists:
            in_flight[queue] = in_flight.get(queue, 0) + int(await redis.llen(plist))
        for queue, count in in_flight.items():
            if queue in processing:
                processing[queue] += count
        own_rates = _rates(info.get("rates"))
        if beat is not None:
            for queue, by_outcome in own_rates.items():
                for outcome, value in by_outcome.items():
                    if queue in rates:
                        rates[queue][outcome] += value
        daemons.append({"id": daemon_id, "host": info.get("host"), "pid": info.get("pid"),
                        "started_at": info.get("started_at"), "store": info.get("store"),
                        "shared": info.get("shared"), "alive": beat is not None,
                        "heartbeat_age_seconds": _age(beat, now), "in_flight": in_flight,
                        "rates": own_rates})
    depths: dict[str, QueueDepths] = {}
    for queue in queues:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.llen(queue)
            pipe.zcard(keys.delayed(queue))
            pipe.llen(keys.dead(queue))
            ready, delayed, dead = await pipe.execute()
        depths[queue] = {"ready": int(ready), "processing": processing[queue],
                         "delayed": int(delayed), "dead": int(dead)}
    return {"queues": depths, "rates": {
        queue: {outcome: round(value, 3) for outcome, value in by_outcome.items()}
        for queue, by_outcome in rates.items()}, "rate_window_seconds": RATE_WINDOW_SECONDS,
        "daemons": daemons,
        "stores": sorted({str(d["store"]) for d in daemons if d["store"] is not None})}


def _rates(published: object) -> dict[str, dict[str, float]]:
    """A daemon's published rates, keeping only numbers of the known outcomes."""
    if not isinstance(published, dict):
        return {}
    out: dict[str, dict[str, float]] = {}
    for queue, by_outcome in published.items():
        if isinstance(queue, str) and isinstance(by_outcome, dict):
            out[queue] = {outcome: float(value) for outcome, value in by_outcome.items()
                          if outcome in RATE_OUTCOMES and isinstance(value, int | float)
                          and not isinstance(value, bool)}
    return out


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def _age(beat: bytes | str | None, now: datetime) -> float | None:
    """Seconds since the heartbeat's ISO time (liveness.beat writes it)."""
    if beat is None:
        return None
    try:
        then = datetime.fromisoformat(_text(beat))
    except ValueError:
        return None
    return round(max(0.0, (now - then).total_seconds()), 1)


def entry_dict(entry: DeadEntry) -> DeadLetter:
    """A dead-letter entry as JSON (the job's non-UTF-8 bytes as ``\\xNN``)."""
    return {"object": "dead_letter", "id": entry.id, "queue": entry.queue,
            "failed_at": entry.failed_at, "reason": entry.reason, "consumer": entry.consumer,
            "job": entry.job.decode("utf-8", "backslashreplace")}


class Operations:
    """The queues of one Redis and the store of one daemon, for the dashboard and the API."""

    def __init__(self, redis: Redis, queues: Sequence[str], store: Store) -> None:
        self.redis = redis
        self.queues = tuple(queues)
        self.store = store

    # --- queues and daemons --------------------------------------------------------------

    async def overview(self) -> QueueOverview:
        """:func:`queue_status` for this daemon's queues."""
        try:
            return {"object": "queue_overview", **await queue_status(self.redis, self.queues)}
        except _REDIS_ERRORS as exc:
            raise _unavailable(exc) from exc

    # --- dead letters --------------------------------------------------------------------

    def check_queue(self, queue: str | None, *, status: int = 400) -> str:
        """``queue`` when it is one of this daemon's queues; else a ValidationError."""
        if queue is None:
            raise ValidationError("queue is required: " + self._choices(), param="queue",
                                  code="missing", status=status)
        if queue not in self.queues:
            raise ValidationError(f"Unknown queue {queue[:100]!r}: " + self._choices(),
                                  param="queue", code="unknown_queue", status=status)
        return queue

    def _choices(self) -> str:
        return "one of " + ", ".join(self.queues) + "."

    async def dead_letters(self, queue: str, *, limit: int) -> DeadLetterList:
        """How many entries ``queue``'s dead list has, and its newest ``limit``."""
        self.check_queue(queue)
        try:
            total = int(await self.redis.llen(keys.dead(queue)))
            entries = await deadletters.list_dead(self.redis, queue, limit=limit)
        except _REDIS_ERRORS as exc:
            raise _unavailable(exc) from exc
        return {"object": "list", "queue": queue, "total": total,
                "data": [entry_dict(e) for e in entries], "has_more": total > len(entries)}

    async def replay(self, queue: str, entry_ids: Collection[str] | None) -> DeadLetterReplayed:
        """Put the jobs of these entries (``None``: of every entry) back on ``queue``; answers
        how many were replayed. An id with no entry (never there, or replayed or purged
        meanwhile) is :class:`NotFound` after the others were replayed."""
        self.check_queue(queue, status=422)
        for entry_id in entry_ids or ():
            if not ENTRY_ID.fullmatch(entry_id):
                raise ValidationError(f"id must be the {ENTRY_ID_DIGITS} hex digits of a "
                                      "dead-letter entry.", param="id", code="invalid_id")
        try:
            replayed, missing = await deadletters.replay(self.redis, queue, entry_ids)
        except _REDIS_ERRORS as exc:
            raise _unavailable(exc) from exc
        if missing:
            raise NotFound("dead_letter", missing[0])
        return {"object": "dead_letter_replay", "queue": queue, "replayed": replayed}

    async def purge(self, queue: str) -> DeadLetterPurged:
        """Delete ``queue``'s dead list; answers how many entries it had."""
        self.check_queue(queue)
        try:
            deleted = await deadletters.purge(self.redis, queue)
        except _REDIS_ERRORS as exc:
            raise _unavailable(exc) from exc
        return {"object": "dead_letter_purge", "queue": queue, "deleted": deleted}

    # --- payments and endpoints ----------------------------------------------------------

    async def payment_events(self, payment_id: str) -> PaymentEventList:
        """The events of a payment and of its refunds, oldest first, among the
        :data:`EVENTS_SCANNED` newest events recorded since it was created; ``has_more``:
        that limit was reached (older events of the payment may be missing)."""
        found = await self.store.get_payments([payment_id])
        if payment_id not in found:
            raise NotFound("payment", payment_id)
        since = found[payment_id].created_at
        events: list[Event] = []
        cursor: str | None = None
        seen = 0
        while True:
            page = await self.store.list_events(limit=_PAGE, starting_after=cursor,
                                                created_gte=since)
            events += [e for e in page if _about(e, payment_id)]
            seen += len(page)
            if len(page) < _PAGE or seen >= EVENTS_SCANNED:
                return {"object": "list",
                        "data": [e.to_api_dict() for e in events[::-1]],
                        "has_more": len(page) >= _PAGE}
            cursor = page[-1].id

    async def endpoint_health(self, endpoint_id: str) -> WebhookEndpointHealth:
        """How deliveries to an endpoint went over the last :data:`HEALTH_WINDOW_HOURS`: the
        attempts and failures, the last success and failure, and the failure streak (failed
        attempts since the last success), with its disabled state."""
        found = await self.store.get_endpoints([endpoint_id])
        if endpoint_id not in found:
            raise NotFound("webhook_endpoint", endpoint_id)
        endpoint = found[endpoint_id]
        since = datetime.now(UTC) - timedelta(hours=HEALTH_WINDOW_HOURS)
        attempts = await self.store.attempts_since(endpoint_id, iso(since))  # oldest first
        last_success = last_failure = None
        failures = streak = 0
        for attempt in attempts:
            if attempt.outcome == "succeeded":
                last_success, streak = attempt.at, 0
            elif attempt.outcome in FAILED_OUTCOMES:
                last_failure = attempt.at
                failures += 1
                streak += 1
        return {"object": "webhook_endpoint_health", "endpoint_id": endpoint.id,
                "window_hours": HEALTH_WINDOW_HOURS, "attempts": len(attempts),
                "failures": failures, "last_success_at": last_success,
                "last_failure_at": last_failure, "failure_streak": streak,
                "failing_since": endpoint.failing_since, "disabled": endpoint.disabled,
                "disabled_reason": endpoint.disabled_reason}


def _about(event: Event, payment_id: str) -> bool:
    """Whether ``event`` is about the payment (``payment.*``) or one of its refunds."""
    data = event.data
    if event.type.startswith("refund."):
        return data.get("payment_id") == payment_id
    return data.get("id") == payment_id


def _unavailable(exc: BaseException) -> QueueUnavailable:
    return QueueUnavailable(f"Redis does not answer ({type(exc).__name__}); retry shortly.")
