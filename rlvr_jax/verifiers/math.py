"""Math rewards: the last `\\boxed{}` (or, as a fallback, the last "Answer:" line) against
normalised gold answers with `math-verify`, plus guards for its known false positives. Runs in
pool workers, whose main thread lets math-verify's own alarm-based timeout work; the pool's
deadline (kill the worker) is what bounds answers that hang inside C code."""

from __future__ import annotations

import threading

from rlvr_jax.verifiers.base import Score, VerifierConfig
from rlvr_jax.verifiers.format import last_answer_line, last_boxed, strip_dollars

_MV = None  # math_verify and sympy pieces, imported on first use (a second or so of sympy import)


def _mv():
    global _MV
    if _MV is None:
        import math_verify  # local: math-verify and sympy take seconds to import: once per worker, on first use
        from sympy import Symbol  # local: with math-verify
        from sympy.core.relational import Relational  # local: with math-verify

        configs = [math_verify.LatexExtractionConfig(boxed_match_priority=0), math_verify.ExprExtractionConfig()]
        _MV = (math_verify, configs, Symbol, Relational)
    return _MV


def _timeout(config: VerifierConfig) -> int | None:
    # math-verify's timeout is signal.alarm: only usable on the main thread. Elsewhere (a caller's
    # thread) it would raise, so it is switched off and the pool deadline is the only bound.
    if threading.current_thread() is threading.main_thread() and config.math_timeout_s > 0:
        return int(config.math_timeout_s)
    return None


def normalize_gold(answer: str) -> str:
    """A gold answer as the bare LaTeX inside its box: `$…$` stripped, an existing box unwrapped."""
    s = strip_dollars(str(answer))
    inner = last_boxed(s)
    return strip_dollars(inner) if inner is not None else s


def _parse(latex: str, config: VerifierConfig):
    mv, configs, _, _ = _mv()
    return mv.parse("\\boxed{" + latex + "}", extraction_config=configs, parsing_timeout=_timeout(config))


def _equation_guard(gold, pred) -> bool:
    """False for math-verify's value-vs-equation false positive: it grades `\\boxed{x^2+1=5}`
    right against gold `5` by comparing only the right-hand side. An equation answer to a value
    question counts only when it is an assignment to one symbol (`x = 5`)."""
    _, _, Symbol, Relational = _mv()
    if not pred or not gold:
        return True
    g, p = gold[0], pred[0]
    if isinstance(p, Relational) and not isinstance(g, Relational):
        return isinstance(p.lhs, Symbol)
    return True


def score_math(ground_truth: dict, text: str, config: VerifierConfig) -> Score:
    """Reward 1 when the extracted answer equals any gold answer."""
    mv, _, _, _ = _mv()
    answer, source = last_boxed(text), "boxed"
    if answer is None and config.math_answer_fallback:
        answer, source = last_answer_line(text), "answer_line"
    if answer is None:
        return Score(0.0, "no_answer", {})
    answer = strip_dollars(answer)
    shown = answer[:200]
    if len(answer) > config.math_max_answer_chars:
        return Score(0.0, "no_answer", {"error": f"answer longer than {config.math_max_answer_chars} chars"})
    pred = _parse(answer, config)
    if not pred:
        return Score(0.0, "no_answer", {"answer": shown, "source": source, "error": "unparsable"})
    for gold_text in ground_truth["answers"]:
        gold = _parse(normalize_gold(gold_text), config)
        if not gold or not _equation_guard(gold, pred):
            continue
        if mv.verify(gold, pred, timeout_seconds=_timeout(config)):
            return Score(1.0, "ok", {"answer": shown, "source": source, "matched": str(gold_text)})
    return Score(0.0, "wrong", {"answer": shown, "source": source})
