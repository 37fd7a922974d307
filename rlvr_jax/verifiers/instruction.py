"""Instruction-following rewards: a response scores 1 only if it follows every instruction of its
record (strict, or IFEval's loose mode). The instructions themselves live in rlvr_jax.instructions."""

from __future__ import annotations

from typing import Any, Mapping

from rlvr_jax.instructions import registry
from rlvr_jax.verifiers.base import Score


def _followed(ground_truth: Mapping[str, Any], text: str, strict: bool) -> tuple[list[str], list[bool]]:
    """(instruction ids, whether each holds); ValueError on an unknown id or bad kwargs."""
    ids = list(ground_truth["instruction_ids"])
    kwargs = [dict(k or {}) for k in ground_truth.get("kwargs") or [{}] * len(ids)]
    held = registry.check_all(ids, kwargs, text, prompt=ground_truth.get("prompt") or "", strict=strict)
    return ids, [bool(h) for h in held]


def score_if(ground_truth: Mapping[str, Any], text: str, *, strict: bool = True) -> Score:
    """The `if` domain's reward (what `score` calls): ok when every instruction holds, else wrong.

    details: fraction (of instructions followed) and failed (their ids). A bad ground truth raises
    ValueError, which `score` turns into reason `error`.
    """
    ids, held = _followed(ground_truth, text, strict)
    ok = all(held)
    return Score(
        float(ok),
        "ok" if ok else "wrong",
        {"fraction": sum(held) / max(len(held), 1), "failed": [i for i, h in zip(ids, held) if not h]},
    )
