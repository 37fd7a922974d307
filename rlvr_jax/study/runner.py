"""A resumable stage runner: each stage writes into its own subdirectory of a workdir and finishes with
DONE.json (outputs, measured wall time over its attempts, device count), so a rerun skips finished stages,
continues resumable ones and redoes those whose inputs ran again. It knows nothing of what the stages do."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Callable

import jax
from jax.experimental.compilation_cache import compilation_cache

from rlvr_jax import storage


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # subdirectory of the workdir
    what: str  # one line of progress output
    fn: Callable[[str], dict]  # stage dir -> JSON-able outputs (recorded in DONE.json)
    resumable: bool  # True: a rerun continues the partial stage; False: its partial directory is wiped
    deps: tuple[str, ...] = ()  # stages whose outputs it reads: if one of them runs, this one is redone
    # True: its body does its work in independent pieces, kept as it goes, and does only its share of them
    # when stage_part() says so (lanes.py runs such parts side by side, then the whole stage once, which
    # finds the pieces done and finishes it). Only a resumable stage can be split.
    splits: bool = False


# The environment variable that gives a child process its part of a split stage: "i/n".
PART_ENV = "RLVR_STAGE_PART"


def stage_part() -> tuple[int, int]:
    """(i, n): this process does part i of n of a split stage's pieces (pieces i, i + n, ...); (0, 1): all."""
    raw = os.environ.get(PART_ENV, "0/1")
    i, n = (int(x) for x in raw.split("/"))
    if not 0 <= i < n:
        raise ValueError(f"{PART_ENV}={raw!r}: want i/n with 0 <= i < n")
    return i, n


class StageInterrupted(RuntimeError):
    """A stage stopped before its end (a GRPO run on SIGTERM: a preempted host, or lanes.py restarting it on
    more cores) with its progress saved: it is not marked done, and a rerun continues it."""


def stage_done(workdir: str, name: str) -> dict | None:
    """A finished stage's DONE.json, or None while it has not finished."""
    path = storage.join(workdir, name, "DONE.json")
    return storage.read_json(path) if storage.exists(path) else None


def provenance() -> dict:
    """The code the numbers came from: commit and whether the work tree had changes (None outside git)."""

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "dirty": None}
    return {"git_commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def write_json(path: str, obj) -> None:
    """Write `obj` on process 0 only, whole or not at all (a marker is either whole or absent)."""
    if storage.is_writer():
        storage.write_json(path, obj, indent=1)


def config_changes(workdir: str, now: dict, *, ignore: Callable[[str], bool]) -> list[str]:
    """The (dotted) fields in which `now` differs from the workdir's config.json, `ignore`d ones aside;
    none when the workdir has no config.json yet."""
    path = storage.join(workdir, "config.json")
    if not storage.exists(path):
        return []
    before = _flat(storage.read_json(path))
    now = _flat(now)
    return sorted(k for k in set(before) | set(now) if not ignore(k) and before.get(k) != now.get(k))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@contextlib.contextmanager
def xla_cache(path: str):
    """The persistent compilation cache on `path` for the duration only (restored afterwards)."""
    if not path:
        yield
        return

    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
        compilation_cache.reset_cache()


def run_stages(stages: list[Stage], workdir: str, *, label: str = "stages", epilogue: str = "") -> None:
    """Run, in order and in this process, every stage that has not finished or whose inputs ran again in this
    call (lanes.run_in_lanes runs them side by side instead). Progress lines start with `[label i/n]`;
    `epilogue` ends the last one."""
    t_all = time.perf_counter()
    ran: set[str] = set()
    for i, st in enumerate(stages, 1):
        tag = f"[{label} {i}/{len(stages)}] {st.name}"
        stale = sorted(set(st.deps) & ran)
        if stage_done(workdir, st.name) and not stale:
            print(f"{tag}: done before, skipped", file=sys.stderr)
            continue
        d = prepare_stage_dir(workdir, st, stale, tag)
        ran.add(st.name)
        wall = run_stage(st, d)
        print(f"{tag}: finished in {wall:.1f} s", file=sys.stderr, flush=True)
    print(f"[{label}] all stages done ({time.perf_counter() - t_all:.1f} s in this call){epilogue}", file=sys.stderr)


def run_part(st: Stage, d: str) -> None:
    """Run one part of a split stage (stage_part() says which) in its prepared directory: one attempt, no
    DONE.json (the whole stage, run after its parts, writes it)."""
    _attempt(st, d)


def run_stage(st: Stage, d: str) -> float:
    """Run one stage's body in its prepared directory `d` and write its DONE.json; returns its wall time
    over all its attempts. Raises what the body raises (StageInterrupted: stopped with its progress saved)."""
    return _finish(st, d, _attempt(st, d))


def prepare_stage_dir(workdir: str, st: Stage, stale: list[str], tag: str) -> str:
    """The stage's directory, emptied first when its inputs changed (`stale`: the inputs that ran again) or it
    cannot resume; prints what runs."""
    d = storage.join(workdir, st.name)
    redo = storage.exists(d) and bool(stale)
    if storage.is_writer() and storage.exists(d) and (stale or not st.resumable):
        # Inputs that changed make every output stale; a partial non-resumable stage starts over.
        storage.rmtree(d)
    storage.makedirs(d)
    storage.sync(f"stage {st.name} directory")  # no host starts writing before process 0 has emptied it
    print(
        f"{tag}: {st.what}" + (f" (redone: {', '.join(stale)} ran again)" if redo else ""),
        file=sys.stderr,
        flush=True,
    )
    return d


def _attempt(st: Stage, d: str) -> dict:
    """Run the stage's body once, appending the attempt (wall time, its start and end as Unix times, load,
    cores, code) to attempts.jsonl."""
    code = provenance()  # the code this attempt runs (the report names every commit used)
    load0, t0, started = os.getloadavg(), time.perf_counter(), time.time()
    try:
        return st.fn(d)
    finally:  # an interrupted attempt still counts toward the stage's cost
        if storage.is_writer():
            attempt = {"wall_s": time.perf_counter() - t0, "loadavg_start": load0, "loadavg_end": os.getloadavg()}
            attempt.update(started_at=started, ended_at=time.time())  # stages in lanes overlap in time
            attempt["cpu_cores"] = len(os.sched_getaffinity(0))  # fewer than the machine's when run in a lane
            storage.append_text(storage.join(d, "attempts.jsonl"), json.dumps({**attempt, "code": code}) + "\n")


def _finish(st: Stage, d: str, outputs: dict) -> float:
    """Write the stage's DONE.json (outputs, wall and device time summed over its attempts); returns the wall."""
    storage.sync(f"stage {st.name} attempts")  # process 0 wrote them
    attempts = [json.loads(x) for x in storage.read_text(storage.join(d, "attempts.jsonl")).splitlines() if x.strip()]
    wall = sum(a["wall_s"] for a in attempts)
    n_dev = jax.device_count()
    write_json(
        os.path.join(d, "DONE.json"),
        {
            "stage": st.name,
            "wall_s": wall,
            "device_count": n_dev,
            "device_seconds": wall * n_dev,
            "device_kind": jax.devices()[0].device_kind,
            "attempts": attempts,
            "outputs": outputs,
            "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
    )
    storage.sync(f"stage {st.name} done")  # what process 0 wrote in the stage is visible to the next one
    return wall
