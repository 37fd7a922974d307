#!/usr/bin/env bash
# Set up, then run the whole test suite (8 fake CPU devices; see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n 2 --durations=15 tests "$@"
