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


def test_backoff_counts_consecutive_failures_logs_each_and_starts_over() -> None:
    from structlog.testing import capture_logs

    from payflow.queue.backoff import Backoff

    backoff = Backoff("thing.failed", base=1.0, cap=3.0)
    with capture_logs() as logs:
        delays = [backoff.failed(OSError("down"), where="here") for _ in range(5)]
    assert all(0 <= d <= 3.0 for d in delays)
    assert [(e["event"], e["log_level"], e["error"], e["where"]) for e in logs] == [
        ("thing.failed", "warning", "OSError: down", "here")] * 5
    assert all(e["retry_in"] == round(d, 3) for e, d in zip(logs, delays, strict=True))
    assert backoff.succeeded() == 5
    assert backoff.succeeded() == 0
