"""The pod supervisor: one ssh per worker (so it sees each exit code), the slice's state polled beside them;
a failed worker or a lost slice stops every worker, recreates the slice where needed and starts the same
command again (the trainer resumes from its newest checkpoint). Events go to stdout, one timestamped line
each; its state goes to a JSON file that `status` and a restarted supervisor read."""

import dataclasses
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from rlvr_jax.launch.cloud import LOST, READY, UNKNOWN, PodError, run_command, spec_from_node, stop_command

STATE_FILE = "supervisor.json"
EVENTS_FILE = "events.log"
ATTEMPT_MARK = "=== rlvr-pod attempt"  # opens each attempt's output in a worker's log
TICK_S = 0.2  # how often the workers' exit codes are read


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the supervisor does next: wait, finished, restart (same slice) or recreate (slice lost)."""

    action: str
    reason: str = ""
    worker: int | None = None


def decide(codes: Sequence[int | None], slice_state: str) -> Decision:
    """The next step from the workers' exit codes (None: still running) and the slice's state."""
    if codes and all(c == 0 for c in codes):
        return Decision("finished", "all workers exited 0")
    if slice_state in LOST:
        return Decision("recreate", f"slice {slice_state}")
    if slice_state not in (READY, UNKNOWN):
        return Decision("restart", f"slice {slice_state}")
    for i, c in enumerate(codes):
        if c not in (None, 0):
            return Decision("restart", f"worker {i} exited {c}", worker=i)
    return Decision("wait")


@dataclasses.dataclass(frozen=True)
class SuperviseSettings:
    max_restarts: int = 5
    poll_s: float = 10.0  # seconds between slice-state polls
    stop_grace_s: int = 30  # SIGTERM to SIGKILL on the workers
    ready_timeout_s: float = 7200.0  # a queued resource may wait this long for capacity
    tail_lines: int = 10  # a failed worker's last log lines in the give-up message


def log_path(state_dir: str, worker: int) -> str:
    return os.path.join(state_dir, "logs", f"w{worker}.log")


def read_state(state_dir: str) -> dict:
    path = os.path.join(state_dir, STATE_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def tail(path: str, n: int | None) -> list[str]:
    """The last `n` lines of a file (all of them for None), without their newlines; none if it is absent."""
    if not os.path.exists(path):
        return []
    with open(path, errors="replace") as f:
        lines = [line.rstrip("\n") for line in f]
    return lines if n is None else lines[len(lines) - n :] if n > 0 else []


def last_attempt_lines(path: str, n: int) -> list[str]:
    """The last `n` lines a worker printed in the newest attempt (after its `=== rlvr-pod attempt` line)."""
    lines = tail(path, None)
    starts = [i for i, line in enumerate(lines) if line.startswith(ATTEMPT_MARK)]
    return lines[starts[-1] + 1 if starts else 0 :][-n:]


def _alive_supervisor(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return b"rlvr_jax.launch" in cmd or b"rlvr-pod" in cmd


class Supervisor:
    """Runs `argv` (relative to ~/rlvr_jax on each worker) on every worker of `cloud`'s slice until all
    exit 0 or `max_restarts` restarts are spent. `setup` installs the repository on a fresh slice."""

    def __init__(
        self,
        cloud,
        setup: Callable[[], None],
        argv: list[str],
        state_dir: str,
        settings: SuperviseSettings = SuperviseSettings(),
        out=None,
    ):
        self.cloud, self.setup, self.argv, self.state_dir = cloud, setup, list(argv), state_dir
        self.settings = settings
        self.out = out or sys.stdout
        os.makedirs(os.path.join(state_dir, "logs"), exist_ok=True)
        self.state = {
            "name": cloud.spec.name,
            "argv": self.argv,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "status": "starting",
            "attempt": 0,
            "attempts": settings.max_restarts + 1,
            "slice": None,
            "workers": [],
            "events": [],
        }

    # ---- events and state
    def event(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} [rlvr-pod {self.cloud.spec.name}] {message}"
        print(line, file=self.out, flush=True)
        with open(os.path.join(self.state_dir, EVENTS_FILE), "a") as f:
            f.write(line + "\n")
        self.state["events"] = (self.state["events"] + [line])[-50:]
        self._save()

    def _save(self, **changes) -> None:
        self.state.update(changes, updated=time.time())
        path = os.path.join(self.state_dir, STATE_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(self.state, f, indent=1)
        os.replace(path + ".tmp", path)

    def _claim(self) -> None:
        old = read_state(self.state_dir)
        pid = old.get("pid")
        if pid and pid != os.getpid() and old.get("host") == socket.gethostname() and _alive_supervisor(pid):
            if old.get("status") not in ("finished", "gave up", "interrupted"):
                raise PodError(
                    f"supervisor pid {pid} still runs {old.get('name')} ({self.state_dir}); "
                    "stop it first or pass another --state-dir"
                )
        if old.get("status") in ("running", "restarting", "starting"):
            self.event(f"previous supervisor (pid {pid}) left the run at attempt {old.get('attempt')}: starting again")

    # ---- the loop
    def run(self) -> int:
        """0 when every worker exited 0; 1 after giving up; 130 when interrupted (workers stopped)."""
        self._claim()
        self.event(f"supervising: {shlex.join(self.argv)}")
        total = self.settings.max_restarts + 1
        try:
            self._stop_leftovers()
            attempt = 1
            while True:
                decision = self._attempt(attempt)
                if decision.action == "finished":
                    self._save(status="finished")
                    self.event("finished")
                    return 0
                if attempt >= total:
                    return self._give_up(decision)
                attempt += 1
                self._save(status="restarting")
                self.event(f"restarting (attempt {attempt}/{total})")
        except KeyboardInterrupt:
            self.event("interrupted: stopping workers")
            self._remote_stop()
            self._save(status="interrupted")
            return 130

    def _attempt(self, attempt: int) -> Decision:
        self._save(attempt=attempt, status="running")
        try:
            node = self._ensure_ready()
        except PodError as e:
            self.event(f"slice not ready: {e}")
            time.sleep(self.settings.poll_s)
            return Decision("restart", str(e))
        procs = self._start(attempt, len(node.get("networkEndpoints") or [None]))
        decision = self._watch(procs)
        if decision.action != "finished":
            self._stop(procs, remote=decision.action != "recreate")
        return decision

    def _give_up(self, decision: Decision) -> int:
        self._save(status="gave up", reason=decision.reason)
        n = self.settings.max_restarts
        self.event(f"giving up after {n} restart{'' if n == 1 else 's'}: {decision.reason}")
        if decision.worker is not None:
            for line in last_attempt_lines(log_path(self.state_dir, decision.worker), self.settings.tail_lines):
                print(f"  [w{decision.worker}] {line}", file=self.out)
            self.out.flush()
        return 1

    # ---- the slice
    def _ensure_ready(self) -> dict:
        """The READY slice's description, after recreating it (and running setup) when it is lost."""
        deadline, last = time.monotonic() + self.settings.ready_timeout_s, READY
        state, node = self.cloud.describe()
        while state != READY:
            if state in LOST:
                return self._recreate(state)
            if time.monotonic() > deadline:
                raise PodError(f"slice not READY after {self.settings.ready_timeout_s:.0f} s (state {state})")
            if state != last:
                self.event(f"waiting for the slice (state {state})")
                last = state
            time.sleep(self.settings.poll_s)
            state, node = self.cloud.describe()
        self._remember(state, node)
        return node

    def _recreate(self, state: str) -> dict:
        s = self.cloud.spec
        kind = ("spot " if s.spot else "") + ("queued resource" if s.queued else "TPU VM")
        self.event(f"recreating slice (was {state}): {kind} {s.accelerator}")
        self.cloud.delete()
        self.cloud.create()
        node = self.cloud.wait_ready(
            self.settings.ready_timeout_s, self.settings.poll_s, on_state=lambda st: self.event(f"slice {st}")
        )
        self._remember(READY, node)
        self.event("setup: copying the repository and installing")
        self.setup()
        self.event("setup done")
        return node

    def _remember(self, state: str, node: dict) -> None:
        self.cloud.spec = spec_from_node(node, self.cloud.spec)
        self._save(slice=state)

    # ---- the workers
    def _start(self, attempt: int, n: int) -> list[subprocess.Popen]:
        procs = []
        for i in range(n):
            with open(log_path(self.state_dir, i), "a") as log:
                log.write(f"{ATTEMPT_MARK} {attempt} {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
                log.flush()
                procs.append(self.cloud.ssh(i, run_command(self.argv), stdout=log, stderr=subprocess.STDOUT))
        self._save(workers=[{"exit": None, "log": log_path(self.state_dir, i)} for i in range(n)])
        self.event(f"workers started (attempt {attempt}): {n} workers")
        return procs

    def _watch(self, procs: list[subprocess.Popen]) -> Decision:
        codes: list[int | None] = [None] * len(procs)
        state, next_poll = READY, time.monotonic() + self.settings.poll_s
        while True:
            exited = self._reap(procs, codes)
            if exited or time.monotonic() >= next_poll:
                new = self.cloud.state()
                if new != state and new != UNKNOWN:
                    self.event(f"slice {new}")
                    self._save(slice=new)
                    state = new
                next_poll = time.monotonic() + self.settings.poll_s
            decision = decide(codes, state)
            if decision.action != "wait":
                return decision
            time.sleep(TICK_S)

    def _reap(self, procs: list[subprocess.Popen], codes: list[int | None]) -> bool:
        exited = False
        for i, proc in enumerate(procs):
            if codes[i] is None and (code := proc.poll()) is not None:
                codes[i] = code if code >= 0 else 128 - code  # a signalled ssh reads as its shell would say
                self.state["workers"][i]["exit"] = codes[i]
                self.event(f"worker {i} exited {codes[i]}")
                exited = True
        return exited

    def _stop_leftovers(self) -> None:
        """A supervisor killed earlier may have left its run going: stop it before starting again."""
        if self.cloud.state() == READY:
            self._remote_stop()

    def _remote_stop(self) -> None:
        self.cloud.ssh_all(stop_command(self.settings.stop_grace_s), timeout_s=self.settings.stop_grace_s + 120)

    def _stop(self, procs: list[subprocess.Popen], remote: bool) -> None:
        """Stops every worker (remote kill, then the local ssh clients)."""
        running = [p for p in procs if p.poll() is None]
        self.event(f"stopping workers ({len(running)} still running)")
        if remote:  # even with every ssh gone: a dropped connection can leave its command running
            self._remote_stop()
        for p in running:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
