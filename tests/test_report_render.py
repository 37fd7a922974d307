"""study.render on results.json files without running an experiment: one written before the third arm
(RL-Multi-Adaptive) existed still renders as it did, and the third arm, when present, gets its verdict table,
headline, finding, columns and rows, cost row and domain-share plot."""

import copy
import json
import os
import re

from rlvr_jax.study import findings, render, stats

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# docs/example_tiny/results.json as committed before the third arm (learning curves and per-layer cosines
# dropped: the report's markdown reads neither)
TWO_ARMS = os.path.join(REPO, "tests", "data", "study_results_two_arms.json")


def two_arms() -> dict:
    with open(TWO_ARMS) as f:
        return json.load(f)


def md_table(md: str, after: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the first table from the line starting with `after` on."""
    lines = md.splitlines()
    lines = lines[next(i for i, x in enumerate(lines) if x.startswith(after)) :]
    start = next(i for i, x in enumerate(lines) if x.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    cells = [[c.strip() for c in x.strip("|").split("|")] for x in lines[start:end]]
    return cells[0], cells[2:]


def test_results_from_before_the_third_arm_still_render():
    md = render.render(two_arms())
    assert re.findall(r"^## (.+)$", md, flags=re.M) == [
        "Verdict",
        "Findings",
        "Gains over the anchor",
        "Main results (Avg@4, %)",
        "Merge methods (Avg@4, %)",
        "pass@4 (unbiased, %)",
        "Cost (device-seconds = measured wall time x device count)",
        "Weight space",
        "Gain consistency",
        "Policy neighbourhood",
        "Plots",
    ]
    # the committed example's verdict, word for word
    assert (
        "**RL-Multi against the best merge (TIES+DARE merge, best by mean Avg@4): -0.53 points on the mean over "
        "domains, 95% CI [-2.00, +0.95]: indistinguishable at this scale.**"
    ) in md
    header, rows = md_table(md, "## Verdict")
    assert header == ["RL-Multi vs", "Math", "Code", "Sci", "IF", "Mean"] and len(rows) == 9
    assert md.count("| RL-Multi vs") == 1
    assert "Adaptive" not in md and "adaptive" not in md and "domain_shares.png" not in md


def with_third_arm(res: dict) -> dict:
    """The two-arm results plus an RL-Multi-Adaptive whose numbers are RL-Multi's shifted: +2 points on every
    domain against RL-Multi (stderr 0.5: better), and the verdict rows, finding, cost and curves that
    report.build_results would write."""
    res = copy.deepcopy(res)
    K, domains = res["eval"]["samples"], list(res["eval"]["items_per_domain"])
    res["models"]["multi_adaptive"] = {"label": "RL-Multi-Adaptive", "kind": "multi_adaptive", "path": "x"}
    pm = res["eval"]["per_model"]
    pm["multi_adaptive"] = {d: dict(v, **{f"avg@{K}": v[f"avg@{K}"] + 0.02}) for d, v in pm["multi"].items()}
    res["eval"]["mean_avg"]["multi_adaptive"] = res["eval"]["mean_avg"]["multi"] + 0.02
    res["gains"]["multi_adaptive"] = {
        d: dict(g, gain=g["gain"] + 0.02, z=stats.z_of(g["gain"] + 0.02, g["stderr"]))
        for d, g in res["gains"]["multi"].items()
    }
    best = next(v["b"] for v in res["verdict"] if v["best"])
    for b, diff in (("multi", 0.02), (best, 0.03)):
        for d in domains + ["mean"]:
            ci = stats.ci95(diff, 0.005)
            res["verdict"].append(
                {
                    "a": "multi_adaptive",
                    "b": b,
                    "domain": d,
                    "diff": diff,
                    "stderr": 0.005,
                    "ci95": ci,
                    "verdict": stats.verdict_of(ci),
                    "best": b == best,
                }
            )
    res["stages"]["multi_adaptive"] = dict(res["stages"]["multi"], device_seconds=123.4)
    c = res["cost"]
    c["multi_adaptive_device_s"] = 123.4
    c["multi_adaptive_pct_of_single"] = 100 * 123.4 / c["single_total_device_s"]
    c["multi_adaptive_pct_of_single_later_steps"] = 12.5
    c["step_times"]["multi_adaptive"] = dict(c["step_times"]["multi"], model="multi_adaptive")
    res["mixing_curves"] = {
        "multi": {"share": {d: [[1, 0.25], [2, 0.25]] for d in domains}},
        "multi_adaptive": {"share": {d: [[1, 0.25], [2, 0.4]] for d in domains}},
    }
    res["findings"] = findings.check(res)
    return res


def test_the_third_arm_in_every_table():
    res = with_third_arm(two_arms())
    md = render.render(res)
    best = next(v["b"] for v in res["verdict"] if v["best"])
    best_label = res["models"][best]["label"]
    assert (
        f"**RL-Multi-Adaptive (adaptive domain mixing), on the mean over domains: against RL-Multi +2.00 "
        f"[+1.02, +2.98]: better; against {best_label} (best merge) +3.00 [+2.02, +3.98]: better.**"
    ) in md
    # RL-Multi's table first, as before; then the third arm's: RL-Multi, then the best merge
    header, rows = md_table(md, "## Verdict")
    assert header[0] == "RL-Multi vs" and len(rows) == 9
    header, rows = md_table(md, "| RL-Multi-Adaptive vs")
    assert header == ["RL-Multi-Adaptive vs", "Math", "Code", "Sci", "IF", "Mean"]
    assert [r[0] for r in rows] == ["RL-Multi", f"{best_label} (best merge)"]
    assert rows[0][1:] == ["better: +2.00 [+1.02, +2.98]"] * 5

    _, rows = md_table(md, "## Findings")
    row = next(r for r in rows if r[0].startswith("adaptive mixing beats fixed mixing"))
    assert row[1] == "**reproduced**" and row[2].startswith(
        "RL-Multi-Adaptive - RL-Multi on the mean: +2.0 [+1.0, +3.0]"
    )

    header, rows = md_table(md, "## Main results")
    assert header[-2:] == ["RL-Multi", "RL-Multi-Adaptive"]
    assert rows[-1][-1] == f"{100 * res['eval']['mean_avg']['multi_adaptive']:.2f}"
    _, rows = md_table(md, "## Merge methods")
    assert rows[-1][0] == "RL-Multi-Adaptive"
    _, rows = md_table(md, "## Gains over the anchor")
    assert rows[-1][0] == "RL-Multi-Adaptive"
    _, rows = md_table(md, "## Cost")
    cost = {r[0]: r for r in rows}
    row = cost["**RL-Multi-Adaptive (GRPO, adaptive mixing)**"]
    assert row[3:] == ["123.4", f"{res['cost']['multi_adaptive_pct_of_single']:.1f}"]
    assert f"with adaptive mixing, **{res['cost']['multi_adaptive_pct_of_single']:.1f}%**" in md
    assert "(with adaptive mixing 12.5%)" in md
    assert "![domain shares](domain_shares.png)" in md

    # no share metrics logged (a trainer before them): no plot referenced
    res.pop("mixing_curves")
    assert "domain_shares.png" not in render.render(res)


def test_domain_shares_plot(tmp_path):
    from rlvr_jax.study import plots

    res = with_third_arm(two_arms())
    res["curves"] = {}
    assert plots.has_share_curves(res)
    plots.plot_shares(res, str(tmp_path / "domain_shares.png"))
    assert (tmp_path / "domain_shares.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plots.has_share_curves(two_arms())
