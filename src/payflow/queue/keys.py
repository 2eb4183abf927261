"""Key names derived from a queue. Each carries the queue's name as a hash tag, so every key of
``payflow_jobs`` hashes to the same Redis Cluster slot as ``payflow_jobs`` itself."""

from __future__ import annotations


def processing(queue: str, consumer_id: str) -> str:
    return f"{{{queue}}}:processing:{consumer_id}"


def delayed(queue: str) -> str:
    return f"{{{queue}}}:delayed"


def dead(queue: str) -> str:
    return f"{{{queue}}}:dead"


def redeliveries(queue: str) -> str:
    """Hash: SHA-1 of a job -> how often the reaper recovered it (poison detection)."""
    return f"{{{queue}}}:redeliveries"


# Daemon liveness (not tied to one queue).
DAEMONS = "payflow:daemons"  # hash: daemon id -> JSON {host, pid, started_at, lists}
REAPER_LOCK = "payflow:reaper:lock"


def heartbeat(daemon_id: str) -> str:
    return f"payflow:heartbeat:{daemon_id}"
