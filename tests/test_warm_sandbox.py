"""The warm sandbox (rlvr_jax/verifiers/warm.py): a program run in it gives what a sandbox of its own gives
(output, exit status, each limit), the next program finds no file and no process the previous one left, the
server inside survives what a program can do to it, and a lost sandbox is replaced by the next run."""

import shutil
import signal

import pytest

from rlvr_jax.verifiers import sandbox, warm

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="!!! bubblewrap (bwrap) is NOT installed !!!")

LIMITS = sandbox.Limits(time_s=1, wall_s=2, memory_mb=512, output_bytes=1 << 16)

PROGRAMS = {
    "echo": ("import sys\nprint(sum(map(int, sys.stdin.read().split())))", b"1 2 3\n"),
    "open_fd0": ("print(open(0).read().upper(), end='')", b"abc\n"),
    "exit_code": ("import sys\nprint('x')\nsys.exit(3)", b""),
    "exit_message": ("raise SystemExit('bye')", b""),
    "exception": ("print('before')\nraise ValueError('boom')", b""),
    "killed_by_signal": ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", b""),
    "cpu_limit": ("while True:\n    pass", b""),
    "wall_limit": ("import time\ntime.sleep(30)", b""),
    "output_limit": ("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", b""),
    "closes_stdout_then_sleeps": ("import os, time\nos.close(1)\ntime.sleep(30)", b""),
    "argv_and_file": ("import sys, os\nprint(sys.argv[1:], __name__, os.path.basename(__file__), os.getcwd())", b""),
}


def _cold_and_warm(name):
    program, stdin = PROGRAMS[name]
    files = {"main.py": program.encode()}
    args = ("a", "b") if name == "argv_and_file" else ()
    cold = sandbox.run(files, "main.py", stdin, LIMITS, args=args)
    hot = warm.run(files, "main.py", stdin, LIMITS, args=args)
    return cold, hot


# Where a program of its own sandbox is that sandbox's pid 1, which no signal from inside reaches: it survives
# its own SIGKILL (exit 0) and its CPU limit's SIGXCPU (the wall deadline ends it). In the warm sandbox the
# program is pid 1's child, and both end it as they would anywhere (128 + signal, as bwrap reports it).
PID1_QUIRKS = {"killed_by_signal": ("exited", 128 + signal.SIGKILL), "cpu_limit": ("exited", 128 + signal.SIGXCPU)}


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_a_warm_run_gives_what_a_sandbox_of_its_own_gives(name):
    cold, hot = _cold_and_warm(name)
    if name in PID1_QUIRKS:
        assert (hot.status, hot.returncode) == PID1_QUIRKS[name], hot
        assert hot.wall_s < LIMITS.wall_s, hot
        return
    assert hot.status == cold.status, (cold, hot)
    assert hot.stdout == cold.stdout, (cold, hot)
    if cold.status == "exited":
        assert hot.returncode == cold.returncode, (cold, hot)
    if name == "exception":
        assert b"ValueError: boom" in hot.stderr_tail
    if name == "exit_message":
        assert b"bye" in hot.stderr_tail


def test_the_next_program_finds_nothing_the_last_one_left():
    left = (
        "import os, subprocess, time\n"
        "for d in ('/tmp', '/dev/shm'):\n"
        "    open(os.path.join(d, 'left'), 'w').write('x')\n"
        "os.makedirs('/tmp/d/e')\n"
        "os.chmod('/tmp/d', 0o500)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    time.sleep(30)\n"
        "    os._exit(0)\n"
        "print('ok')\n"
    )
    assert warm.run({"main.py": left.encode()}, "main.py", b"", LIMITS).stdout == b"ok\n"
    look = (
        "import os\n"
        "pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
        "print(os.listdir('/tmp'), os.listdir('/dev/shm'), sorted(os.listdir('/sandbox')), pids == [1, os.getpid()])\n"
    )
    got = warm.run({"main.py": look.encode()}, "main.py", b"", LIMITS)
    assert got.stdout == b"[] [] ['main.py'] True\n", got


def test_the_server_survives_what_a_program_does_to_it():
    first = warm.run({"main.py": b"import os\nprint(os.getppid())"}, "main.py", b"", LIMITS)
    server = warm.current().proc.pid
    attack = (
        "import ctypes, os, signal\n"
        "for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):\n"
        "    os.kill(1, sig)\n"
        "try:\n"
        "    os.listdir('/proc/1/fd')\n"
        "    print('fds readable')\n"
        "except PermissionError:\n"
        "    pass\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print('ptrace', libc.ptrace(16, 1, None, None))\n"  # PTRACE_ATTACH to the server
    )
    got = warm.run({"main.py": attack.encode()}, "main.py", b"", LIMITS)
    assert got.stdout == b"ptrace -1\n", got
    after = warm.run({"main.py": b"print('still')"}, "main.py", b"", LIMITS)
    assert after.stdout == b"still\n" and warm.current().proc.pid == server, "the same sandbox serves on"
    assert first.stdout == b"1\n"  # programs are children of the server, pid 1


def test_a_lost_sandbox_is_replaced_by_the_next_run():
    assert warm.run({"main.py": b"print(1)"}, "main.py", b"", LIMITS).stdout == b"1\n"
    old = warm.current()
    sandbox.kill(old.proc, sandboxed=True)
    old.proc.wait()
    got = warm.run({"main.py": b"print(2)"}, "main.py", b"", LIMITS)
    assert got.stdout == b"2\n" and warm.current() is not old
    warm.close()
    assert warm.current() is None


def test_threads_get_sandboxes_of_their_own():
    """Two threads scoring at once each talk to their own sandbox (one pipe pair per sandbox), and a
    thread's sandbox ends with the thread (bubblewrap --die-with-parent)."""
    import threading  # noqa: PLC0415

    results, pids = {}, {}

    def work(name):
        outs = [
            warm.run({"main.py": f"print({name!r}, {i})".encode()}, "main.py", b"", LIMITS).stdout for i in range(20)
        ]
        results[name] = outs
        pids[name] = warm.current().proc.pid
        warm.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in ("a", "b"):
        assert results[name] == [f"{name} {i}\n".encode() for i in range(20)]
    assert pids["a"] != pids["b"]


def test_a_program_that_locks_its_scratch_away_costs_only_its_own_run():
    """A program that leaves /tmp unreadable and a directory tree without permissions: the next program
    still finds an empty /tmp of the usual mode, in the same sandbox or (if the server could not clean up)
    a fresh one; the locking program's own result is unaffected."""
    lock = (
        "import os\n"
        "os.makedirs('/tmp/a/b/c')\n"
        "open('/tmp/a/b/c/f', 'w').write('x')\n"
        "for d in ('/tmp/a/b/c', '/tmp/a/b', '/tmp/a'):\n"
        "    os.chmod(d, 0)\n"
        "os.chmod('/tmp', 0)\n"
        "print('locked')\n"
    )
    first = warm.run(
        {"main.py": b"import os, stat\nprint(oct(stat.S_IMODE(os.stat('/tmp').st_mode)))"}, "main.py", b"", LIMITS
    )
    got = warm.run({"main.py": lock.encode()}, "main.py", b"", LIMITS)
    assert (got.status, got.stdout) == ("exited", b"locked\n"), got
    look = b"import os, stat\nprint(os.listdir('/tmp'), oct(stat.S_IMODE(os.stat('/tmp').st_mode)))"
    after = warm.run({"main.py": look}, "main.py", b"", LIMITS)
    assert after.stdout == b"[] " + first.stdout, after


def test_a_sandbox_its_server_cannot_clean_is_replaced():
    """A directory tree deeper than the server's recursion limit: the server answers for that run, says it
    retires, and the next run gets a fresh sandbox with an empty /tmp."""
    deep = "import os\nos.chdir('/tmp')\nfor _ in range(1200):\n    os.mkdir('d')\n    os.chdir('d')\nprint('deep')\n"
    got = warm.run({"main.py": deep.encode()}, "main.py", b"", LIMITS)
    assert (got.status, got.stdout) == ("exited", b"deep\n"), got
    server = warm.current().proc.pid
    after = warm.run({"main.py": b"import os\nprint(os.listdir('/tmp'))"}, "main.py", b"", LIMITS)
    assert after.stdout == b"[]\n" and warm.current().proc.pid != server


def test_the_run_config_chooses_warm_or_a_sandbox_per_run():
    """configs/grpo.py's verifier.sandbox_warm reaches VerifierConfig; with it off, scoring code starts no
    warm sandbox (each program gets a sandbox of its own) and scores the same."""
    import os  # noqa: PLC0415

    from rlvr_jax.config_args import load_config_file  # noqa: PLC0415
    from rlvr_jax.verifiers import score  # noqa: PLC0415
    from rlvr_jax.verifiers.base import verifier_config  # noqa: PLC0415

    grpo = load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs", "grpo.py"))
    c = grpo.get_config("math,tiny")
    assert verifier_config(c.verifier, thinking=False).sandbox_warm is True
    c.verifier.sandbox_warm = False
    config = verifier_config(c.verifier, thinking=False)
    record = {"domain": "code", "ground_truth": {"tests": [{"input": "2 3\n", "output": "5\n"}], "time_limit_s": 2}}
    response = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    warm.close()
    assert score(record, response, config=config).reward == 1.0 and warm.current() is None
    c.verifier.sandbox_warm = True
    assert score(record, response, config=verifier_config(c.verifier, thinking=False)).reward == 1.0
    assert warm.current() is not None
