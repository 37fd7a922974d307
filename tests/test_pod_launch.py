"""The pod launcher (rlvr-pod) against launch/fake_gcloud.py: create/setup/run, a failed worker, a preempted
slice, giving up, a killed supervisor, logs and status; workers are tiny Python scripts driven by a plan
file (exit code or `hang` per worker and attempt), so nothing here trains."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from rlvr_jax.launch.cloud import GONE, READY, SliceSpec, run_command, stop_command
from rlvr_jax.launch.pod import split_argv
from rlvr_jax.launch.supervisor import SuperviseSettings, Supervisor, decide, last_attempt_lines, read_state

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAKE = ROOT / "launch" / "fake_gcloud.py"
NAME = "rehearsal"

# One worker's program: records its start (pid, HOME, jax env) and follows plan.json[worker][attempt].
WORKER = """
import json, os, sys, time
ctrl, i = sys.argv[1], os.environ["JAX_PROCESS_ID"]
starts = os.path.join(ctrl, f"starts_w{i}")
env = {k: os.environ[k] for k in ("HOME", "JAX_NUM_PROCESSES", "JAX_COORDINATOR_ADDRESS", "JAX_PLATFORMS")}
with open(starts, "a") as f:
    f.write(json.dumps(dict(env, pid=os.getpid(), cwd=os.getcwd(), xla=os.environ["XLA_FLAGS"])) + "\\n")
attempt = sum(1 for _ in open(starts)) - 1
plan = json.load(open(os.path.join(ctrl, "plan.json"))).get(i, [])
step = plan[attempt] if attempt < len(plan) else 0
print(f"w{i} attempt {attempt} plan {step}", flush=True)
if step == "hang":
    time.sleep(120)
    sys.exit(9)
time.sleep(0.2)
print(f"w{i} exiting {step}", flush=True)
sys.exit(step)
"""


@pytest.fixture
def pod(tmp_path):
    """A tiny git repository, a fake cloud, and a function running rlvr-pod against them."""
    repo, ctrl = tmp_path / "repo", tmp_path / "ctrl"
    (repo / ".venv").mkdir(parents=True)
    ctrl.mkdir()
    (repo / "worker.py").write_text(WORKER)
    (repo / ".gitignore").write_text(".venv/\nscratch.txt\n")
    (repo / "scratch.txt").write_text("ignored: not copied")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "worker.py", ".gitignore"], cwd=repo, check=True)
    env = dict(
        os.environ,
        GCLOUD=f"{sys.executable} {FAKE}",
        FAKE_GCLOUD_STATE=str(tmp_path / "cloud"),
        TPU_NAME=NAME,
        ZONE="fake-zone-a",
        ACCELERATOR="v4-16",
        POD_REPO=str(repo),
        POD_INSTALL="true",
        POD_STATE_DIR=str(tmp_path / "sup"),
        POD_POLL="0.3",
        FAKE_GCLOUD_WORKERS="2",
        FAKE_GCLOUD_DEVICES="2",
    )
    env.pop("SPOT", None)

    def run(*args, plan=None, background=False, extra_env=None):
        if plan is not None:
            (ctrl / "plan.json").write_text(json.dumps(plan))
        argv = [sys.executable, "-m", "rlvr_jax.launch", "--stop-grace", "3", *args]
        e = dict(env, **(extra_env or {}))
        if background:
            out = open(tmp_path / f"supervisor{time.monotonic_ns()}.out", "w+")
            proc = subprocess.Popen(argv, env=e, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)
            proc.log = out
            return proc
        return subprocess.run(argv, env=e, cwd=ROOT, capture_output=True, text=True, timeout=120)

    run.env, run.ctrl, run.cloud, run.tmp = env, ctrl, tmp_path / "cloud", tmp_path
    run.program = ["exec", sys.executable, "worker.py", str(ctrl)]
    yield run
    for node in (tmp_path / "cloud" / "nodes").glob("*.json"):  # leave no worker running
        subprocess.run([sys.executable, FAKE, "compute", "tpus", "tpu-vm", "delete", node.stem], env=env)


def _starts(pod, worker: int) -> list[dict]:
    path = pod.ctrl / f"starts_w{worker}"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _calls(pod, words: str) -> list[str]:
    return [line for line in (pod.cloud / "calls.log").read_text().splitlines() if words in line]


def _wait_for(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def _output(proc: subprocess.Popen) -> str:
    proc.log.seek(0)
    return proc.log.read()


def _ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


# ---- pure parts
def test_decide_reads_exit_codes_and_slice_state():
    assert decide([None, None], READY).action == "wait"
    assert decide([0, None], READY).action == "wait"
    assert decide([0, 0], READY).action == "finished"
    assert decide([0, 0], "PREEMPTED").action == "finished"  # the run was done before the slice went
    d = decide([None, 137], READY)
    assert (d.action, d.reason, d.worker) == ("restart", "worker 1 exited 137", 1)
    assert decide([None, 137], "PREEMPTED") == decide([None, None], "PREEMPTED")
    assert decide([None, None], "PREEMPTED").action == "recreate"
    assert decide([None, None], GONE).reason == "slice GONE"
    assert decide([None, None], "REPAIRING").action == "restart"
    assert decide([None, None], "UNKNOWN").action == "wait"  # a failed describe decides nothing


def test_split_argv_keeps_the_program_arguments_verbatim():
    assert split_argv(["--spot", "run", "--config=c.py", "--spot"]) == (["--spot"], "run", ["--config=c.py", "--spot"])
    assert split_argv(["--name", "run", "status"]) == (["--name", "run"], "status", [])
    with pytest.raises(SystemExit, match="no command"):
        split_argv(["--spot"])


def test_stop_command_stops_the_marked_run_only(tmp_path):
    (tmp_path / "rlvr_jax").mkdir()
    env = dict(os.environ, HOME=str(tmp_path))
    cmd = run_command(["sleep", "60"])
    assert cmd.endswith("exec env RLVR_POD_RUN=\"$HOME\" sleep 60")
    assert run_command(["a b", "--x=$y"]).endswith("'a b' '--x=$y'")
    run = subprocess.Popen(["bash", "-c", cmd], env=env, start_new_session=True)
    _wait_for(
        lambda: (
            (tmp_path / ".rlvr_pod.pid").exists()
            and b"RLVR_POD_RUN" in pathlib.Path(f"/proc/{run.pid}/environ").read_bytes()
        )
    )
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        subprocess.run(["bash", "-c", stop_command(1)], env=env, check=True, timeout=30)
        assert run.wait(timeout=10) == -signal.SIGTERM
        (tmp_path / ".rlvr_pod.pid").write_text(f"{other.pid}\n")  # a stale pid file naming someone else
        subprocess.run(["bash", "-c", stop_command(1)], env=env, check=True, timeout=30)
        assert other.poll() is None
    finally:
        other.kill()
        run.kill()


def test_last_attempt_lines(tmp_path):
    log = tmp_path / "w0.log"
    log.write_text("=== rlvr-pod attempt 1 t ===\nold\n=== rlvr-pod attempt 2 t ===\na\nb\nc\n")
    assert last_attempt_lines(str(log), 2) == ["b", "c"]
    assert last_attempt_lines(str(log), 10) == ["a", "b", "c"]


class ScriptedCloud:
    """The cloud as a script: describe answers `states` in turn (the last repeats); a PREEMPTED answer kills
    the workers as a preemption would; worker i of attempt k exits `codes[k][i]` (None: runs until killed)."""

    def __init__(self, states: list[str], codes: list[list[int | None]]):
        self.spec = SliceSpec("unit", accelerator="v5litepod-4")
        self.states, self.codes, self.ops, self.procs = list(states), list(codes), [], []

    def describe(self):
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        if state == "PREEMPTED":
            for p in self.procs:
                p.kill()
        node = {"networkEndpoints": [{}, {}], "acceleratorType": "v4-16", "queuedResource": "q"}
        return state, node if state == READY else {}

    def state(self):
        return self.describe()[0]

    def ssh(self, worker, command, **popen_kwargs):
        code = self.codes[0][worker]
        if worker == 1:
            self.codes.pop(0)
        script = "import time; time.sleep(60)" if code is None else f"raise SystemExit({code})"
        self.procs.append(subprocess.Popen([sys.executable, "-c", script], **popen_kwargs))
        return self.procs[-1]

    def ssh_all(self, command, timeout_s=None):
        self.ops.append("stop" if "kill" in command else "ssh_all")
        return 0

    def delete(self):
        self.ops.append("delete")

    def create(self):
        self.ops.append(f"create {self.spec.accelerator}")

    def wait_ready(self, timeout_s, poll_s, on_state):
        self.ops.append("wait_ready")
        return self.describe()[1]


def test_supervisor_waits_for_a_repairing_slice_and_recreates_a_preempted_one(tmp_path, capsys):
    states = ["REPAIRING", "REPAIRING", READY, READY, "PREEMPTED", "PREEMPTED", READY]
    cloud = ScriptedCloud(states, codes=[[None, None], [0, 0]])
    settings = SuperviseSettings(max_restarts=1, poll_s=0.01, stop_grace_s=1)
    sup = Supervisor(cloud, lambda: cloud.ops.append("setup"), ["prog"], str(tmp_path), settings)
    assert sup.run() == 0
    events = [line.split("] ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    for event in (
        "waiting for the slice (state REPAIRING)",
        "workers started (attempt 1): 2 workers",
        "slice PREEMPTED",
        "recreating slice (was PREEMPTED): queued resource v4-16",
        "restarting (attempt 2/2)",
        "finished",
    ):
        assert event in events, events
    # no leftover stop on a REPAIRING slice, no remote stop on a preempted one: delete, create the same kind
    assert cloud.ops == ["delete", "create v4-16", "wait_ready", "setup"]
    assert read_state(str(tmp_path))["status"] == "finished"


# ---- the launcher against the fake cloud
def test_create_setup_run_logs_status_delete(pod):
    assert "READY" in _ok(pod("create"))
    assert len(_calls(pod, f"queued-resources create {NAME} --node-id={NAME} --accelerator-type=v4-16")) == 1
    _ok(pod("setup"))
    node = json.loads(
        _ok(
            subprocess.run(
                [sys.executable, FAKE, "compute", "tpus", "tpu-vm", "describe", NAME, "--format=json"],
                env=pod.env,
                capture_output=True,
                text=True,
            )
        )
    )
    for home in node["fakeWorkerDirs"]:
        copy = pathlib.Path(home) / "rlvr_jax"
        assert (copy / "worker.py").exists() and (copy / ".venv").is_symlink() and not (copy / "scratch.txt").exists()
    out = _ok(pod(*pod.program, plan={}))
    assert "workers started (attempt 1): 2 workers" in out and out.rstrip().endswith("finished")
    w0, w1 = _starts(pod, 0)[0], _starts(pod, 1)[0]
    assert [w0["HOME"], w1["HOME"]] == node["fakeWorkerDirs"] and w0["cwd"] == w0["HOME"] + "/rlvr_jax"
    assert w0["JAX_COORDINATOR_ADDRESS"] == w1["JAX_COORDINATOR_ADDRESS"] and w0["JAX_NUM_PROCESSES"] == "2"
    assert w0["xla"] == "--xla_force_host_platform_device_count=2" and w0["JAX_PLATFORMS"] == "cpu"
    logs = _ok(pod("logs")).splitlines()
    assert "[w0] w0 exiting 0" in logs and "[w1] w1 exiting 0" in logs
    assert all(line.startswith(("[w0] ", "[w1] ")) for line in logs)
    assert _ok(pod("logs", "-n", "1")).splitlines() == ["[w0] w0 exiting 0", "[w1] w1 exiting 0"]
    status = _ok(pod("status"))
    assert f"slice {NAME}: READY, 2 workers, v4-16 (queued resource ACTIVE)" in status
    assert "supervisor: finished (attempt 1/6" in status and "[w1] exited 0: w1 exiting 0" in status
    _ok(pod("delete"))
    assert _calls(pod, f"queued-resources delete {NAME} --force --quiet")
    assert f"slice {NAME}: GONE" in _ok(pod("status"))


def test_failed_worker_stops_every_worker_and_restarts(pod):
    _ok(pod("create"))
    _ok(pod("setup"))
    out = _ok(pod(*pod.program, plan={"0": ["hang", 0], "1": [3, 0]}))
    events = [line.split("] ", 1)[1] for line in out.splitlines() if "[rlvr-pod " in line]
    assert "worker 1 exited 3" in events and "restarting (attempt 2/6)" in events
    assert events.index("worker 1 exited 3") < events.index("stopping workers (1 still running)")
    assert events[-1] == "finished"
    first_w0 = _starts(pod, 0)[0]["pid"]
    assert len(_starts(pod, 0)) == len(_starts(pod, 1)) == 2 and not _alive(first_w0)
    assert "w0 exiting" not in (pod.tmp / "sup" / "logs" / "w0.log").read_text().split("attempt 2")[0]
    assert len(_calls(pod, "queued-resources create")) == 1  # the slice was fine: no recreate


def test_preempted_slice_is_recreated_set_up_and_run_again(pod):
    _ok(pod("--spot", "create"))
    _ok(pod("setup"))
    sup = pod(*pod.program, plan={"0": ["hang", 0], "1": ["hang", 0]}, background=True)
    _wait_for(lambda: len(_starts(pod, 0)) == len(_starts(pod, 1)) == 1)
    _ok(subprocess.run([sys.executable, FAKE, "preempt", NAME], env=pod.env, capture_output=True, text=True))
    assert sup.wait(timeout=90) == 0, _output(sup)
    out = _output(sup)
    for event in (
        "slice PREEMPTED",
        "recreating slice (was PREEMPTED): spot queued resource v4-16",
        "setup done",
        "workers started (attempt 2): 2 workers",
        "finished",
    ):
        assert f"] {event}" in out, out
    creates = _calls(pod, "queued-resources create")
    assert len(creates) == 2 and "--spot" in creates[1] and len(_calls(pod, "queued-resources delete")) == 1
    first, second = _starts(pod, 0)
    assert first["HOME"] != second["HOME"]  # a fresh disk
    assert not _alive(first["pid"])


def test_gives_up_after_max_restarts_with_the_reason(pod):
    _ok(pod("create"))
    _ok(pod("setup"))
    done = pod("--max-restarts", "1", *pod.program, plan={"1": [5, 6, 0]})
    assert done.returncode == 1
    assert "giving up after 1 restart: worker 1 exited 6" in done.stdout
    assert "  [w1] w1 attempt 1 plan 6\n  [w1] w1 exiting 6\n" in done.stdout  # the last attempt's lines only
    assert "restarting (attempt 2/2)" in done.stdout and len(_starts(pod, 1)) == 2
    assert "supervisor: gave up (attempt 2/2" in _ok(pod("status"))


def test_a_killed_supervisor_invoked_again_restarts_the_run(pod):
    _ok(pod("create"))
    _ok(pod("setup"))
    first = pod(*pod.program, plan={"0": ["hang", 0], "1": ["hang", 0]}, background=True)
    _wait_for(lambda: len(_starts(pod, 0)) == len(_starts(pod, 1)) == 1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    out = _ok(pod(*pod.program))
    assert "left the run at attempt 1: starting again" in out and out.rstrip().endswith("finished")
    assert not any(_alive(_starts(pod, w)[0]["pid"]) for w in (0, 1))
    assert [len(_starts(pod, w)) for w in (0, 1)] == [2, 2]


def test_direct_create_and_unknown_command(pod):
    _ok(pod("--direct", "create"))
    assert _calls(pod, f"tpu-vm create {NAME} --accelerator-type=v4-16 --version=")
    _ok(pod("delete"))
    assert _calls(pod, f"tpu-vm delete {NAME} --quiet")
    assert "no command" in pod("launch").stderr
