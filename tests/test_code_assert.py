"""Assert-style code tests (HumanEval `check`, plain asserts, pytest-style functions): the harness counts
units, and every way a program might fake a pass scores 0. Each attack pairs a WRONG function with the
trick, so an escape turns into reward 1 and fails the test. Converters: rows in the public layouts."""

import json
import shutil

import pytest

from rlvr_jax.data.records import validate_record
from rlvr_jax.data.sources import convert_file
from rlvr_jax.data.sources.code_tests import acecode_record, humaneval_record, kodcode_record, mbpp_record
from rlvr_jax.verifiers import VerifierConfig, score
from rlvr_jax.verifiers.code import sandbox_runs

requires_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None,
    reason="!!! bubblewrap (bwrap) is NOT installed: sandboxed assert-style tests SKIPPED. "
    "Install it with `apt-get install bubblewrap` or scripts/setup.sh !!!",
)

CHECK = "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(3) == 9\n"
PYTEST = (
    "import pytest\nfrom solution import sq\n\n"
    "def test_small():\n    assert sq(2) == 4\n\n"
    "@pytest.mark.parametrize('x,y', [(3, 9), (4, 16)])\ndef test_param(x, y):\n    assert sq(x) == y\n\n"
    "class TestSq:\n    def test_raises(self):\n        with pytest.raises(TypeError):\n            sq('a')\n\n"
    "    def test_approx(self):\n        assert sq(0.1) == pytest.approx(0.01)\n"
)
ASSERTS = "import math\nassert sq(2) == 4\nassert sq(3) == 9\nassert abs(sq(0.5) - 0.25) < 1e-9\n"
RIGHT = "def sq(x):\n    return x * x\n"
WRONG = "def sq(x):\n    return x + x\n"  # right for 2 only


def gt_of(test_code, entry_point=None, **extra):
    return {
        "tests": [],
        "test_code": test_code,
        "entry_point": entry_point,
        "time_limit_s": 2.0,
        "memory_limit_mb": 256,
        **extra,
    }


def run(gt, program):
    return score({"domain": "code", "ground_truth": gt}, f"```python\n{program}\n```", config=VerifierConfig())


KINDS = {"check": gt_of(CHECK, "sq"), "pytest": gt_of(PYTEST), "asserts": gt_of(ASSERTS)}


@requires_bwrap
@pytest.mark.parametrize("kind,units", [("check", 1), ("pytest", 4), ("asserts", 3)])
def test_right_passes_and_wrong_fails_with_unit_counts(kind, units):
    ok = run(KINDS[kind], RIGHT)
    assert (ok.reward, ok.reason) == (1.0, "ok"), ok
    assert ok.details["passed"] == ok.details["total"] == units and ok.details["kind"] == "assert"
    bad = run(KINDS[kind], WRONG)
    assert bad.reward == 0.0 and bad.reason == "wrong" and bad.details["failure"]["kind"] == "failed"
    assert bad.details["passed"] < units and "AssertionError" in bad.details["failure"]["error"]


@requires_bwrap
def test_prints_do_not_disturb_the_verdict():
    noisy = "import os, sys\nprint('hello')\nos.write(1, b'x' * 5000)\nsys.stderr.write('e')\n" + RIGHT
    assert run(KINDS["check"], noisy).reward == 1.0


@requires_bwrap
def test_program_prefix_is_prepended():
    gt = gt_of(CHECK, "sq", program_prefix="import math\n\ndef sq(x):\n    '''Square x.'''\n")
    assert run(gt, "    return math.pow(x, 2)").reward == 1.0  # a body completing the stub
    assert run(gt, "def sq(x):\n    return math.prod([x, x])").reward == 1.0  # a full redefinition
    assert run(gt, "    return None").reward == 0.0


FORGE = (
    "import os\n"
    "for fd in range(3, 64):\n"
    "    for line in (b'0' * 32 + b' 1 1\\n', b'0' * 32 + b' 4 4\\n', b'0' * 32 + b' 3 3\\n'):\n"
    "        try:\n            os.write(fd, line)\n        except OSError:\n            pass\n"
)
ATTACKS = {
    "sys_exit_at_load": WRONG + "import sys\nsys.exit(0)\n",
    "os_exit_at_load": WRONG + "import os\nos._exit(0)\n",
    "raise_systemexit_in_call": "def sq(x):\n    raise SystemExit(0)\n",
    "os_exit_in_call": "import os\ndef sq(x):\n    os._exit(0)\n",
    "keyboard_interrupt_in_call": "def sq(x):\n    raise KeyboardInterrupt\n",
    "patch_assertion_error": WRONG + "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\n",
    "patch_builtins": WRONG + "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.isinstance = lambda *a: True\n",
    "define_check_and_tests": WRONG + "def check(candidate):\n    pass\ndef test_small():\n    pass\n",
    "replace_tests_from_call": (
        "import sys\ndef sq(x):\n    g = sys._getframe(1).f_globals\n"
        "    for k in list(g):\n        if k.startswith('test') or k in ('check', 'TestSq'):\n"
        "            g[k] = lambda *a, **k: None\n    return x + x\n"
    ),
    "swap_test_code_objects": (
        "import sys\ndef sq(x):\n    g = sys._getframe(1).f_globals\n"
        "    for k, v in list(g.items()):\n        if hasattr(v, '__code__') and k != 'sq':\n"
        "            v.__code__ = (lambda *a, **k: None).__code__\n    return x + x\n"
    ),
    "print_success_marker": WRONG + "print('PASSED')\nprint('0' * 32 + ' 1 1')\n",
    "forge_result_then_exit": WRONG + FORGE + "os._exit(0)\n",
    "forge_result_then_continue": WRONG + FORGE,
    "read_stdin_for_nonce": (
        WRONG + "import os, sys\nnonce = sys.stdin.read().strip() or os.read(0, 64).decode().strip()\n"
        "for fd in range(3, 64):\n    try:\n        os.write(fd, f'{nonce} 1 1\\n'.encode())\n"
        "    except OSError:\n        pass\nos._exit(0)\n"
    ),
    "atexit_forge": WRONG + "import atexit, os\natexit.register(lambda: os.write(1, b'ok'))\n",
    "fake_pytest_module": (
        WRONG + "import sys, types, contextlib\nm = types.ModuleType('pytest')\n"
        "m.raises = lambda *a, **k: contextlib.suppress(BaseException)\nm.approx = lambda *a, **k: None\n"
        "m.mark = types.SimpleNamespace(parametrize=lambda *a, **k: (lambda f: f))\nsys.modules['pytest'] = m\n"
    ),
}


@requires_bwrap
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_escape_attempts_score_zero(attack, kind):
    s = run(KINDS[kind], ATTACKS[attack])
    assert s.reward == 0.0, (attack, kind, s)
    assert s.reason == "wrong" and s.details["failure"]["kind"] in ("failed", "no_verdict"), s
    # Not even one unit more than the wrong function earns without the trick (a partial escape).
    assert s.details["passed"] <= _wrong_passes(kind), (attack, kind, s)


_WRONG_PASSES = {}


def _wrong_passes(kind):
    if kind not in _WRONG_PASSES:
        _WRONG_PASSES[kind] = run(KINDS[kind], WRONG).details["passed"]
    return _WRONG_PASSES[kind]


@requires_bwrap
def test_limits_still_apply():
    s = run(KINDS["check"], "def sq(x):\n    while True:\n        pass\n")
    assert s.reward == 0.0 and s.details["failure"]["kind"] == "time_limit"


def test_pool_deadline_counts_one_run_for_test_code():
    config = VerifierConfig()
    assert sandbox_runs(KINDS["check"], config) == 1
    assert sandbox_runs({"tests": [{"input": "", "output": ""}] * 3}, config) == 3


# ---------------------------------------------------------------- converters, public row layouts
HUMANEVAL_ROW = {
    "task_id": "HumanEval/999",
    "prompt": 'from typing import List\n\n\ndef sq_all(xs: List[int]) -> List[int]:\n    """Square each.\n    >>> sq_all([2])\n    [4]\n    """\n',
    "canonical_solution": "    return [x * x for x in xs]\n",
    "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate([1, 2]) == [1, 4]\n    assert candidate([]) == []\n",
    "entry_point": "sq_all",
}
MBPP_ROW = {
    "task_id": 11,
    "text": "Write a python function to square a number.",
    "code": "def square(n):\r\n  return n * n",
    "test_list": ["assert square(2) == 4", "assert square(3) == 9", "assert square(-1) == 1"],
    "test_setup_code": "import math",
    "challenge_test_list": ["assert square(10**6) == 10**12"],
}
ACECODE_ROW = {
    "id": "oss_1",
    "source": "oss",
    "question": "Write `double(x)` returning 2 * x.",
    "test_cases": ["assert double(1) == 2", "assert double(0) == 0"],
}
KODCODE_ROW = {
    "question_id": "Prefill_1",
    "question": "Write a function `add(a, b)`.",
    "test": "from solution import add\n\ndef test_add():\n    assert add(1, 2) == 3\n\ndef test_neg():\n    assert add(-1, 1) == 0\n",
    "test_info": [{"function_name": "add", "function_declaration": "def add(a, b):"}],
}


def test_converters_build_valid_records():
    he = validate_record(humaneval_record(HUMANEVAL_ROW))
    gt = he["ground_truth"]
    assert he["id"] == "HumanEval/999" and gt["entry_point"] == "sq_all" and gt["test_code"] == HUMANEVAL_ROW["test"]
    assert gt["program_prefix"] == HUMANEVAL_ROW["prompt"] and HUMANEVAL_ROW["prompt"] in he["messages"][0]["content"]
    mb = validate_record(mbpp_record(MBPP_ROW))
    assert mb["id"] == "mbpp/11" and mb["ground_truth"]["test_code"].startswith("import math\nassert square(2) == 4")
    assert "assert square(3) == 9" in mb["messages"][0]["content"]  # the tests name the function
    assert "10**12" not in mb["ground_truth"]["test_code"] and mb["metadata"]["challenge_test_list"]
    sanitized = {k: v for k, v in MBPP_ROW.items() if k != "text"} | {"prompt": MBPP_ROW["text"]}
    assert validate_record(mbpp_record(sanitized))["ground_truth"] == mb["ground_truth"]
    ace = validate_record(acecode_record(ACECODE_ROW))
    assert ace["id"] == "acecode/oss_1" and ace["ground_truth"]["test_code"].count("assert") == 2
    kod = validate_record(kodcode_record(KODCODE_ROW))
    assert kod["id"] == "kodcode/Prefill_1" and "def add(a, b):" in kod["messages"][0]["content"]


@requires_bwrap
def test_converted_records_score():
    cases = [  # (record, a right program or None for the row's own reference, a wrong program)
        (humaneval_record(HUMANEVAL_ROW), None, "def sq_all(xs):\n    return xs"),
        (humaneval_record(HUMANEVAL_ROW), "    return [x ** 2 for x in xs]", "    return None"),  # body only
        (mbpp_record(MBPP_ROW), None, "def square(n):\n    return abs(n) * 2"),
        (acecode_record(ACECODE_ROW), "def double(x):\n    return 2 * x", "def double(x):\n    return x ** 2"),
        (kodcode_record(KODCODE_ROW), "def add(a, b):\n    return a + b", "def add(a, b):\n    return a - b"),
    ]
    for rec, right, wrong in cases:
        rec = validate_record(rec)
        reference = rec["metadata"]["reference"] if right is None else f"```python\n{right}\n```"
        assert score(rec, reference).reward == 1.0, rec["id"]
        assert score(rec, f"```python\n{wrong}\n```").reward == 0.0, rec["id"]


def test_convert_file_and_fixture_skip(tmp_path):
    path = tmp_path / "kod.jsonl"
    fixture = dict(KODCODE_ROW, test="def test_x(tmp_path):\n    assert True\n")
    path.write_text("\n".join(json.dumps(r) for r in (KODCODE_ROW, fixture)) + "\n")
    out, skipped = convert_file("kodcode", str(path))
    assert len(out) == 1 and skipped == {"pytest_fixtures": 1}
    he = tmp_path / "he.jsonl"
    he.write_text(
        json.dumps(HUMANEVAL_ROW) + "\n" + json.dumps({**HUMANEVAL_ROW, "test": "def check(c):\n  assert\n"}) + "\n"
    )
    with pytest.raises(Exception, match=r"he.jsonl:2: field 'ground_truth.test_code'"):
        convert_file("humaneval", str(he))
