"""Baselines the benchmarks time ours against: retired implementations kept only as peers."""
