"""Code sources that ship test code instead of input/output pairs: HumanEval, MBPP (original and
sanitized), AceCode-style assert lists and KodCode-style pytest files, as assert-style code records
(`ground_truth.test_code`, `entry_point`, `program_prefix`; the code verifier's assert harness runs them).

How the program is assembled: HumanEval asks the model to complete a function whose signature,
docstring, imports and helpers are in the prompt, so its record carries that prompt as `program_prefix`
and the verifier always runs `program_prefix + code block`. A response that writes the whole function
redefines the stub (the later `def` wins) and still finds the prompt's imports and helpers; a response
that writes only the body continues the stub. MBPP, AceCode and KodCode rows give a task statement, and
the response's code block is the whole program.

`humaneval_record(row)`, `mbpp_record(row)`, `acecode_record(row)` and `kodcode_record(row)` convert one
row as distributed (raising RowError on a malformed one); the CONVERTERS entries wrap them for
`rlvr-data convert`.
"""

from __future__ import annotations

import ast

from rlvr_jax.data.sources.code import DEFAULT_MEMORY_MB, DEFAULT_TIME_LIMIT_S
from rlvr_jax.data.sources.rows import RowError, get_field, user_turn

HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function (with any imports it "
    "needs) in a ```python code block.\n\n```python\n{prompt}```"
)
# The MBPP paper's prompt: the task, then the tests the code must pass (they name the function).
MBPP_INSTRUCTION = (
    "You are an expert Python programmer, and here is your task: {text} Your code should pass these "
    "tests:\n\n{tests}\n\nReply with your code in a ```python code block."
)
CODE_BLOCK_INSTRUCTION = "\n\nReply with your solution in a ```python code block."


def assert_record(
    rid: str,
    prompt: str,
    test_code: str,
    source: str,
    *,
    entry_point: str | None = None,
    program_prefix: str | None = None,
    **meta,
) -> dict:
    """One assert-style code record (validated later by records.validate_record)."""
    gt = {"tests": [], "fn_name": None, "test_code": test_code, "entry_point": entry_point or None}
    if program_prefix:
        gt["program_prefix"] = program_prefix
    gt.update(time_limit_s=DEFAULT_TIME_LIMIT_S, memory_limit_mb=DEFAULT_MEMORY_MB)
    return {
        "id": str(rid),
        "domain": "code",
        "messages": user_turn(prompt),
        "ground_truth": gt,
        "source": source,
        "metadata": {k: v for k, v in meta.items() if v is not None},
    }


def humaneval_record(row: dict) -> dict:
    """HumanEval (`task_id, prompt, canonical_solution, test, entry_point`): the test's
    `check(candidate)` gets the entry point; metadata.reference is a response the verifier passes."""
    prompt = get_field(row, "prompt")
    solution = row.get("canonical_solution")
    return assert_record(
        get_field(row, "task_id"),
        HUMANEVAL_INSTRUCTION.format(prompt=prompt),
        get_field(row, "test"),
        "humaneval",
        entry_point=get_field(row, "entry_point"),
        program_prefix=prompt,
        reference=f"```python\n{solution}```" if isinstance(solution, str) else None,
    )


def _string_list(row: dict, key: str, *, required: bool = True) -> list[str]:
    value = row.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise RowError(key, "expected a list of assert strings")
    if required and not value:
        raise RowError(key, "empty list")
    return value


def mbpp_record(row: dict) -> dict:
    """MBPP (`task_id, text, code, test_list, test_setup_code, challenge_test_list`; the sanitized
    variant has `prompt` for `text`): graded on `test_setup_code` + `test_list`, as the paper does;
    the challenge tests stay in metadata."""
    text = row.get("text") if row.get("text") is not None else row.get("prompt")
    if not isinstance(text, str) or not text.strip():
        raise RowError("text", "missing (MBPP has `text`, sanitized MBPP `prompt`)")
    tests = _string_list(row, "test_list")
    setup = row.get("test_setup_code") or ""
    if not isinstance(setup, str):
        raise RowError("test_setup_code", f"expected a string, got {type(setup).__name__}")
    code = row.get("code")
    return assert_record(
        f"mbpp/{get_field(row, 'task_id', (int, str))}",
        MBPP_INSTRUCTION.format(text=text.strip(), tests="\n".join(tests)),
        (setup.rstrip() + "\n" if setup.strip() else "") + "\n".join(tests) + "\n",
        "mbpp",
        reference=f"```python\n{code}\n```" if isinstance(code, str) else None,
        challenge_test_list=_string_list(row, "challenge_test_list", required=False) or None,
    )


def acecode_record(row: dict, default_id: str = "") -> dict:
    """AceCode-style rows: `question` and `test_cases`, a list of assert statements."""
    tests = _string_list(row, "test_cases")
    rid = row.get("id") if row.get("id") is not None else default_id
    return assert_record(
        f"acecode/{rid}",
        get_field(row, "question") + CODE_BLOCK_INSTRUCTION,
        "\n".join(tests) + "\n",
        str(row.get("source") or "acecode"),
    )


def pytest_fixture_tests(test_code: str) -> list[str]:
    """Test functions that take arguments no `parametrize` supplies (pytest fixtures): the assert
    harness cannot call them, so a record holding them could never pass."""
    out = []
    for s in ast.parse(test_code).body:
        if isinstance(s, ast.FunctionDef) and s.name.startswith("test") and s.args.args:
            parametrized = any("parametrize" in ast.unparse(d) for d in s.decorator_list)
            if not parametrized:
                out.append(s.name)
    return out


def kodcode_record(row: dict, default_id: str = "") -> dict:
    """KodCode-style rows: `question` and `test`, a pytest file that imports from `solution`."""
    test = get_field(row, "test")
    try:
        fixtures = pytest_fixture_tests(test)
    except SyntaxError as e:
        raise RowError("test", f"not valid Python: line {e.lineno}: {e.msg}") from None
    if fixtures:
        raise RowError("test", f"pytest fixtures are not supported ({', '.join(fixtures)})")
    prompt = get_field(row, "question")
    info = row.get("test_info")
    decls = [i.get("function_declaration") for i in info if isinstance(i, dict)] if isinstance(info, list) else []
    decls = [d for d in decls if isinstance(d, str) and d.strip()]
    if decls:
        prompt += "\n\nYour code should define:\n" + "\n".join(decls)
    rid = row.get("question_id") if row.get("question_id") is not None else default_id
    return assert_record(f"kodcode/{rid}", prompt + CODE_BLOCK_INSTRUCTION, test, "kodcode")


def humaneval(row, ctx):
    return [humaneval_record(row)]


def mbpp(row, ctx):
    return [mbpp_record(row)]


def acecode(row, ctx):
    return [acecode_record(row, str(ctx.line))]


def kodcode(row, ctx):
    """A row whose tests need pytest fixtures is skipped and counted, not an error."""
    try:
        return [kodcode_record(row, str(ctx.line))]
    except RowError as e:
        if "fixtures" not in e.what:
            raise
        ctx.skipped["pytest_fixtures"] += 1
        return []
