"""rlvr-pod (`python -m rlvr_jax.launch`, launch/tpu_pod.sh): a TPU pod slice from create to delete.
Slice settings come from flags or the environment (TPU_NAME, ZONE, PROJECT, ACCELERATOR, RUNTIME, SPOT,
GCLOUD, POD_INSTALL, POD_REPO, POD_STATE_DIR, MAX_RESTARTS); `run` / `experiment` / `exec` are supervised."""

import argparse
import os
import signal
import subprocess
import sys
import time

from rlvr_jax import cli
from rlvr_jax.launch.cloud import REPO_DIR, Cloud, PodError, SliceSpec
from rlvr_jax.launch.supervisor import SuperviseSettings, Supervisor, log_path, read_state, tail

# Supervised subcommands: everything after the word goes to the program on the workers verbatim.
PROGRAMS = {"run": [".venv/bin/rlvr-train"], "experiment": [".venv/bin/rlvr-experiment"], "exec": []}
COMMANDS = ("create", "setup", *PROGRAMS, "logs", "status", "delete")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# On each worker: uv (from PyPI, with the image's python3) makes .venv with Python 3.11, the tested one,
# fetching it where the image has none (Ubuntu 22.04 ships 3.10), and installs the locked versions.
# --break-system-packages is the retry for images whose pip refuses --user installs (PEP 668).
INSTALL = (
    "{ python3 -m pip install -q --user 'uv>=0.9' || python3 -m pip install -q --user --break-system-packages"
    " 'uv>=0.9'; } && rm -rf .venv && python3 -m uv venv -q --python 3.11 .venv"
    " && python3 -m uv pip install -q --python .venv/bin/python -c requirements.lock -e '.[tpu]'"
    " && (sudo apt-get install -y -qq bubblewrap || true)"
)
TRUE = ("1", "true", "yes", "on")


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlvr-pod",
        description="TPU pod slice lifecycle; run/experiment/exec are supervised (restart on failure).",
        epilog=f"commands: {', '.join(COMMANDS)}. Options go before the command for run/experiment/exec.",
    )
    p.add_argument("--name", default=_env("TPU_NAME"), help="slice name (env TPU_NAME)")
    p.add_argument("--zone", default=_env("ZONE"), help="env ZONE; empty: gcloud's default zone")
    p.add_argument("--project", default=_env("PROJECT"), help="env PROJECT")
    p.add_argument("--accelerator", default=_env("ACCELERATOR", "v5litepod-64"), help="env ACCELERATOR")
    p.add_argument("--runtime", default=_env("RUNTIME", "v2-alpha-tpuv5-lite"), help="env RUNTIME")
    p.add_argument("--spot", action="store_true", default=_env("SPOT").lower() in TRUE, help="env SPOT=1")
    p.add_argument("--direct", action="store_true", help="a plain TPU VM instead of a queued resource")
    p.add_argument("--repo", default=_env("POD_REPO", REPO), help="what setup copies (default: this checkout)")
    p.add_argument("--state-dir", default=_env("POD_STATE_DIR"), help="default ~/.rlvr_pod/NAME")
    p.add_argument("--max-restarts", type=int, default=int(_env("MAX_RESTARTS", "5")))
    p.add_argument("--poll", type=float, default=float(_env("POD_POLL", "10")), help="slice poll, seconds")
    p.add_argument("--stop-grace", type=int, default=30, help="seconds from SIGTERM to SIGKILL on workers")
    p.add_argument("--ready-timeout", type=float, default=7200.0, help="seconds to wait for a READY slice")
    p.add_argument("--no-wait", action="store_true", help="create: return before the slice is READY")
    p.add_argument("-f", "--follow", action="store_true", help="logs: keep printing new lines")
    p.add_argument("-n", "--lines", type=int, default=0, help="logs: last N lines per worker (0: all)")
    return p


def split_argv(argv: list[str]) -> tuple[list[str], str, list[str]]:
    """(launcher options, command, the command's arguments); a supervised program's arguments are kept
    verbatim, other commands' trailing options are launcher options."""
    takes_value = {a for action in build_parser()._actions if action.nargs is None for a in action.option_strings}
    skip = False
    for i, word in enumerate(argv):
        if word in COMMANDS and not skip:
            return argv[:i], word, argv[i + 1 :]
        skip = word in takes_value
    build_parser().parse_args([a for a in argv if a in ("-h", "--help")])  # prints help and exits when asked
    raise SystemExit(f"rlvr-pod: no command among {argv}; one of {', '.join(COMMANDS)}")


def spec_from_args(args) -> SliceSpec:
    if not args.name:
        raise cli.UsageError("set TPU_NAME (or --name) to the slice's name")
    return SliceSpec(args.name, args.zone, args.project, args.accelerator, args.runtime, args.spot, not args.direct)


def _say(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [rlvr-pod] {message}", flush=True)


def cmd_create(cloud: Cloud, args) -> int:
    s = cloud.spec
    _say(
        f"creating {'spot ' if s.spot else ''}{'queued resource' if s.queued else 'TPU VM'} {s.name}: "
        f"{s.accelerator}, runtime {s.runtime}"
    )
    cloud.create()
    if not args.no_wait:
        cloud.wait_ready(args.ready_timeout, args.poll, on_state=lambda st: _say(f"slice {st}"))
    return 0


def setup(cloud: Cloud, repo: str) -> None:
    """Copies this repository to ~/rlvr_jax on every worker (the previous copy kept as ~/rlvr_jax.previous)
    and installs it there (env POD_INSTALL replaces the install command, e.g. `true` in a rehearsal)."""
    move = f"rm -rf {REPO_DIR}.previous; if [ -e {REPO_DIR} ]; then mv {REPO_DIR} {REPO_DIR}.previous; fi"
    if cloud.ssh_all(move) != 0:
        raise PodError(f"moving the old {REPO_DIR} aside failed on some worker")
    cloud.scp_repo(repo)
    install = _env("POD_INSTALL", INSTALL)
    if cloud.ssh_all(f"cd {REPO_DIR} && {install}") != 0:
        raise PodError(f"install failed on some worker: {install}")


def cmd_supervise(cloud: Cloud, args, program: list[str]) -> int:
    if not program:
        raise SystemExit("rlvr-pod exec: name the program to run on every worker (relative to ~/rlvr_jax)")
    settings = SuperviseSettings(args.max_restarts, args.poll, args.stop_grace, args.ready_timeout)
    sup = Supervisor(cloud, lambda: setup(cloud, args.repo), program, args.state_dir, settings)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the workers as on Ctrl-C
    return sup.run()


def print_logs(state_dir: str, workers: int, lines: int, follow: bool, out=sys.stdout) -> None:
    """Every worker's log, each line prefixed [wI]; with `follow`, new lines as they come (Ctrl-C ends)."""
    offsets = []
    for i in range(workers):
        for line in tail(log_path(state_dir, i), lines or None):
            print(f"[w{i}] {line}", file=out)
        path = log_path(state_dir, i)
        offsets.append(os.path.getsize(path) if os.path.exists(path) else 0)
    out.flush()
    try:
        while follow:
            time.sleep(0.5)
            for i in range(workers):
                offsets[i] = _print_new(log_path(state_dir, i), offsets[i], f"[w{i}] ", out)
    except KeyboardInterrupt:
        pass


def _print_new(path: str, offset: int, prefix: str, out) -> int:
    if not os.path.exists(path) or os.path.getsize(path) <= offset:
        return offset
    with open(path, errors="replace") as f:
        f.seek(offset)
        chunk = f.read()
    done = chunk.rsplit("\n", 1)[0] + "\n" if "\n" in chunk else ""
    for line in done.splitlines():
        print(prefix + line, file=out)
    out.flush()
    return offset + len(done.encode())


def _worker_count(state_dir: str) -> int:
    n = 0
    while os.path.exists(log_path(state_dir, n)):
        n += 1
    return n


def cmd_status(cloud: Cloud, state_dir: str) -> int:
    state, node = cloud.describe()
    endpoints = len(node.get("networkEndpoints") or [])
    queued = cloud.queued_state() if cloud.spec.queued else None
    print(
        f"slice {cloud.spec.name}: {state}"
        + (f", {endpoints} workers" if endpoints else "")
        + (f", {node.get('acceleratorType')}" if node.get("acceleratorType") else "")
        + (f" (queued resource {queued})" if queued else "")
    )
    sup = read_state(state_dir)
    if not sup:
        print(f"supervisor: none ran from {state_dir}")
        return 0
    print(
        f"supervisor: {sup.get('status')} (attempt {sup.get('attempt')}/{sup.get('attempts')}, "
        f"pid {sup.get('pid')} on {sup.get('host')})" + (f": {sup['reason']}" if sup.get("reason") else "")
    )
    for line in sup.get("events", [])[-1:]:
        print(f"last event: {line}")
    for i, w in enumerate(sup.get("workers", [])):
        last = tail(log_path(state_dir, i), 1)
        code = "running" if w.get("exit") is None else f"exited {w['exit']}"
        print(f"[w{i}] {code}: {last[0] if last else '(no output)'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts, command, rest = split_argv(argv)  # prints the help and exits when there is no command
    # `rlvr-pod run --help` asks about rlvr-pod; `rlvr-pod exec PROGRAM --help` goes to PROGRAM
    wants_help = command in PROGRAMS and rest[:1] in (["-h"], ["--help"])
    launcher_argv = ["--help"] if wants_help else opts if command in PROGRAMS else opts + rest
    return cli.run_command(
        build_parser(),
        launcher_argv,
        lambda args: _run(args, command, rest),
        errors=(PodError, subprocess.SubprocessError),
    )


def _run(args, command: str, rest: list[str]) -> int:
    cloud = Cloud(spec_from_args(args))
    args.state_dir = args.state_dir or os.path.join(os.path.expanduser("~/.rlvr_pod"), args.name)
    if command == "create":
        return cmd_create(cloud, args)
    if command == "setup":
        setup(cloud, args.repo)
        _say("setup done")
        return 0
    if command in PROGRAMS:
        return cmd_supervise(cloud, args, PROGRAMS[command] + rest)
    if command == "logs":
        print_logs(args.state_dir, _worker_count(args.state_dir), args.lines, args.follow)
        return 0
    if command == "status":
        return cmd_status(cloud, args.state_dir)
    cloud.delete()
    _say(f"deleted {args.name}")
    return 0
