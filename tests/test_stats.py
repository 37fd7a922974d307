"""study.stats against a case worked out by hand: paired differences over items per domain and on the
mean over domains, their standard errors, z, 95% intervals and verdicts; seeds pooled per item."""

import math

import pytest

from rlvr_jax.eval.evaluate import summarize
from rlvr_jax.study import stats


def ev(per_domain_correct: dict[str, list[list[float]]]) -> dict:
    """An evaluation (evaluate.summarize's shape) from {domain: [correct of item 0, item 1, ...]}."""
    items = [
        {"id": f"{d}{i}", "domain": d, "correct": c}
        for d, rows in per_domain_correct.items()
        for i, c in enumerate(rows)
    ]
    return summarize(items, len(items[0]["correct"]))


# K = 2 samples per item, 4 items per domain; "1.96" below is 1.959964. Per-item scores (mean of the 2 samples):
#   math: multi 1, .5, 0, 1     merge .5, 0, 0, .5    -> differences .5, .5, 0, .5
#   if:   multi 0, .5, 1, .5    merge .5, .5, .5, 1   -> differences -.5, 0, .5, -.5
MULTI = ev({"math": [[1, 1], [1, 0], [0, 0], [1, 1]], "if": [[0, 0], [1, 0], [1, 1], [0, 1]]})
MERGE = ev({"math": [[1, 0], [0, 0], [0, 0], [0, 1]], "if": [[1, 0], [1, 0], [0, 1], [1, 1]]})
# math: mean .375; deviations .125, .125, -.375, .125; sum of squares 3 x .015625 + .140625 = .1875;
#   sd = sqrt(.1875 / 3) = .25; stderr = .25 / sqrt(4) = .125; CI .375 -+ 1.96 x .125 = [.130005, .619995]: better.
MATH = (0.375, 0.125)
# if: mean -.125; deviations -.375, .125, .625, -.375; sum of squares .6875; sd = sqrt(.6875 / 3) = .47871;
#   stderr = .239357; CI -.125 -+ 1.96 x .239357 = -.125 -+ .469131 = [-.594131, .344131]: holds 0.
IF = (-0.125, math.sqrt(0.6875 / 3) / 2)
# mean over the 2 domains: (.375 - .125) / 2 = .125; stderr sqrt(.125^2 + .239357^2) / 2 = .135015;
#   CI .125 -+ 1.96 x .135015 = .125 -+ .264625 = [-.139625, .389625]: holds 0.
MEAN = (0.125, math.sqrt(0.125**2 + 0.6875 / 12) / 2)


def test_verdict_matches_the_hand_computed_case():
    got = {v["domain"]: v for v in stats.verdicts({"multi": MULTI, "merge": MERGE}, "multi", ["merge"], "merge")}
    assert set(got) == {"math", "if", "mean"}
    for d, (diff, se), word in (
        ("math", MATH, "better"),
        ("if", IF, "indistinguishable at this scale"),
        ("mean", MEAN, "indistinguishable at this scale"),
    ):
        v = got[d]
        assert (v["a"], v["b"], v["best"]) == ("multi", "merge", True)
        assert v["diff"] == pytest.approx(diff) and v["stderr"] == pytest.approx(se)
        assert v["ci95"] == pytest.approx([diff - 1.959964 * se, diff + 1.959964 * se])
        assert v["verdict"] == word
    assert got["math"]["ci95"] == pytest.approx([0.130005, 0.619995], abs=1e-6)
    assert got["if"]["ci95"] == pytest.approx([-0.594131, 0.344131], abs=1e-6)
    assert got["mean"]["ci95"] == pytest.approx([-0.139625, 0.389625], abs=1e-6)
    # the other way round, math's interval lies below 0
    back = {v["domain"]: v for v in stats.verdicts({"multi": MULTI, "merge": MERGE}, "merge", ["multi"], "none")}
    assert back["math"]["verdict"] == "worse" and back["math"]["ci95"] == pytest.approx(
        [-0.619995, -0.130005], abs=1e-6
    )
    assert not back["math"]["best"]


def test_gains_carry_z_and_none_without_spread():
    g = stats.gains({"sft": MERGE, "multi": MULTI, "same": MERGE})
    assert g["multi"]["math"] == pytest.approx({"gain": 0.375, "stderr": 0.125, "z": 3.0})
    assert g["multi"]["mean"]["z"] == pytest.approx(MEAN[0] / MEAN[1])
    assert g["same"]["if"] == {"gain": 0.0, "stderr": 0.0, "z": None}  # every difference 0: no z
    assert set(g) == {"multi", "same"}


def test_best_of_and_verdict_words():
    assert stats.best_of({"a": 0.3, "b": 0.5, "c": 0.5}, ["a", "b", "c"]) == "b"  # the first of equals
    assert stats.verdict_of([0.01, 0.2]) == "better"
    assert stats.verdict_of([-0.2, -0.01]) == "worse"
    assert stats.verdict_of([-0.01, 0.2]) == stats.verdict_of([0.0, 0.2]) == "indistinguishable at this scale"


def test_pooled_seeds_average_each_item_before_pairing():
    # two seeds of one model on 2 math items, K = 2: item scores (1, 0) and (.5, .5) -> pooled .75, .25
    s0 = ev({"math": [[1, 1], [0, 0]]})
    s1 = ev({"math": [[1, 0], [1, 0]]})
    pooled = stats.pool_seeds([s0, s1])
    row = pooled["per_domain"]["math"]
    assert pooled["samples"] == 2 and pooled["seeds"] == 2
    assert row["avg@2"] == pytest.approx(0.5)
    # pass@2 per seed: (1 + 0) / 2 = .5 and (1 + 1) / 2 = 1 -> mean .75
    assert row["pass@2"] == pytest.approx(0.75)
    # per-item .75, .25: sd = sqrt(2 x .0625) = .35355, stderr = .35355 / sqrt(2) = .25
    assert row["stderr"] == pytest.approx(0.25) and row["n_items"] == 2
    # against an anchor scoring .5 on both items: gains .25 and -.25
    anchor = ev({"math": [[1, 0], [0, 1]]})
    g = stats.gains({"sft": anchor, "m": pooled})["m"]["math"]
    assert g["gain"] == pytest.approx(0.0) and g["stderr"] == pytest.approx(0.25)
    assert stats.pool_seeds([s0]) is s0
    with pytest.raises(ValueError, match="same items"):
        stats.pool_seeds([s0, ev({"math": [[1, 1]]})])
