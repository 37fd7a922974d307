"""Science (multiple-choice) verifier correctness table."""

import pytest

from rlvr_jax.verifiers import score
from rlvr_jax.verifiers.science import extract_choice

# (response, gold, expected reward, expected reason)
TABLE = [
    ("Answer: B", "B", 1.0, "ok"),
    ("answer: b", "B", 1.0, "ok"),  # case-insensitive
    ("**Answer:** C", "C", 1.0, "ok"),
    ("Answer: **D**", "D", 1.0, "ok"),
    ("The answer is (A).", "A", 1.0, "ok"),
    ("\\boxed{C}", "C", 1.0, "ok"),
    ("Final Answer: $\\boxed{\\text{B}}$", "B", 1.0, "ok"),
    ("\\boxed{(D)}", "D", 1.0, "ok"),
    ("Answer: B) 42 meters", "B", 1.0, "ok"),
    ("ANSWER: **c**", "C", 1.0, "ok"),
    ("The correct option is D.", "D", 1.0, "ok"),
    ("Answer: A\nHmm, wait. Answer: C", "C", 1.0, "ok"),  # the last one counts
    ("Answer: C\nHmm, wait. Answer: A", "C", 0.0, "wrong"),
    ("\\boxed{A} ... actually Answer: B", "B", 1.0, "ok"),
    ("Answer: B or C", "B", 0.0, "no_answer"),  # hedges
    ("\\boxed{B or C}", "B", 0.0, "no_answer"),
    ("Answer: B/C", "B", 0.0, "no_answer"),
    ("Answer: A, B", "A", 0.0, "no_answer"),
    ("the answer is a bit unclear", "A", 0.0, "no_answer"),  # "a" the article is not option (a)
    ("I think B is right", "B", 0.0, "no_answer"),  # no answer marker
    ("Answer: E", "A", 0.0, "no_answer"),  # not among the choices
    ("", "A", 0.0, "no_answer"),
]


@pytest.mark.parametrize("response,gold,reward,reason", TABLE)
def test_science_table(response, gold, reward, reason):
    rec = {"domain": "science", "ground_truth": {"answer": gold, "choices": ["A", "B", "C", "D"]}}
    s = score(rec, response)
    assert (s.reward, s.reason) == (reward, reason), s


def test_more_choices_and_thinking():
    rec = {"domain": "science", "ground_truth": {"answer": "E", "choices": list("ABCDEFGHIJ")}}
    assert score(rec, "Answer: E").reward == 1.0
    assert score(rec, "<think>Answer: E</think>", thinking=True).reason == "no_answer"
    assert score(rec, "<think>Answer: A", thinking=True).reason == "format"
    assert extract_choice("Answer: B or C") == (None, "hedge")
