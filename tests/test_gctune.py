"""The collector's upkeep: survivors are frozen, and a full collection frees frozen cycles."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from payflow import gctune


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


async def test_survivors_are_frozen_and_a_full_collection_frees_frozen_cycles() -> None:
    gctune.tune()
    assert gc.get_threshold()[0] == gctune.YOUNG_THRESHOLD
    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the cyclic collector can free it
    gone = weakref.ref(a)
    stop = asyncio.Event()
    frozen_before = gc.get_freeze_count()
    task = asyncio.create_task(gctune.run_upkeep(stop, freeze_seconds=0.05, full_seconds=3600))
    await asyncio.sleep(0.2)
    assert gc.get_freeze_count() > frozen_before  # the cycle is frozen with the rest
    del a, b
    gc.collect()
    assert gone() is not None  # frozen: collections do not walk it
    stop.set()
    await task
    task = asyncio.create_task(gctune.run_upkeep(asyncio.Event(), freeze_seconds=0.05,
                                                 full_seconds=0.0))
    await asyncio.sleep(0.2)
    task.cancel()
    assert gone() is None  # the full collection unfroze and freed it
