"""Exponential backoff with full jitter and a cap (the AWS architecture blog's "full jitter")."""

from __future__ import annotations

import random


def full_jitter(attempt: int, *, base: float, cap: float,
                rng: random.Random | None = None) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 0)."""
    ceiling = min(cap, base * 2 ** min(attempt, 62))
    return (rng or random).uniform(0, ceiling)
