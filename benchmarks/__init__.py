"""Benchmarks: the performance table (`python -m benchmarks.bench`), one module per section."""
