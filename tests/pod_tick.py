"""One process of a jax.distributed job (its place from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID) with the study preset's `distributed` settings, meeting the others at a barrier forever:
tests/test_pod_rehearsal.py kills one and times how long the other lives."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jax.experimental import multihost_utils  # noqa: E402

from rlvr_jax import cli  # noqa: E402
from rlvr_jax.config_args import load_config_file  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
grpo = load_config_file(os.path.join(REPO, "configs", "grpo.py"))
cli.initialize_distributed(grpo.get_config("multi").distributed)
for i in range(1_000_000):
    multihost_utils.sync_global_devices(f"tick {i}")
    if i == 3:
        print("ticking", flush=True)
    time.sleep(0.1)
