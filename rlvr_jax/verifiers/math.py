"""Math rewards: the last `\\boxed{}` (the study's form: only after the final "Answer:"; the lenient form:
anywhere, or as a fallback the last "Answer:" line) against
normalised gold answers with `math-verify`, plus guards for its known false positives (equations
for values, and exact numbers compared at float precision). Runs in pool workers, whose main thread
lets math-verify's own alarm-based timeout work; the pool's deadline (kill the worker) is what bounds
answers that hang inside C code."""

from __future__ import annotations

import threading

from rlvr_jax.verifiers.base import Score, VerifierConfig
from rlvr_jax.verifiers.format import after_last_answer_marker, last_answer_line, last_boxed, strip_dollars

_MV = None  # math_verify and sympy pieces, imported on first use (a second or so of sympy import)


def _mv():
    global _MV
    if _MV is None:
        import math_verify  # local: math-verify and sympy take seconds to import: once per worker, on first use
        import sympy  # local: with math-verify
        from math_verify.utils import timeout  # local: with math-verify

        configs = [math_verify.LatexExtractionConfig(boxed_match_priority=0), math_verify.ExprExtractionConfig()]
        _MV = (math_verify, configs, sympy, timeout)
    return _MV


def warm_up() -> None:
    """Import math-verify and sympy now: a pool worker does this before it reports ready."""
    _mv()


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
    return [
        _exact_decimals(e)
        for e in mv.parse("\\boxed{" + latex + "}", extraction_config=configs, parsing_timeout=_timeout(config))
    ]


def _exact_decimals(expr):
    """`expr` with every Float replaced by the exact value of the decimal it was written as.

    math-verify rounds a comparison to 6 decimals as soon as one side is a Float, so 0.3333333 would
    equal 1/3 and 1.41421356 equal sqrt(2). A written decimal is an exact number (0.3333333 is
    3333333/10^7): as Rationals, 0.5 still equals 1/2 and 3.0 equals 3, exactly. The parser keeps a
    Float's precision to its digit count, so its decimal string gives back the written digits.
    (Raising verify's `float_rounding` would only move the line: some longer decimal still rounds
    to 1/3.)"""
    _, _, sympy, _ = _mv()
    if not isinstance(expr, (sympy.Basic, sympy.MatrixBase)):
        return expr  # the parser's string form
    floats = {f: sympy.Rational(str(f)) for f in expr.atoms(sympy.Float) if f.is_finite}
    return expr.xreplace(floats) if floats else expr


def _scalar(expr):
    """A number without free symbols that `expr` states (an assignment `x = v` states `v`), or None
    for sets, tuples, intervals, matrices, relations and expressions in variables."""
    _, _, sympy, _ = _mv()
    if isinstance(expr, sympy.Eq) and isinstance(expr.lhs, sympy.Symbol):
        expr = expr.rhs
    if not isinstance(expr, sympy.Expr) or isinstance(expr, sympy.MatrixExpr) or expr.free_symbols:
        return None
    return expr


def _values(expr) -> list:
    """The values a scalar may stand for: `50\\%` is 1/2 or, as math-verify reads a bare 50
    against it, 50 (its percentage value)."""
    _, _, sympy, _ = _mv()
    out = [expr.doit()]
    if (
        isinstance(expr, sympy.Mul)
        and len(expr.args) == 2
        and expr.args[1] == sympy.UnevaluatedExpr(sympy.Rational(1, 100))
    ):
        out.append(expr.args[0])
    return out


def _exactly_equal(a, b) -> bool:
    """Exact equality of two numbers without variables: their difference is decided zero by sympy's
    assumptions, simplifies to 0, or is proven zero by `equals` (minimal polynomials for algebraic
    numbers). Undecided counts as different."""
    _, _, sympy, _ = _mv()
    if a == b:  # also the infinities, whose difference is nan
        return True
    d = a - b
    if d.is_zero is not None:  # decided without simplification: plain numbers, most radicals
        return bool(d.is_zero)
    return sympy.simplify(d) == 0 or d.equals(0) is True


def _differ(g, p) -> bool:
    """True when g and p are numbers, or tuples / sets / intervals / matrices of numbers, or relations
    of one kind whose sides differ by a constant, that are not exactly equal; False when they are,
    or are anything else (left to math-verify)."""
    _, _, sympy, _ = _mv()
    gs, ps = _scalar(g), _scalar(p)
    if gs is not None and ps is not None:
        return not any(_exactly_equal(a, b) for a in _values(gs) for b in _values(ps))
    if isinstance(g, sympy.core.relational.Relational) and type(g) is type(p):
        # `x < 10^{-20}` vs `x < 2\\cdot 10^{-20}`: sides whose differences differ by a constant
        # state different relations unless that constant is exactly 0.
        gap = (g.lhs - g.rhs) - (p.lhs - p.rhs)
        return not gap.free_symbols and not _exactly_equal(gap, sympy.Integer(0))
    if isinstance(g, sympy.Interval) and isinstance(p, sympy.Interval):
        return _differ(g.start, p.start) or _differ(g.end, p.end)
    if isinstance(g, sympy.Tuple) and isinstance(p, sympy.Tuple) and len(g) == len(p):
        return any(_differ(a, b) for a, b in zip(g, p))
    if isinstance(g, sympy.MatrixBase) and isinstance(p, sympy.MatrixBase) and g.shape == p.shape:
        return any(_differ(a, b) for a, b in zip(g, p))
    if isinstance(g, sympy.FiniteSet) and isinstance(p, sympy.FiniteSet) and len(g) == len(p):
        gl, pl = [_scalar(x) for x in g.args], [_scalar(x) for x in p.args]
        if any(x is None for x in gl + pl):
            return False
        # Exact equality is an equivalence, so matching greedily finds a pairing if one exists.
        for a in gl:
            match = next((i for i, b in enumerate(pl) if not _differ(a, b)), None)
            if match is None:
                return True
            pl.pop(match)
    return False


def _exact_guard(gold, pred, config: VerifierConfig) -> bool:
    """False when math-verify called two different exact values equal.

    Floats are already exact decimals (_exact_decimals), but its last resort for two expressions
    that are not plain numbers (10^{-20} vs 2\\cdot 10^{-20}, \\sqrt{2} vs \\sqrt{2}+10^{-20}) is
    `(a - b).evalf(15, chop=True) == 0`, which calls values that agree to 15 digits equal; it reaches
    it inside tuples, sets, intervals and relations too. Numbers without variables must equal the
    gold exactly there (_differ); expressions in variables are left to math-verify."""
    _, _, _, timeout = _mv()
    try:
        return not timeout(timeout_seconds=_timeout(config))(_differ)(gold[0], pred[0])
    except Exception:  # sympy failing proves nothing: math-verify's verdict stands
        return True
    except BaseException as e:  # math-verify's TimeoutException: undecided is not equal
        if type(e).__name__ != "TimeoutException":
            raise
        return False


def _equation_guard(gold, pred) -> bool:
    """False for math-verify's value-vs-equation false positive: it grades `\\boxed{x^2+1=5}`
    right against gold `5` by comparing only the right-hand side. An equation answer to a value
    question counts only when it is an assignment to one symbol (`x = 5`)."""
    _, _, sympy, _ = _mv()
    if not pred or not gold:
        return True
    g, p = gold[0], pred[0]
    if isinstance(p, sympy.core.relational.Relational) and not isinstance(g, sympy.core.relational.Relational):
        return isinstance(p.lhs, sympy.Symbol)
    return True


def extract_answer(text: str, config: VerifierConfig) -> tuple[str | None, str]:
    """(answer, source): under the study's form the last \\boxed{} after the final "Answer:" (source
    "answer_boxed"; none: (None, "no Answer: marker" / "no \\boxed{} after the final Answer:")); under the
    lenient form the last \\boxed{} anywhere ("boxed"), else, with math_answer_fallback, the last
    "Answer:" line ("answer_line")."""
    if config.math_form == "study":
        tail = after_last_answer_marker(text)
        if tail is None:
            return None, "no Answer: marker"
        answer = last_boxed(tail)
        return (answer, "answer_boxed") if answer is not None else (None, "no \\boxed{} after the final Answer:")
    answer = last_boxed(text)
    if answer is not None:
        return answer, "boxed"
    if config.math_answer_fallback:
        answer = last_answer_line(text)
        if answer is not None:
            return answer, "answer_line"
    return None, ""


def score_math(ground_truth: dict, text: str, config: VerifierConfig) -> Score:
    """Reward 1 when the extracted answer equals any gold answer."""
    mv, _, _, _ = _mv()
    answer, source = extract_answer(text, config)
    if answer is None:
        return Score(0.0, "no_answer", {"why": source} if source else {})
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
        if mv.verify(gold, pred, timeout_seconds=_timeout(config)) and _exact_guard(gold, pred, config):
            return Score(1.0, "ok", {"answer": shown, "source": source, "matched": str(gold_text)})
    return Score(0.0, "wrong", {"answer": shown, "source": source})
