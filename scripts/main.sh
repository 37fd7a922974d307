#!/usr/bin/env bash
# Set up, then run the main job on the built-in default: SFT warm start + multi-domain GRPO on a tiny model (CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/rlvr-train --config=configs/default.py:tiny --workdir="${WORKDIR:-runs/default}" "$@"
