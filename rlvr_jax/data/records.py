"""The record schema (DESIGN.md), its validation with FILE:LINE: field errors, and row readers.
With `fn_name`, a code test's `input` holds one JSON value per line (one per argument) and `output`
the JSON return value (the code verifier's layout); without it both are stdin/stdout text. A code
record with `test_code` (assert-style: asserts, pytest-style functions or HumanEval's `check`) and an
optional `entry_point` and `program_prefix` has no `tests` (docs/CONTRACTS.md).
"""

from __future__ import annotations

import ast
import csv
import gzip
import json
import math
import os
from typing import Any, Iterator

from rlvr_jax import storage
from rlvr_jax.instructions.registry import validate_kwargs

DOMAINS = ("math", "code", "science", "if")
ROLES = ("system", "user", "assistant")
TOP_LEVEL = ("id", "domain", "messages", "ground_truth", "source", "metadata")
# Fields a record may carry beside its prompt: a `response` to score (rlvr-verify input) and the
# `response_format` it was written in, so the verifier can apply the thinking gate to that record.
EXTRA_FIELDS = ("response", "response_format")
RESPONSE_FORMATS = ("thinking", "plain")


class RecordError(ValueError):
    """A bad record: the message reads `FILE:LINE: field 'x.y': what is wrong`."""

    def __init__(self, file: str, line: int | str, field: str, what: str):
        self.file, self.line, self.field, self.what = file, line, field, what
        super().__init__(f"{file}:{line}: field '{field}': {what}")


class _Bad(Exception):
    def __init__(self, field: str, what: str):
        self.field, self.what = field, what


def _str(obj: dict, key: str, where: str, *, empty_ok: bool = False) -> str:
    if key not in obj:
        raise _Bad(where + key, "missing")
    value = obj[key]
    if not isinstance(value, str):
        raise _Bad(where + key, f"expected a string, got {type(value).__name__}")
    if not empty_ok and not value.strip():
        raise _Bad(where + key, "empty")
    return value


def _list(obj: dict, key: str, where: str) -> list:
    if key not in obj:
        raise _Bad(where + key, "missing")
    value = obj[key]
    if not isinstance(value, (list, tuple)):
        raise _Bad(where + key, f"expected a list, got {type(value).__name__}")
    if not value:
        raise _Bad(where + key, "empty list")
    return list(value)


def _dict(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise _Bad(where, f"expected an object, got {type(value).__name__}")
    return value


def _math(gt: dict) -> None:
    for i, a in enumerate(_list(gt, "answers", "ground_truth.")):
        if not isinstance(a, str) or not a.strip():
            raise _Bad(f"ground_truth.answers[{i}]", f"expected a non-empty string, got {a!r}")


def _science(gt: dict) -> None:
    choices = _list(gt, "choices", "ground_truth.")
    for i, c in enumerate(choices):
        if not (isinstance(c, str) and len(c) == 1 and c.isupper()):
            raise _Bad(f"ground_truth.choices[{i}]", f"expected one upper-case letter, got {c!r}")
    if len(set(choices)) != len(choices):
        raise _Bad("ground_truth.choices", f"duplicate letters in {choices}")
    answer = _str(gt, "answer", "ground_truth.")
    if answer not in choices:
        raise _Bad("ground_truth.answer", f"{answer!r} is not one of the choices {choices}")


def _if(gt: dict) -> None:
    ids = _list(gt, "instruction_ids", "ground_truth.")
    kwargs = _list(gt, "kwargs", "ground_truth.")
    if len(kwargs) != len(ids):
        raise _Bad("ground_truth.kwargs", f"{len(kwargs)} kwargs for {len(ids)} instruction ids")
    _str(gt, "prompt", "ground_truth.")
    for i, (iid, kw) in enumerate(zip(ids, kwargs)):
        if not isinstance(iid, str) or not iid:
            raise _Bad(f"ground_truth.instruction_ids[{i}]", f"expected an instruction id, got {iid!r}")
        kw = _dict({} if kw is None else kw, f"ground_truth.kwargs[{i}]")
        try:
            validate_kwargs(iid, kw)
        except (KeyError, ValueError) as e:
            field = "instruction_ids" if "unknown instruction" in str(e).lower() else "kwargs"
            raise _Bad(f"ground_truth.{field}[{i}]", str(e).strip("'\"")) from None


def _identifier(gt: dict, key: str) -> str | None:
    value = gt.get(key)
    if value is not None and (not isinstance(value, str) or not value.isidentifier()):
        raise _Bad("ground_truth." + key, f"expected null or a Python identifier, got {value!r}")
    return value


def _test_code(gt: dict) -> None:
    """Assert-style tests: `test_code` must parse and hold a unit the harness runs (a top-level assert,
    a `test*` function or `Test*` class, or `check` with an `entry_point`); `tests` stays empty."""
    code = _str(gt, "test_code", "ground_truth.")
    entry = _identifier(gt, "entry_point")
    if gt.get("tests"):
        raise _Bad("ground_truth.tests", "a record holds either `tests` or `test_code`, not both")
    if gt.get("fn_name") is not None:
        raise _Bad("ground_truth.fn_name", "must be null with `test_code` (the entry point is `entry_point`)")
    if not isinstance(gt.get("program_prefix", ""), str):
        raise _Bad("ground_truth.program_prefix", f"expected a string, got {type(gt['program_prefix']).__name__}")
    try:
        body = ast.parse(code).body
    except SyntaxError as e:
        raise _Bad("ground_truth.test_code", f"not valid Python: line {e.lineno}: {e.msg}") from None
    defs = [s for s in body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    has_unit = any(isinstance(s, ast.Assert) for s in body) or any(
        s.name.startswith("Test" if isinstance(s, ast.ClassDef) else "test") for s in defs
    )
    if not has_unit and any(s.name == "check" for s in defs):
        if entry is None:
            raise _Bad("ground_truth.entry_point", "test_code defines check(candidate): name the function it checks")
        has_unit = True
    if not has_unit:
        raise _Bad("ground_truth.test_code", "no top-level assert, test* function, Test* class or check(candidate)")


def _code(gt: dict) -> None:
    if "test_code" in gt:
        _test_code(gt)
    else:
        _function_tests(gt)
    for key, kind in (("time_limit_s", float), ("memory_limit_mb", int)):
        value = gt.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        if not ok or (kind is int and value != int(value)):
            raise _Bad("ground_truth." + key, f"expected a positive {kind.__name__}, got {value!r}")


def _function_tests(gt: dict) -> None:
    fn_name = _identifier(gt, "fn_name")
    for i, t in enumerate(_list(gt, "tests", "ground_truth.")):
        where = f"ground_truth.tests[{i}]."
        _dict(t, where[:-1])
        for key in ("input", "output"):
            value = _str(t, key, where, empty_ok=True)
            if fn_name is not None:
                # Function-call tests: one JSON value per input line (one per argument), JSON output.
                for text in value.splitlines() if key == "input" else [value]:
                    if key == "input" and not text.strip():
                        continue
                    try:
                        json.loads(text)
                    except ValueError as e:
                        raise _Bad(where + key, f"function-call tests hold JSON values: {e}") from None


GROUND_TRUTH = {"math": _math, "science": _science, "if": _if, "code": _code}


def _check(obj: Any, extra_fields: tuple[str, ...]) -> dict:
    rec = _dict(obj, "<record>")
    unknown = sorted(set(rec) - set(TOP_LEVEL) - set(extra_fields))
    if unknown:
        raise _Bad(unknown[0], f"unknown field (allowed: {', '.join(TOP_LEVEL + extra_fields)})")
    _str(rec, "id", "")
    domain = _str(rec, "domain", "")
    if domain not in DOMAINS:
        raise _Bad("domain", f"{domain!r} is not one of {DOMAINS}")
    messages = _list(rec, "messages", "")
    for i, m in enumerate(messages):
        _dict(m, f"messages[{i}]")
        role = _str(m, "role", f"messages[{i}].")
        if role not in ROLES:
            raise _Bad(f"messages[{i}].role", f"{role!r} is not one of {ROLES}")
        _str(m, "content", f"messages[{i}].", empty_ok=role != "user")
    if messages[-1]["role"] != "user":
        raise _Bad(f"messages[{len(messages) - 1}].role", "a prompt must end with a user message")
    if "ground_truth" not in rec:
        raise _Bad("ground_truth", "missing")
    GROUND_TRUTH[domain](_dict(rec["ground_truth"], "ground_truth"))
    source = rec.get("source", "")
    if not isinstance(source, str):
        raise _Bad("source", f"expected a string, got {type(source).__name__}")
    metadata = _dict(rec.get("metadata", {}), "metadata")
    if "response_format" in rec and rec["response_format"] not in RESPONSE_FORMATS:
        raise _Bad("response_format", f"{rec['response_format']!r} is not one of {RESPONSE_FORMATS}")
    return {**rec, "source": source, "metadata": metadata}


def validate_record(
    obj: Any, *, file: str = "<record>", line: int | str = 0, extra_fields: tuple[str, ...] = EXTRA_FIELDS
) -> dict:
    """The record with `source`/`metadata` defaults filled, or RecordError naming file:line:field."""
    try:
        return _check(obj, extra_fields)
    except _Bad as e:
        raise RecordError(file, line, e.field, e.what) from None


def iter_rows(path: str) -> Iterator[tuple[int, Any, RecordError | None]]:
    """(line, row, None), or (line, None, error) for an unparseable JSON line, so callers can go on.

    JSONL (also gzipped, `.gz`) counts file lines, parquet rows from 1, CSV (GPQA ships as CSV) rows as a spreadsheet
    does, the header being row 1.
    """
    if path.endswith(".csv"):
        with storage.open(path, encoding="utf-8", newline="") as f:
            for n, row in enumerate(csv.DictReader(f), start=2):
                yield n, row, None
        return
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq  # local: heavy, and only parquet inputs need it

        n = 0
        with storage.open(path, "rb") as raw:
            for batch in pq.ParquetFile(raw).iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    n += 1
                    yield n, row, None
        return
    with _open_text(path) as f:
        for n, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                yield n, json.loads(text), None
            except ValueError as e:
                yield n, None, RecordError(path, n, "<line>", f"invalid JSON: {e}")


def _open_text(path: str):
    """A text file, local or gs://, gunzipped when it ends in .gz (HumanEval ships as HumanEval.jsonl.gz)."""
    if path.endswith(".gz"):
        return gzip.open(storage.open(path, "rb"), "rt", encoding="utf-8")
    return storage.open(path, encoding="utf-8")


def read_rows(path: str) -> Iterator[tuple[int, Any]]:
    """(line number, row) from JSONL (blank lines skipped), parquet or CSV; see iter_rows."""
    for n, row, error in iter_rows(os.fspath(path)):
        if error is not None:
            raise error
        yield n, row


def load_records(
    paths: str | list[str], *, skip_invalid: bool = False, extra_fields: tuple[str, ...] = EXTRA_FIELDS
) -> tuple[list[dict], list[RecordError]]:
    """Validated records of JSONL/parquet files; with skip_invalid, bad ones come back as errors."""
    records, skipped = [], []
    for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        path = os.fspath(path)
        for line, row, error in iter_rows(path):
            try:
                if error is not None:
                    raise error
                records.append(validate_record(row, file=path, line=line, extra_fields=extra_fields))
            except RecordError as e:
                if not skip_invalid:
                    raise
                skipped.append(e)
    return records, skipped


def write_jsonl(records, path: str) -> int:
    """Write one JSON object per line (UTF-8, not ASCII-escaped); returns the count."""
    n = 0
    with storage.open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n
