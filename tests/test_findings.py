"""study.findings: each of the study's findings decided by its documented rule on synthetic results
(the 95% interval of a gain is gain -+ 1.96 stderr; MARGIN is 5 points)."""

import copy

import pytest

from rlvr_jax.study import findings

DOMAINS = ["math", "code", "science", "if"]
EXPERTS = [f"rl_{d}" for d in DOMAINS]


def g(gain, stderr=0.01):
    return {"gain": gain, "stderr": stderr, "z": gain / stderr}


def synthetic() -> dict:
    """Results in which every finding is reproduced."""
    models = {"sft": {"label": "SFT", "kind": "anchor"}}
    models.update({f"rl_{d}": {"label": f"RL-{d}", "kind": "expert", "domain": d} for d in DOMAINS})
    models.update(
        merge_ties={"label": "TIES merge", "kind": "merge"},
        merge_average={"label": "Average merge", "kind": "merge"},
        opd={"label": "MT-OPD", "kind": "opd"},
        multi={"label": "RL-Multi", "kind": "multi"},
        multi_adaptive={"label": "RL-Multi-Adaptive", "kind": "multi_adaptive"},
    )
    # own domain +10 points (z 10); off the own domain +2 (CI [0.04, 3.96] points)
    gains = {e: {d: g(0.10 if e == f"rl_{d}" else 0.02) for d in DOMAINS + ["mean"]} for e in EXPERTS}
    names = EXPERTS + ["merge_ties", "multi"]
    n = len(names)
    return {
        "models": models,
        "eval": {"items_per_domain": {d: 200 for d in DOMAINS}},
        "config": {"single_steps": 150, "multi_steps": 300},
        "gains": gains,
        "verdict": [
            {"a": "multi", "b": "merge_ties", "domain": "mean", "diff": 0.01, "ci95": [-0.02, 0.04], "best": True},
            {"a": "multi", "b": "merge_average", "domain": "mean", "diff": 0.2, "ci95": [0.1, 0.3], "best": False},
            # the third arm: 3 points over RL-Multi (CI [+1, +5]), 4 over the best merge; its best-merge row
            # comes after RL-Multi's, so a finding must pick its rows by `a`
            {"a": "multi_adaptive", "b": "multi", "domain": "mean", "diff": 0.03, "ci95": [0.01, 0.05], "best": False},
            {
                "a": "multi_adaptive",
                "b": "merge_ties",
                "domain": "mean",
                "diff": 0.04,
                "ci95": [0.0, 0.08],
                "best": True,
            },
        ],
        "cost": {"multi_pct_of_single": 52.0, "multi_pct_of_single_later_steps": 49.0},
        "weight_space": {
            "names": names,
            "footprint": {x: {"density": 0.3} for x in names},
            "overlap": {
                "jaccard": [[1.0 if i == j else 0.45 for j in range(n)] for i in range(n)],
                "random_baseline": [[1.0 if i == j else 0.18 for j in range(n)] for i in range(n)],
            },
            "cosine": {"dim": 256, "whole": [[1.0 if i == j else 0.3 for j in range(n)] for i in range(n)]},
        },
        "policy_kl": {
            "against": ["multi", "merge_ties"],
            "kl": {
                o: {
                    e: {d: {"per_sequence": kl, "per_sequence_stderr": 0.5, "per_token": kl / 20} for d in DOMAINS}
                    for e in EXPERTS
                }
                for o, kl in (("multi", 8.0), ("merge_ties", 3.0))
            },
        },
    }


def status(results, name):
    return next(f["status"] for f in findings.check(results) if f["finding"].startswith(name))


def test_every_finding_reproduced_on_results_that_show_it():
    out = findings.check(synthetic())
    assert [f["status"] for f in out] == ["reproduced"] * len(findings.FINDINGS)
    assert all(set(f) == {"finding", "status", "evidence", "rule"} and f["evidence"] for f in out)
    by = {f["finding"].split(":")[0].split(" (")[0]: f["evidence"] for f in out}
    assert "RL-math on math: +10.0 [+8.0, +12.0], z 10.0" in by["each expert gains on its own domain"]
    assert (
        "RL-Multi - TIES merge (best by mean) on the mean: +1.0 [-2.0, +4.0]"
        == by["multi-task about equal to the best merge"]
    )


def test_own_domain_and_interference_rules():
    r = synthetic()
    r["gains"]["rl_code"]["code"] = g(0.01, 0.01)  # CI [-0.96, +2.96] points holds 0
    assert status(r, "each expert") == "inconclusive"
    r["gains"]["rl_code"]["code"] = g(-0.03, 0.01)  # wholly below 0
    assert status(r, "each expert") == "not reproduced"

    r = synthetic()
    r["gains"]["rl_if"]["math"] = g(-0.08, 0.01)  # CI [-9.96, -6.04] points: one expert wholly below -5
    assert status(r, "little interference") == "not reproduced"
    r["gains"]["rl_if"]["math"] = g(-0.04, 0.01)  # CI [-5.96, -2.04]: reaches below -5, but the mean is fine
    assert status(r, "little interference") == "reproduced"
    # Every off-domain change -4 points with stderr 2 (each CI [-7.9, -0.1]): per domain the mean of the
    # three other experts is -4, its stderr bound 2; over the 4 domains se = sqrt(4 x 2^2) / 4 = 1;
    # CI -4 -+ 1.96 = [-5.96, -2.04] reaches below -5.
    for e, own in zip(EXPERTS, DOMAINS):
        for d in DOMAINS:
            if d != own:
                r["gains"][e][d] = g(-0.04, 0.02)
    f = next(x for x in findings.check(r) if x["finding"].startswith("little interference"))
    assert f["status"] == "inconclusive" and f["evidence"].startswith("mean -4.0 [-6.0, -2.0]")


def test_synergy_pools_the_reasoning_experts_off_their_domains():
    r = synthetic()
    # Each reasoning domain: the two other reasoning experts' mean gain, stderr bounded by their stderrs' mean.
    # math: (+0.02 - 0.04) / 2 = -0.01, se (0.01 + 0.03) / 2 = 0.02; code and science: +0.02, se 0.01.
    # Mean over the 3: (-0.01 + 0.02 + 0.02) / 3 = 0.01, se sqrt(0.02^2 + 2 x 0.01^2) / 3 = 0.008165;
    # CI 0.01 -+ 0.016003 = [-0.006, +0.026]: holds 0.
    r["gains"]["rl_science"]["math"] = g(-0.04, 0.03)
    f = next(x for x in findings.check(r) if x["finding"].startswith("synergy"))
    assert f["status"] == "inconclusive"
    assert f["evidence"].startswith("mean +1.0 [-0.6, +2.6]")
    for e in ("rl_math", "rl_code", "rl_science"):
        for d in ("math", "code", "science"):
            if e != f"rl_{d}":
                r["gains"][e][d] = g(-0.03)
    assert status(r, "synergy") == "not reproduced"
    # one reasoning domain only: nothing to pool
    r = synthetic()
    r["eval"]["items_per_domain"] = {"math": 4, "if": 4}
    assert status(r, "synergy") == "inconclusive"


def test_equal_to_the_best_merge_uses_the_margin():
    r = synthetic()
    best = r["verdict"][0]
    best["ci95"] = [-0.07, 0.01]  # reaches past -5 points and inside the band
    assert status(r, "multi-task about equal") == "inconclusive"
    best["ci95"] = [0.06, 0.12]  # wholly above +5: RL-Multi clearly better, not "about equal"
    assert status(r, "multi-task about equal") == "not reproduced"


def test_equal_to_the_best_merge_reads_rl_multi_rows_only():
    r = synthetic()
    r["verdict"] = r["verdict"][2:] + r["verdict"][:2]  # RL-Multi-Adaptive's best-merge row first
    f = next(x for x in findings.check(r) if x["finding"].startswith("multi-task about equal"))
    assert f["evidence"] == "RL-Multi - TIES merge (best by mean) on the mean: +1.0 [-2.0, +4.0]"


@pytest.mark.parametrize(
    "ci,want",
    [([0.01, 0.05], "reproduced"), ([-0.05, -0.01], "not reproduced"), ([-0.01, 0.07], "inconclusive")],
)
def test_adaptive_mixing_decided_by_its_ci_against_rl_multi(ci, want):
    r = synthetic()
    row = r["verdict"][2]
    row["ci95"], row["diff"] = ci, sum(ci) / 2
    f = next(x for x in findings.check(r) if x["finding"].startswith("adaptive mixing beats fixed mixing"))
    assert f["status"] == want
    # the numbers and the CI against RL-Multi, then against the best merge (whose CI does not decide it)
    assert f["evidence"] == (
        f"RL-Multi-Adaptive - RL-Multi on the mean: {100 * row['diff']:+.1f} [{100 * ci[0]:+.1f}, "
        f"{100 * ci[1]:+.1f}]; vs TIES merge (best merge): +4.0 [+0.0, +8.0]"
    )


def test_adaptive_mixing_not_run():
    r = synthetic()
    del r["models"]["multi_adaptive"]
    r["verdict"] = [v for v in r["verdict"] if v["a"] == "multi"]
    f = next(x for x in findings.check(r) if x["finding"].startswith("adaptive mixing"))
    assert f["status"] == "inconclusive" and f["evidence"].startswith("not run")
    # the other findings do not depend on the third arm
    statuses = [x["status"] for x in findings.check(r)]
    assert statuses.count("reproduced") == len(findings.FINDINGS) - 1


def test_cost_prefers_the_steps_after_the_first():
    r = synthetic()
    r["cost"] = {"multi_pct_of_single": 60.0, "multi_pct_of_single_later_steps": 70.0}
    assert status(r, "multi-task costs") == "not reproduced"  # 70% > 2/3
    r["cost"]["multi_pct_of_single_later_steps"] = None
    assert status(r, "multi-task costs") == "reproduced"  # 60% of the whole stages
    f = next(x for x in findings.check(r) if x["finding"].startswith("multi-task costs"))
    assert "step counts alone give 50.0%" in f["evidence"]


def test_policy_kl_rule():
    r = synthetic()
    assert status(r, "merged models inherit") == "reproduced"
    r2 = copy.deepcopy(r)
    # merge further from the experts than RL-Multi: per expert 8 - 9 = -1, se hypot(.5, .5) = .707;
    # mean over 4 experts -1, se .707 / 2 = .354: CI [-1.69, -0.31] below 0
    for e in r2["policy_kl"]["kl"]["merge_ties"].values():
        for v in e.values():
            v["per_sequence"] = 9.0
    assert status(r2, "merged models inherit") == "not reproduced"
    r["policy_kl"] = {}
    assert status(r, "merged models inherit") == "inconclusive"


@pytest.mark.parametrize(
    "jaccard,density,want",
    [(0.45, 0.3, "reproduced"), (0.1, 0.3, "not reproduced"), (0.45, 0.95, "inconclusive"), (0.0, 0.0, "inconclusive")],
)
def test_overlap_rule(jaccard, density, want):
    r = synthetic()
    ws = r["weight_space"]
    n = len(ws["names"])
    ws["overlap"]["jaccard"] = [[1.0 if i == j else jaccard for j in range(n)] for i in range(n)]
    ws["footprint"]["rl_math"]["density"] = density
    assert status(r, "update overlap") == want


def test_cosine_rule_uses_the_projection_noise():
    r = synthetic()
    cos = r["weight_space"]["cosine"]["whole"]
    cos[0][1] = cos[1][0] = 0.1  # under 1.96 / sqrt(256) = 0.1225: not distinguishable from 0
    assert status(r, "task vectors") == "inconclusive"
    cos[0][1] = cos[1][0] = -0.2
    assert status(r, "task vectors") == "not reproduced"
