"""Code sources (TACO / APPS, CodeContests, LiveCodeBench): stdin/stdout or function-call tests with
the problem's time and memory limits (defaults where the source gives none).
"""

from __future__ import annotations

import json
import re

from rlvr_jax.data.sources.rows import RowError, get_field, json_field, make_record, user_turn

# Limits for code sources that give none: the study's 10 s run timeout and 4 GB.
DEFAULT_TIME_LIMIT_S = 10.0
DEFAULT_MEMORY_MB = 4096


def code_records(ctx, rid, messages, tests, source, *, fn_name=None, time_limit_s=None, memory_mb=None, **meta):
    """One code record with the source's limits or the defaults, or none (counted) without tests."""
    if not tests:
        ctx.skipped["no_tests"] += 1
        return []
    gt = {
        "tests": tests,
        "fn_name": fn_name or None,
        "time_limit_s": float(time_limit_s or DEFAULT_TIME_LIMIT_S),
        "memory_limit_mb": int(memory_mb or DEFAULT_MEMORY_MB),
    }
    return [make_record(ctx, "code", rid, messages, gt, source, **meta)]


def _text(value) -> str:
    # APPS stores some expected outputs as lists of lines.
    if isinstance(value, list):
        return "\n".join(map(str, value))
    return str(value)


def _call_input(args) -> str:
    """Function-call arguments as the code verifier reads them: one JSON value per line."""
    return "\n".join(json.dumps(a) for a in args)


def _number(text, unit_pattern: str) -> float | None:
    m = re.search(r"([0-9]*\.?[0-9]+)\s*" + unit_pattern, str(text or ""), flags=re.IGNORECASE)
    return float(m.group(1)) if m else None


def taco(row, ctx):
    """TACO and APPS: `input_output` JSON {inputs, outputs, fn_name?}."""
    io = json_field(row, "input_output") if row.get("input_output") else None
    if not io:
        ctx.skipped["no_tests"] += 1
        return []
    if not isinstance(io, dict) or not isinstance(io.get("inputs"), list) or not isinstance(io.get("outputs"), list):
        raise RowError("input_output", "expected JSON {inputs: [...], outputs: [...]}")
    if len(io["inputs"]) != len(io["outputs"]):
        raise RowError("input_output", f"{len(io['inputs'])} inputs but {len(io['outputs'])} outputs")
    fn_name = io.get("fn_name")
    if fn_name:
        # APPS/TACO wrap a call's result in a one-element list; their checker accepts either.
        tests = [
            {
                "input": _call_input(i if isinstance(i, list) else [i]),
                "output": json.dumps(o[0] if isinstance(o, list) and len(o) == 1 else o),
            }
            for i, o in zip(io["inputs"], io["outputs"])
        ]
    else:
        tests = [{"input": _text(i), "output": _text(o)} for i, o in zip(io["inputs"], io["outputs"])]
    question = get_field(row, "question")
    starter = row.get("starter_code") or ""
    prompt = question + (f"\n\n{starter}" if starter.strip() else "")
    time_limit = _number(row.get("time_limit"), "s")
    memory = _number(row.get("memory_limit"), "m")
    rid = row.get("id") or row.get("problem_id")
    return code_records(
        ctx,
        rid if rid is not None else ctx.default_id("taco"),
        user_turn(prompt),
        tests,
        str(row.get("source") or "taco"),
        fn_name=fn_name,
        time_limit_s=time_limit,
        memory_mb=memory,
        difficulty=row.get("difficulty"),
        starter_code=starter or None,
    )


def code_contests(row, ctx):
    kinds = ["public_tests", "private_tests"] + (["generated_tests"] if ctx.include_generated_tests else [])
    tests = []
    for kind in kinds:
        block = row.get(kind) or {}
        ins, outs = block.get("input") or [], block.get("output") or []
        if len(ins) != len(outs):
            raise RowError(kind, f"{len(ins)} inputs but {len(outs)} outputs")
        tests += [{"input": i, "output": o} for i, o in zip(ins, outs)]
    tl = row.get("time_limit") or {}
    seconds = (tl.get("seconds") or 0) + (tl.get("nanos") or 0) / 1e9 if isinstance(tl, dict) else None
    mem = row.get("memory_limit_bytes")
    return code_records(
        ctx,
        row.get("name") or ctx.default_id("code_contests"),
        user_turn(get_field(row, "description")),
        tests,
        "code_contests",
        time_limit_s=seconds or None,
        memory_mb=int(mem) // 2**20 if mem else None,
        difficulty=row.get("difficulty"),
    )


def livecodebench(row, ctx):
    """Decoded JSON tests only: an encoded (base64+zlib+pickle) field is an error, never unpickled."""
    cases = []
    for key in ("public_test_cases", "private_test_cases"):
        value = row.get(key)
        if value in (None, "", []):
            continue
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                looks_encoded = re.fullmatch(r"[A-Za-z0-9+/=\s]+", value[:4096]) is not None
                raise RowError(
                    key,
                    "not JSON"
                    + (
                        " (looks like upstream base64+zlib+pickle: decode it offline once into JSON; "
                        "this loader never unpickles)"
                        if looks_encoded
                        else ""
                    ),
                ) from None
        if not isinstance(value, list):
            raise RowError(key, "expected a list of {input, output, testtype}")
        cases += value
    meta = json_field(row, "metadata") or {}
    fn_name = meta.get("func_name") if isinstance(meta, dict) else None
    tests = []
    for i, c in enumerate(cases):
        kind = c.get("testtype", "stdin")
        if kind == "functional":
            if not fn_name:
                raise RowError("metadata", "functional tests need metadata.func_name")
            tests.append({"input": "\n".join(ln for ln in c["input"].split("\n") if ln.strip()), "output": c["output"]})
        elif kind == "stdin":
            tests.append({"input": c["input"], "output": c["output"]})
        else:
            raise RowError(f"test_cases[{i}].testtype", f"unknown test type {kind!r}")
    functional = any(c.get("testtype") == "functional" for c in cases)
    if functional and not all(c.get("testtype") == "functional" for c in cases):
        raise RowError("public_test_cases", "mixes functional and stdin tests")
    content = get_field(row, "question_content")
    starter = row.get("starter_code") or ""
    prompt = content + (f"\n\n{starter}" if starter.strip() else "")
    rid = row.get("question_id") or row.get("question_title") or ctx.default_id("livecodebench")
    return code_records(
        ctx,
        f"livecodebench/{rid}",
        user_turn(prompt),
        tests,
        f"livecodebench/{row.get('platform', '')}",
        fn_name=fn_name if functional else None,
        contest_date=row.get("contest_date"),
        difficulty=row.get("difficulty"),
        starter_code=starter or None,
    )
