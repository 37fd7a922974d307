"""One stage of the study in a process of its own, as lanes.py starts it:

  python -m rlvr_jax.study.stage_process CORES CONFIG_PICKLE WORKDIR STAGE

It pins itself to CORES (comma-separated) before JAX starts, since XLA sizes its CPU thread pool from the
cores a process may use; rebuilds the study's plan from the pickled experiment config; and runs the named
stage in its directory, which the scheduler has prepared. Exit status 0: the stage finished (DONE.json
written); lanes.INTERRUPTED_EXIT: SIGTERM stopped it with its progress saved."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from typing import Callable, Iterator


@contextlib.contextmanager
def stage_processes(config, workdir: str) -> Iterator[Callable[[str, list[int], str], subprocess.Popen]]:
    """A `spawn` for lanes.run_in_lanes: each stage of this experiment in a child process of this module,
    reading the experiment config pickled for them (removed on exit)."""
    fd, config_path = tempfile.mkstemp(prefix="rlvr_experiment_", suffix=".pkl")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(config, f)

        def spawn(name: str, cores: list[int], log: str) -> subprocess.Popen:
            with open(log, "ab") as out:  # the child holds its own descriptor
                return subprocess.Popen(
                    [sys.executable, "-m", __name__, ",".join(map(str, cores)), config_path, workdir, name],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )

        yield spawn
    finally:
        os.remove(config_path)


def _interrupt(signum, frame):
    from rlvr_jax.study.runner import StageInterrupted

    raise StageInterrupted(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    cores, config_path, workdir, name = sys.argv[1:] if argv is None else argv
    os.sched_setaffinity(0, [int(c) for c in cores.split(",")])  # before JAX creates its thread pool
    signal.signal(signal.SIGTERM, _interrupt)  # a GRPO loop installs its own: it saves the step, then returns

    from rlvr_jax import cli, storage
    from rlvr_jax.study import lanes, runner, stages

    cli.setup_logging()
    with open(config_path, "rb") as f:
        config = pickle.load(f)
    (stage,) = [st for st in stages.plan(config, workdir) if st.name == name]
    try:
        with runner.xla_cache(config.xla_cache_dir):
            runner.run_stage(stage, storage.join(workdir, name))
    except runner.StageInterrupted as e:
        print(f"{name}: interrupted: {e}", file=sys.stderr)
        return lanes.INTERRUPTED_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
