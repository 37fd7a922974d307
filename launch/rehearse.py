#!/usr/bin/env python3
"""Rehearse a pod run on this CPU with the real launcher: a fake cloud CLI whose workers are local processes
of one jax.distributed job (launch/fake_gcloud.py), a local Cloud Storage (launch/gcs_emulator.py), and
rlvr-pod supervising runs whose --workdir is gs://. `train`: two tiny GRPO runs on the same fake slice, one
left alone and one whose worker 1 is killed (SIGKILL) and whose slice is then preempted; the supervisor
restarts it, the trainer resumes from the newest checkpoint in the bucket, and the two runs must end with
the same parameters and the same per-step metrics. `study`: a shortened rlvr-experiment whose worker 1 is
killed between stages; the restarted experiment skips the finished stages and writes its report to the
bucket. Every event is printed on one line.

  bash launch/rehearse.sh                    # both, 2 workers x 2 CPU devices (about 5 minutes on 2 cores)
  bash launch/rehearse.sh --what train --interrupts kill  # only the dead worker; --interrupts none: neither
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(REPO, ".venv", "bin", "python")
BUCKET = "rlvr-rehearsal"
# The tiny GRPO run: small enough to restart twice in a few minutes on 2 cores, deterministic per step.
TRAIN_ARGS = [
    "--config=configs/grpo.py:multi,tiny",
    "--config.train.checkpoint_every=1",
    "--config.model.overrides.hidden_size=64",
    "--config.model.overrides.intermediate_size=128",
    "--config.model.overrides.num_layers=2",
    "--config.rollout.prompts_per_step=4",
    "--config.rollout.samples_per_prompt=4",
    "--config.rollout.max_new_tokens=12",
    "--config.rollout.num_slots=4",
    "--config.rollout.num_pages=32",
    "--config.sft.steps=0",
    "--config.eval.items_per_domain=0",
    "--config.verifier.workers=1",
    "--config.data.builtin_train_size=40",
]
# A shortened tiny study (every stage, two domains, one step each): what `--study` runs.
STUDY_ARGS = [
    "--config=configs/mix_vs_merge.py:tiny",
    "--config.domains=math,if",
    "--config.base.model.overrides.hidden_size=64",
    "--config.base.model.overrides.intermediate_size=128",
    "--config.base.model.overrides.num_layers=2",
    "--config.base.rollout.prompts_per_step=4",
    "--config.base.rollout.samples_per_prompt=4",
    "--config.base.rollout.max_new_tokens=12",
    "--config.base.sft.steps=8",
    "--config.base.sft.batch_size=8",
    "--config.base.sft.warmup_steps=2",
    "--config.base.data.builtin_train_size=40",
    "--config.base.verifier.workers=1",
    "--config.base.rollout.num_slots=8",
    "--config.base.rollout.num_pages=64",
    "--config.single_steps=1",
    "--config.merge.methods=ties",
    "--config.analysis.self_verification.models=multi_adaptive",  # adaptive mixing and self-verification on 2 hosts
    "--config.analysis.self_verification.items_per_domain=2",
    "--config.analysis.self_verification.samples=1",
    "--config.opd.prompts_per_step=4",
    "--config.eval.items_per_domain=4",
    "--config.eval.items_by_domain=",  # tiny's 2,000 math items are for the study itself
    "--config.eval.samples=2",
    "--config.analysis.kl_prompts_per_domain=2",
    "--config.analysis.kl_samples=2",
    "--config.analysis.proj_dim=8",
]
# Metrics that a resumed run must reproduce exactly, step by step.
DETERMINISTIC = ("reward/mean", "loss/policy", "grad/global_norm", "response_length/mean", "entropy")


def event(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} [rehearse] {message}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_storage() -> tuple[subprocess.Popen, dict]:
    """The local Cloud Storage, and the environment its clients read."""
    sys.path.insert(0, os.path.join(REPO, "launch"))
    from gcs_emulator import emulator_env  # the launch/ folder's own module, beside this script

    port = _free_port()
    proc = subprocess.Popen(
        [PY, os.path.join(REPO, "launch", "gcs_emulator.py"), "--port", str(port), "--bucket", BUCKET],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}", timeout=1).read()
            return proc, emulator_env(url)
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the Cloud Storage emulator did not start on {url}")


class Pod:
    """rlvr-pod and the fake cloud CLI, both with the rehearsal's environment."""

    def __init__(self, state: str, env: dict, workers: int, devices: int, name: str = "rehearsal"):
        self.name = name
        self.gcloud = f"{shlex.quote(PY)} {shlex.quote(os.path.join(REPO, 'launch', 'fake_gcloud.py'))}"
        self.env = dict(
            os.environ,
            **env,
            GCLOUD=self.gcloud,
            FAKE_GCLOUD_STATE=os.path.join(state, "cloud"),
            FAKE_GCLOUD_WORKERS=str(workers),
            FAKE_GCLOUD_DEVICES=str(devices),
            POD_INSTALL="true",  # the fake's workers share this checkout's .venv
            POD_STATE_DIR=os.path.join(state, "pod"),
            POD_POLL="2",
            TPU_NAME=name,
            RLVR_CACHE=os.path.join(state, "cache"),
            # restarted workers load their compiled programs instead of compiling again, as a pod's
            # workers do from a shared compilation cache; the programs, hence the numbers, are the same
            JAX_COMPILATION_CACHE_DIR=os.path.join(state, "xla-cache"),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        )

    def pod(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([PY, "-m", "rlvr_jax.launch", *args], cwd=REPO, env=self.env, check=check)

    def gcloud_call(self, *args: str) -> None:
        subprocess.run([*shlex.split(self.gcloud), *args], cwd=REPO, env=self.env, check=True)

    def kill_worker(self, worker: int) -> None:
        cmd = "kill -9 $(cat ~/.rlvr_pod.pid)"
        self.gcloud_call("compute", "tpus", "tpu-vm", "ssh", self.name, f"--worker={worker}", f"--command={cmd}")

    def preempt(self) -> None:
        self.gcloud_call("preempt", self.name)


def logged_steps(workdir: str) -> list[int]:
    from rlvr_jax import storage

    path = storage.join(workdir, "metrics_train.jsonl")
    if not storage.exists(path):
        return []
    return [json.loads(line)["step"] for line in storage.read_text(path).splitlines() if line.strip()]


def supervised_run(pod: Pod, workdir: str, steps: int, interrupts: list[str]) -> None:
    """rlvr-pod run of the tiny config; each interrupt fires once the run has logged one more step."""
    args = [*TRAIN_ARGS, f"--workdir={workdir}", f"--config.train.steps={steps}", "--config.train.keep=10"]
    launcher = [PY, "-m", "rlvr_jax.launch", "--max-restarts=3", "--stop-grace=5"]
    sup = subprocess.Popen([*launcher, "run", *args], cwd=REPO, env=pod.env)
    pending, seen, resumes = list(interrupts), 0, 0
    while sup.poll() is None:
        time.sleep(0.5)
        done = logged_steps(workdir)
        # a step logged beyond the last interrupt's, by an attempt that began after it: the attempt an
        # interrupt stopped may still log a step before it dies, so the next interrupt waits for the resume
        if pending and done and max(done) > seen and len(resumed_at(pod, missing_ok=True)) >= resumes:
            seen = max(done)
            what = pending.pop(0)
            event(f"step {seen} logged: {'killing worker 1 (SIGKILL)' if what == 'kill' else 'preempting the slice'}")
            pod.kill_worker(1) if what == "kill" else pod.preempt()
            resumes = len(resumed_at(pod, missing_ok=True)) + 1
    if sup.returncode != 0:
        raise SystemExit(f"the supervisor gave up (exit {sup.returncode}): see {pod.env['POD_STATE_DIR']}")
    if pending:
        raise SystemExit(f"the run finished before every interrupt fired ({pending} left)")


def resumed_at(pod: Pod, missing_ok: bool = False) -> list[int]:
    """The steps the trainer said it resumed from, in worker 0's log (every attempt)."""
    log = os.path.join(pod.env["POD_STATE_DIR"], "logs", "w0.log")
    if missing_ok and not os.path.exists(log):
        return []
    with open(log) as f:
        return [int(line.split("resumed from step ")[1].split()[0]) for line in f if "resumed from step " in line]


def final_params(workdir: str, step: int) -> dict:
    """The saved parameters of `step`, as host arrays keyed by their tree path."""
    import jax
    import orbax.checkpoint as ocp

    checkpointer, path = ocp.StandardCheckpointer(), f"{workdir}/checkpoints/{step}/params"
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # saved by 2 hosts, read by this one
    abstract = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device), checkpointer.metadata(path).item_metadata
    )
    tree = checkpointer.restore(path, abstract)
    return {jax.tree_util.keystr(k): jax.device_get(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def compare(reference: str, interrupted: str, steps: int) -> None:
    import numpy as np

    from rlvr_jax import storage
    from rlvr_jax.metrics import read_jsonl

    last = {}
    for workdir in (reference, interrupted):
        rows = read_jsonl(storage.join(workdir, "metrics_train.jsonl"))
        last[workdir] = {r["step"]: r for r in rows}  # a resumed run logs its replayed steps again
    a, b = last[reference], last[interrupted]
    assert sorted(a) == sorted(b) == list(range(1, steps + 1)), (sorted(a), sorted(b))
    for step in a:
        for key in DETERMINISTIC:
            assert a[step][key] == b[step][key], f"step {step} {key}: {a[step][key]} != {b[step][key]}"
    event(f"metrics equal at every step ({', '.join(DETERMINISTIC)})")
    pa, pb = final_params(reference, steps), final_params(interrupted, steps)
    assert sorted(pa) == sorted(pb)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
    event(f"parameters equal: {len(pa)} arrays at step {steps}")


def rehearse_train(pod: Pod, steps: int, interrupts: list[str], workers: int, devices: int) -> None:
    reference, interrupted = f"gs://{BUCKET}/uninterrupted", f"gs://{BUCKET}/interrupted"
    event(f"uninterrupted run: {workers} workers x {devices} devices, {steps} steps")
    supervised_run(pod, reference, steps, [])
    event(f"interrupted run: {', '.join(interrupts) or 'no interruptions'}")
    supervised_run(pod, interrupted, steps, interrupts)
    event(f"resumed at steps {resumed_at(pod)} (worker 0's log), finished")
    compare(reference, interrupted, steps)
    check_run_files(interrupted, steps)


def check_run_files(workdir: str, steps: int) -> None:
    """What a run leaves in its gs:// workdir: checkpoints, TensorBoard events, metrics, summary.json."""
    from rlvr_jax import storage

    names = set(storage.listdir(workdir))
    assert {"checkpoints", "tensorboard", "metrics_train.jsonl", "summary.json"} <= names, names
    assert {str(steps), "tokenizer"} <= set(storage.listdir(f"{workdir}/checkpoints"))
    events = [n for n in storage.listdir(f"{workdir}/tensorboard/train") if n.startswith("events.out.tfevents")]
    assert events, "no TensorBoard event files"
    assert storage.read_json(f"{workdir}/summary.json")["last_step"] == steps
    event(f"{workdir}: checkpoints, {len(events)} TensorBoard event files (one per attempt), metrics, summary.json")


def rehearse_study(pod: Pod, kill_after: str = "rl_math") -> None:
    """The shortened study on the pod; worker 1 is killed once stage `kill_after` has finished, and the
    restarted experiment must skip the finished stages and write its report to the bucket."""
    from rlvr_jax import storage

    workdir = f"gs://{BUCKET}/study"
    event(f"shortened study on the pod (every stage, math and if, 1 step each); kill after {kill_after}")
    launcher = [PY, "-m", "rlvr_jax.launch", "--max-restarts=2", "--stop-grace=5"]
    sup = subprocess.Popen([*launcher, "experiment", *STUDY_ARGS, f"--workdir={workdir}"], cwd=REPO, env=pod.env)
    killed = False
    while sup.poll() is None:
        time.sleep(0.5)
        if not killed and storage.exists(f"{workdir}/{kill_after}/DONE.json"):
            event(f"stage {kill_after} done: killing worker 1 (SIGKILL)")
            pod.kill_worker(1)
            killed = True
    if sup.returncode != 0 or not killed:
        raise SystemExit(f"the study did not finish after one kill (exit {sup.returncode}, killed {killed})")
    log = os.path.join(pod.env["POD_STATE_DIR"], "logs", "w0.log")
    with open(log) as f:
        last_attempt = f.read().rsplit("=== rlvr-pod attempt", 1)[-1]
    skipped = [
        line.split("] ")[1].split(":")[0] for line in last_attempt.splitlines() if "done before, skipped" in line
    ]
    assert kill_after in skipped, f"the restarted experiment did not skip {kill_after}: {skipped}"
    event(f"restarted experiment skipped the finished stages: {', '.join(skipped)}")
    report = storage.read_text(f"{workdir}/report/report.md")
    assert "## " in report and storage.exists(f"{workdir}/report/results.json")
    event(f"report written to {workdir}/report/ ({len(report.splitlines())} lines of report.md)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--what", default="train,study", help="comma-separated: train (GRPO runs) | study (rlvr-experiment)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--devices", type=int, default=2, help="CPU devices per worker")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--interrupts", default="kill,preempt", help="comma-separated: kill | preempt | none")
    p.add_argument("--state", default="", help="where the fake cloud and the supervisor keep state (default: temp)")
    args = p.parse_args(argv)
    interrupts = [x for x in args.interrupts.split(",") if x and x != "none"]
    if any(x not in ("kill", "preempt") for x in interrupts) or len(interrupts) >= args.steps:
        p.error("--interrupts: at most steps-1 of kill|preempt")
    what = [x for x in args.what.split(",") if x]
    if not what or any(x not in ("train", "study") for x in what):
        p.error("--what: train and/or study")
    state = args.state or tempfile.mkdtemp(prefix="rlvr-rehearsal-")
    storage_proc, env = start_storage()
    os.environ.update(env)  # this process reads the bucket too
    event(f"local Cloud Storage at {env['STORAGE_EMULATOR_HOST']}, bucket gs://{BUCKET}; state in {state}")
    pod = Pod(state, env, args.workers, args.devices)
    try:
        pod.pod("create")
        pod.pod("setup")
        if "train" in what:
            rehearse_train(pod, args.steps, interrupts, args.workers, args.devices)
        if "study" in what:
            rehearse_study(pod)
    finally:
        pod.pod("delete", check=False)
        storage_proc.kill()
    event("rehearsal passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
