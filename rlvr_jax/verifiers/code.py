"""Code rewards: run the last ```python block against stdin/stdout or function-call tests in the
sandbox and compare outputs here, in the parent; the child's exit code never decides a pass.

Function-call tests (`fn_name` set): `input` holds one JSON value per line, one per argument
(LiveCodeBench's layout; loaders turn TACO/APPS argument lists into it), `output` is the JSON
of the return value. The function is `Solution().<fn_name>` when the program defines
`Solution`, else the top-level `<fn_name>`."""

from __future__ import annotations

import json
import math
import random
import signal
import zlib

from rlvr_jax.verifiers import sandbox
from rlvr_jax.verifiers.base import Score, VerifierConfig
from rlvr_jax.verifiers.format import last_code_block

# Runs inside the sandbox as /sandbox/main.py next to /sandbox/solution.py. The result goes to a
# private duplicate of stdout; the program's own prints go to stderr so they cannot corrupt it.
_CALL_HARNESS = r'''
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
result_out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
name = sys.argv[1]
args = [json.loads(line) for line in sys.stdin.read().splitlines() if line.strip()]
ns = {"__name__": "solution"}
exec("from typing import *\nimport math, collections, heapq, bisect, itertools, functools, re, string\n"
     "from collections import *\n", ns)
with open(os.path.join(here, "solution.py")) as f:
    exec(compile(f.read(), "solution.py", "exec"), ns)
fn = getattr(ns["Solution"](), name) if "Solution" in ns and hasattr(ns["Solution"], name) else ns[name]
value = fn(*args)
result_out.write(json.dumps(value))
result_out.flush()
'''


def _close(a: float, b: float, tol: float) -> bool:
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def _token_equal(want: str, got: str, tol: float) -> bool:
    if want == got:
        return True
    if tol <= 0:
        return False
    try:
        return _close(float(want), float(got), tol)
    except ValueError:
        return False


def _lines(text: str) -> list[str]:
    lines = [ln.rstrip() for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def stdout_matches(expected: str, got: str, tol: float = 0.0) -> bool:
    """Line by line, ignoring trailing whitespace, trailing blank lines and line endings; with a
    tolerance, whitespace-separated numbers may differ by tol (absolute or relative)."""
    want, have = _lines(expected), _lines(got)
    if want == have:
        return True
    if tol <= 0 or len(want) != len(have):
        return False
    for a, b in zip(want, have):
        ta, tb = a.split(), b.split()
        if len(ta) != len(tb) or not all(_token_equal(x, y, tol) for x, y in zip(ta, tb)):
            return False
    return True


def values_match(expected, got, tol: float = 0.0) -> bool:
    """JSON values equal; floats within tol when configured; bool never equals a number."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return type(expected) is type(got) and expected == got
    if isinstance(expected, (int, float)) and isinstance(got, (int, float)):
        return expected == got or (tol > 0 and _close(float(expected), float(got), tol))
    if isinstance(expected, list) and isinstance(got, list):
        return len(expected) == len(got) and all(values_match(a, b, tol) for a, b in zip(expected, got))
    if isinstance(expected, dict) and isinstance(got, dict):
        return expected.keys() == got.keys() and all(values_match(expected[k], got[k], tol) for k in expected)
    return expected == got


def drawn_tests(tests: list, k: int) -> list[int]:
    """Indices of the tests a problem is graded on: all when k is 0 or the problem has at most k, else
    k drawn uniformly at random without replacement (the study drew 20). The draw is seeded by the
    problem's tests themselves, so every sample of a group, every rerun and every host grade on the same
    ones, and two problems draw independently."""
    if k <= 0 or len(tests) <= k:
        return list(range(len(tests)))
    seed = zlib.crc32(json.dumps(tests, sort_keys=True).encode())
    return sorted(random.Random(seed).sample(range(len(tests)), k))


def select_tests(tests: list, k: int) -> list:
    """The tests `drawn_tests` picks, in their order."""
    return [tests[i] for i in drawn_tests(tests, k)]


def limits_for(gt: dict, config: VerifierConfig, expected_bytes: int) -> sandbox.Limits:
    time_s = min(float(gt.get("time_limit_s") or config.code_default_time_limit_s), config.code_max_time_limit_s)
    mem = min(int(gt.get("memory_limit_mb") or config.code_max_memory_mb), config.code_max_memory_mb)
    return sandbox.Limits(
        time_s=time_s,
        wall_s=time_s + config.code_startup_slack_s,
        memory_mb=max(mem, 256),  # the interpreter alone needs ~100 MB of address space
        output_bytes=config.code_max_output_bytes + 2 * expected_bytes,
        tmp_mb=config.sandbox_tmp_mb,
        fsize_mb=config.sandbox_fsize_mb,
        nproc=config.sandbox_nproc,
        nofile=config.sandbox_nofile,
    )


def run_test(program: str, test: dict, fn_name: str | None, gt: dict, config: VerifierConfig) -> tuple[bool, str, dict]:
    """(passed, failure kind, info) for one test."""
    expected = str(test["output"])
    lim = limits_for(gt, config, len(expected.encode()))
    common = dict(
        python=config.sandbox_python,
        uid_base=config.sandbox_uid_base,
        unsandboxed=config.allow_unsandboxed and sandbox.bwrap_path() is None,
    )
    if fn_name:
        res = sandbox.run(
            {"main.py": _CALL_HARNESS.encode(), "solution.py": program.encode()},
            "main.py",
            str(test["input"]).encode(),
            lim,
            args=(fn_name,),
            **common,
        )
    else:
        res = sandbox.run({"main.py": program.encode()}, "main.py", str(test["input"]).encode(), lim, **common)
    info = {"status": res.status, "exit": res.returncode, "wall_s": round(res.wall_s, 3)}
    # SIGXCPU (bwrap reports a signal death as 128 + signal) is the CPU rlimit: a time limit too.
    if res.status == "timeout" or res.returncode in (128 + signal.SIGXCPU, -signal.SIGXCPU):
        return False, "time_limit", info
    if res.status == "output_limit":
        return False, "output_limit", info
    if res.status == "sandbox_error":
        info["stderr_tail"] = res.stderr_tail.decode("utf-8", errors="replace")[-500:]
        return False, "sandbox_error", info
    got = res.stdout.decode("utf-8", errors="replace")
    if fn_name:
        try:
            ok = values_match(json.loads(expected), json.loads(got), config.numeric_tolerance)
        except (json.JSONDecodeError, ValueError):
            ok = False
    else:
        ok = stdout_matches(expected, got, config.numeric_tolerance)
    if ok:
        return True, "", info
    if res.returncode:
        info["stderr_tail"] = res.stderr_tail.decode("utf-8", errors="replace")[-500:]
        return False, "runtime_error", info
    return False, "wrong_output", info


def score_code(gt: dict, text: str, config: VerifierConfig) -> Score:
    """Reward 1 only if every drawn test passes (config.code_max_tests; all by default); the pass fraction
    is a diagnostic."""
    program = last_code_block(text, config.code_block_language)
    if program is None or not program.strip():
        return Score(0.0, "no_answer", {"error": f"no ```{config.code_block_language} block"})
    all_tests = list(gt.get("tests") or [])
    drawn = drawn_tests(all_tests, config.code_max_tests)
    if not drawn:
        return Score(0.0, "error", {"error": "record has no tests"})
    sandbox.check_available(config.allow_unsandboxed, config.sandbox_python, config.sandbox_uid_base)
    passed, run, failure = 0, 0, None
    for i in drawn:
        ok, kind, info = run_test(program, all_tests[i], gt.get("fn_name"), gt, config)
        run += 1
        if ok:
            passed += 1
            continue
        if failure is None:
            failure = {"test": i, "kind": kind, **info}  # the test's index in the record
        if config.code_stop_at_first_failure:
            break
    details = {"passed": passed, "run": run, "total": len(drawn), "pass_fraction": passed / len(drawn)}
    if len(drawn) < len(all_tests):  # a random draw: which tests, so a reader can rerun exactly these
        details["tests"] = drawn
        details["of"] = len(all_tests)
    if failure is not None:
        details["failure"] = failure
        # An infrastructure failure is labelled as such (counted under verifier errors), never "wrong".
        return Score(0.0, "error" if failure["kind"] == "sandbox_error" else "wrong", details)
    return Score(1.0, "ok", details)
