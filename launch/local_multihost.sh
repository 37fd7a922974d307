#!/usr/bin/env bash
# Run N local processes of rlvr-train as one jax.distributed job on this machine's CPU (gloo collectives).
#   launch/local_multihost.sh N DEVICES_PER_PROCESS --config=... --workdir=...
set -euo pipefail
N="${1:?number of processes}"; D="${2:?devices per process}"; shift 2
PORT="${PORT:-$((20000 + RANDOM % 10000))}"
cd "$(dirname "$0")/.."
pids=()
for ((i = 0; i < N; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=$D" JAX_PLATFORMS=cpu \
    .venv/bin/python -m rlvr_jax.rl.train "$@" --config.distributed.enabled=on \
    --config.distributed.coordinator="127.0.0.1:$PORT" --config.distributed.num_processes="$N" \
    --config.distributed.process_id="$i" > "multihost_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
