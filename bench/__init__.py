"""Benchmarks (make bench). Each bench_*.py module has run() -> list of result dicts."""
