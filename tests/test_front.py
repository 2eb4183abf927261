"""The Coalescer and the StoreFront: per-item calls become batch calls."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from payflow.models import Payment
from payflow.store.front import Coalescer, StoreFront
from payflow.store.memory import MemoryStore


class Recorder:
    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = gate

    async def run(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        if self.gate is not None:
            await self.gate.wait()
        return [i * 10 for i in items]


async def test_calls_of_one_iteration_share_one_run_and_get_their_own_results() -> None:
    rec = Recorder()
    c = Coalescer(rec.run)
    assert await asyncio.gather(*(c(i) for i in range(5))) == [0, 10, 20, 30, 40]
    assert rec.batches == [[0, 1, 2, 3, 4]]
    assert await c(7) == 70
    assert rec.batches[-1] == [7]


async def test_max_batch_splits_a_large_iteration() -> None:
    rec = Recorder()
    c = Coalescer(rec.run, max_batch=2)
    assert await asyncio.gather(*(c(i) for i in range(5))) == [0, 10, 20, 30, 40]
    assert rec.batches == [[0, 1], [2, 3], [4]]


async def test_an_error_reaches_every_caller_of_the_batch() -> None:
    async def fail(items: list[int]) -> list[int]:
        raise ConnectionError("down")

    c = Coalescer(fail)
    results = await asyncio.gather(*(c(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)


async def test_serial_keeps_one_run_in_flight_and_batches_what_arrives_meanwhile() -> None:
    gate = asyncio.Event()
    rec = Recorder(gate)
    c = Coalescer(rec.run, serial=True)
    first = asyncio.ensure_future(c(1))
    for _ in range(5):
        await asyncio.sleep(0)
    assert rec.batches == [[1]]
    later = [asyncio.ensure_future(c(i)) for i in (2, 3, 4)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert rec.batches == [[1]]  # nothing else starts while the first runs
    gate.set()
    assert await first == 10 and [await f for f in later] == [20, 30, 40]
    assert rec.batches == [[1], [2, 3, 4]]


async def test_serial_goes_on_after_a_failed_run() -> None:
    calls: list[list[int]] = []

    async def flaky(items: list[int]) -> list[int]:
        calls.append(items)
        await asyncio.sleep(0.01)
        if len(calls) == 1:
            raise ConnectionError("down")
        return items

    c = Coalescer(flaky, serial=True)
    first = asyncio.ensure_future(c(1))
    await asyncio.sleep(0.001)
    second = asyncio.ensure_future(c(2))
    with pytest.raises(ConnectionError):
        await first
    assert await second == 2


class CountingStore(MemoryStore):
    kind = "counting"
    shared = True  # as if across a network: the front coalesces

    def __init__(self) -> None:
        super().__init__()
        self.get_calls: list[list[str]] = []

    async def get_payments(self, ids: Sequence[str]) -> dict[str, Payment]:
        self.get_calls.append(list(ids))
        return await super().get_payments(ids)


async def test_the_front_of_a_shared_store_makes_one_lookup_for_a_batch() -> None:
    store = CountingStore()
    await store.create_payments([Payment(id=f"p{i}", method="upi") for i in range(4)])
    front = StoreFront(store)
    found = await asyncio.gather(*(front.get_payment(f"p{i}") for i in (0, 1, 1, 9)))
    assert [p.id if p else None for p in found] == ["p0", "p1", "p1", None]
    assert store.get_calls == [["p0", "p1", "p9"]]  # one call, each id once


async def test_the_front_of_a_local_store_calls_straight_through() -> None:
    store = MemoryStore()
    await store.create_payments([Payment(id="p0", method="upi")])
    front = StoreFront(store)
    assert not isinstance(front.get_payment, Coalescer)
    assert (await front.get_payment("p0")) is not None
