"""The pod on this CPU: a dead process ends the job on every host within the configured heartbeat; the
rehearsal (launch/rehearse.py: fake cloud CLI, local Cloud Storage, the real rlvr-pod supervisor) kills a
worker and preempts the slice mid-run, and the resumed run ends equal to an uninterrupted one."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_rehearsal_resumes_training_and_the_study_on_gs(tmp_path):
    """One fake pod, one local Cloud Storage: the GRPO run killed and preempted ends equal to the
    uninterrupted one; the shortened study killed between stages skips them when restarted and writes
    its report to the bucket."""
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "rehearse.py"), "--state", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-5000:]
    events = [line for line in out.stdout.splitlines() if "[rehearse]" in line or "[rlvr-pod" in line]
    text = "\n".join(events)
    for expected in (
        "killing worker 1 (SIGKILL)",
        "worker 1 exited 137",
        "preempting the slice",
        "slice PREEMPTED",
        "recreating slice",
        "restarting (attempt 3/4)",
        "metrics equal at every step",
        "parameters equal",
        "TensorBoard event files",
        "stage rl_math done: killing worker 1",
        "restarted experiment skipped the finished stages: sft, rl_math",
        "report written to gs://",
        "rehearsal passed",
    ):
        assert expected in text, f"missing event {expected!r}:\n{text}"
    resumed = [line for line in events if "resumed at steps" in line]
    assert resumed and "[]" not in resumed[0], text  # the trainer resumed from the bucket each time


@pytest.mark.slow
def test_a_dead_process_stops_the_others_within_60s():
    port = _free_port()
    procs = []
    for i in range(2):
        env = dict(
            os.environ,
            JAX_PLATFORMS="cpu",
            XLA_FLAGS="--xla_force_host_platform_device_count=1",
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(i),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, os.path.join(REPO, "tests", "pod_tick.py")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        )
    try:
        lines = iter(procs[0].stdout.readline, "")  # gloo prints its connections first
        assert any(line.strip() == "ticking" for line in lines)  # both joined and met at barriers
        procs[1].send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        code = procs[0].wait(timeout=120)
        waited = time.monotonic() - t0
    finally:
        for p in procs:
            p.kill()
    assert code != 0, "the surviving process must fail, not hang or succeed"
    assert waited < 60, f"the surviving process lived {waited:.0f} s after its peer died"
