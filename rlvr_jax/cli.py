"""Shared entry point of the config-driven commands: `--config=configs/x.py[:arg]`,
`--config.a.b=value` overrides (ml-collections), `--workdir`."""

from __future__ import annotations

import argparse
import keyword
import logging
import os
import sys
from typing import Callable

import jax
from absl import flags
from ml_collections import config_flags

from rlvr_jax.config_args import ConfigArgError

log = logging.getLogger(__name__)


def flag_error(error: BaseException) -> str:
    """What was wrong on a command line: the config file's own ConfigArgError when one is behind `error`
    (absl and ml-collections re-raise it with a traceback dump in the message), else absl's message."""
    found, e, seen = None, error, set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ConfigArgError):
            found = e  # keep walking: the innermost one is the config file's own, without the dump
        e = e.__cause__ or e.__context__
    return str(found if found is not None else error)


# Config fields that are gone, and what took their place: an override or a config file naming one is told so.
RETIRED_FIELDS = {
    "rollout.rows_per_chunk": "retired with the static KV cache: the paged rollout engine's work per batch shard "
    "is set by rollout.num_slots and its memory by rollout.num_pages / rollout.memory_fraction",
}


def retired_field(path: str) -> str | None:
    """What replaced a config field path (e.g. 'base.rollout.rows_per_chunk'), if it is a retired one."""
    return next((why for old, why in RETIRED_FIELDS.items() if path == old or path.endswith("." + old)), None)


def unknown_override(argv: list[str], error: BaseException) -> str | None:
    """The message for an override naming a field the config does not have (ml-collections raises a bare
    KeyError / AttributeError with the field's name), or None when no override names it."""
    while error.args and isinstance(error.args[0], BaseException):  # AttributeError(KeyError(...))
        error = error.args[0]
    first, _, hint = (str(error.args[0]) if error.args else "").partition("\n")  # hint: "Did you mean ...?"
    field = first.strip("'\"\\")
    for a in argv:
        name = a.partition("=")[0]
        if not name.startswith("--config."):
            continue
        path = name[len("--config.") :].replace('["', ".").replace('"]', "")
        if field and field in path.split("."):
            why = retired_field(path)
            return (
                f"{name}: the config has no field {path!r}"
                + (f" ({why})" if why else "")
                + (f"; {hint}" if hint else "")
            )
    return None


def quote_keyword_fields(argv: list[str]) -> list[str]:
    """`--config.experts.if.path=X` as `--config.experts["if"].path=X`: ml-collections parses an override's
    field path as a Python expression, where the `if` domain is a keyword."""
    out = []
    for a in argv:
        name, eq, value = a.partition("=")
        parts = name.split(".")
        if name.startswith("--config.") and "[" not in name and any(keyword.iskeyword(p) for p in parts[2:]):
            name = ".".join(parts[:2]) + "".join(f'["{p}"]' if keyword.iskeyword(p) else f".{p}" for p in parts[2:])
        out.append(name + eq + value)
    return out


class UsageError(Exception):
    """A bad command line or input file: the command prints `PROG: error: MESSAGE` and exits 2, no traceback."""


def parse_config(argv: list[str], prog: str):
    """`--config=FILE.py[:ARG]` and its `--config.a.b=value` overrides, parsed by ml-collections; returns
    (the config or None, the arguments left for argparse). Raises UsageError for a bad file, word or field."""
    fv, argv = flags.FlagValues(), quote_keyword_fields(argv)
    # sys_argv: ml-collections finds the overrides there (default sys.argv, not the argv of an in-process call)
    config_flags.DEFINE_config_file(
        "config", None, "config file", flag_values=fv, lock_config=True, sys_argv=[prog] + argv
    )
    fv.set_gnu_getopt(True)  # keep reading past the other flags' values
    try:
        rest = fv([prog] + argv, known_only=True)[1:]
    except flags.Error as e:
        raise UsageError(flag_error(e)) from None
    except (AttributeError, KeyError) as e:
        message = unknown_override(argv, e)
        if message is None:
            raise
        raise UsageError(message) from None
    stray = [a for a in rest if a.startswith("--config.")]
    if stray:
        raise UsageError(f"{stray[0]} without --config=FILE.py[:ARG] before it")
    return fv.config, rest


def add_config_flag(parser: argparse.ArgumentParser, example: str = "configs/default.py:tiny") -> None:
    """List `--config` in a parser's help; parse_config reads it (and its overrides) before argparse does."""
    parser.add_argument(
        "--config",
        metavar="FILE.py[:ARG]",
        help=f"config file with get_config(arg), e.g. {example}; then --config.a.b=VALUE overrides any of its "
        "fields (each config file's docstring shows its run command and the words its ARG takes)",
    )


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("absl", "orbax", "jax._src", "grain", "fsspec", "gcsfs", "google", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_command(
    parser: argparse.ArgumentParser,
    argv,
    run: Callable[..., object],
    *,
    config: bool = False,
    errors: tuple[type[BaseException], ...] = (),
    log: bool = False,
) -> int:
    """Every command's one argument path: for a config-driven command, `--help` first (never failing on a
    config file), then `--config` and its overrides; then the parser's own flags (argparse's help, with
    subcommands); then `run(args)` or,
    with `config`, `run(config_or_None, args)`. A UsageError (or one of `errors`) from any of it prints one
    line `PROG: error: ...` and exits 2. `log`: INFO logging to stderr, for the long-running commands."""
    prog = parser.prog
    argv = list(sys.argv[1:] if argv is None else argv)
    if config and any(a in ("-h", "--help") for a in argv):  # before the config file: help never fails on one
        parser.print_help()
        return 0
    try:
        cfg, rest = parse_config(argv, prog) if config else (None, argv)
        args = parser.parse_args(rest)
        if config and args.config is not None:  # only an abbreviation (--conf=...) gets past ml-collections
            raise UsageError("spell out --config=FILE.py[:ARG]")
        if log:  # the long-running commands log their progress
            setup_logging()
        return (run(cfg, args) if config else run(args)) or 0
    except (UsageError, *errors) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


def run_entry(argv, *, prog: str, description: str, run: Callable[[object, str], None]) -> int:
    """A config-driven command (`--config`, overrides, `--workdir`) that hands the config and the workdir
    to `run(config, workdir)`."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(description or "").strip(),
        epilog="example overrides: --config.train.steps=20 --config.rollout.samples_per_prompt=8",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_flag(parser)
    parser.add_argument("--workdir", help="directory for checkpoints, metrics, TensorBoard logs")

    def run_with_config(config, args) -> None:
        if config is None or not args.workdir:
            raise UsageError("--config and --workdir are required (see --help)")
        run(config, os.path.expanduser(args.workdir))  # a gs:// URL passes as given

    return run_command(parser, argv, run_with_config, config=True, log=True)


def initialize_distributed(section) -> None:
    """`maybe_initialize_distributed` with a run config's `distributed` section."""
    d = section
    maybe_initialize_distributed(
        d.enabled,
        d.coordinator,
        d.num_processes,
        d.process_id,
        heartbeat_timeout_s=d.heartbeat_timeout_s,
        shutdown_timeout_s=d.shutdown_timeout_s,
        initialization_timeout_s=d.initialization_timeout_s,
    )


def maybe_initialize_distributed(
    enabled: str = "auto",
    coordinator: str = "",
    num_processes: int = 0,
    process_id: int = -1,
    *,
    heartbeat_timeout_s: int = 100,
    shutdown_timeout_s: int = 300,
    initialization_timeout_s: int = 300,
) -> None:
    """`jax.distributed.initialize` when asked, or when the environment names a coordinator (TPU pod slices
    are detected by JAX itself; JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID name a CPU/GPU
    job, as launch/fake_gcloud.py sets them). A process whose peer stops answering for `heartbeat_timeout_s`
    exits with an error, so a dead host stops the job instead of hanging it."""
    if jax.distributed.is_initialized():  # a stage of rlvr-experiment, after the experiment did it
        return
    env = os.environ
    if not coordinator and env.get("JAX_COORDINATOR_ADDRESS") and "JAX_NUM_PROCESSES" in env:
        coordinator = env["JAX_COORDINATOR_ADDRESS"]
        num_processes, process_id = int(env["JAX_NUM_PROCESSES"]), int(env.get("JAX_PROCESS_ID", "-1"))
    named = any(k in env for k in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "TPU_WORKER_ID"))
    if enabled == "off" or (enabled == "auto" and not named and not coordinator):
        return
    kwargs = dict(
        heartbeat_timeout_seconds=heartbeat_timeout_s,
        shutdown_timeout_seconds=shutdown_timeout_s,
        initialization_timeout=initialization_timeout_s,
    )
    if coordinator:
        kwargs.update(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    if jax.config.jax_platforms in (None, "", "cpu") and coordinator:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes talk over gloo
    jax.distributed.initialize(**kwargs)
    log.info(
        "jax.distributed: process %d of %d, %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.device_count(),
    )
