"""Per-item store calls, coalesced into the store's batch methods.

The services think in single items (one payment, one attempt); the store thinks in batches.
:class:`Coalescer` joins the calls made in the same event-loop iteration (the jobs of one
consumer batch run side by side) into one batch call, so K jobs cost one round trip per step,
not K. For a store in this process (``memory://``) a call goes straight to the batch method.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Generic, TypeVar

from payflow.models import WebhookEndpoint
from payflow.store.base import Store

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


class Coalescer(Generic[K, V]):
    """``await c(item)``: the items of the calls made in one loop iteration go to one
    ``run(items)`` call (at most ``max_batch`` each), whose results come back in order.

    ``serial``: at most one ``run`` at a time; the items that arrive meanwhile wait and go
    together in the next one, so batches grow with the load (one connection, one round trip
    in flight)."""

    def __init__(self, run: Callable[[list[K]], Awaitable[Sequence[V]]], *,
                 max_batch: int = 1000, serial: bool = False) -> None:
        self._run = run
        self._max = max_batch
        self._serial = serial
        self._busy = False
        self._scheduled = False
        self._waiting: list[tuple[K, asyncio.Future[V]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, item: K) -> V:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V] = loop.create_future()
        self._waiting.append((item, future))
        if not self._scheduled and not self._busy:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        if not self._waiting:
            return
        if self._serial:
            batch, self._waiting = self._waiting[:self._max], self._waiting[self._max:]
            self._busy = True
            self._start(batch)
            return
        waiting, self._waiting = self._waiting, []
        for start in range(0, len(waiting), self._max):
            self._start(waiting[start:start + self._max])

    def _start(self, batch: list[tuple[K, asyncio.Future[V]]]) -> None:
        task = asyncio.ensure_future(self._call(batch))
        self._tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(self._tasks.discard)

    async def _call(self, batch: list[tuple[K, asyncio.Future[V]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except BaseException as exc:  # every caller gets the error (cancellation included)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            if self._serial:
                self._busy = False
                if self._waiting:  # what arrived meanwhile goes next, together
                    self._flush()
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


def _one(run: Callable[[list[K]], Awaitable[Sequence[V]]], *,
         coalesce: bool) -> Callable[[K], Awaitable[V]]:
    """A per-item call of the batch method ``run``: coalesced, or straight through."""
    if coalesce:
        return Coalescer(run)

    async def call(item: K) -> V:
        return (await run([item]))[0]

    return call


class StoreFront:
    """The store as the services use it: per-item calls (coalesced when the store is shared,
    i.e. across a network), and the store itself for everything else (``front.store``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        on = store.shared
        self.create_payment = _one(store.create_payments, coalesce=on)
        self.get_payment = _lookup(store.get_payments, coalesce=on)
        self.transition = _one(store.transition, coalesce=on)
        self.get_refund = _lookup(store.get_refunds, coalesce=on)
        self.complete_refund = _one(store.complete_refunds, coalesce=on)
        self.get_event = _lookup(store.get_events, coalesce=on)
        self.add_event = _one(_nones(store.add_events), coalesce=on)
        self.mark_enqueued = _one(_nones(store.mark_enqueued), coalesce=on)
        self.get_endpoint = _lookup(store.get_endpoints, coalesce=on)
        self.add_attempt = _one(_nones(store.add_attempts), coalesce=on)
        self._list_endpoints = _one(_shared_answer(store.list_endpoints), coalesce=on)

    async def list_endpoints(self) -> list[WebhookEndpoint]:
        """Every endpoint, oldest first (the callers of one iteration share one query)."""
        return await self._list_endpoints(None)


def _lookup(run: Callable[[Sequence[str]], Awaitable[Mapping[str, T]]], *,
            coalesce: bool) -> Callable[[str], Awaitable[T | None]]:
    """A per-id lookup over a batch method that answers ``{id: item}`` for the ids it knows."""

    async def batch(ids: list[str]) -> list[T | None]:
        found = await run(list(dict.fromkeys(ids)))
        return [found.get(i) for i in ids]

    return _one(batch, coalesce=coalesce)


def _nones(run: Callable[[Sequence[K]], Awaitable[None]]
           ) -> Callable[[list[K]], Awaitable[list[None]]]:
    async def call(items: list[K]) -> list[None]:
        await run(items)
        return [None] * len(items)

    return call


def _shared_answer(run: Callable[[], Awaitable[V]]) -> Callable[[list[None]], Awaitable[list[V]]]:
    async def call(items: list[None]) -> list[V]:
        answer = await run()
        return [answer] * len(items)

    return call
