"""The Nemotron-3-Nano RL blend: rows of several sub-corpora, each routed to its domain's record."""

from __future__ import annotations

import json

from rlvr_jax.data.sources.code import code_records
from rlvr_jax.data.sources.instruction import if_kwargs, if_records
from rlvr_jax.data.sources.math import math_records
from rlvr_jax.data.sources.rows import RowError, chat_messages, get_field, json_field, make_record

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
    dataset = get_field(row, "dataset")
    domain = next((d for suffix, d in NEMOTRON_ROUTES.items() if suffix[1:] in dataset), None)
    if domain is None:
        ctx.skipped[f"out_of_scope:{dataset}"] += 1
        return []
    params = json_field(row, "responses_create_params") or {}
    messages = chat_messages(
        json_field(params, "input") if isinstance(params, dict) else None, "responses_create_params.input"
    )
    rid = row.get("uuid") or ctx.default_id("nemotron")
    source = f"nemotron/{dataset}"
    if domain == "math":
        return math_records(ctx, rid, messages, row.get("expected_answer"), source)
    if domain == "science":
        options = json_field(row, "options")
        if not isinstance(options, list) or not options:
            raise RowError("options", "expected a list of one-key dicts")
        letters = []
        for i, o in enumerate(options):
            o = {k: v for k, v in o.items() if v is not None} if isinstance(o, dict) else o
            if not isinstance(o, dict) or len(o) != 1:
                raise RowError(f"options[{i}]", f"expected a one-key dict, got {o!r}")
            letters += list(o)
        gt = {"answer": get_field(row, "expected_answer").strip().upper(), "choices": letters}
        return [make_record(ctx, "science", rid, messages, gt, source)]
    if domain == "if":
        ids = json_field(row, "instruction_id_list")
        if not isinstance(ids, list):
            raise RowError("instruction_id_list", "expected a list")
        prompt = row.get("prompt") or next(m["content"] for m in reversed(messages) if m["role"] == "user")
        return if_records(ctx, rid, messages, ids, if_kwargs(row.get("kwargs"), len(ids), "kwargs"), prompt, source)
    meta = json_field(row, "verifier_metadata") or {}
    unit = meta.get("unit_tests") if isinstance(meta, dict) else None
    unit = json.loads(unit) if isinstance(unit, str) else unit
    if not isinstance(unit, dict) or len(unit.get("inputs") or []) != len(unit.get("outputs") or []):
        raise RowError("verifier_metadata.unit_tests", "expected {inputs: [str], outputs: [str]} of equal length")
    tests = [{"input": i, "output": o} for i, o in zip(unit["inputs"], unit["outputs"])]
    return code_records(ctx, rid, messages, tests, source)
