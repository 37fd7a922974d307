"""IFEval-style verifiable instructions: the registry (ids, kwargs, checks, descriptions, built-in task
helpers) that data writes and validates with and the IF verifier (rlvr_jax.verifiers.instruction) checks with."""

from __future__ import annotations

from rlvr_jax.instructions.official import MODES
from rlvr_jax.instructions.registry import (
    BUILTIN_CONFLICTS,
    BUILTIN_TASK_IDS,
    IFBENCH_IDS,
    IFEVAL_IDS,
    INSTRUCTIONS,
    check,
    check_all,
    describe,
    ifeval_accuracy,
    normalize_kwargs,
    reference_response,
    sample_instruction_set,
    sample_kwargs,
    validate_kwargs,
)

__all__ = [
    "BUILTIN_CONFLICTS",
    "BUILTIN_TASK_IDS",
    "IFBENCH_IDS",
    "IFEVAL_IDS",
    "INSTRUCTIONS",
    "MODES",
    "check",
    "check_all",
    "describe",
    "ifeval_accuracy",
    "normalize_kwargs",
    "reference_response",
    "sample_instruction_set",
    "sample_kwargs",
    "validate_kwargs",
]
