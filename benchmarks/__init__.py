"""PayFlow's benchmarks: ``python -m benchmarks.pipeline --help``."""
