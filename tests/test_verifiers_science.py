"""Science (multiple-choice) verifier correctness table."""

import pytest

from rlvr_jax.verifiers import VerifierConfig, score
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


# (response, gold, study-form reward and reason); the lenient form grades every one of these 1.0 "ok"
STUDY_TABLE = [
    ("Answer: B", "B", 1.0, "ok"),
    ("**Answer:** C", "C", 1.0, "ok"),
    ("answer: D.", "D", 1.0, "ok"),
    ("Answer: B) 42 meters", "B", 1.0, "ok"),
    ("\\boxed{C}", "C", 1.0, "ok"),
    ("Final Answer: B", "B", 1.0, "ok"),
    ("\\boxed{A} ... actually Answer: B", "B", 1.0, "ok"),
    ("The answer is (A).", "A", 0.0, "no_answer"),  # lenient phrasings
    ("The correct option is D.", "D", 0.0, "no_answer"),
    ("answer: b", "B", 0.0, "no_answer"),  # a lower-case letter
    ("Answer: **D**", "D", 1.0, "ok"),  # markdown bold is layout, not phrasing
    ("Answer: (D)", "D", 0.0, "no_answer"),  # a wrapped letter
    ("Final Answer: $\\boxed{\\text{B}}$", "B", 0.0, "no_answer"),
    ("\\boxed{(D)}", "D", 0.0, "no_answer"),
]


@pytest.mark.parametrize("response,gold,reward,reason", STUDY_TABLE)
def test_science_study_form_reads_only_answer_x_and_boxed_x(response, gold, reward, reason):
    rec = {"domain": "science", "ground_truth": {"answer": gold, "choices": ["A", "B", "C", "D"]}}
    s = score(rec, response, config=VerifierConfig(science_form="study"))
    assert (s.reward, s.reason) == (reward, reason), s
    s = score(rec, response)  # lenient, the default
    assert (s.reward, s.reason) == (1.0, "ok"), s


@pytest.mark.parametrize("response", ["Answer: B or C", "Answer: B/C", "Answer: Because it is C", "I think B"])
def test_science_study_form_still_refuses_hedges_and_words(response):
    assert extract_choice(response, "study")[0] is None
