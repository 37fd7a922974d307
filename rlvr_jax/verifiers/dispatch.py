"""`score(record, response)`: route one sample to its domain's verifier (math, code, science, if) in
this process, behind the thinking-format gate. The pool (pool.py) runs the same front in workers."""

from __future__ import annotations

from typing import Any

from rlvr_jax.verifiers.base import DOMAINS, Score, VerifierConfig, truncated_score
from rlvr_jax.verifiers.code import score_code
from rlvr_jax.verifiers.format import gate
from rlvr_jax.verifiers.instruction import score_if
from rlvr_jax.verifiers.math import score_math
from rlvr_jax.verifiers.sandbox import SandboxUnavailable
from rlvr_jax.verifiers.science import score_science


def score(
    record: dict,
    response: str,
    *,
    thinking: bool | None = None,
    config: VerifierConfig | None = None,
    truncated: bool = False,
) -> Score:
    """Score one response against its record's ground truth, in this process. `thinking` defaults
    to config.thinking; a `truncated` response (cut at the token limit) scores 0, ungraded, when
    config.truncated_zero. Raises only SandboxUnavailable (code without bwrap and without opt-in);
    any other failure inside a verifier is a 0 with reason `error`."""
    config = config or VerifierConfig()
    thinking = config.thinking if thinking is None else thinking
    if truncated and config.truncated_zero:
        return truncated_score()
    domain = record.get("domain")
    if domain not in DOMAINS:
        return Score(0.0, "error", {"error": f"unknown domain {domain!r}"})
    text = gate(response if isinstance(response, str) else "", thinking)
    if text is None:
        return Score(0.0, "format", {"error": "no </think> in the response"})
    gt: dict[str, Any] = record.get("ground_truth") or {}
    try:
        if domain == "math":
            return score_math(gt, text, config)
        if domain == "science":
            return score_science(gt, text, config.science_form)
        if domain == "code":
            return score_code(gt, text, config)
        return score_if(gt, text, mode=config.if_mode)
    except SandboxUnavailable:
        raise
    except Exception as e:  # a verifier bug or odd record must not stop the batch; it is counted
        return Score(0.0, "error", {"error": f"{type(e).__name__}: {str(e)[:300]}"})
