#!/usr/bin/env bash
# TPU VM pod slice lifecycle. Thin by design: the logic lives in rlvr_jax/launch (the same as `rlvr-pod`).
#   launch/tpu_pod.sh create            # make the slice (a queued resource; --direct: a plain TPU VM)
#   launch/tpu_pod.sh setup             # copy this repo to every worker and install it
#   launch/tpu_pod.sh run ARGS...       # rlvr-train ARGS on every worker, supervised: a failed worker or a
#                                       # preempted slice stops all, recreates if needed, resumes from --workdir
#   launch/tpu_pod.sh experiment ARGS...  # rlvr-experiment ARGS on every worker, supervised
#   launch/tpu_pod.sh exec PROGRAM ARGS...  # any program (relative to ~/rlvr_jax) on every worker, supervised
#   launch/tpu_pod.sh logs [-f] [-n N]  # every worker's log, lines prefixed [w0], [w1], ...
#   launch/tpu_pod.sh status            # slice state, supervisor state, each worker's last log line
#   launch/tpu_pod.sh delete
# Settings come from the environment: TPU_NAME, ZONE, ACCELERATOR (e.g. v5litepod-64), RUNTIME, PROJECT,
# SPOT=1 (spot capacity), MAX_RESTARTS (5), GCLOUD (the cloud CLI; launch/fake_gcloud.py rehearses),
# POD_INSTALL (the install command run on each worker), POD_STATE_DIR (default ~/.rlvr_pod/$TPU_NAME).
# Launcher options (--spot, --direct, --max-restarts N, --poll S, ...) go before the command.
set -euo pipefail
exec "$(dirname "$0")/../.venv/bin/python" -m rlvr_jax.launch "$@"
