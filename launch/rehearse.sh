#!/usr/bin/env bash
# Rehearse a TPU pod run on this CPU (launch/rehearse.py): fake cloud CLI + local Cloud Storage + rlvr-pod,
# a worker killed and the slice preempted mid-run, the run resumed and checked against an uninterrupted one.
#   bash launch/rehearse.sh [--interrupts kill,preempt] [--workers 2] [--devices 2] [--steps 3]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
exec .venv/bin/python launch/rehearse.py "$@"
