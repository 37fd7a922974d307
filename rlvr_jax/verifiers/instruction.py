"""Instruction-following rewards: a response scores 1 only if it follows every instruction of its
record. Two modes (VerifierConfig.if_mode): "reward", our checks with the reference's hackable quirks
fixed (training), and "official", IFEval's reference scorer quirks included (evaluation), which also
reports IFEval's strict and loose numbers. The instructions themselves live in rlvr_jax.instructions."""

from __future__ import annotations

from typing import Any, Mapping

from rlvr_jax.instructions import registry
from rlvr_jax.verifiers.base import Score


def _instructions(ground_truth: Mapping[str, Any]) -> tuple[list[str], list[dict], str]:
    ids = list(ground_truth["instruction_ids"])
    kwargs = [dict(k or {}) for k in ground_truth.get("kwargs") or [{}] * len(ids)]
    return ids, kwargs, ground_truth.get("prompt") or ""


def _verdict(ids: list[str], held: list[bool], extra: dict | None = None) -> Score:
    ok = all(held)
    details = {"fraction": sum(held) / max(len(held), 1), "failed": [i for i, h in zip(ids, held) if not h]}
    return Score(float(ok), "ok" if ok else "wrong", {**details, **(extra or {})})


def score_if(ground_truth: Mapping[str, Any], text: str, *, strict: bool = True, mode: str = "reward") -> Score:
    """The `if` domain's reward (what `score` calls): ok when every instruction holds, else wrong.

    reward mode: strict, or IFEval's loose variants with `strict=False`. official mode: the reward is
    IFEval's prompt-level strict accuracy of this item, and details also carry IFEval's four numbers
    (prompt_strict, prompt_loose: bool; inst_strict, inst_loose: one bool per instruction) for
    evaluation to average. details always: fraction (of instructions followed) and failed (their ids).
    A bad ground truth or mode raises ValueError, which `score` turns into reason `error`.
    """
    ids, kwargs, prompt = _instructions(ground_truth)
    if mode == "official":
        acc = registry.ifeval_accuracy(ids, kwargs, text, prompt=prompt, mode=mode)
        return _verdict(ids, acc["inst_strict"], acc)
    held = registry.check_all(ids, kwargs, text, prompt=prompt, strict=strict, mode=mode)
    return _verdict(ids, [bool(h) for h in held])
