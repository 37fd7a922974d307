"""Instruction-following rewards: IFEval-style verifiable instructions and the IF verifier."""

from __future__ import annotations

from typing import Any, Mapping

from rlvr_jax.instructions.registry import (
    BUILTIN_CONFLICTS,
    BUILTIN_TASK_IDS,
    IFEVAL_IDS,
    INSTRUCTIONS,
    check,
    check_all,
    describe,
    normalize_kwargs,
    reference_response,
    sample_instruction_set,
    sample_kwargs,
    validate_kwargs,
)

__all__ = [
    "BUILTIN_CONFLICTS",
    "BUILTIN_TASK_IDS",
    "IFEVAL_IDS",
    "INSTRUCTIONS",
    "check",
    "check_all",
    "describe",
    "normalize_kwargs",
    "reference_response",
    "sample_instruction_set",
    "sample_kwargs",
    "validate_kwargs",
    "verify_if",
]


def verify_if(record: Mapping[str, Any], response: str, *, strict: bool = True) -> tuple[float, str, dict]:
    """(reward, reason, details) for an `if` record: 1.0 only if every instruction holds.

    reason is ok | wrong | no_answer (blank response) | error (bad ground truth: records are
    validated at load time, so this only labels a record that slipped past as a clear zero).
    details: instruction_ids, followed (one bool each), fraction, strict.
    """
    truth = record["ground_truth"]
    ids = list(truth["instruction_ids"])
    kwargs_list = list(truth.get("kwargs") or [{}] * len(ids))
    details: dict[str, Any] = {"instruction_ids": ids, "strict": strict}
    try:
        followed = check_all(ids, kwargs_list, response, prompt=truth.get("prompt") or "", strict=strict)
    except ValueError as e:
        return 0.0, "error", {**details, "error": str(e)}
    details["followed"] = followed
    details["fraction"] = sum(followed) / len(followed) if followed else 0.0
    if not response.strip():
        return 0.0, "no_answer", details
    if followed and all(followed):
        return 1.0, "ok", details
    return 0.0, "wrong", details
