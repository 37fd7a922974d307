"""Adversarial model outputs through the real pool: each scores 0 within its deadline, nothing of
it survives on the host, and the pool then serves a normal batch. Each program prints what a
successful attack would print, so an escape turns into reward 1 and fails the test."""

import json
import os
import pathlib
import shutil
import socket
import threading
import time

import psutil
import pytest

from rlvr_jax.verifiers import VerifierConfig, sandbox
from rlvr_jax.verifiers.pool import VerifierPool

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None,
    reason="!!! bubblewrap (bwrap) is NOT installed: the adversarial sandbox suite is SKIPPED. "
    "Install it with `apt-get install bubblewrap` or scripts/setup.sh !!!",
)

TIME_LIMIT = 1.0
CONFIG = VerifierConfig(code_startup_slack_s=1.0, math_timeout_s=30)  # math: the pool kill must act
DEADLINE = 3.0
UID_BASE = CONFIG.sandbox_uid_base


def _passwd_first_line():
    try:
        return pathlib.Path("/etc/passwd").read_text().splitlines()[0]
    except OSError:
        return "root:x:0:0:root:/root:/bin/bash"


def _home_listing():
    home = pathlib.Path.home()
    try:
        return json.dumps(sorted(os.listdir(home)))
    except OSError:
        return "[]"


def _cases(port):
    home = str(pathlib.Path.home())
    return {
        "infinite_loop": ("while True:\n    pass", "done"),
        "sleep": ("import time\ntime.sleep(3600)\nprint('done')", "done"),
        "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", "done"),
        "alloc_8gb": ("x = bytearray(8 * 1024 ** 3)\nx[-1] = 1\nprint(len(x))", str(8 * 1024**3)),
        "print_gigabytes": (
            "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(4096):\n    sys.stdout.write(chunk)",
            "x",
        ),
        "fill_disk": (
            "import os\ntotal = 0\nfor d in ('/tmp', '/dev/shm', '.', '/sandbox', '/usr'):\n"
            "    try:\n        with open(os.path.join(d, 'fill'), 'wb') as f:\n"
            "            while total < (2 << 30):\n                f.write(b'0' * (1 << 20))\n"
            "                total += 1 << 20\n    except OSError:\n        pass\n"
            "print('filled' if total >= (1 << 30) else 'stopped')",
            "filled",
        ),
        "read_etc_passwd": ("print(open('/etc/passwd').read().splitlines()[0])", _passwd_first_line()),
        "read_home": (f"import os, json\nprint(json.dumps(sorted(os.listdir({home!r}))))", _home_listing()),
        "network_socket": (
            f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "print(s.recv(16).decode())",
            "hello",
        ),
        "kill_parent": (
            "import os, signal\nfor pid in [os.getppid(), 1] + [int(p) for p in os.listdir('/proc') if p.isdigit()]:\n"
            "    if pid != os.getpid():\n        try:\n            os.kill(pid, signal.SIGKILL)\n"
            "        except OSError:\n            pass\nprint('killed')",
            "survived",
        ),
        "setsid_double_fork": (
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        time.sleep(600)\n    os._exit(0)\nprint('escaped')",
            "done",
        ),
        "os_exit_before_failing": ("import os\nos._exit(0)", "done"),
        "stack_overflow": (
            "import sys\nsys.setrecursionlimit(10 ** 8)\ndef f(n):\n    return f(n + 1) + 1\nprint(f(0))",
            "done",
        ),
    }


SLOW_MATH = {
    "power_tower": r"\boxed{10^{10^{10^{10}}}}",
    "nested_power": r"\boxed{9^{9^{9^{9}}}}",
    "huge_factorial": r"\boxed{(10^{9})! - (10^{9}-1)!}",
}


@pytest.fixture(scope="module")
def outcome():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]

    def serve():  # a host-side service the sandbox must not reach
        while True:
            try:
                c, _ = server.accept()
            except OSError:
                return
            c.sendall(b"hello")
            c.close()

    threading.Thread(target=serve, daemon=True).start()

    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    avail_before = psutil.virtual_memory().available
    cases = _cases(port)
    records, responses, names = [], [], []
    for name, (prog, expected) in cases.items():
        records.append(
            {
                "domain": "code",
                "ground_truth": {
                    "tests": [{"input": "", "output": expected}],
                    "time_limit_s": TIME_LIMIT,
                    "memory_limit_mb": 512,
                },
            }
        )
        responses.append(f"```python\n{prog}\n```")
        names.append(name)
    for name, resp in SLOW_MATH.items():
        records.append({"domain": "math", "ground_truth": {"answers": ["1"]}})
        responses.append(resp)
        names.append(name)
    normal = [
        ({"domain": "math", "ground_truth": {"answers": ["4"]}}, r"\boxed{4}", 1.0),
        ({"domain": "science", "ground_truth": {"answer": "B", "choices": list("ABCD")}}, "Answer: B", 1.0),
        (
            {
                "domain": "code",
                "ground_truth": {"tests": [{"input": "2\n", "output": "4"}], "time_limit_s": 2, "memory_limit_mb": 256},
            },
            "```python\nprint(int(input()) * 2)\n```",
            1.0,
        ),
        ({"domain": "math", "ground_truth": {"answers": ["4"]}}, r"\boxed{5}", 0.0),
    ]
    with VerifierPool(2, deadline_s=DEADLINE, config=CONFIG) as pool:
        t0 = time.monotonic()
        scores = pool.submit(records, responses).result(timeout=120)
        elapsed = time.monotonic() - t0
        after = pool.submit([r for r, _, _ in normal], [x for _, x, _ in normal]).result(timeout=60)
        counters = pool.counters()
    server.close()
    time.sleep(0.3)
    leftovers = [p for p in me.children(recursive=True) if p.pid not in children_before]
    # This process's block of sandbox uids (other test processes run their own sandboxes meanwhile).
    block = {sandbox.sandbox_uid(UID_BASE, os.getpid(), slot) for slot in range(sandbox.MAX_SLOTS + 1)}
    sandbox_procs = [p for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real in block]
    return dict(
        scores=dict(zip(names, scores)),
        elapsed=elapsed,
        after=after,
        normal=normal,
        counters=counters,
        leftovers=leftovers,
        sandbox_procs=sandbox_procs,
        avail_drop=avail_before - psutil.virtual_memory().available,
    )


@pytest.mark.parametrize("name", list(_cases(0)))
def test_code_attack_scores_zero_within_deadline(outcome, name):
    s = outcome["scores"][name]
    assert s.reward == 0.0, s
    # Decided by the sandbox's own per-test limits, not by the pool having to kill the worker.
    assert s.reason == "wrong", s
    assert s.details["failure"]["wall_s"] <= TIME_LIMIT + CONFIG.code_startup_slack_s + 0.5, s


@pytest.mark.parametrize("name", list(SLOW_MATH))
def test_slow_symbolic_math_times_out(outcome, name):
    s = outcome["scores"][name]
    assert s.reward == 0.0 and s.reason in ("timeout", "wrong"), s


def test_expected_failure_kinds(outcome):
    kinds = {n: s.details["failure"]["kind"] for n, s in outcome["scores"].items() if s.details.get("failure")}
    assert kinds["infinite_loop"] == "time_limit" and kinds["sleep"] == "time_limit"
    assert kinds["print_gigabytes"] == "output_limit"
    assert kinds["read_etc_passwd"] == "runtime_error" and kinds["network_socket"] == "runtime_error"


def test_batch_bounded_and_pool_serves_after(outcome):
    # 16 hostile samples on 2 workers; each bounded by its deadline, so the batch is too.
    assert outcome["elapsed"] < 60
    assert [s.reward for s in outcome["after"]] == [want for _, _, want in outcome["normal"]]
    assert outcome["counters"]["verifier/math/timeouts"] >= 1  # the power tower needed the pool's kill
    assert outcome["counters"]["verifier/restarts"] >= 1


def test_host_back_to_baseline(outcome):
    assert outcome["leftovers"] == [], outcome["leftovers"]
    assert outcome["sandbox_procs"] == [], outcome["sandbox_procs"]
    assert outcome["avail_drop"] < (1 << 30)  # no tmpfs or allocation outlives the batch


_NON_REAPING_PARENT = r"""
import ctypes, os, subprocess, sys, time
import psutil
from rlvr_jax.verifiers import sandbox
from rlvr_jax.verifiers.pool import VerifierPool
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # adopt orphans like a container's init, and never reap them
lim = sandbox.Limits(time_s=1, wall_s=1.5, memory_mb=256, output_bytes=1 << 16)
for prog in (b"print(1)", b"while True: pass", b"import os\nif os.fork() == 0:\n    os.setsid()\n    while True: pass"):
    sandbox.run({"m.py": prog}, "m.py", b"", lim)  # in-process: normal exit, killed at the deadline
code = {"domain": "code", "ground_truth": {"tests": [{"input": "", "output": "x"}], "time_limit_s": 1.0}}
with VerifierPool(1, deadline_s=3.0) as pool:  # through a worker
    pool.submit([code] * 2, ["```python\nwhile True: pass\n```", "```python\nprint('x')\n```"]).result(timeout=60)
time.sleep(0.3)
print([c.name() for c in psutil.Process().children() if c.status() == psutil.STATUS_ZOMBIE])
"""


def test_sandboxes_leave_no_zombies_under_a_non_reaping_init(tmp_path):
    # CI containers' pid 1 may never reap; a sandbox whose pid 1 is orphaned then stays a zombie.
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _NON_REAPING_PARENT], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
