"""Math sources (GSM8K, MATH / MATH-500, AIME, DeepScaleR, DAPO-Math-17k): one answer string per problem,
from the dataset's answer field or the solution's last \\boxed{}.
"""

from __future__ import annotations

import json
import re

from rlvr_jax.data.sources.rows import RowError, chat_messages, get_field, json_field, make_record, user_turn


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


def math_records(ctx, rid, messages, answer, source, **meta):
    """One math record with the answer stripped, or none (counted) when the answer is empty."""
    if not isinstance(answer, str) or not answer.strip():
        ctx.skipped["empty_answer"] += 1
        return []
    return [make_record(ctx, "math", rid, messages, {"answers": [answer.strip()]}, source, **meta)]


def gsm8k(row, ctx):
    answer = get_field(row, "answer")
    if "####" not in answer:
        raise RowError("answer", "no '#### <number>' line")
    gold = answer.rsplit("####", 1)[1].strip().replace(",", "")
    return math_records(
        ctx, row.get("id") or ctx.default_id("gsm8k"), user_turn(get_field(row, "question")), gold, "gsm8k"
    )


def math_(row, ctx):
    answer = row.get("answer")
    if not (isinstance(answer, str) and answer.strip()):
        answer = last_boxed(get_field(row, "solution"))
        if answer is None:
            raise RowError("solution", "no answer field and no \\boxed{} in the solution")
    return math_records(
        ctx,
        row.get("unique_id") or ctx.default_id("math"),
        user_turn(get_field(row, "problem")),
        answer,
        "math",
        level=row.get("level"),
        type=row.get("type"),
    )


def aime(row, ctx):
    """AIME years as the hubs carry them: `problem` (or `question`) and an integer `answer` (stored as int or str)."""
    problem = row.get("problem") if row.get("problem") is not None else get_field(row, "question")
    if not isinstance(problem, str) or not problem.strip():
        raise RowError("problem", "missing or empty")
    answer = row.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, (int, str)):
        raise RowError("answer", f"expected an integer or a string, got {type(answer).__name__}")
    rid = row.get("id") if row.get("id") is not None else row.get("ID")
    return math_records(
        ctx, f"aime/{rid}" if rid is not None else ctx.default_id("aime"), user_turn(problem), str(answer), "aime"
    )


def deepscaler(row, ctx):
    return math_records(
        ctx, ctx.default_id("deepscaler"), user_turn(get_field(row, "problem")), row.get("answer"), "deepscaler"
    )


def dapo(row, ctx):
    messages = chat_messages(json_field(row, "prompt"), "prompt")
    gold = get_field(row, "reward_model.ground_truth")
    key = (json.dumps(messages, sort_keys=True), gold)
    if key in ctx.seen:  # the file repeats every prompt about 100 times
        ctx.skipped["duplicate"] += 1
        return []
    ctx.seen.add(key)
    index = (row.get("extra_info") or {}).get("index")
    return math_records(
        ctx,
        f"dapo17k/{index}" if index is not None else ctx.default_id("dapo17k"),
        messages,
        gold,
        row.get("data_source") or "dapo17k",
    )
