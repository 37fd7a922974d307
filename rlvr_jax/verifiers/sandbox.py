"""Runs one untrusted Python program in a bubblewrap sandbox with rlimits, a wall deadline and capped
output reading. Hand-written on `bwrap` + rlimits (no container daemon, no cgroup setup, no root
inside) because that is what a TPU VM or laptop has; see `bwrap_argv` for what the child sees."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings

import psutil

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "bubblewrap (`bwrap`) is not installed, and code rewards run untrusted programs only inside it.\n"
    "Install it:  sudo apt-get install bubblewrap   (Debian/Ubuntu)\n"
    "             sudo dnf install bubblewrap       (Fedora/RHEL)\n"
    "             or run scripts/setup.sh, which does this when it can.\n"
    "Only for trusted data you may run programs unsandboxed with VerifierConfig(allow_unsandboxed=True)."
)


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot run here; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Limits:
    time_s: float  # CPU seconds (RLIMIT_CPU, rounded up)
    wall_s: float  # wall-clock deadline, after which the sandbox is killed
    memory_mb: int  # address space (RLIMIT_AS)
    output_bytes: int  # stdout bytes read before the run is killed
    tmp_mb: int = 64  # size of the private tmpfs /tmp (and /dev/shm)
    fsize_mb: int = 16  # largest file the program may write (RLIMIT_FSIZE)
    nproc: int = 32  # processes+threads of the sandbox uid (RLIMIT_NPROC)
    nofile: int = 64  # open files (RLIMIT_NOFILE)


@dataclasses.dataclass
class RunResult:
    stdout: bytes
    stderr_tail: bytes
    returncode: int | None
    status: str  # "exited" | "timeout" | "output_limit" | "sandbox_error" (bwrap setup failed)
    wall_s: float


# Identity of this process's sandbox slot: uids are unique per (pool owner pid, worker slot) so two
# pools, or a pool and an in-process caller, never share a process budget or reap each other.
# In-process callers use the last slot; pool workers use 0..MAX_SLOTS-1.
MAX_SLOTS = 63
_OWNER_PID: int | None = None  # None: this process (looked up per call: forks change it)
_SLOT = MAX_SLOTS
_STDERR_TAIL = 2048
_CHECKED: set[tuple] = set()
_WARNED = False


def set_identity(owner_pid: int, slot: int) -> None:
    """Called by a pool worker: its sandboxes run as the uid of (owner_pid, slot), and the worker
    adopts and reaps whatever its sandboxes orphan (see `_adopt_orphans`)."""
    global _OWNER_PID, _SLOT
    _OWNER_PID, _SLOT = owner_pid, slot
    _adopt_orphans()


_REAPER = False  # this process is a child subreaper whose only children are its sandboxes


def _adopt_orphans() -> None:
    """A sandbox process whose parent dies first is orphaned, and an orphan is reaped by the host's
    init, which in many containers never reaps: each one would stay a zombie for the life of the
    machine. `kill` avoids orphans, but races remain (a pid 1 forked after `kill` listed bwrap's
    children). A pool worker therefore makes itself a child subreaper (PR_SET_CHILD_SUBREAPER):
    orphans come back to it, and `_reap_children` collects them after every run."""
    global _REAPER
    try:
        _REAPER = ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        _REAPER = False


def _reap_children(wait_s: float) -> None:
    """In a reaper worker (no children but sandboxes): collect every exited child, waiting up to
    wait_s for those still being torn down; what is left is collected after the next run."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no children left
        if pid == 0:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.005)


def sandbox_uid(uid_base: int, owner_pid: int | None = None, slot: int | None = None) -> int | None:
    """The unprivileged uid for a slot when we are root (rlimits on processes do not bind root),
    else None: an unprivileged caller runs sandboxes as itself."""
    if os.geteuid() != 0:
        return None
    owner = owner_pid if owner_pid is not None else (_OWNER_PID or os.getpid())
    return uid_base + (owner % (1 << 20)) * 64 + (_SLOT if slot is None else slot) % 64


def reap_uid(uid: int | None) -> None:
    """SIGKILL every process of a dedicated sandbox uid (after a worker was killed mid-run).
    Never for root or our own uid: kill(-1) from those would hit unrelated processes."""
    if uid is None or uid == 0 or uid == os.getuid() or uid < 65536:
        return
    # The shell's builtin kill(-1) signals every process of this uid except the shell itself.
    subprocess.run(
        ["/bin/sh", "-c", "kill -KILL -1 2>/dev/null; true"],
        user=uid,
        group=uid,
        extra_groups=[],
        timeout=10,
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def sandbox_python(configured: str = "") -> str:
    """Interpreter for programs: configured, else the system python3 (world-readable, outside any
    home directory), else the base interpreter behind the running one."""
    if configured:
        return configured
    if os.path.exists("/usr/bin/python3"):
        return "/usr/bin/python3"
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def bwrap_argv(
    bwrap: str, python: str, tmp_mb: int, uid: int | None, files: dict, script: str, args, *, files_at="/sandbox"
):
    """No network, IPC, UTS or host pids (own namespaces); read-only /usr (+ the interpreter's
    prefix); empty /tmp and /dev/shm of tmp_mb each; no /etc, no home; dies with its parent. The
    program itself is pid 1 of its namespace (--as-pid-1), so bwrap waits for it directly and
    never leaves a reaper process of its own behind; when it exits, everything it forked dies.
    `files` (name -> fd) appear read-only in `files_at`; elsewhere than /sandbox (a warm sandbox's
    server), /sandbox is an empty tmpfs of its own."""
    argv = [bwrap, "--unshare-all", "--as-pid-1", "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    real = os.path.realpath(python)
    if not real.startswith("/usr/"):
        prefix = os.path.dirname(os.path.dirname(real))
        argv += ["--ro-bind", prefix, prefix]
    argv += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(tmp_mb << 20),
        "--tmpfs",
        "/dev/shm",
        "--size",
        str(tmp_mb << 20),
        "--tmpfs",
        "/tmp",
    ]
    if uid is not None:
        argv += ["--uid", str(uid), "--gid", str(uid)]
    if files_at != "/sandbox":
        argv += ["--size", str(tmp_mb << 20), "--tmpfs", "/sandbox"]
    for name, fd in files.items():
        argv += ["--ro-bind-data", str(fd), f"{files_at}/{name}"]
    argv += [
        "--chdir",
        "/tmp",
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
        "--setenv",
        "HOME",
        "/tmp",
        "--setenv",
        "LANG",
        "C.UTF-8",
        "--setenv",
        "PYTHONIOENCODING",
        "utf-8",
        "--setenv",
        "PYTHONDONTWRITEBYTECODE",
        "1",
        python,
        "-I",
        "-S",
        f"{files_at}/{script}",
        *args,
    ]
    return argv


def rlimits(limits: Limits) -> dict[str, tuple[int, int]]:
    """The rlimits a program runs under, by `resource` name: CPU seconds, address space, file size, open
    files, processes of its uid (on top of what this uid already runs, without root) and no core files."""
    cpu = max(1, int(limits.time_s + 0.999))
    mem = int(limits.memory_mb) << 20
    nproc = limits.nproc if os.geteuid() == 0 else _own_task_count(limits.nproc) + limits.nproc
    return {
        "RLIMIT_CPU": (cpu, cpu + 1),
        "RLIMIT_AS": (mem, mem),
        "RLIMIT_FSIZE": (limits.fsize_mb << 20,) * 2,
        "RLIMIT_NOFILE": (limits.nofile,) * 2,
        "RLIMIT_NPROC": (nproc, nproc),
        "RLIMIT_CORE": (0, 0),
    }


def _preexec(limits: Limits):
    values = [(getattr(resource, name), value) for name, value in rlimits(limits).items()]

    def apply():  # runs in the forked child after the uid change, before exec (single-threaded worker)
        for res, val in values:
            resource.setrlimit(res, val)

    return apply


_TASKS = None


def _own_task_count(budget: int) -> int:
    # Without root the sandbox shares our uid, and RLIMIT_NPROC counts every task of that uid:
    # the budget is granted on top of what we already run (counted once per process).
    global _TASKS
    if _TASKS is None:
        me = os.getuid()
        _TASKS = sum(
            p.info["num_threads"] or 1
            for p in psutil.process_iter(["uids", "num_threads"])
            if p.info["uids"] and p.info["uids"].real == me
        )
        log.warning(
            "sandbox runs as your own uid (not root): its process limit is %d on top of the %d tasks you already run",
            budget,
            _TASKS,
        )
    return _TASKS


def _warn_unsandboxed():
    global _WARNED
    if not _WARNED:
        _WARNED = True
        msg = (
            "!!! allow_unsandboxed=True: model-written programs run WITHOUT a sandbox, with full "
            "access to this machine's files and network. Use only for trusted data. !!!"
        )
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def exec_fork_without_jax_warning():
    """JAX warns on every fork of a process that imported it; a subprocess's child only sets limits
    and execs, touching no JAX state, so that warning would only be noise in the trainer's output."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        yield


def check_available(allow_unsandboxed: bool = False, python: str = "", uid_base: int = 2_000_000_000) -> None:
    """Raise SandboxUnavailable (with install instructions) unless programs can run sandboxed, or
    the caller opted in to running them unsandboxed. Self-tests bwrap once per process and uid."""
    bwrap = bwrap_path()
    if bwrap is None:
        if allow_unsandboxed:
            _warn_unsandboxed()
            return
        raise SandboxUnavailable(INSTALL_HINT)
    key = (bwrap, python, sandbox_uid(uid_base))
    if key in _CHECKED:
        return
    lim = Limits(time_s=5, wall_s=10, memory_mb=512, output_bytes=1 << 16)
    res = run({"main.py": b"print(6 * 7)"}, "main.py", b"", lim, python=python, uid_base=uid_base)
    if res.stdout.strip() != b"42":
        raise SandboxUnavailable(
            f"bubblewrap is installed but a sandboxed `{sandbox_python(python)} -c 'print(42)'` failed "
            f"(status {res.status}, exit {res.returncode}): {res.stderr_tail.decode(errors='replace')}\n"
            "Check that unprivileged user namespaces are enabled (sysctl kernel.unprivileged_userns_clone=1 "
            "or user.max_user_namespaces > 0) and that VerifierConfig.sandbox_python is readable by "
            "every user (an interpreter under /root is not)."
        )
    _CHECKED.add(key)


def run(
    files: dict[str, bytes],
    script: str,
    stdin: bytes,
    limits: Limits,
    *,
    args=(),
    python: str = "",
    uid_base: int = 2_000_000_000,
    unsandboxed: bool = False,
) -> RunResult:
    """Run `python /sandbox/<script> *args` with `files` placed read-only in /sandbox, feeding stdin;
    never raises on anything the program does."""
    py = sandbox_python(python)
    uid = sandbox_uid(uid_base)
    ids = dict(user=uid, group=uid, extra_groups=[]) if uid is not None else {}
    fds, tmpdir = {}, None
    try:
        if unsandboxed:
            _warn_unsandboxed()
            tmpdir = tempfile.mkdtemp(prefix="rlvr_unsandboxed_")
            os.chmod(tmpdir, 0o755)
            for name, data in files.items():
                with open(os.path.join(tmpdir, name), "wb") as f:
                    f.write(data)
            argv, cwd = [py, "-I", "-S", os.path.join(tmpdir, script), *args], tmpdir
        else:
            bwrap = bwrap_path()
            if bwrap is None:
                raise SandboxUnavailable(INSTALL_HINT)
            for name, data in files.items():  # memfds: no host file to clean up, any size
                fd = os.memfd_create(f"rlvr_{name}")
                os.write(fd, data)
                os.lseek(fd, 0, os.SEEK_SET)
                fds[name] = fd
            argv, cwd = bwrap_argv(bwrap, py, limits.tmp_mb, uid, fds, script, args), "/"
        for attempt in range(_SETUP_RETRIES + 1):
            for fd in fds.values():  # the program files are read again on a retry
                os.lseek(fd, 0, os.SEEK_SET)
            t0 = time.monotonic()
            with exec_fork_without_jax_warning():
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=cwd,
                    pass_fds=tuple(fds.values()),
                    preexec_fn=_preexec(limits),
                    start_new_session=True,
                    **ids,
                )
            result = _communicate(proc, stdin, t0, limits, sandboxed=not unsandboxed)
            if unsandboxed or not _setup_failed(result):
                return result
            # bwrap could not build the sandbox (typically "Can't fork": the previous sandbox of this
            # uid is still being torn down and counts against RLIMIT_NPROC). Not the program's fault.
            time.sleep(0.05 * 2**attempt)
        result.status = "sandbox_error"
        return result
    finally:
        for fd in fds.values():
            os.close(fd)
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
        if _REAPER:
            _reap_children(wait_s=2.0)


_SETUP_RETRIES = 5


def _setup_failed(result: RunResult) -> bool:
    """bwrap itself failed before the program ran: it prints `bwrap: ...` and exits 1."""
    return result.returncode == 1 and not result.stdout and result.stderr_tail.startswith(b"bwrap: ")


def kill(proc: subprocess.Popen, sandboxed: bool) -> None:
    """Ends a sandbox (or an unsandboxed program) and everything it started."""
    # In bwrap the sandbox's pid 1 goes first: its whole pid namespace dies with it, and bwrap
    # reaps it and exits. Killing bwrap first would orphan pid 1 (it dies by --die-with-parent) to
    # the host's init, which in many containers never reaps. Then the session kill reaches an
    # unsandboxed program's children, and bwrap itself if it is still there.
    if sandboxed:
        try:
            for child in psutil.Process(proc.pid).children():
                child.kill()
            proc.wait(timeout=1.0)
        except (psutil.Error, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.kill()


def _communicate(proc: subprocess.Popen, stdin: bytes, t0: float, limits: Limits, sandboxed: bool) -> RunResult:
    """Feed stdin and read stdout/stderr until exit, the wall deadline or the output cap."""
    deadline = t0 + limits.wall_s
    out, err = bytearray(), bytearray()
    status = "exited"
    sel = selectors.DefaultSelector()
    for f in (proc.stdout, proc.stderr):
        os.set_blocking(f.fileno(), False)
        sel.register(f, selectors.EVENT_READ)
    pending = memoryview(stdin)
    if pending:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    exited_at = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                status = "timeout"
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > 0.2:
                break  # exited; whatever still holds the pipes is being torn down with its namespace
            for key, _ in sel.select(timeout=min(deadline - now, 0.05 if exited_at else 0.5)):
                f = key.fileobj
                if f is proc.stdin:
                    try:
                        n = os.write(f.fileno(), pending[:65536])
                        pending = pending[n:]
                    except (BrokenPipeError, BlockingIOError, OSError):
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(f)
                        f.close()
                    continue
                try:
                    chunk = os.read(f.fileno(), 1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(f)
                elif f is proc.stdout:
                    out += chunk
                    if len(out) > limits.output_bytes:
                        status = "output_limit"
                        break
                else:
                    err += chunk
                    del err[:-_STDERR_TAIL]
            if status != "exited":
                break
    finally:
        sel.close()
        if status == "exited":
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                status = "timeout"
        if status != "exited":
            kill(proc, sandboxed)
        proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f and not f.closed:
                f.close()
    return RunResult(bytes(out[: limits.output_bytes]), bytes(err), proc.returncode, status, time.monotonic() - t0)
