"""Code verifier: output comparison rules, extraction, stdin and function-call tests in the sandbox."""

import shutil

import numpy as np
import pytest

from rlvr_jax.verifiers import VerifierConfig, sandbox, score
from rlvr_jax.verifiers.code import drawn_tests, stdout_matches, values_match

requires_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None,
    reason="!!! bubblewrap (bwrap) is NOT installed: sandboxed code tests SKIPPED. "
    "Install it with `apt-get install bubblewrap` or scripts/setup.sh !!!",
)


@pytest.mark.parametrize(
    "expected,got,tol,ok",
    [
        ("3\n", "3", 0.0, True),
        ("1 2\n3\n", "1 2  \r\n3\r\n\r\n", 0.0, True),  # trailing spaces, CRLF, blank tail
        ("1 2", " 1 2", 0.0, False),  # leading whitespace matters
        ("3", "3.0", 0.0, False),  # numbers exact by default
        ("3", "3.0", 1e-6, True),
        ("0.3333333", "0.33333334", 1e-6, True),
        ("0.3333", "0.3334", 1e-6, False),
        ("yes", "YES", 0.0, False),
        ("a\nb", "a", 0.0, False),
        ("", "", 0.0, True),
    ],
)
def test_stdout_matches(expected, got, tol, ok):
    assert stdout_matches(expected, got, tol) is ok


@pytest.mark.parametrize(
    "expected,got,tol,ok",
    [
        ([1, 2], [1, 2], 0.0, True),
        ([1, 2], [2, 1], 0.0, False),
        (1, True, 0.0, False),  # bool is not a number
        (0.1, 0.1000001, 1e-5, True),
        (0.1, 0.1000001, 0.0, False),
        ({"a": [1.0]}, {"a": [1]}, 0.0, True),
        ("x", "x", 0.0, True),
    ],
)
def test_values_match(expected, got, tol, ok):
    assert values_match(expected, got, tol) is ok


def _code(tests, response, fn_name=None, config=None, time_limit=2.0):
    rec = {
        "domain": "code",
        "ground_truth": {"tests": tests, "fn_name": fn_name, "time_limit_s": time_limit, "memory_limit_mb": 256},
    }
    return score(rec, response, config=config)


ADD = [{"input": "1 2\n", "output": "3\n"}, {"input": "5 7\n", "output": "12"}, {"input": "-1 1\n", "output": "0"}]
BLOCK = "```python\n{}\n```"

# (program response, expected reward, failure kind or None)
TABLE = [
    (BLOCK.format("a, b = map(int, input().split())\nprint(a + b)"), 1.0, None),
    (BLOCK.format("a, b = map(int, input().split())\nprint(a - b)"), 0.0, "wrong_output"),
    (BLOCK.format("a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)"), 0.0, "wrong_output"),
    (BLOCK.format("raise SystemExit(3)"), 0.0, "runtime_error"),
    (
        BLOCK.format("import sys\na, b = map(int, input().split())\nprint(a + b)\nsys.exit(1)"),
        1.0,
        None,
    ),  # exit code ignored
    ("```py\na, b = map(int, input().split())\nprint(a + b)\n```", 1.0, None),
    ("```python\nprint(1)\n```\nthen fixed:\n" + BLOCK.format("print(sum(map(int, input().split())))"), 1.0, None),
]


@pytest.mark.parametrize("response,reward,kind", TABLE)
@requires_bwrap
def test_stdin_table(response, reward, kind):
    s = _code(ADD, response)
    assert s.reward == reward, s
    if kind:
        assert s.details["failure"]["kind"] == kind


def test_no_code_block():
    assert _code(ADD, "print(1)").reason == "no_answer"
    assert _code(ADD, "```cpp\nint main(){}\n```").reason == "no_answer"
    assert _code([], BLOCK.format("print(1)")).reason == "error"


@requires_bwrap
def test_stop_at_first_failure_and_pass_fraction():
    prog = BLOCK.format("a, b = map(int, input().split())\nprint(a + b if a != 5 else 0)")
    s = _code(ADD, prog)
    assert s.details["run"] == 2 and s.details["passed"] == 1
    s = _code(ADD, prog, config=VerifierConfig(code_stop_at_first_failure=False))
    assert s.reward == 0.0 and s.details["run"] == 3 and s.details["pass_fraction"] == pytest.approx(2 / 3)


@requires_bwrap
def test_numeric_tolerance_config():
    tests = [{"input": "", "output": "0.333333"}]
    prog = BLOCK.format("print(1/3)")
    assert _code(tests, prog).reward == 0.0
    assert _code(tests, prog, config=VerifierConfig(numeric_tolerance=1e-5)).reward == 1.0


@requires_bwrap
def test_language_config():
    resp = "```python3\nprint(4)\n```"
    assert _code([{"input": "", "output": "4"}], resp).reward == 1.0
    resp = "```\nprint(4)\n```"
    assert _code([{"input": "", "output": "4"}], resp).reason == "no_answer"
    assert _code([{"input": "", "output": "4"}], resp, config=VerifierConfig(code_block_language="")).reward == 1.0


FN_TESTS = [{"input": "[1, 2, 3]\n2", "output": "[2, 4, 6]"}, {"input": "[]\n5", "output": "[]"}]


@pytest.mark.parametrize(
    "program,reward",
    [
        (
            "class Solution:\n    def scale(self, xs: List[int], k: int) -> List[int]:\n"
            "        print('debug output must not count')\n        return [x * k for x in xs]",
            1.0,
        ),
        ("def scale(xs, k):\n    return tuple(x * k for x in xs)", 1.0),  # tuple -> JSON list
        ("def scale(xs, k):\n    return [x * k for x in xs][:1]", 0.0),
        ("def scale(xs, k):\n    import os\n    os._exit(0)", 0.0),  # exits before returning
        ("def other(xs, k):\n    return xs", 0.0),  # wrong function name
        ("import sys\nsys.stdout.write('[2, 4, 6]')\ndef scale(xs, k):\n    return None", 0.0),  # prints a guess
    ],
)
@requires_bwrap
def test_function_call_tests(program, reward):
    s = _code(FN_TESTS, BLOCK.format(program), fn_name="scale")
    assert s.reward == reward, s


@requires_bwrap
def test_time_limit_from_record():
    s = _code([{"input": "", "output": "1"}], BLOCK.format("import time\ntime.sleep(5)\nprint(1)"), time_limit=0.5)
    assert s.reward == 0.0 and s.details["failure"]["kind"] == "time_limit"
    assert s.details["failure"]["wall_s"] < 0.5 + VerifierConfig().code_startup_slack_s + 0.5


def test_missing_bwrap_says_how_to_install(monkeypatch):
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    with pytest.raises(sandbox.SandboxUnavailable, match="apt-get install bubblewrap"):
        _code(ADD, BLOCK.format("print(3)"))


def test_unsandboxed_opt_in_is_loud(monkeypatch, capsys):
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    monkeypatch.setattr(sandbox, "_WARNED", False)
    with pytest.warns(RuntimeWarning, match="WITHOUT a sandbox"):
        s = _code(
            ADD, BLOCK.format("print(sum(map(int, input().split())))"), config=VerifierConfig(allow_unsandboxed=True)
        )
    assert s.reward == 1.0
    assert "WITHOUT a sandbox" in capsys.readouterr().err


@requires_bwrap
@pytest.mark.parametrize("failures,reward,reason", [(2, 1.0, "ok"), (99, 0.0, "error")])
def test_bwrap_setup_failure_is_retried_then_labelled(monkeypatch, failures, reason, reward):
    # bwrap occasionally cannot fork while the previous sandbox of the same uid is torn down: that is
    # retried, and if it persists the sample is an infrastructure error, never a wrong answer. (A sandbox per
    # program: the warm sandbox's set-up is warm.py's, tested in tests/test_warm_sandbox.py.)
    real = sandbox._communicate
    calls = {"n": 0}

    def flaky(proc, stdin, t0, limits, sandboxed):
        result = real(proc, stdin, t0, limits, sandboxed)
        calls["n"] += 1
        if calls["n"] <= failures:
            return sandbox.RunResult(
                b"", b"bwrap: Can't fork for pid 1: Resource temporarily unavailable\n", 1, "exited", result.wall_s
            )
        return result

    monkeypatch.setattr(sandbox, "_communicate", flaky)
    monkeypatch.setattr(sandbox.time, "sleep", lambda s: None)
    program = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    s = _code([{"input": "2 3\n", "output": "5\n"}], program, config=VerifierConfig(sandbox_warm=False))
    assert (s.reward, s.reason) == (reward, reason)


ECHO50 = [{"input": f"{i}\n", "output": str(i)} for i in range(50)]


def test_drawn_tests_are_a_seeded_random_draw_per_problem():
    drawn = drawn_tests(ECHO50, 20)
    assert len(drawn) == 20 == len(set(drawn)) and drawn == sorted(drawn) and drawn != list(range(20))
    # the same problem draws the same tests on a rerun (pinned: the seed is the tests' own CRC, not the run's)
    assert drawn == drawn_tests([dict(t) for t in ECHO50], 20)
    assert drawn == [0, 1, 2, 4, 6, 9, 10, 12, 13, 18, 21, 24, 28, 30, 33, 37, 42, 44, 48, 49]
    # other problems draw independently: every test is drawn about 20/50 of the time over many problems
    draws = [drawn_tests([{"input": f"{p} {i}\n", "output": str(i)} for i in range(50)], 20) for p in range(400)]
    assert len({tuple(d) for d in draws}) == 400
    counts = np.bincount(np.concatenate(draws), minlength=50)
    assert counts.min() > 0.4 * 400 - 50 and counts.max() < 0.4 * 400 + 50  # 160 +- 5 sigma
    assert drawn_tests(ECHO50, 0) == list(range(50)) and drawn_tests(ECHO50[:7], 20) == list(range(7))


@requires_bwrap
def test_code_max_tests_runs_the_drawn_tests_and_records_them():
    echo = BLOCK.format("print(input())")
    cfg = VerifierConfig(code_max_tests=20, code_stop_at_first_failure=False)
    s = _code(ECHO50, echo, config=cfg)
    assert (s.reward, s.details["run"], s.details["of"]) == (1.0, 20, 50)
    assert s.details["tests"] == drawn_tests(ECHO50, 20) == _code(ECHO50, echo, config=cfg).details["tests"]
    # a program wrong on every test outside the draw passes (the study's 20 of ~50), wrong on one inside fails,
    # and the failure names the test's index in the record
    outside = min(set(range(50)) - set(s.details["tests"]))
    inside = s.details["tests"][-1]
    wrong_on = BLOCK.format("x = input()\nprint(x if int(x) != {} else -1)")
    assert _code(ECHO50, wrong_on.format(outside), config=cfg).reward == 1.0
    failed = _code(ECHO50, wrong_on.format(inside), config=cfg)
    assert (failed.reward, failed.details["failure"]["test"]) == (0.0, inside)
    assert _code(ECHO50, wrong_on.format(outside)).reward == 0.0  # all tests: the default
