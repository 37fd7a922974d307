"""Rewards for rollouts: `score(record, response)` routes a sample to its domain's verifier
(math, code, science, if); `VerifierPool` (pool.py) runs the same front in worker processes
with deadlines. `Score` and `VerifierConfig` are the types every verifier shares."""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any


@dataclasses.dataclass(frozen=True)
class Score:
    reward: float
    reason: str  # ok | wrong | no_answer | format | timeout | error
    details: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class VerifierConfig:
    thinking: bool = False               # grade only the text after the last </think>; none -> 0
    # math
    math_answer_fallback: bool = True    # no \boxed{}: use the last "Answer:" line
    math_timeout_s: int = 5              # math-verify's own alarm (main thread only), seconds
    math_max_answer_chars: int = 1000    # longer answers are not parsed (no_answer)
    # code
    code_block_language: str = "python"  # fence tag of the program block ("" = any fence)
    numeric_tolerance: float = 0.0       # 0: outputs compared exactly; >0: numbers within abs/rel tol
    code_max_tests: int = 0              # 0: all tests; else a fixed seeded subset of this many
    code_stop_at_first_failure: bool = True
    code_default_time_limit_s: float = 10.0   # when a record has none (the study's 10 s)
    code_max_time_limit_s: float = 10.0       # records may ask for less, never more
    code_max_memory_mb: int = 4096            # the study's 4 GB
    code_startup_slack_s: float = 1.0         # wall time on top of the CPU limit for interpreter start
    code_max_output_bytes: int = 1 << 20      # stdout read per test beyond 2x the expected output
    sandbox_tmp_mb: int = 64                  # private /tmp (and /dev/shm) tmpfs size
    sandbox_fsize_mb: int = 16                # largest file a program may write
    sandbox_nproc: int = 32                   # processes+threads per sandbox uid
    sandbox_nofile: int = 64                  # open files per process
    sandbox_python: str = ""                  # interpreter inside the sandbox ("" = /usr/bin/python3)
    sandbox_uid_base: int = 2_000_000_000     # first unprivileged uid used for worker slots (root only)
    allow_unsandboxed: bool = False           # run programs WITHOUT bwrap: trusted data only, loudly warned


DOMAINS = ("math", "code", "science", "if")


def _instructions_registry():
    """The IF registry (rlvr_jax/verifiers/instructions), imported late so the other domains work
    without it; None when it is not installed."""
    try:
        return importlib.import_module("rlvr_jax.verifiers.instructions.registry")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("rlvr_jax.verifiers.instructions"):
            return None
        raise


def _score_if(gt: dict, text: str) -> Score:
    reg = _instructions_registry()
    if reg is None:
        return Score(0.0, "error", {"error": "instruction registry rlvr_jax.verifiers.instructions is not installed"})
    ids = list(gt["instruction_ids"])
    kwargs = [dict(k or {}) for k in gt.get("kwargs") or [{}] * len(ids)]
    held = [bool(x) for x in reg.check_all(ids, kwargs, text, prompt=gt.get("prompt", ""), strict=True)]
    ok = all(held)
    return Score(float(ok), "ok" if ok else "wrong",
                 {"fraction": sum(held) / max(len(held), 1), "failed": [i for i, h in zip(ids, held) if not h]})


def score(record: dict, response: str, *, thinking: bool | None = None,
          config: VerifierConfig | None = None) -> Score:
    """Score one response against its record's ground truth, in this process. `thinking` defaults
    to config.thinking. Raises only SandboxUnavailable (code without bwrap and without opt-in);
    any other failure inside a verifier is a 0 with reason `error`."""
    from rlvr_jax.verifiers.format import gate
    from rlvr_jax.verifiers.sandbox import SandboxUnavailable

    config = config or VerifierConfig()
    thinking = config.thinking if thinking is None else thinking
    domain = record.get("domain")
    if domain not in DOMAINS:
        return Score(0.0, "error", {"error": f"unknown domain {domain!r}"})
    text = gate(response if isinstance(response, str) else "", thinking)
    if text is None:
        return Score(0.0, "format", {"error": "no </think> in the response"})
    gt: dict[str, Any] = record.get("ground_truth") or {}
    try:
        if domain == "math":
            from rlvr_jax.verifiers.math import score_math
            return score_math(gt, text, config)
        if domain == "science":
            from rlvr_jax.verifiers.science import score_science
            return score_science(gt, text)
        if domain == "code":
            from rlvr_jax.verifiers.code import score_code
            return score_code(gt, text, config)
        return _score_if(gt, text)
    except SandboxUnavailable:
        raise
    except Exception as e:  # a verifier bug or odd record must not stop the batch; it is counted
        return Score(0.0, "error", {"error": f"{type(e).__name__}: {str(e)[:300]}"})


def __getattr__(name):  # VerifierPool lives in pool.py; imported on use to keep this module light
    if name == "VerifierPool":
        from rlvr_jax.verifiers.pool import VerifierPool
        return VerifierPool
    raise AttributeError(name)


__all__ = ["Score", "VerifierConfig", "VerifierPool", "score", "DOMAINS"]
