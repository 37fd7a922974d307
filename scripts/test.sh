#!/usr/bin/env bash
# Set up, then run the whole test suite (8 fake CPU devices; see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One style: the formatter and the linter configured in pyproject.toml (a failure prints the fix).
.venv/bin/ruff format --check rlvr_jax tests benchmarks tools configs launch || { echo "run: .venv/bin/ruff format rlvr_jax tests benchmarks tools configs launch" >&2; exit 1; }
.venv/bin/ruff check rlvr_jax tests benchmarks tools configs launch
exec .venv/bin/python -m pytest -n 2 --dist worksteal --durations=15 tests "$@"
