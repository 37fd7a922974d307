"""Math verifier correctness table (in-process, main thread), incl. math-verify's false positives."""

import pytest

from rlvr_jax.verifiers import Score, VerifierConfig, score
from rlvr_jax.verifiers.format import gate, last_answer_line, last_boxed, last_code_block
from rlvr_jax.verifiers.math import normalize_gold


def _math(answers, response, **kw):
    return score({"domain": "math", "ground_truth": {"answers": answers}}, response, **kw)


# (gold answers, response, expected reward, expected reason)
TABLE = [
    (["42"], r"so the total is \boxed{42}.", 1.0, "ok"),
    (["42"], r"\boxed{41}", 0.0, "wrong"),
    (["\\frac{1}{2}"], r"\boxed{0.5}", 1.0, "ok"),
    (["$\\frac{1}{2}$"], r"\boxed{\dfrac12}", 1.0, "ok"),  # gold in $…$
    (["\\boxed{\\sqrt{2}/2}"], r"\boxed{\frac{\sqrt{2}}{2}}", 1.0, "ok"),  # gold already boxed
    (["1000"], r"\boxed{1,000}", 1.0, "ok"),
    (["5", "five"], r"\boxed{5.0}", 1.0, "ok"),  # several gold answers
    (["7", "8"], r"\boxed{8}", 1.0, "ok"),
    (["\\{1,2\\}"], r"\boxed{\{2, 1\}}", 1.0, "ok"),
    (["x=2"], r"\boxed{2}", 1.0, "ok"),
    (["2"], r"\boxed{x = 2}", 1.0, "ok"),  # assignment to one symbol
    (["2x+3y=6"], r"\boxed{4x+6y=12}", 1.0, "ok"),  # same line, scaled
    (["\\frac{3}{4}"], r"first \boxed{1} then corrected: \boxed{\frac{3}{4}}", 1.0, "ok"),  # last box wins
    (["\\frac{3}{4}"], r"\boxed{\frac{3}{4}} no wait \boxed{1}", 0.0, "wrong"),
    (["\\pi"], r"\boxed{3.14159}", 0.0, "wrong"),
    # known false positives of plain math-verify, guarded here
    (["5"], r"\boxed{x^2+1=5}", 0.0, "wrong"),  # value vs an equation
    (["9"], r"\boxed{x^2 = 9}", 0.0, "wrong"),
    (["y=2x+1"], r"\boxed{x=2y+1}", 0.0, "wrong"),  # a different equation
    (["a=1"], r"\boxed{b=1}", 0.0, "wrong"),
    (["7"], "I counted 7 apples but I am not sure what the answer is", 0.0, "no_answer"),  # stray number
    (["2"], r"\boxed{2, 3}", 0.0, "wrong"),  # hedged list
    (["7"], r"\boxed{7} or \boxed{8}", 0.0, "wrong"),
    # Answer-line fallback
    (["12"], "The work...\nAnswer: 12", 1.0, "ok"),
    (["\\frac{1}{2}"], "**Answer:** $\\frac{1}{2}$.", 1.0, "ok"),
    (["12"], "The answer depends on 12 things", 0.0, "no_answer"),
    (["3"], r"\boxed{}", 0.0, "no_answer"),
]


@pytest.mark.parametrize("answers,response,reward,reason", TABLE)
def test_math_table(answers, response, reward, reason):
    s = _math(answers, response)
    assert (s.reward, s.reason) == (reward, reason), s


def test_answer_line_fallback_is_configurable():
    cfg = VerifierConfig(math_answer_fallback=False)
    assert _math(["12"], "Answer: 12").reward == 1.0
    assert _math(["12"], "Answer: 12", config=cfg).reason == "no_answer"


@pytest.mark.parametrize(
    "thinking,response,reward,reason",
    [
        (True, r"<think>maybe \boxed{3}</think> so \boxed{4}", 1.0, "ok"),
        (True, r"<think>so \boxed{4}</think> I give up", 0.0, "no_answer"),  # boxed only inside thoughts
        (True, r"<think>long thoughts \boxed{4} never closed", 0.0, "format"),
        (True, r"<think>a</think>x</think> \boxed{4}", 1.0, "ok"),  # after the LAST </think>
        (False, r"<think>long thoughts \boxed{4} never closed", 1.0, "ok"),  # gate off: whole response
    ],
)
def test_thinking_gate(thinking, response, reward, reason):
    s = _math(["4"], response, thinking=thinking)
    assert (s.reward, s.reason) == (reward, reason), s
    cfg = VerifierConfig(thinking=thinking)  # the config default is used when thinking is not passed
    assert _math(["4"], response, config=cfg).reward == reward


def test_overlong_answer_is_not_parsed():
    s = _math(["1"], "\\boxed{" + "1+" * 2000 + "1}")
    assert (s.reward, s.reason) == (0.0, "no_answer")


def test_helpers():
    assert last_boxed(r"\boxed{\frac{1}{2}} and \boxed{\{1,2\}}") == r"\{1,2\}"
    assert last_boxed(r"\boxed 5 done") == "5"
    assert last_boxed(r"\boxed{2} then \boxed{3") == "2"  # an unclosed box is not an answer
    assert last_boxed("no box") is None
    assert last_answer_line("x\nFinal answer: $7$.\n") == "7"
    assert gate("a</think>b</think>c", True) == "c" and gate("abc", True) is None and gate("abc", False) == "abc"
    assert normalize_gold("$\\boxed{x^2}$") == "x^2" and normalize_gold(" $3$ ") == "3"
    assert last_code_block("```python\n1\n```\n```\n2\n```\n```py\n3\n```") == "3\n"
    assert last_code_block("```cpp\nint\n```") is None and last_code_block("```cpp\nint\n```", "") == "int\n"


def test_unknown_domain_and_odd_response():
    assert score({"domain": "chess", "ground_truth": {}}, "e4").reason == "error"
    assert isinstance(_math(["1"], None), Score)  # a non-string response scores, never raises


# Different exact values that plain math-verify calls equal: a decimal within its 6-decimal rounding
# of the gold, or two expressions whose difference vanishes at 15 digits (its evalf fallback).
DISTINCT = [
    ("\\frac{1}{3}", "0.3333333"),
    ("1/3", "0.333333333333333333"),  # more digits than a float holds
    ("\\sqrt{2}", "1.41421356"),
    ("\\pi", "3.14159265"),
    ("0.1", "0.1000001"),
    ("10^{-12}", "0.000000000002"),
    ("10^{-20}", "2\\cdot 10^{-20}"),
    ("\\sqrt{2}", "\\sqrt{2}+10^{-20}"),
    ("\\frac{1}{3}\\cdot 10^{-9}", "\\frac{1}{3}\\cdot 10^{-9}+10^{-30}"),
    ("2^{60}", "2^{60}+1"),  # these two math-verify already gets right: kept as guards
    ("1152921504606846976", "1152921504606846977"),
    ("(1, \\frac{1}{3})", "(1, 0.3333333)"),
    ("(10^{-20}, 1)", "(2\\cdot 10^{-20}, 1)"),
    ("\\{10^{-20}, 1\\}", "\\{1, 2\\cdot 10^{-20}\\}"),
    ("[0, 10^{-20}]", "[0, 2\\cdot 10^{-20}]"),
    ("\\begin{pmatrix}1/3\\\\1\\end{pmatrix}", "\\begin{pmatrix}0.3333333\\\\1\\end{pmatrix}"),
    ("x < 10^{-20}", "x < 2\\cdot 10^{-20}"),
    ("0.5", "x = 0.5000001"),
]

# The same value in another form: exactness must keep every one of these.
EQUAL = [
    ("\\frac{1}{2}", "0.5"),
    ("0.5", "\\frac12"),
    ("1/2", "50\\%"),
    ("50\\%", "50"),
    ("0.25", "\\frac{1}{4}"),
    ("\\frac52", "2.50"),
    ("3", "3.0"),
    ("100", "100.00"),
    ("123000", "1.23\\times 10^{5}"),
    ("10^{-3}", "0.001"),
    ("0.3", "0.1+0.2"),
    ("2^{60}", "1152921504606846976"),
    ("2\\sqrt{2}", "\\sqrt{8}"),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"),
    ("\\frac{1+\\sqrt{5}}{2}", "\\frac{2}{\\sqrt{5}-1}"),
    ("\\sqrt{3+2\\sqrt{2}}", "1+\\sqrt{2}"),
    ("\\frac{\\sqrt{6}+\\sqrt{2}}{4}", "\\cos(\\pi/12)"),
    ("\\frac{9\\pi}{4}", "2.25\\pi"),
    ("\\infty", "\\infty"),
    ("\\{1,2\\}", "\\{2,1\\}"),
    ("(1, \\frac12)", "(1, 0.5)"),
    ("[\\frac12, 1)", "[0.5, 1)"),
    ("x \\geq 0.5", "x \\geq \\frac{1}{2}"),
    ("x=\\frac{1}{4}", "0.25"),
    ("y = 0.5x + 1", "y=\\frac{x}{2}+1"),
]


@pytest.mark.parametrize("gold,answer", DISTINCT)
def test_distinct_exact_values_score_0(gold, answer):
    s = _math([gold], f"\\boxed{{{answer}}}")
    assert (s.reward, s.reason) == (0.0, "wrong"), s


@pytest.mark.parametrize("gold,answer", EQUAL)
def test_equal_values_in_other_forms_score_1(gold, answer):
    s = _math([gold], f"\\boxed{{{answer}}}")
    assert (s.reward, s.reason) == (1.0, "ok"), s


STUDY = VerifierConfig(math_form="study")

# (response, study-form reward and reason, lenient-form reward and reason): gold 5
FORMS = [
    ("Answer: \\boxed{5}", (1.0, "ok"), (1.0, "ok")),
    ("**Final Answer:** $\\boxed{5}$", (1.0, "ok"), (1.0, "ok")),
    ("\\boxed{5}", (0.0, "no_answer"), (1.0, "ok")),  # a bare box: no "Answer:" before it
    ("Answer: 5", (0.0, "no_answer"), (1.0, "ok")),  # an Answer: line without a box
    ("\\boxed{5} so\nAnswer: it is five", (0.0, "no_answer"), (1.0, "ok")),  # no box after the final Answer:
    ("Answer: \\boxed{4}, no: \\boxed{5}", (1.0, "ok"), (1.0, "ok")),  # the last box after it
    ("Answer: \\boxed{5}\nhmm \\boxed{4}", (0.0, "wrong"), (0.0, "wrong")),  # a later box, on any line, wins
    ("\\boxed{5} then Answer: \\boxed{4}", (0.0, "wrong"), (0.0, "wrong")),
]


@pytest.mark.parametrize("response,study,lenient", FORMS)
def test_study_form_takes_the_last_box_after_the_final_answer(response, study, lenient):
    s = _math(["5"], response, config=STUDY)
    assert (s.reward, s.reason) == study, s
    s = _math(["5"], response)
    assert (s.reward, s.reason) == lenient, s


def test_study_form_says_why_there_is_no_answer():
    assert _math(["5"], "\\boxed{5}", config=STUDY).details["why"] == "no Answer: marker"
    assert _math(["5"], "Answer: 5", config=STUDY).details["why"] == "no \\boxed{} after the final Answer:"
    assert _math(["5"], "Answer: \\boxed{5}", config=STUDY).details["source"] == "answer_boxed"


def test_unknown_forms_are_refused():
    with pytest.raises(ValueError, match="math_form"):
        VerifierConfig(math_form="strict")
    with pytest.raises(ValueError, match="science_form"):
        VerifierConfig(science_form="")


@pytest.mark.parametrize("truncated_zero,reward,reason", [(True, 0.0, "truncated"), (False, 1.0, "ok")])
def test_a_truncated_correct_answer_scores_0_only_under_truncated_zero(truncated_zero, reward, reason):
    cfg = VerifierConfig(truncated_zero=truncated_zero, math_form="study")
    s = _math(["5"], "Answer: \\boxed{5} and some more words that ran in", config=cfg, truncated=True)
    assert (s.reward, s.reason) == (reward, reason), s
    assert _math(["5"], "Answer: \\boxed{5}", config=cfg, truncated=False).reward == 1.0  # only cut rows
