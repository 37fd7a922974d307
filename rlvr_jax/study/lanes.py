"""Stages side by side on one CPU host (`lanes` > 1): each stage runs in a child process pinned to its share
of the cores as soon as the stages it reads have finished, in the plan's order.

Why: a training process on a small CPU keeps its cores busy only while a device program runs; its Python side
(the engine's host loop, scoring, metrics) runs on one core between them. On the 2-core CPU one GRPO run
keeps about 1.4 cores busy, and two runs pinned to one core each finish together in 1.45x the time of one
run, not 2x (docs/MEASUREMENTS.md, "Stages in lanes").

A stage that runs alone on part of the cores while no other stage can start is stopped (SIGTERM: an RL stage
saves its step's checkpoint and exits) and restarted on every core, where it resumes; a stage that starts
alone gets every core. Each child writes its output to log.txt in its stage directory (uploaded there at the
end when the workdir is remote); this process prints what starts and finishes and, every minute, where the
running stages are. The runner's rules hold: a stage runs when it has not finished or one of its deps ran
in this call, and its DONE.json is written by its own process (runner.run_stage)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable

from rlvr_jax import storage
from rlvr_jax.study.runner import Stage, StageInterrupted, prepare_stage_dir, stage_done
from rlvr_jax.study.stage_process import INTERRUPTED_EXIT  # the children's protocol

# (stage name, cores to pin it to, log path, part: "i/n" of a split stage or "") -> the running child process
Spawn = Callable[[str, list[int], str, str], subprocess.Popen]


class LaneError(RuntimeError):
    """A stage's process failed; the message names it, its exit status and the end of its log."""


@dataclasses.dataclass
class _Child:
    stage: Stage
    tag: str
    stage_dir: str
    proc: subprocess.Popen
    cores: list[int]
    log: str
    t0: float
    widening: bool = False  # stopped by us, to restart on every core
    part: str = ""  # "i/n": part i of n of a split stage
    log_name: str = "log.txt"  # its name in the stage directory


def run_in_lanes(
    stages: list[Stage],
    workdir: str,
    *,
    lanes: int,
    spawn: Spawn,
    label: str = "stages",
    epilogue: str = "",
    poll_s: float = 0.5,
    progress_s: float = 60.0,
) -> None:
    """Run the stages that `runner.run_stages` would run, up to `lanes` at once, each in a process from `spawn`."""
    cores = sorted(os.sched_getaffinity(0))
    lanes = max(1, min(lanes, len(cores)))
    t_all = time.perf_counter()
    s = _Schedule(stages, workdir, cores, len(cores) // lanes, label, tempfile.mkdtemp(prefix="rlvr_lanes_"))
    try:
        next_progress = time.monotonic() + progress_s
        while s.pending or s.running:
            s.start_ready(spawn)
            s.widen_lone_child()
            if not s.running and s.pending:
                raise LaneError(
                    f"no stage can start: {', '.join(st.name for st in s.pending)} wait for stages that never ran"
                )
            time.sleep(poll_s)
            s.reap()
            if time.monotonic() >= next_progress:
                s.print_progress()
                next_progress = time.monotonic() + progress_s
    finally:
        s.stop_all()
        shutil.rmtree(s.tmp, ignore_errors=True)
    print(f"[{label}] all stages done ({time.perf_counter() - t_all:.1f} s in this call){epilogue}", file=sys.stderr)


class _Schedule:
    """The lanes' state: stages not yet run (in plan order), the running children, what finished and ran."""

    def __init__(self, stages: list[Stage], workdir: str, cores: list[int], share: int, label: str, tmp: str):
        self.workdir, self.cores, self.share, self.tmp = workdir, cores, share, tmp
        self.tags = {st.name: f"[{label} {i}/{len(stages)}] {st.name}" for i, st in enumerate(stages, 1)}
        self.pending = list(stages)
        self.running: dict[str, _Child] = {}
        self.finished: set[str] = set()
        self.ran: set[str] = set()
        self.restart: set[str] = set()  # stopped to widen: resume without emptying the directory

    def _ready(self) -> list[tuple[Stage, list[str]]]:
        """Pending stages whose deps have all finished, with the deps that ran again; finished stages that
        need not run are skipped here (which can make others ready: repeated until none is)."""
        while True:
            ready, skipped = [], False
            for st in list(self.pending):
                if any(d in self.tags and d not in self.finished for d in st.deps):
                    continue
                stale = sorted(set(st.deps) & self.ran)
                if st.name not in self.restart and not stale and stage_done(self.workdir, st.name):
                    print(f"{self.tags[st.name]}: done before, skipped", file=sys.stderr)
                    self.pending.remove(st)
                    self.finished.add(st.name)
                    skipped = True
                    continue
                ready.append((st, stale))
            if not skipped:
                return ready

    def _free(self) -> list[int]:
        used = {c for ch in self.running.values() for c in ch.cores}
        return [c for c in self.cores if c not in used]

    def start_ready(self, spawn: Spawn) -> None:
        """Start ready stages in plan order while a lane is free: one lane's cores each, or every free core
        for a stage that would otherwise run alone; a splittable stage alone is split over every lane."""
        ready = self._ready()
        for st, stale in ready:
            free = self._free()
            if len(free) < self.share:
                return
            alone = not self.running and len(ready) == 1
            resume = st.name in self.restart
            if resume:
                self.restart.discard(st.name)
                d = storage.join(self.workdir, st.name)
            else:
                d = prepare_stage_dir(self.workdir, st, stale, self.tags[st.name])
                self.ran.add(st.name)
            self.pending.remove(st)
            n = len(free) // self.share
            if alone and st.splits and st.resumable and not resume and n > 1:
                for i in range(n):  # its parts side by side, then (reap) the whole stage once more
                    self._spawn(spawn, st, d, free[i * self.share : (i + 1) * self.share], "runs", f"{i}/{n}")
            else:
                self._spawn(spawn, st, d, free if alone else free[: self.share], "resumes" if resume else "runs")

    def _spawn(self, spawn: Spawn, st: Stage, d: str, cores: list[int], how: str, part: str = "") -> None:
        i, n = (int(x) for x in part.split("/")) if part else (0, 1)
        key, tag, log_name = st.name, self.tags[st.name], "log.txt"
        if part:
            key, tag, log_name = (
                f"{st.name} part {i + 1}/{n}",
                f"{tag} (part {i + 1} of {n})",
                f"log_part{i + 1}of{n}.txt",
            )
        log = storage.join(d, log_name) if not storage.is_remote(d) else os.path.join(self.tmp, f"{st.name}_{log_name}")
        print(f"{tag}: {how} on {_cores(cores)}; log: {log}", file=sys.stderr, flush=True)
        proc = spawn(st.name, cores, log, part)
        self.running[key] = _Child(st, tag, d, proc, cores, log, time.perf_counter(), part=part, log_name=log_name)

    def widen_lone_child(self) -> None:
        """A resumable stage running alone on part of the cores while nothing else can start: stop it (it
        saves its progress), to restart on every core."""
        if len(self.running) != 1 or self._ready():
            return
        (ch,) = self.running.values()
        if ch.widening or ch.part or not ch.stage.resumable or len(ch.cores) == len(self.cores):
            return
        print(f"{ch.tag}: alone on {_cores(ch.cores)}; stopping it to resume on all {len(self.cores)}", file=sys.stderr)
        ch.widening = True
        ch.proc.send_signal(signal.SIGTERM)

    def reap(self) -> None:
        """Collect the children that exited: finished, a part done (the whole stage follows its last part),
        stopped to widen (queued to resume), or failed."""
        for key, ch in list(self.running.items()):
            rc = ch.proc.poll()
            if rc is None:
                continue
            del self.running[key]
            name = ch.stage.name
            if storage.is_remote(ch.stage_dir) and os.path.exists(ch.log):  # written here, kept there
                storage.write_text(storage.join(ch.stage_dir, ch.log_name), _read(ch.log))
            done = stage_done(self.workdir, name)
            if rc == 0 and ch.part:
                print(f"{ch.tag}: done in {time.perf_counter() - ch.t0:.1f} s", file=sys.stderr, flush=True)
                if not any(c.stage.name == name for c in self.running.values()):
                    self.restart.add(name)
                    self.pending.insert(0, ch.stage)
            elif rc == 0 and done:
                self.finished.add(name)
                print(f"{ch.tag}: finished in {done['wall_s']:.1f} s", file=sys.stderr, flush=True)
            elif ch.widening and rc in (INTERRUPTED_EXIT, -signal.SIGTERM):
                self.restart.add(name)
                self.pending.insert(0, ch.stage)
            elif rc == INTERRUPTED_EXIT:  # stopped from outside (a preempted host): rerun to resume
                raise StageInterrupted(f"{name} was stopped with its progress saved; the same command resumes it")
            else:
                raise LaneError(
                    f"stage {ch.tag.split('] ', 1)[-1]} failed (exit status {rc}) after "
                    f"{time.perf_counter() - ch.t0:.0f} s; the end of its log ({ch.log}):\n{_tail(ch.log, 40)}"
                )

    def print_progress(self) -> None:
        for ch in self.running.values():
            last = _tail(ch.log, 1, chars=4096).strip()
            who = ch.tag.split("] ", 1)[-1]  # the stage's name, and its part
            print(
                f"  {who} ({time.perf_counter() - ch.t0:.0f} s, {_cores(ch.cores)}): {last[-120:]}",
                file=sys.stderr,
                flush=True,
            )

    def stop_all(self, grace_s: float = 60.0) -> None:
        """SIGTERM every running child (an RL stage saves its step), then kill those still up after `grace_s`."""
        for ch in self.running.values():
            if ch.proc.poll() is None:
                ch.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for ch in self.running.values():
            try:
                ch.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                ch.proc.kill()
                ch.proc.wait()
        self.running.clear()


def _cores(cores: list[int]) -> str:
    return f"core{'s' if len(cores) > 1 else ''} {','.join(map(str, cores))}"


def _read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def _tail(path: str, lines: int, chars: int = 65536) -> str:
    """The last `lines` lines of a log (a progress bar's last redraw counts as a line)."""
    if not os.path.exists(path):
        return "(no log)"
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - chars))
        text = f.read().decode(errors="replace")
    parts = [p for p in text.replace("\r", "\n").split("\n") if p.strip()]
    return "\n".join(parts[-lines:])
