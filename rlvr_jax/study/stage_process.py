"""One stage of the study in a process of its own, as lanes.py starts it:

  python -m rlvr_jax.study.stage_process CORES CONFIG_PICKLE WORKDIR STAGE

The spawn pins it to CORES (comma-separated) as soon as it starts: XLA sizes its CPU thread pool from the
cores a process may use when JAX's backend first starts, seconds later, and threads inherit the pinning. It
rebuilds the study's plan from the pickled experiment config; and runs the named
stage in its directory, which the scheduler has prepared (with RLVR_STAGE_PART=i/n in its environment: part
i of n of a split stage, runner.run_part). Exit status 0: the stage finished (DONE.json written);
INTERRUPTED_EXIT: SIGTERM stopped it, at any point, with its progress saved."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from typing import Callable, Iterator

from rlvr_jax import cli, storage
from rlvr_jax.study import runner, stages
from rlvr_jax.study.runner import PART_ENV


@contextlib.contextmanager
def stage_processes(config, workdir: str) -> Iterator[Callable[[str, list[int], str, str], subprocess.Popen]]:
    """A `spawn` for lanes.run_in_lanes: each stage of this experiment in a child process of this module,
    reading the experiment config pickled for them (removed on exit)."""
    fd, config_path = tempfile.mkstemp(prefix="rlvr_experiment_", suffix=".pkl")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(config, f)

        def spawn(name: str, cores: list[int], log: str, part: str = "") -> subprocess.Popen:
            env = {k: v for k, v in os.environ.items() if k != PART_ENV}
            env.update(PYTHONUNBUFFERED="1", **({PART_ENV: part} if part else {}))
            with open(log, "ab") as out:  # the child holds its own descriptor
                proc = subprocess.Popen(
                    [sys.executable, "-m", __name__, ",".join(map(str, cores)), config_path, workdir, name],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            os.sched_setaffinity(proc.pid, cores)  # long before its JAX backend starts; its threads inherit it
            return proc

        yield spawn
    finally:
        os.remove(config_path)


# The exit status of a child whose stage stopped on SIGTERM with its progress saved (not marked done).
INTERRUPTED_EXIT = 75


class _Stopped(Exception):
    """SIGTERM outside a GRPO loop (which installs its own handler: it saves the step, then returns)."""


def _stop(signum, frame):
    raise _Stopped(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    cores, config_path, workdir, name = sys.argv[1:] if argv is None else argv
    os.sched_setaffinity(0, [int(c) for c in cores.split(",")])  # as the spawn did: also when run by hand
    signal.signal(signal.SIGTERM, _stop)
    try:
        return _run(config_path, workdir, name)
    except _Stopped as e:
        print(f"{name}: stopped ({e})", file=sys.stderr)
        return INTERRUPTED_EXIT


def _run(config_path: str, workdir: str, name: str) -> int:
    cli.setup_logging()
    with open(config_path, "rb") as f:
        config = pickle.load(f)
    (stage,) = [st for st in stages.plan(config, workdir) if st.name == name]
    try:
        with runner.xla_cache(config.xla_cache_dir):
            if os.environ.get(runner.PART_ENV):  # one part of a split stage: its share, no DONE.json
                runner.run_part(stage, storage.join(workdir, name))
            else:
                runner.run_stage(stage, storage.join(workdir, name))
    except runner.StageInterrupted as e:
        print(f"{name}: interrupted: {e}", file=sys.stderr)
        return INTERRUPTED_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
