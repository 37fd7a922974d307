"""Warm sandboxes: one bubblewrap sandbox per thread (per interpreter, uid and /tmp size) that stays up
between programs, so a program costs a fork inside it instead of a new sandbox and a new interpreter
(sandbox.run: about 16 ms a run on a 2-core CPU, most of it bwrap's set-up and Python's start).

The sandbox is the one sandbox.py builds (its namespaces, read-only /usr, no /etc or home, size-capped /tmp
and /dev/shm, the same uid); inside it warm_server.py runs as pid 1 and, per program, forks a child that
takes the run's rlimits and runs the script as __main__. What the programs of one sandbox share, and how
each is kept from the next:
- processes: after each run pid 1 kills every other process of the namespace (kill(-1) spares only itself;
  SIGKILL from inside a namespace cannot reach its init) and reaps them;
- files: /sandbox (the program's files, read-only), /tmp and /dev/shm are emptied after each run;
- the server: it is not dumpable, so a program can neither ptrace it nor open its /proc entries (the control
  pipes), and no child keeps those pipes;
- not reset: System V IPC objects of the sandbox's own IPC namespace persist between its programs.
A run the server does not answer within its wall deadline (+ WARM_SLACK_S) ends the sandbox; the next run
starts a fresh one. Results are sandbox.RunResult, as sandbox.run gives them.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import pathlib
import selectors
import struct
import subprocess
import threading
import time

from rlvr_jax.verifiers import sandbox

log = logging.getLogger(__name__)

_SERVER = pathlib.Path(__file__).with_name("warm_server.py").read_bytes()
WARM_SLACK_S = 5.0  # beyond a run's wall deadline before the host gives up on the server
_START_S = 30.0  # for the server to say it is ready


class ServerLost(RuntimeError):
    """The warm sandbox stopped answering or broke the protocol."""


class WarmSandbox:
    """A started sandbox with warm_server.py as its pid 1, for `python` as `uid` with a /tmp of `tmp_mb`."""

    def __init__(self, python: str, uid: int | None, tmp_mb: int):
        self.key = (python, uid, tmp_mb)
        bwrap = sandbox.bwrap_path()
        if bwrap is None:
            raise sandbox.SandboxUnavailable(sandbox.INSTALL_HINT)
        fd = os.memfd_create("rlvr_warm_server")
        os.write(fd, _SERVER)
        os.lseek(fd, 0, os.SEEK_SET)
        argv = sandbox.bwrap_argv(bwrap, python, tmp_mb, uid, {"server.py": fd}, "server.py", (), files_at="/warm")
        ids = dict(user=uid, group=uid, extra_groups=[]) if uid is not None else {}
        try:
            with sandbox.exec_fork_without_jax_warning():
                self.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    pass_fds=(fd,),
                    start_new_session=True,
                    cwd="/",
                    **ids,
                )
        finally:
            os.close(fd)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)
        self._buf = bytearray()
        self.retired = False
        try:
            self._receive(time.monotonic() + _START_S)
        except ServerLost:
            self.close()
            raise

    def alive(self) -> bool:
        return not self.retired and self.proc.poll() is None

    def close(self) -> None:
        if self.proc.poll() is None:
            sandbox.kill(self.proc, sandboxed=True)
        self.proc.wait()
        self._sel.close()
        for f in (self.proc.stdin, self.proc.stdout):
            if not f.closed:
                f.close()

    def _read(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServerLost("no answer before the deadline")
            if not self._sel.select(timeout=left):
                continue
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            if not chunk:
                raise ServerLost(f"the sandbox ended (exit {self.proc.poll()})")
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _receive(self, deadline: float) -> tuple[dict, list[bytes]]:
        size = struct.unpack(">Q", self._read(8, deadline))[0]
        if size > 1 << 20:
            raise ServerLost(f"a {size}-byte header")
        header = json.loads(self._read(size, deadline))
        return header, [self._read(n, deadline) for n in header.get("blobs", [])]

    def run(
        self, files: dict[str, bytes], script: str, stdin: bytes, limits: sandbox.Limits, args=()
    ) -> sandbox.RunResult:
        t0 = time.monotonic()
        names = list(files)
        header = {
            "files": names,
            "script": script,
            "args": [str(a) for a in args],
            "rlimits": sandbox.rlimits(limits),
            "wall_s": limits.wall_s,
            "output_bytes": limits.output_bytes,
        }
        blobs = [files[n] for n in names] + [stdin]
        raw = json.dumps(dict(header, blobs=[len(b) for b in blobs])).encode()
        try:
            self.proc.stdin.write(struct.pack(">Q", len(raw)) + raw + b"".join(blobs))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise ServerLost(f"cannot send the run: {e}") from e
        answer, (out, err) = self._receive(t0 + limits.wall_s + WARM_SLACK_S)
        self.retired = bool(answer.get("retire"))  # the server could not clean up after this run, and exits
        return sandbox.RunResult(out, err, answer["returncode"], answer["status"], time.monotonic() - t0)


# One sandbox per thread: requests on one sandbox's pipes must not interleave, and bubblewrap's
# --die-with-parent ends a sandbox with the thread that started it.
_LOCAL = threading.local()
_ALL: set = set()  # every thread's, for the exit
_ALL_LOCK = threading.Lock()


def current() -> WarmSandbox | None:
    """This thread's warm sandbox, if it has one."""
    return getattr(_LOCAL, "box", None)


def _drop(box: WarmSandbox) -> None:
    box.close()
    with _ALL_LOCK:
        _ALL.discard(box)


def _sandbox_for(python: str, uid: int | None, tmp_mb: int) -> WarmSandbox:
    box = current()
    if box is not None and (box.key != (python, uid, tmp_mb) or not box.alive()):
        _drop(box)
        box = _LOCAL.box = None
    if box is None:
        with _ALL_LOCK:  # the sandboxes of threads that ended died with them: reap them
            dead = [b for b in _ALL if b.proc.poll() is not None]
        for b in dead:
            _drop(b)
        box = _LOCAL.box = WarmSandbox(python, uid, tmp_mb)
        with _ALL_LOCK:
            _ALL.add(box)
    return box


def close() -> None:
    """Ends this thread's warm sandbox, if it has one."""
    box = current()
    if box is not None:
        _LOCAL.box = None
        _drop(box)


@atexit.register
def _close_all() -> None:
    with _ALL_LOCK:
        boxes = list(_ALL)
    for box in boxes:
        _drop(box)


def run(
    files: dict[str, bytes],
    script: str,
    stdin: bytes,
    limits: sandbox.Limits,
    *,
    args=(),
    python: str = "",
    uid_base: int = 2_000_000_000,
    unsandboxed: bool = False,
) -> sandbox.RunResult:
    """sandbox.run's contract, in this thread's warm sandbox (started on first use, restarted when lost);
    unsandboxed runs go to sandbox.run."""
    if unsandboxed:
        return sandbox.run(files, script, stdin, limits, args=args, python=python, unsandboxed=True)
    try:
        box = _sandbox_for(sandbox.sandbox_python(python), sandbox.sandbox_uid(uid_base), limits.tmp_mb)
    except (ServerLost, OSError) as e:  # no warm sandbox now: this run gets one of its own (with its retries)
        log.warning("warm sandbox did not start (%s): running this program in a sandbox of its own", e)
        return sandbox.run(files, script, stdin, limits, args=args, python=python, uid_base=uid_base)
    t0 = time.monotonic()
    try:
        return box.run(files, script, stdin, limits, args)
    except ServerLost as e:
        log.warning("warm sandbox lost (%s): a fresh one serves the next run", e)
        close()
        wall = time.monotonic() - t0
        status = "timeout" if wall >= limits.wall_s else "sandbox_error"
        return sandbox.RunResult(b"", str(e).encode(), None, status, wall)
