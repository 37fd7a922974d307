"""Two local processes x 4 CPU devices (gloo collectives) train exactly like one process x 8 devices."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from rlvr_jax.metrics import read_jsonl
from rlvr_jax.rollout import lengths
from tests.test_train import REPO, TINY_OVERRIDES


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmd(workdir, extra=()):
    return [
        sys.executable,
        "-m",
        "rlvr_jax.rl.train",
        "--config=configs/grpo.py:multi,tiny",
        f"--workdir={workdir}",
        "--config.train.steps=2",
        "--config.train.checkpoint_every=1",
        "--config.rollout.prompts_per_step=8",
        *TINY_OVERRIDES[:3],
        *TINY_OVERRIDES[4:],
        "--config.verifier.workers=1",
        *extra,
    ]


def _env(devices):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    return env


def _run_two_processes(workdir, extra=()):
    """The training command on two local processes x 4 CPU devices (gloo), both checked to exit 0."""
    port = _free_port()
    dist = ["--config.distributed.enabled=on", f"--config.distributed.coordinator=127.0.0.1:{port}"]
    procs = [
        subprocess.Popen(
            _cmd(
                workdir, [*extra, *dist, "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"]
            ),
            cwd=REPO,
            env=_env(4),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n\n".join(e[-3000:] for e in errs)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    one = subprocess.run(_cmd(tmp_path / "one"), cwd=REPO, env=_env(8), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    _run_two_processes(tmp_path / "two")
    a = {r["step"]: r for r in read_jsonl(str(tmp_path / "one" / "metrics_train.jsonl"))}
    b = {r["step"]: r for r in read_jsonl(str(tmp_path / "two" / "metrics_train.jsonl"))}
    assert sorted(a) == sorted(b) == [1, 2]
    for step in (1, 2):
        for key in ("reward/mean", "loss/policy", "grad/global_norm", "response_length/mean", "entropy"):
            np.testing.assert_allclose(b[step][key], a[step][key], rtol=1e-4, atol=1e-6, err_msg=f"{step} {key}")
    assert (tmp_path / "two" / "checkpoints" / "2").is_dir()


@pytest.mark.slow
def test_two_processes_run_partial_rollouts_and_each_saves_its_carried_rows(tmp_path):
    """Partial rollouts on two hosts: every call stops when both hosts have their groups (no host waits on
    a collective the other skipped), each host trains its own rows and saves the rows it carries."""
    _run_two_processes(tmp_path, ["--config.rollout.partial=True"])
    rows = {r["step"]: r for r in read_jsonl(str(tmp_path / "metrics_train.jsonl"))}
    assert sorted(rows) == [1, 2]
    assert rows[2]["partial/carried_in_groups"] > 0  # summed over both hosts
    for i in range(2):
        assert (tmp_path / "checkpoints" / "carried" / f"step_2.process_{i}.npz").is_file()
    # the run's response lengths, both hosts' rows, for rlvr-plan (plan.lengths="histogram")
    hist = lengths.read_histogram(str(tmp_path / lengths.HISTOGRAM_FILE))
    assert sum(hist["counts"]) == 2 * 8 * 4  # steps x prompts x samples
