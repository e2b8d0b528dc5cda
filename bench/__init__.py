"""Benchmark harness for issue 5: `make bench` (see bench/run.py)."""
