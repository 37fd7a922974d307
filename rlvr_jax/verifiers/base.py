"""The types every verifier shares: a `Score` (reward, reason, details), the `VerifierConfig` and the one
way to read it from a run config (`verifier_config`), and the four domains."""

from __future__ import annotations

import dataclasses

from rlvr_jax.instructions.official import MODES as IF_MODES

ANSWER_FORMS = ("study", "lenient")  # VerifierConfig.math_form / science_form


@dataclasses.dataclass(frozen=True)
class Score:
    reward: float
    reason: str  # ok | wrong | no_answer | format | truncated | timeout | error
    details: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class VerifierConfig:
    """Defaults are the lenient rules (what the verifiers did before the study's were added); the study's
    preset (configs/grpo.py) asks for the study's through `pool_from_config`."""

    thinking: bool = False  # grade only the text after the last </think>; none -> 0
    # a response cut at max_new_tokens scores 0 (reason "truncated") without being graded (the study)
    truncated_zero: bool = False
    # math
    # "study": the last \boxed{} after the final "Answer:" only; "lenient": the last \boxed{} anywhere, else
    # (math_answer_fallback) the last "Answer:" line
    math_form: str = "lenient"
    math_answer_fallback: bool = True  # lenient form, no \boxed{}: use the last "Answer:" line
    math_timeout_s: int = 5  # math-verify's own alarm (main thread only), seconds
    math_max_answer_chars: int = 1000  # longer answers are not parsed (no_answer)
    # code
    code_block_language: str = "python"  # fence tag of the program block ("" = any fence)
    numeric_tolerance: float = 0.0  # 0: outputs compared exactly; >0: numbers within abs/rel tol
    code_max_tests: int = 0  # 0: all tests; else this many drawn at random, seeded per problem (details["tests"])
    code_stop_at_first_failure: bool = True
    code_default_time_limit_s: float = 10.0  # when a record has none (the study's 10 s)
    code_max_time_limit_s: float = 10.0  # records may ask for less, never more
    code_max_memory_mb: int = 4096  # the study's 4 GB
    code_startup_slack_s: float = 1.0  # wall time on top of the CPU limit for interpreter start
    code_max_output_bytes: int = 1 << 20  # stdout read per test beyond 2x the expected output
    sandbox_tmp_mb: int = 64  # private /tmp (and /dev/shm) tmpfs size
    sandbox_fsize_mb: int = 16  # largest file a program may write
    sandbox_nproc: int = 32  # processes+threads per sandbox uid
    sandbox_nofile: int = 64  # open files per process
    sandbox_python: str = ""  # interpreter inside the sandbox ("" = /usr/bin/python3)
    sandbox_uid_base: int = 2_000_000_000  # first unprivileged uid used for worker slots (root only)
    allow_unsandboxed: bool = False  # run programs WITHOUT bwrap: trusted data only, loudly warned
    # each program in this thread's warm sandbox (a fork in a sandbox that stays up: warm.py) rather than in a
    # sandbox and interpreter of its own (about 16 ms a run on a 2-core CPU)
    sandbox_warm: bool = True
    # science: "study": the letter of "Answer: X" or \boxed{X} only; "lenient": also "the answer is X",
    # "correct option X", markdown variants and a lone lower-case letter
    science_form: str = "lenient"
    # instruction following: "reward" (ours: the reference's hackable quirks fixed) or "official" (IFEval's
    # reference scorer, quirks included; what evaluation reports). rlvr_jax.instructions.ifeval lists the differences.
    if_mode: str = "reward"

    def __post_init__(self):
        for name in ("math_form", "science_form"):
            if getattr(self, name) not in ANSWER_FORMS:
                raise ValueError(f"{name} must be one of {ANSWER_FORMS}, got {getattr(self, name)!r}")
        if self.if_mode not in IF_MODES:
            raise ValueError(f"if_mode must be one of {IF_MODES}, got {self.if_mode!r}")
        if self.code_max_tests < 0:
            raise ValueError(f"code_max_tests must be >= 0 (0 = all), got {self.code_max_tests}")


def truncated_score() -> Score:
    """The verdict on a response cut at max_new_tokens when VerifierConfig.truncated_zero (the study's rule)."""
    return Score(0.0, "truncated", {"error": "cut at max_new_tokens"})


DOMAINS = ("math", "code", "science", "if")


def verifier_config(verifier_section, *, thinking: bool) -> VerifierConfig:
    """The VerifierConfig of a run config's `verifier` section (reward rules: code_max_tests, truncated_zero,
    math_form, science_form, if_mode; allow_unsandboxed, sandbox_warm), or of the parsed flags of rlvr-verify /
    rlvr-eval, which carry the same names (verifiers.cli.add_reward_rule_args), and the data's thinking format
    gate."""
    v = verifier_section
    return VerifierConfig(
        thinking=bool(thinking),
        truncated_zero=bool(v.truncated_zero),
        math_form=str(v.math_form),
        science_form=str(v.science_form),
        if_mode=str(v.if_mode),
        code_max_tests=int(v.code_max_tests),
        allow_unsandboxed=bool(v.allow_unsandboxed),
        sandbox_warm=bool(getattr(v, "sandbox_warm", True)),  # the CLIs' flags leave it at the default
    )
