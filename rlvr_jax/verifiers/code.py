"""Code rewards: run the last ```python block against stdin/stdout, function-call or assert-style tests
in the sandbox and decide here, in the parent; the child's exit code never decides a pass.

Function-call tests (`fn_name` set): `input` holds one JSON value per line, one per argument
(LiveCodeBench's layout; loaders turn TACO/APPS argument lists into it), `output` is the JSON
of the return value. The function is `Solution().<fn_name>` when the program defines
`Solution`, else the top-level `<fn_name>`.

Assert-style tests (`test_code` set, `tests` empty): the program and the test code run together under
assert_harness.py, which names the units (top-level asserts, pytest-style `test*` functions, HumanEval's
`check(<entry_point>)`) and writes its verdict with a per-run nonce; the record passes only when that
verdict counts every unit counted here as passed. With `program_prefix` (HumanEval: the prompt, whose
imports, helpers and stub the response completes or redefines), the program is prefix + code block."""

from __future__ import annotations

import json
import math
import pathlib
import random
import secrets
import signal
import zlib

from rlvr_jax.verifiers import sandbox, warm
from rlvr_jax.verifiers.assert_harness import assert_units
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

_ASSERT_HARNESS = pathlib.Path(__file__).with_name("assert_harness.py").read_bytes()


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


def _run(config: VerifierConfig, files: dict, script: str, stdin: bytes, limits: sandbox.Limits, args=()):
    """One program run, in this thread's warm sandbox (config.sandbox_warm) or a sandbox of its own."""
    runner = warm.run if config.sandbox_warm else sandbox.run
    return runner(
        files,
        script,
        stdin,
        limits,
        args=args,
        python=config.sandbox_python,
        uid_base=config.sandbox_uid_base,
        unsandboxed=config.allow_unsandboxed and sandbox.bwrap_path() is None,
    )


def _limit_failure(res: sandbox.RunResult, info: dict) -> str:
    """The failure kind of a run stopped by a limit or by the sandbox itself, else ""."""
    # SIGXCPU (bwrap reports a signal death as 128 + signal) is the CPU rlimit: a time limit too.
    if res.status == "timeout" or res.returncode in (128 + signal.SIGXCPU, -signal.SIGXCPU):
        return "time_limit"
    if res.status == "output_limit":
        return "output_limit"
    if res.status == "sandbox_error":
        info["stderr_tail"] = res.stderr_tail.decode("utf-8", errors="replace")[-500:]
        return "sandbox_error"
    return ""


def run_test(program: str, test: dict, fn_name: str | None, gt: dict, config: VerifierConfig) -> tuple[bool, str, dict]:
    """(passed, failure kind, info) for one test."""
    expected = str(test["output"])
    lim = limits_for(gt, config, len(expected.encode()))
    if fn_name:
        files = {"main.py": _CALL_HARNESS.encode(), "solution.py": program.encode()}
        res = _run(config, files, "main.py", str(test["input"]).encode(), lim, args=(fn_name,))
    else:
        res = _run(config, {"main.py": program.encode()}, "main.py", str(test["input"]).encode(), lim)
    info = {"status": res.status, "exit": res.returncode, "wall_s": round(res.wall_s, 3)}
    kind = _limit_failure(res, info)
    if kind:
        return False, kind, info
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


def assert_program(gt: dict, code: str) -> str:
    """The program an assert-style record runs: its `program_prefix` (if any), then the code block."""
    prefix = gt.get("program_prefix") or ""
    return (prefix if not prefix or prefix.endswith("\n") else prefix + "\n") + code


def sandbox_runs(gt: dict, config: VerifierConfig) -> int:
    """How many sandbox runs scoring one response to this record takes (the pool's deadline)."""
    if gt.get("test_code"):
        return 1
    return len(drawn_tests(list(gt.get("tests") or []), config.code_max_tests))


def run_assert_tests(program: str, gt: dict, config: VerifierConfig) -> tuple[int, int, str, dict]:
    """(units passed, units, failure kind, info) for the record's test code against `program`."""
    test_code, entry = gt["test_code"], gt.get("entry_point") or ""
    units = assert_units(test_code, entry)
    nonce = secrets.token_hex(16)
    res = _run(
        config,
        {"main.py": _ASSERT_HARNESS, "solution.py": program.encode(), "tests.py": test_code.encode()},
        "main.py",
        nonce.encode(),
        limits_for(gt, config, 1024),
        args=(entry,) if entry else (),
    )
    info = {"status": res.status, "exit": res.returncode, "wall_s": round(res.wall_s, 3)}
    kind = _limit_failure(res, info)
    if kind:
        return 0, len(units), kind, info
    head, _, failure = res.stdout.partition(b"\n")
    fields = head.decode("ascii", errors="replace").split(" ")
    if len(fields) != 3 or fields[0] != nonce or not (fields[1].isdigit() and fields[2].isdigit()):
        # The harness never wrote its verdict: the program ended the process first (any exit), or
        # wrote on the verdict channel itself.
        info["stderr_tail"] = res.stderr_tail.decode("utf-8", errors="replace")[-500:]
        return 0, len(units), "no_verdict", info
    passed, total = int(fields[1]), int(fields[2])
    if total != len(units) or passed > total:
        return 0, len(units), "no_verdict", {**info, "error": f"verdict counts {passed}/{total} units of {len(units)}"}
    if passed < total:
        info["error"] = failure.decode("utf-8", errors="replace")[:300]
        return passed, total, "failed", info
    if failure:  # a pass line followed by anything else: something besides the harness wrote there
        return 0, total, "no_verdict", {**info, "error": "extra output after the verdict"}
    return passed, total, "", info


def _score_assert(gt: dict, program: str, config: VerifierConfig) -> Score:
    passed, total, kind, info = run_assert_tests(assert_program(gt, program), gt, config)
    details = {
        "kind": "assert",
        "passed": passed,
        "run": total,
        "total": total,
        "pass_fraction": passed / max(total, 1),
    }
    if not kind:
        return Score(1.0, "ok", details)
    details["failure"] = {"kind": kind, **info}
    return Score(0.0, "error" if kind == "sandbox_error" else "wrong", details)


def score_code(gt: dict, text: str, config: VerifierConfig) -> Score:
    """Reward 1 only if every drawn test passes (config.code_max_tests; all by default); the pass fraction
    is a diagnostic."""
    program = last_code_block(text, config.code_block_language)
    if program is None or not program.strip():
        return Score(0.0, "no_answer", {"error": f"no ```{config.code_block_language} block"})
    if gt.get("test_code"):
        sandbox.check_available(config.allow_unsandboxed, config.sandbox_python, config.sandbox_uid_base)
        return _score_assert(gt, program, config)
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
