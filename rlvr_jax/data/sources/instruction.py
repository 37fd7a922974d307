"""Instruction-following sources (IFEval, IFBench, RLVR-IFEval): instruction ids and kwargs for the
registry, with open-instruct's legacy checkers mapped onto registry instructions where exact.
"""

from __future__ import annotations

import json
from typing import Callable

from rlvr_jax.data.sources.rows import RowError, chat_messages, get_field, json_field, make_record, user_turn


def if_kwargs(value, n: int, field: str) -> list[dict]:
    """One kwargs dict per instruction (None values dropped); JSON text is decoded."""
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


def if_records(ctx, rid, messages, ids, kwargs, prompt, source, **meta):
    """The one IF record of a row: registry ids, their kwargs and the prompt they check against."""
    return [
        make_record(
            ctx, "if", rid, messages, {"instruction_ids": ids, "kwargs": kwargs, "prompt": prompt}, source, **meta
        )
    ]


def ifeval(row, ctx):
    """IFEval and IFBench test rows."""
    ids = json_field(row, "instruction_id_list")
    if not isinstance(ids, list):
        raise RowError("instruction_id_list", "expected a list")
    prompt = get_field(row, "prompt")
    key = row.get("key")
    return if_records(
        ctx,
        f"ifeval/{key}" if key is not None else ctx.default_id("ifeval"),
        user_turn(prompt),
        ids,
        if_kwargs(row.get("kwargs"), len(ids), "kwargs"),
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
    messages = chat_messages(json_field(row, "messages"), "messages")
    messages = [m for m in messages if m["role"] != "assistant"] or messages
    gt = json_field(row, "ground_truth")
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
    return if_records(
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
