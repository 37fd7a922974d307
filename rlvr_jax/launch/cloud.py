"""Every `gcloud compute tpus` call the pod launcher makes, behind one class (`Cloud`), and the shell commands
it runs on the workers. The CLI comes from the environment (GCLOUD, split with shlex), so a rehearsal can
point it at launch/fake_gcloud.py."""

import dataclasses
import json
import os
import shlex
import subprocess
import time

READY = "READY"
GONE = "GONE"  # describe answered NOT_FOUND: there is no slice
UNKNOWN = "UNKNOWN"  # describe failed otherwise (network, auth): nothing is decided on it
# Node states the slice never leaves by itself: it is deleted and created again.
LOST = frozenset({GONE, "PREEMPTED", "TERMINATED", "STOPPED", "FAILED", "SUSPENDED"})

REPO_DIR = "~/rlvr_jax"  # where `setup` puts the repository on every worker
PID_FILE = "~/.rlvr_pod.pid"  # the running program's pid on each worker, for `stop_command`


class PodError(RuntimeError):
    """A cloud call failed; the message names the command and what it printed."""


@dataclasses.dataclass(frozen=True)
class SliceSpec:
    """What `create` asks for; `queued` makes a queued resource, else a plain TPU VM."""

    name: str
    zone: str = ""
    project: str = ""
    accelerator: str = "v5litepod-64"
    runtime: str = "v2-alpha-tpuv5-lite"
    spot: bool = False
    queued: bool = True


def spec_from_node(node: dict, fallback: SliceSpec) -> SliceSpec:
    """The spec a live slice was created with (from `tpu-vm describe --format=json`), so a recreated slice
    is the same kind (accelerator, runtime, spot, queued) whatever the environment of the supervisor says."""
    sched = node.get("schedulingConfig") or {}
    return dataclasses.replace(
        fallback,
        accelerator=node.get("acceleratorType") or fallback.accelerator,
        runtime=node.get("runtimeVersion") or fallback.runtime,
        spot=bool(sched.get("spot") or sched.get("preemptible")),
        queued=bool(node.get("queuedResource")),  # set only on nodes a queued resource made
    )


def gcloud_from_env() -> list[str]:
    return shlex.split(os.environ.get("GCLOUD", "gcloud"))


def run_command(argv: list[str]) -> str:
    """The command one worker runs: the program in the repository, its pid recorded and marked (RLVR_POD_RUN)
    so `stop_command` kills this run only, even if the pid file is stale and the pid was reused."""
    return f'cd {REPO_DIR} && echo $$ > {PID_FILE} && exec env RLVR_POD_RUN="$HOME" {shlex.join(argv)}'


def stop_command(grace_s: int = 30) -> str:
    """Stops the run a worker's pid file names (its process group when it leads one), SIGTERM first and
    SIGKILL after `grace_s` seconds; a no-op where nothing of ours runs."""
    return (
        f'p=$(cat {PID_FILE} 2>/dev/null) && grep -qzx "RLVR_POD_RUN=$HOME" /proc/$p/environ 2>/dev/null || exit 0; '
        't=$p; [ "$(ps -o pgid= -p $p | tr -d " ")" = "$p" ] && t=-$p; kill -TERM -- $t 2>/dev/null; '
        f'for i in $(seq {grace_s}); do kill -0 -- $t 2>/dev/null || exit 0; sleep 1; done; '
        'kill -KILL -- $t 2>/dev/null; true'
    )


class Cloud:
    """One slice, as the gcloud CLI sees it."""

    def __init__(self, spec: SliceSpec, gcloud: list[str] | None = None):
        self.spec = spec
        self.gcloud = list(gcloud) if gcloud else gcloud_from_env()

    def _where(self) -> list[str]:
        where = [f"--zone={self.spec.zone}"] if self.spec.zone else []
        return where + ([f"--project={self.spec.project}"] if self.spec.project else [])

    def _argv(self, group: str, verb: str, *rest: str) -> list[str]:
        return [*self.gcloud, "compute", "tpus", group, verb, self.spec.name, *rest, *self._where()]

    def _call(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(argv, capture_output=True, text=True)
        if check:
            self._check(done)
        return done

    @staticmethod
    def _check(done: subprocess.CompletedProcess) -> None:
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip()
            raise PodError(f"`{shlex.join(done.args)}` exited {done.returncode}: {said}")

    def create(self) -> None:
        s = self.spec
        spot = ["--spot"] if s.spot else []
        if s.queued:
            rest = [f"--node-id={s.name}", f"--accelerator-type={s.accelerator}", f"--runtime-version={s.runtime}"]
            self._call(self._argv("queued-resources", "create", *rest, *spot))
        else:
            rest = [f"--accelerator-type={s.accelerator}", f"--version={s.runtime}"]
            self._call(self._argv("tpu-vm", "create", *rest, *spot))

    def delete(self) -> None:
        """Deletes the queued resource and its node (or the plain VM); a slice that is not there is fine."""
        if self.spec.queued:
            done = self._call(self._argv("queued-resources", "delete", "--force", "--quiet"), check=False)
            if done.returncode == 0 or "NOT_FOUND" not in done.stderr:
                self._check(done)
                return
        done = self._call(self._argv("tpu-vm", "delete", "--quiet"), check=False)
        if done.returncode != 0 and "NOT_FOUND" not in done.stderr:
            self._check(done)

    def describe(self) -> tuple[str, dict]:
        """(state, node description): READY, PREEMPTED, CREATING, ...; GONE when the node does not exist,
        UNKNOWN when describe failed for another reason."""
        done = self._call(self._argv("tpu-vm", "describe", "--format=json"), check=False)
        if done.returncode != 0:
            return (GONE if "NOT_FOUND" in done.stderr else UNKNOWN), {}
        try:
            node = json.loads(done.stdout)
        except json.JSONDecodeError:
            return UNKNOWN, {}
        return str(node.get("state", UNKNOWN)), node

    def state(self) -> str:
        return self.describe()[0]

    def queued_state(self) -> str | None:
        """The queued resource's state (WAITING_FOR_RESOURCES, ACTIVE, FAILED, ...), None without one."""
        done = self._call(self._argv("queued-resources", "describe", "--format=json"), check=False)
        if done.returncode != 0:
            return None
        try:
            return str((json.loads(done.stdout).get("state") or {}).get("state"))
        except (json.JSONDecodeError, AttributeError):
            return None

    def wait_ready(self, timeout_s: float, poll_s: float, on_state=lambda state: None) -> dict:
        """Polls until the node is READY and returns its description; PodError when the queued resource
        FAILED or after `timeout_s`. `on_state` hears every state change."""
        deadline, last = time.monotonic() + timeout_s, None
        while True:
            state, node = self.describe()
            if state != last:
                on_state(state)
                last = state
            if state == READY:
                return node
            if self.spec.queued and state == GONE and self.queued_state() == "FAILED":
                raise PodError(f"queued resource {self.spec.name} FAILED")
            if time.monotonic() > deadline:
                raise PodError(f"slice {self.spec.name} not READY after {timeout_s:.0f} s (state {state})")
            time.sleep(poll_s)

    def ssh(self, worker: int | str, command: str, **popen_kwargs) -> subprocess.Popen:
        """One `tpu-vm ssh --worker=W --command=...` in the foreground: its exit status is the command's."""
        argv = self._argv("tpu-vm", "ssh", f"--worker={worker}", f"--command={command}")
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, **popen_kwargs)

    def ssh_all(self, command: str, timeout_s: float | None = None) -> int:
        proc = self.ssh("all", command)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.terminate()
            return proc.wait()

    def scp_repo(self, repo: str) -> None:
        """Copies the repository to ~/rlvr_jax on every worker."""
        target = f"{self.spec.name}:{REPO_DIR}"
        self._call(
            [
                *self.gcloud,
                "compute",
                "tpus",
                "tpu-vm",
                "scp",
                "--recurse",
                repo,
                target,
                "--worker=all",
                *self._where(),
            ]
        )
