#!/usr/bin/env bash
# TPU VM pod slice lifecycle. Thin by design: every decision lives in Python (configs/, rlvr_jax/).
#   launch/tpu_pod.sh create            # make the slice
#   launch/tpu_pod.sh setup             # copy this repo to every worker and install it
#   launch/tpu_pod.sh run ARGS...       # rlvr-train ARGS on every worker (jax.distributed picks up the pod)
#   launch/tpu_pod.sh experiment ARGS...  # rlvr-experiment ARGS on every worker
#   launch/tpu_pod.sh logs              # tail worker 0's log
#   launch/tpu_pod.sh delete
# Settings come from the environment: TPU_NAME, ZONE, ACCELERATOR (e.g. v5litepod-64), RUNTIME, PROJECT.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR="${ACCELERATOR:-v5litepod-64}"
RUNTIME="${RUNTIME:-v2-alpha-tpuv5-lite}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
CMD="${1:?usage: $0 create|setup|run|experiment|logs|delete [ARGS...]}"; shift || true
# On each worker: uv (from PyPI, with the image's python3) makes .venv with Python 3.11, the tested one,
# fetching it where the image has none (Ubuntu 22.04 ships 3.10), and installs the locked versions.
# --break-system-packages is the retry for images whose pip refuses --user installs (PEP 668).
UV="python3 -m uv"
INSTALL="{ python3 -m pip install -q --user 'uv>=0.9' || python3 -m pip install -q --user --break-system-packages 'uv>=0.9'; } \
  && rm -rf .venv && $UV venv -q --python 3.11 .venv && $UV pip install -q --python .venv/bin/python -c requirements.lock -e '.[tpu]'"
ssh_all() { gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all --command="$1"; }
case "$CMD" in
  create) gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG \
            --accelerator-type="$ACCELERATOR" --version="$RUNTIME" ;;
  setup)  gcloud compute tpus tpu-vm scp --recurse "$(cd "$(dirname "$0")/.." && pwd)" "$TPU_NAME":~/rlvr_jax \
            --zone="$ZONE" $PROJECT_FLAG --worker=all
          ssh_all "cd ~/rlvr_jax && $INSTALL && (sudo apt-get install -y -qq bubblewrap || true)" ;;
  run)    ssh_all "cd ~/rlvr_jax && nohup .venv/bin/rlvr-train $* > ~/train.log 2>&1 &" ;;
  experiment) ssh_all "cd ~/rlvr_jax && nohup .venv/bin/rlvr-experiment $* > ~/train.log 2>&1 &" ;;
  logs)   gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=0 --command="tail -f ~/train.log" ;;
  delete) gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --quiet ;;
  *) echo "unknown command $CMD" >&2; exit 2 ;;
esac
