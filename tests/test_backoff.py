from __future__ import annotations

import random

from payflow.queue.backoff import full_jitter


def test_full_jitter_grows_exponentially_and_is_capped() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(0, 5.0), (1, 10.0), (3, 40.0), (10, 300.0), (10_000, 300.0)]:
        samples = [full_jitter(attempt, base=5.0, cap=300.0, rng=rng) for _ in range(500)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > 0.8 * ceiling  # spread over the whole range (full jitter)
        assert min(samples) < 0.2 * ceiling
