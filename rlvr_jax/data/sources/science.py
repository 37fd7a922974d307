"""Science sources (GPQA): four options shuffled per question by a recorded seed."""

from __future__ import annotations

import random

from rlvr_jax.data.sources.rows import get_field, make_record, user_turn

GPQA_LETTERS = "ABCD"


def gpqa(row, ctx):
    """Options shuffled by a seed derived from (seed, Record ID); the permutation is recorded."""
    question = get_field(row, "Question").strip()
    options = [
        get_field(row, "Correct Answer").strip(),
        *(get_field(row, f"Incorrect Answer {k}").strip() for k in (1, 2, 3)),
    ]
    rid = row.get("Record ID") or ctx.default_id("gpqa")
    order = list(range(4))
    random.Random(f"{ctx.seed}/{rid}").shuffle(order)  # order[j] = original option shown as letter j
    lines = "\n".join(f"{GPQA_LETTERS[j]}) {options[k]}" for j, k in enumerate(order))
    gt = {"answer": GPQA_LETTERS[order.index(0)], "choices": list(GPQA_LETTERS)}
    return [
        make_record(
            ctx,
            "science",
            f"gpqa/{rid}",
            user_turn(f"{question}\n\n{lines}"),
            gt,
            "gpqa",
            shuffle_seed=ctx.seed,
            permutation=order,
            subdomain=row.get("Subdomain"),
            domain_name=row.get("High-level domain"),
        )
    ]
