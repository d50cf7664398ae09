"""Side-by-side timing commands (not tests): ``python -m benchmarks.latency``, ``python -m benchmarks.profile``."""
