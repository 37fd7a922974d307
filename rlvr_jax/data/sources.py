"""Converters from the public RLVR datasets' row formats (FORMATS.md) to records:
`CONVERTERS[name](row, ctx)` gives one row's records (none for a counted skip); `convert_file`
reads JSONL, parquet or CSV and validates every record against the input's file:line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
from collections import Counter
from typing import Any, Callable

from rlvr_jax.data.records import RecordError, iter_rows, validate_record

# Limits for code sources that give none: the study's 10 s run timeout and 4 GB.
DEFAULT_TIME_LIMIT_S = 10.0
DEFAULT_MEMORY_MB = 4096
GPQA_LETTERS = "ABCD"


class RowError(Exception):
    """A malformed input row; convert_file turns it into a RecordError at the input's file:line."""

    def __init__(self, field: str, what: str):
        self.field, self.what = field, what


@dataclasses.dataclass
class Context:
    """Per-file state: where we are, the seed, skip counts, and what was already seen (dedup)."""

    file: str
    seed: int = 0
    include_generated_tests: bool = False
    line: int = 0
    skipped: Counter = dataclasses.field(default_factory=Counter)
    seen: set = dataclasses.field(default_factory=set)

    def default_id(self, prefix: str) -> str:
        return f"{prefix}/{os.path.splitext(os.path.basename(self.file))[0]}/{self.line}"


def _get(row: dict, key: str, kind: type | tuple = str) -> Any:
    """row[key] (dotted for nesting), of the given type, else RowError naming the field."""
    value: Any = row
    for part in key.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            raise RowError(key, "missing")
        value = value[part]
    if not isinstance(value, kind):
        raise RowError(key, f"expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        raise RowError(key, "empty")
    return value


def _json(row: dict, key: str) -> Any:
    """A field that holds JSON text (decoded) or an already-decoded value."""
    value = row.get(key)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as e:
            raise RowError(key, f"invalid JSON: {e}") from None
    return value


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _record(ctx: Context, domain: str, rid: str, messages: list, gt: dict, source: str, **meta) -> dict:
    return {
        "id": str(rid),
        "domain": domain,
        "messages": messages,
        "ground_truth": gt,
        "source": source,
        "metadata": {k: v for k, v in meta.items() if v is not None},
    }


def _messages(value: Any, field: str) -> list[dict]:
    """Chat messages as rows store them; `developer` (OpenAI Responses) is our `system`."""
    if not isinstance(value, list) or not value:
        raise RowError(field, "expected a non-empty list of chat messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise RowError(f"{field}[{i}]", "expected {role, content}")
        role = {"developer": "system"}.get(m.get("role"), m.get("role"))
        out.append({"role": role, "content": m["content"]})
    return out


# ------------------------------------------------------------------------------------- math
def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...}, nested braces respected."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        return None
    depth, i = 1, starts[-1]
    while i < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[starts[-1] : i - 1].strip() if depth == 0 else None


def _math(ctx, rid, messages, answer, source, **meta):
    if not isinstance(answer, str) or not answer.strip():
        ctx.skipped["empty_answer"] += 1
        return []
    return [_record(ctx, "math", rid, messages, {"answers": [answer.strip()]}, source, **meta)]


def gsm8k(row, ctx):
    answer = _get(row, "answer")
    if "####" not in answer:
        raise RowError("answer", "no '#### <number>' line")
    gold = answer.rsplit("####", 1)[1].strip().replace(",", "")
    return _math(ctx, row.get("id") or ctx.default_id("gsm8k"), _user(_get(row, "question")), gold, "gsm8k")


def math_(row, ctx):
    answer = row.get("answer")
    if not (isinstance(answer, str) and answer.strip()):
        answer = last_boxed(_get(row, "solution"))
        if answer is None:
            raise RowError("solution", "no answer field and no \\boxed{} in the solution")
    return _math(
        ctx,
        row.get("unique_id") or ctx.default_id("math"),
        _user(_get(row, "problem")),
        answer,
        "math",
        level=row.get("level"),
        type=row.get("type"),
    )


def deepscaler(row, ctx):
    return _math(ctx, ctx.default_id("deepscaler"), _user(_get(row, "problem")), row.get("answer"), "deepscaler")


def dapo(row, ctx):
    messages = _messages(_json(row, "prompt"), "prompt")
    gold = _get(row, "reward_model.ground_truth")
    key = (json.dumps(messages, sort_keys=True), gold)
    if key in ctx.seen:  # the file repeats every prompt about 100 times
        ctx.skipped["duplicate"] += 1
        return []
    ctx.seen.add(key)
    index = (row.get("extra_info") or {}).get("index")
    return _math(
        ctx,
        f"dapo17k/{index}" if index is not None else ctx.default_id("dapo17k"),
        messages,
        gold,
        row.get("data_source") or "dapo17k",
    )


# ------------------------------------------------------------------------------------- code
def _code(ctx, rid, messages, tests, source, *, fn_name=None, time_limit_s=None, memory_mb=None, **meta):
    if not tests:
        ctx.skipped["no_tests"] += 1
        return []
    gt = {
        "tests": tests,
        "fn_name": fn_name or None,
        "time_limit_s": float(time_limit_s or DEFAULT_TIME_LIMIT_S),
        "memory_limit_mb": int(memory_mb or DEFAULT_MEMORY_MB),
    }
    return [_record(ctx, "code", rid, messages, gt, source, **meta)]


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
    io = _json(row, "input_output") if row.get("input_output") else None
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
    question = _get(row, "question")
    starter = row.get("starter_code") or ""
    prompt = question + (f"\n\n{starter}" if starter.strip() else "")
    time_limit = _number(row.get("time_limit"), "s")
    memory = _number(row.get("memory_limit"), "m")
    rid = row.get("id") or row.get("problem_id")
    return _code(
        ctx,
        rid if rid is not None else ctx.default_id("taco"),
        _user(prompt),
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
    return _code(
        ctx,
        row.get("name") or ctx.default_id("code_contests"),
        _user(_get(row, "description")),
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
    meta = _json(row, "metadata") or {}
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
    content = _get(row, "question_content")
    starter = row.get("starter_code") or ""
    prompt = content + (f"\n\n{starter}" if starter.strip() else "")
    rid = row.get("question_id") or row.get("question_title") or ctx.default_id("livecodebench")
    return _code(
        ctx,
        f"livecodebench/{rid}",
        _user(prompt),
        tests,
        f"livecodebench/{row.get('platform', '')}",
        fn_name=fn_name if functional else None,
        contest_date=row.get("contest_date"),
        difficulty=row.get("difficulty"),
        starter_code=starter or None,
    )


# ------------------------------------------------------------------------------------- science
def gpqa(row, ctx):
    """Options shuffled by a seed derived from (seed, Record ID); the permutation is recorded."""
    question = _get(row, "Question").strip()
    options = [_get(row, "Correct Answer").strip(), *(_get(row, f"Incorrect Answer {k}").strip() for k in (1, 2, 3))]
    rid = row.get("Record ID") or ctx.default_id("gpqa")
    order = list(range(4))
    random.Random(f"{ctx.seed}/{rid}").shuffle(order)  # order[j] = original option shown as letter j
    lines = "\n".join(f"{GPQA_LETTERS[j]}) {options[k]}" for j, k in enumerate(order))
    gt = {"answer": GPQA_LETTERS[order.index(0)], "choices": list(GPQA_LETTERS)}
    return [
        _record(
            ctx,
            "science",
            f"gpqa/{rid}",
            _user(f"{question}\n\n{lines}"),
            gt,
            "gpqa",
            shuffle_seed=ctx.seed,
            permutation=order,
            subdomain=row.get("Subdomain"),
            domain_name=row.get("High-level domain"),
        )
    ]


# ------------------------------------------------------------------------------------- if
def _if_kwargs(value, n: int, field: str) -> list[dict]:
    try:
        return _if_kwargs_list(value, n, field)
    except ValueError as e:  # kwargs stored as JSON text that does not parse
        raise RowError(field, f"invalid JSON: {e}") from None


def _if_kwargs_list(value, n: int, field: str) -> list[dict]:
    value = json.loads(value) if isinstance(value, str) else value
    if value is None:
        value = [{}] * n
    if not isinstance(value, list) or len(value) != n:
        raise RowError(field, f"expected a list of {n} kwargs dicts")
    out = []
    for i, kw in enumerate(value):
        kw = json.loads(kw) if isinstance(kw, str) else (kw or {})
        if not isinstance(kw, dict):
            raise RowError(f"{field}[{i}]", "expected a dict")
        out.append({k: v for k, v in kw.items() if v is not None})  # drop only None: zeros are real
    return out


def _if_record(ctx, rid, messages, ids, kwargs, prompt, source, **meta):
    return [
        _record(ctx, "if", rid, messages, {"instruction_ids": ids, "kwargs": kwargs, "prompt": prompt}, source, **meta)
    ]


def ifeval(row, ctx):
    """IFEval and IFBench test rows."""
    ids = _json(row, "instruction_id_list")
    if not isinstance(ids, list):
        raise RowError("instruction_id_list", "expected a list")
    prompt = _get(row, "prompt")
    key = row.get("key")
    return _if_record(
        ctx,
        f"ifeval/{key}" if key is not None else ctx.default_id("ifeval"),
        _user(prompt),
        ids,
        _if_kwargs(row.get("kwargs"), len(ids), "kwargs"),
        prompt,
        "ifeval",
    )


def _relation(q: str, n: int) -> list[tuple[str, int]] | None:
    """IFEval relations for an RLVR-IFEval quantifier: 'at most n' is 'less than n+1'."""
    return {"at least": [("at least", n)], "less than": [("less than", n)], "at most": [("less than", n + 1)]}.get(
        str(q).strip().lower()
    )


def _exactly(id_: str, count_key: str, rel_key: str, n: int, **extra) -> list:
    # "exactly n" is "at least n" and "less than n+1": two instructions, both must hold.
    return [
        (id_, {**extra, count_key: n, rel_key: "at least"}),
        (id_, {**extra, count_key: n + 1, rel_key: "less than"}),
    ]


def _rel(id_: str, count_key: str, rel_key: str):
    def make(a):
        rel = _relation(a.get("quantifier"), int(a["N"]))
        return None if rel is None else [(id_, {count_key: n, rel_key: r}) for r, n in rel]

    return make


# func_name of open-instruct's IFEvalG checkers -> our registry's (id, kwargs) list; None = no exact mapping.
LEGACY_IF: dict[str, Callable[[dict], list | None]] = {
    "verify_keywords": lambda a: [("keywords:existence", {"keywords": a["keyword_list"]})],
    "validate_forbidden_words": lambda a: [("keywords:forbidden_words", {"forbidden_words": a["forbidden_words"]})],
    "verify_letter_frequency": lambda a: _exactly(
        "keywords:letter_frequency", "let_frequency", "let_relation", int(a["N"]), letter=a["letter"]
    ),
    "verify_keyword_frequency": lambda a: _exactly(
        "keywords:frequency", "frequency", "relation", int(a["N"]), keyword=a["word"]
    ),
    "validate_response_language": lambda a: [("language:response_language", {"language": a["language"]})],
    "verify_paragraph_count": lambda a: [("length_constraints:number_paragraphs", {"num_paragraphs": int(a["N"])})],
    "validate_word_constraint": _rel("length_constraints:number_words", "num_words", "relation"),
    "verify_sentence_constraint": _rel("length_constraints:number_sentences", "num_sentences", "relation"),
    "validate_paragraphs": lambda a: [
        (
            "length_constraints:nth_paragraph_first_word",
            {"num_paragraphs": int(a["N"]), "nth_paragraph": int(a["i"]), "first_word": a["first_word"]},
        )
    ],
    "verify_postscript": lambda a: [("detectable_content:postscript", {"postscript_marker": a["postscript_marker"]})],
    "validate_placeholders": lambda a: [("detectable_content:number_placeholders", {"num_placeholders": int(a["N"])})],
    "verify_bullet_points": lambda a: [("detectable_format:number_bullet_lists", {"num_bullets": int(a["N"])})],
    "validate_title": lambda a: [("detectable_format:title", {})],
    "validate_highlighted_sections": lambda a: [
        ("detectable_format:number_highlighted_sections", {"num_highlights": int(a["N"])})
    ],
    "validate_sections": lambda a: [
        ("detectable_format:multiple_sections", {"section_spliter": a["section_splitter"], "num_sections": int(a["N"])})
    ],
    "validate_json_format": lambda a: [("detectable_format:json_format", {})],
    "validate_repeat_prompt": lambda a: [("combination:repeat_prompt", {"prompt_to_repeat": a["original_prompt"]})],
    "validate_two_responses": lambda a: [("combination:two_responses", {})],
    "validate_uppercase": lambda a: [("change_case:english_capital", {})],
    "validate_lowercase": lambda a: [("change_case:english_lowercase", {})],
    "validate_frequency_capital_words": _rel(
        "change_case:capital_word_frequency", "capital_frequency", "capital_relation"
    ),
    "validate_end": lambda a: [("startend:end_checker", {"end_phrase": a["end_phrase"]})],
    "validate_quotation": lambda a: [("startend:quotation", {})],
    "validate_no_commas": lambda a: [("punctuation:no_comma", {})],
}


def rlvr_ifeval(row, ctx):
    """RLVR-IFEval rows: one legacy checker per row, mapped onto the registry where exact."""
    messages = _messages(_json(row, "messages"), "messages")
    messages = [m for m in messages if m["role"] != "assistant"] or messages
    gt = _json(row, "ground_truth")
    if isinstance(gt, list) and len(gt) == 1:
        gt = gt[0]
    if not isinstance(gt, dict) or "func_name" not in gt:
        raise RowError("ground_truth", "expected JSON {func_name, ...}")
    func = gt["func_name"]
    if func not in LEGACY_IF:
        ctx.skipped[f"unmapped_if:{func}"] += 1
        return []
    args = {k: v for k, v in gt.items() if v is not None}
    try:
        mapped = LEGACY_IF[func](args)
    except (KeyError, TypeError, ValueError) as e:
        raise RowError("ground_truth", f"{func}: bad arguments ({e!r})") from None
    if mapped is None:  # e.g. quantifier "around": no registry instruction means the same
        ctx.skipped[f"unmapped_if:{func}:{args.get('quantifier')}"] += 1
        return []
    prompt = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    return _if_record(
        ctx,
        ctx.default_id("rlvr_ifeval"),
        messages,
        [i for i, _ in mapped],
        [k for _, k in mapped],
        prompt,
        "rlvr_ifeval",
        constraint_type=row.get("constraint_type"),
        legacy_func=func,
    )


# ------------------------------------------------------------------------------------- nemotron
# Sub-corpus name (suffix of `dataset`) -> domain; anything else is out of scope, counted.
NEMOTRON_ROUTES = {
    "_dapo17k": "math",
    "_skywork_no_omni": "math",
    "_stem_mcqa": "science",
    "_instruction_following": "if",
    "_comp_coding_50tests": "code",
}


def nemotron(row, ctx):
    """Rows of the Nemotron-3-Nano RL blend, routed by `dataset`."""
    dataset = _get(row, "dataset")
    domain = next((d for suffix, d in NEMOTRON_ROUTES.items() if suffix[1:] in dataset), None)
    if domain is None:
        ctx.skipped[f"out_of_scope:{dataset}"] += 1
        return []
    params = _json(row, "responses_create_params") or {}
    messages = _messages(_json(params, "input") if isinstance(params, dict) else None, "responses_create_params.input")
    rid = row.get("uuid") or ctx.default_id("nemotron")
    source = f"nemotron/{dataset}"
    if domain == "math":
        return _math(ctx, rid, messages, row.get("expected_answer"), source)
    if domain == "science":
        options = _json(row, "options")
        if not isinstance(options, list) or not options:
            raise RowError("options", "expected a list of one-key dicts")
        letters = []
        for i, o in enumerate(options):
            o = {k: v for k, v in o.items() if v is not None} if isinstance(o, dict) else o
            if not isinstance(o, dict) or len(o) != 1:
                raise RowError(f"options[{i}]", f"expected a one-key dict, got {o!r}")
            letters += list(o)
        gt = {"answer": _get(row, "expected_answer").strip().upper(), "choices": letters}
        return [_record(ctx, "science", rid, messages, gt, source)]
    if domain == "if":
        ids = _json(row, "instruction_id_list")
        if not isinstance(ids, list):
            raise RowError("instruction_id_list", "expected a list")
        prompt = row.get("prompt") or next(m["content"] for m in reversed(messages) if m["role"] == "user")
        return _if_record(ctx, rid, messages, ids, _if_kwargs(row.get("kwargs"), len(ids), "kwargs"), prompt, source)
    meta = _json(row, "verifier_metadata") or {}
    unit = meta.get("unit_tests") if isinstance(meta, dict) else None
    unit = json.loads(unit) if isinstance(unit, str) else unit
    if not isinstance(unit, dict) or len(unit.get("inputs") or []) != len(unit.get("outputs") or []):
        raise RowError("verifier_metadata.unit_tests", "expected {inputs: [str], outputs: [str]} of equal length")
    tests = [{"input": i, "output": o} for i, o in zip(unit["inputs"], unit["outputs"])]
    return _code(ctx, rid, messages, tests, source)


# Where users get each format (Hugging Face dataset repos, downloaded by them, e.g. with
# `huggingface-cli download REPO --repo-type dataset --local-dir DIR`); shown by `convert --help`.
WHERE = {
    "gsm8k": "openai/gsm8k",
    "math": "EleutherAI/hendrycks_math",
    "math500": "HuggingFaceH4/MATH-500",
    "deepscaler": "agentica-org/DeepScaleR-Preview-Dataset",
    "dapo17k": "BytedTsinghua-SIA/DAPO-Math-17k",
    "nemotron": "NVIDIA's Nemotron-3-Nano RL training blend",
    "taco": "BAAI/TACO",
    "apps": "codeparrot/apps",
    "code_contests": "deepmind/code_contests",
    "livecodebench": "livecodebench/code_generation_lite (decode the private tests to JSON offline first)",
    "gpqa": "Idavidrein/gpqa (gated)",
    "ifeval": "google/IFEval",
    "ifbench": "allenai/IFBench_test",
    "rlvr_ifeval": "allenai/RLVR-IFeval",
}

CONVERTERS: dict[str, Callable[[dict, Context], list[dict]]] = {
    "gsm8k": gsm8k,
    "math": math_,
    "math500": math_,
    "deepscaler": deepscaler,
    "dapo17k": dapo,
    "nemotron": nemotron,
    "taco": taco,
    "apps": taco,
    "code_contests": code_contests,
    "livecodebench": livecodebench,
    "gpqa": gpqa,
    "ifeval": ifeval,
    "ifbench": ifeval,
    "rlvr_ifeval": rlvr_ifeval,
}


def convert_file(
    fmt: str, path: str, *, seed: int = 0, include_generated_tests: bool = False, skip_invalid: bool = False
) -> tuple[list[dict], Counter]:
    """Records of one source file and the counts of skipped rows by reason.

    A malformed row or an invalid converted record raises RecordError at the input's file:line;
    with skip_invalid it is counted as `invalid:<field>` instead.
    """
    if fmt not in CONVERTERS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {sorted(CONVERTERS)}")
    ctx = Context(file=path, seed=seed, include_generated_tests=include_generated_tests)
    out = []
    for line, row, error in iter_rows(path):
        ctx.line = line
        try:
            if error is not None:
                raise error
            try:
                if not isinstance(row, dict):
                    raise RowError("<row>", f"expected an object, got {type(row).__name__}")
                converted = CONVERTERS[fmt](row, ctx)
            except RowError as e:
                raise RecordError(path, line, e.field, e.what) from None
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
                # A row shape no converter check anticipated: still name the file and line.
                raise RecordError(path, line, "<row>", f"cannot convert as {fmt}: {e!r}") from None
            out += [validate_record(r, file=path, line=line) for r in converted]
        except RecordError as e:
            if not skip_invalid:
                raise
            ctx.skipped[f"invalid:{e.field}"] += 1
    return out, ctx.skipped
