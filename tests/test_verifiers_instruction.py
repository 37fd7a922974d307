"""IF verifier: reward 1 only when every instruction holds, strict and loose, through `score` too."""

from rlvr_jax.verifiers import score
from rlvr_jax.verifiers.instruction import score_if

IDS = ["punctuation:no_comma", "startend:quotation"]
TRUTH = {"instruction_ids": IDS, "kwargs": [{}, {}], "prompt": "p"}


def test_score_if_strict_and_loose():
    s = score_if(TRUTH, '"a b"')
    assert (s.reward, s.reason, s.details) == (1.0, "ok", {"fraction": 1.0, "failed": []})
    s = score_if(TRUTH, '"a, b"')
    assert (s.reward, s.reason, s.details) == (0.0, "wrong", {"fraction": 0.5, "failed": ["punctuation:no_comma"]})
    # Loose mode drops a trailing markdown line, as IFEval does; strict mode does not.
    assert score_if(TRUTH, '"a b"\n**').reward == 0.0
    assert score_if(TRUTH, '"a b"\n**', strict=False).reward == 1.0


def test_score_routes_if_records():
    record = {"domain": "if", "ground_truth": TRUTH}
    assert score(record, '"a b"').reward == 1.0
    assert score(record, "").reason == "wrong"  # a blank response follows nothing
    bad = score({"domain": "if", "ground_truth": {"instruction_ids": ["nope"], "kwargs": [{}]}}, "x")
    assert (bad.reward, bad.reason) == (0.0, "error") and "nope" in bad.details["error"]
