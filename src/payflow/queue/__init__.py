"""Reliable Redis queues: fetch, settle, delayed retries, dead letters."""
