"""The same two-stage pipeline written with arq and with saq, for benchmarks/pipeline.py."""
