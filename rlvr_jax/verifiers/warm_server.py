"""The process inside a warm sandbox (warm.py starts it as pid 1 of a bubblewrap sandbox; stdlib only, never
imported by the trainer). Per request it writes the program's files into /sandbox, forks a child that takes
the run's rlimits and runs the script in this already started interpreter, relays the child's stdout and
stderr under the wall deadline and the output cap, then kills every other process of the sandbox's pid
namespace (pid 1 may: kill(-1) spares only itself) and empties /sandbox, /tmp and /dev/shm, so each program
starts from the state the previous one found.

Frames on the control pipes (the host's fds 0 and 1, which no child keeps): an 8-byte big-endian length,
a JSON header of that length, then the byte blobs whose lengths the header lists.
"""

import ctypes
import json
import os
import resource
import select
import signal
import stat
import struct
import sys
import time
import traceback
import types

CONTROL_IN, CONTROL_OUT = os.dup(0), os.dup(1)
_null = os.open("/dev/null", os.O_RDWR)
os.dup2(_null, 0)
os.dup2(_null, 1)
os.dup2(_null, 2)
# pid 1 of a namespace gets no signal from inside it that it has no handler for; Python's own SIGINT handler is
# one, so every catchable signal a program could send is ignored here (children get the defaults back)
PASSED_ON = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
)
for _sig in PASSED_ON:
    signal.signal(_sig, signal.SIG_IGN)
PR_SET_DUMPABLE = 4
ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # no ptrace of this process, no /proc/1/fd or /mem
SCRATCH = ("/sandbox", "/tmp", "/dev/shm")
SCRATCH_MODES = {d: stat.S_IMODE(os.stat(d).st_mode) for d in SCRATCH}
# imported once here, so a program (and the function-call harness) finds them loaded: what they cost each fresh
# interpreter is paid once per sandbox
PRELOADED = ("bisect", "collections", "functools", "heapq", "itertools", "math", "re", "string", "typing")
for _name in PRELOADED:
    __import__(_name)

STDERR_TAIL = 2048


def read_exact(n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(CONTROL_IN, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def write_all(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(CONTROL_OUT, view) :]


def receive():
    header = json.loads(read_exact(struct.unpack(">Q", read_exact(8))[0]))
    return header, [read_exact(n) for n in header["blobs"]]


def send(header: dict, blobs) -> None:
    header = dict(header, blobs=[len(b) for b in blobs])
    raw = json.dumps(header).encode()
    write_all(struct.pack(">Q", len(raw)) + raw + b"".join(blobs))


def empty(directory: str) -> None:
    """Removes everything under `directory`, whatever modes a program left on it (its own mode is restored)."""
    mode = SCRATCH_MODES.get(directory)
    os.chmod(directory, 0o700)
    for entry in os.listdir(directory):
        path = os.path.join(directory, entry)
        if stat.S_ISDIR(os.lstat(path).st_mode):
            empty(path)
            os.rmdir(path)
        else:
            os.unlink(path)
    if mode is not None:
        os.chmod(directory, mode)


def kill_all_others() -> None:
    """SIGKILL every process of the namespace but this one, and reap them all (orphans come to pid 1)."""
    while True:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return
        time.sleep(0.001)


def exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code & 0xFF
    print(e.code, file=sys.stderr)
    return 1


def run_as_main(path: str) -> None:
    """Runs the script as the interpreter runs a file: a fresh __main__ module (isolated mode: the script's
    directory is not on sys.path). runpy would do the same but imports its machinery in every child."""
    with open(path, "rb") as f:
        code = compile(f.read(), path, "exec")
    main = types.ModuleType("__main__")
    main.__file__ = path
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    exec(code, main.__dict__)


def child(path: str, args, stdin_fd: int, out_w: int, err_w: int, limits: dict) -> None:
    """In the forked child: fds 0-2 become the run's, the rlimits are set, the script runs as __main__."""
    code = 127
    try:
        os.close(CONTROL_IN)
        os.close(CONTROL_OUT)
        os.dup2(stdin_fd, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        for fd in (stdin_fd, out_w, err_w, _null):
            os.close(fd)
        os.chdir("/tmp")
        for sig in PASSED_ON:
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        for name, value in limits.items():
            resource.setrlimit(getattr(resource, name), tuple(value))
        sys.stdin = open(0, encoding="utf-8", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)
        sys.argv = [path, *args]
        try:
            run_as_main(path)
            code = 0
        except SystemExit as e:
            code = exit_code(e)
        except BaseException:
            traceback.print_exc()
            code = 1
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):  # the originals are fds 1, 2 too
            try:
                stream.flush()
            except BaseException:
                code = code or 120  # as the interpreter does when flushing stdout at exit fails
    finally:
        os._exit(code)


def relay(pid: int, out_r: int, err_r: int, wall_s: float, output_bytes: int, t0: float):
    """Reads the child's stdout and stderr until both close, the deadline passes or stdout outgrows the
    cap; returns (status, stdout, stderr tail, wait status or None)."""
    out, err = bytearray(), bytearray()
    open_fds, status, waited = {out_r, err_r}, "exited", None
    deadline = t0 + wall_s
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            status = "timeout"
            break
        ready, _, _ = select.select(list(open_fds), [], [], min(left, 0.05))
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                open_fds.discard(fd)
            elif fd == out_r:
                out += chunk
            else:
                err += chunk
                del err[:-STDERR_TAIL]
        if len(out) > output_bytes:
            status = "output_limit"
            break
        if waited is None:
            done, wait_status = os.waitpid(pid, os.WNOHANG)
            if done:
                waited = wait_status
                kill_all_others()  # what it left running dies with it, and lets go of the pipes
    return status, bytes(out[:output_bytes]), bytes(err), waited


def run(header: dict, blobs) -> tuple[dict, list]:
    names = header["files"]
    for name, data in zip(names, blobs):
        with open(os.path.join("/sandbox", name), "wb") as f:
            f.write(data)
        os.chmod(os.path.join("/sandbox", name), 0o444)
    stdin_fd = os.memfd_create("stdin")
    view = memoryview(blobs[len(names)])
    while view:
        view = view[os.write(stdin_fd, view) :]
    os.lseek(stdin_fd, 0, os.SEEK_SET)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(out_r)
        os.close(err_r)
        child(os.path.join("/sandbox", header["script"]), header["args"], stdin_fd, out_w, err_w, header["rlimits"])
    for fd in (stdin_fd, out_w, err_w):
        os.close(fd)
    status, out, err, waited = relay(pid, out_r, err_r, header["wall_s"], header["output_bytes"], t0)
    while waited is None and status == "exited":  # its pipes closed before it exited: wait to the deadline
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            waited = wait_status
        elif time.monotonic() >= t0 + header["wall_s"]:
            status = "timeout"
        else:
            time.sleep(0.001)
    kill_all_others()
    os.close(out_r)
    os.close(err_r)
    retire = False
    try:
        for directory in SCRATCH:
            empty(directory)
    except (OSError, RecursionError):  # something this server cannot take away: the host starts a fresh sandbox
        retire = True
    if waited is None:
        returncode = None
    elif os.WIFSIGNALED(waited):
        returncode = 128 + os.WTERMSIG(waited)  # as bubblewrap reports a pid 1 killed by a signal
    else:
        returncode = os.WEXITSTATUS(waited)
    answer = {"status": status, "returncode": returncode, "wall_s": time.monotonic() - t0, "retire": retire}
    return answer, [out, err]


def main() -> None:
    send({"ready": True}, [])
    while True:
        try:
            header, blobs = receive()
        except EOFError:
            os._exit(0)
        answer, blobs = run(header, blobs)
        send(answer, blobs)
        if answer["retire"]:
            os._exit(0)


main()
