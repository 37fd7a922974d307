"""The study's findings (REFERENCE.md "Findings" and "Analyses"), and the third arm's question (does
adaptive domain mixing beat fixed mixing?), checked one by one against an experiment's results: each becomes
{finding, status, evidence, rule} with status "reproduced", "not reproduced" or "inconclusive".

One rule for every claim with a confidence interval: reproduced when the 95% CI lies wholly on the claim's
side, not reproduced when it lies wholly on the negation's side, inconclusive when it holds both (this
scale cannot tell). "About equal" and "little" need a size: MARGIN (5 points of Avg@K) is the band a
difference must stay within. Cost and weight-space figures have no interval; their rules say where the
line is drawn, and why.
"""

from __future__ import annotations

import math

from rlvr_jax.study import stats

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
MARGIN = 0.05  # "little" interference and "about equal": within 5 points of Avg@K
REASONING = ("math", "code", "science")
MAX_DENSITY = 0.9  # above it a footprint is saturated: every overlap, and its random baseline, nears 1
COST_SHARE = 100.0 * 2 / 3  # mixing "at a fraction of the cost": at most 2/3 of the separate runs
STUDY_MULTI_PCT = 33.2  # REFERENCE.md: the multi-task run cost 33.2% of the four single-domain runs


def side(ci: list[float], bound: float = 0.0) -> str:
    """Claim "x > bound": reproduced when the CI is above it, not when below, else inconclusive."""
    lo, hi = ci
    return REPRODUCED if lo > bound else NOT_REPRODUCED if hi < bound else INCONCLUSIVE


def within(ci: list[float], margin: float = MARGIN) -> str:
    """Claim "|x| <= margin": reproduced when the CI is inside the band, not when wholly outside it."""
    lo, hi = ci
    if -margin <= lo and hi <= margin:
        return REPRODUCED
    return NOT_REPRODUCED if lo > margin or hi < -margin else INCONCLUSIVE


def pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def ci_pts(ci: list[float]) -> str:
    return f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def _gain_ci(g: dict) -> list[float]:
    return stats.ci95(g["gain"], g["stderr"])


def _label(results: dict, name: str) -> str:
    return results["models"][name]["label"]


def _domains(results: dict) -> list[str]:
    return list(results["eval"]["items_per_domain"])


def _experts(results: dict) -> dict[str, str]:
    """expert name -> its domain."""
    return {n: m["domain"] for n, m in results["models"].items() if m["kind"] == "expert"}


def _result(finding: str, status: str, evidence: str, rule: str) -> dict:
    return {"finding": finding, "status": status, "evidence": evidence, "rule": rule}


def own_domain(results: dict) -> dict:
    g = results["gains"]
    cis = {e: _gain_ci(g[e][d]) for e, d in _experts(results).items()}
    statuses = {side(ci) for ci in cis.values()}
    status = NOT_REPRODUCED if NOT_REPRODUCED in statuses else REPRODUCED if statuses == {REPRODUCED} else INCONCLUSIVE
    ev = "; ".join(
        f"{_label(results, e)} on {d}: {pts(g[e][d]['gain'])} {ci_pts(cis[e])}, z {_z(g[e][d]['z'])}"
        for e, d in _experts(results).items()
    )
    return _result(
        "each expert gains on its own domain (what every comparison below stands on)",
        status,
        ev,
        "reproduced when every expert's own-domain CI lies above 0; not reproduced when one lies below 0",
    )


def _z(z: float | None) -> str:
    return "n/a" if z is None else f"{z:.1f}"


def off_domain_mean(g: dict, experts: dict[str, str], domains: list[str]) -> tuple[float, float]:
    """The experts' mean change off their own domains, among `domains`: per domain the mean gain of the
    other experts, its stderr bounded by the mean of theirs (they answer the same items, so their errors are
    correlated; the sd of a mean is at most the mean of the sds), then averaged over the domains (no
    shared items: stderrs in quadrature)."""
    per = []
    for b in domains:
        others = [g[e][b] for e, own in experts.items() if own in domains and own != b]
        per.append((sum(o["gain"] for o in others) / len(others), sum(o["stderr"] for o in others) / len(others)))
    return stats.mean_of([p[0] for p in per], [p[1] for p in per])


def interference(results: dict) -> dict:
    g, experts = results["gains"], _experts(results)
    pairs = [(e, d) for e, own in experts.items() for d in _domains(results) if d != own]
    rule = (
        f"the experts' mean change off their own domains (as for synergy, over every domain) must have its CI "
        f"above -{100 * MARGIN:g} points, and no single expert's CI on another domain may lie wholly below "
        f"-{100 * MARGIN:g}: reproduced when both hold, not reproduced when one expert's or the mean's CI lies "
        f"wholly below -{100 * MARGIN:g}"
    )
    name = "little interference: an expert changes the other domains little"
    if len(experts) < 2:
        return _result(name, INCONCLUSIVE, "needs two experts or more", rule)
    mean, se = off_domain_mean(g, experts, _domains(results))
    ci = stats.ci95(mean, se)
    cis = {p: _gain_ci(g[p[0]][p[1]]) for p in pairs}
    if ci[1] < -MARGIN or any(c[1] < -MARGIN for c in cis.values()):
        status = NOT_REPRODUCED
    else:
        status = REPRODUCED if ci[0] >= -MARGIN else INCONCLUSIVE
    ev = f"mean {pts(mean)} {ci_pts(ci)}; " + "; ".join(
        f"{_label(results, e)} on {d}: {pts(g[e][d]['gain'])} {ci_pts(cis[(e, d)])}" for e, d in pairs
    )
    return _result(name, status, ev, rule)


def synergy(results: dict) -> dict:
    g, experts = results["gains"], _experts(results)
    reasoning = [d for d in REASONING if d in _domains(results) and f"rl_{d}" in experts]
    name = "synergy: the reasoning experts (math, code, science) gain on each other's domains"
    rule = (
        "per reasoning domain, the mean gain of the other reasoning experts (its stderr bounded by the mean "
        "of theirs: they answer the same items), averaged over the reasoning domains; reproduced when its CI "
        "lies above 0, not reproduced when below"
    )
    if len(reasoning) < 2:
        return _result(
            name, INCONCLUSIVE, f"needs two reasoning domains; this run has {', '.join(reasoning) or 'none'}", rule
        )
    mean, se = off_domain_mean(g, experts, reasoning)
    ci = stats.ci95(mean, se)
    ev = f"mean {pts(mean)} {ci_pts(ci)}; " + "; ".join(
        f"on {b}: "
        + ", ".join(f"{_label(results, f'rl_{a}')} {pts(g[f'rl_{a}'][b]['gain'])}" for a in reasoning if a != b)
        for b in reasoning
    )
    return _result(name, side(ci), ev, rule)


def verdict_row(results: dict, a: str, b: str | None = None) -> dict | None:
    """The verdict's mean-over-domains row of `a` against `b` (None: against the best merge), if any."""
    return next(
        (
            x
            for x in results["verdict"]
            if x["a"] == a and x["domain"] == "mean" and (x["best"] if b is None else x["b"] == b)
        ),
        None,
    )


def multi_vs_best_merge(results: dict) -> dict:
    v = verdict_row(results, "multi")
    return _result(
        "multi-task about equal to the best merge",
        within(v["ci95"]),
        f"RL-Multi - {_label(results, v['b'])} (best by mean) on the mean: {pts(v['diff'])} {ci_pts(v['ci95'])}",
        f"reproduced when the CI lies within +-{100 * MARGIN:g} points; not reproduced when wholly outside",
    )


def adaptive_vs_fixed(results: dict) -> dict:
    """Not a finding of the study (it compared mix and merge only): the third arm's question, asked with the
    same rule as the others."""
    name = "adaptive mixing beats fixed mixing at this scale (RL-Multi-Adaptive vs RL-Multi)"
    rule = (
        "RL-Multi-Adaptive - RL-Multi on the mean over domains, paired over items as in the verdict (same "
        "steps, batch, hyper-parameters and seed: only the mixing differs); reproduced when its CI lies above 0, "
        "not reproduced when below (fixed mixing was better), inconclusive when it holds 0; the row against the "
        "best merge is shown beside it and decides nothing"
    )
    v = verdict_row(results, "multi_adaptive", "multi")
    if v is None:
        return _result(name, INCONCLUSIVE, "not run: this experiment has no RL-Multi-Adaptive (multi_adaptive)", rule)
    ev = f"RL-Multi-Adaptive - RL-Multi on the mean: {pts(v['diff'])} {ci_pts(v['ci95'])}"
    best = verdict_row(results, "multi_adaptive")
    if best is not None:
        ev += f"; vs {_label(results, best['b'])} (best merge): {pts(best['diff'])} {ci_pts(best['ci95'])}"
    return _result(name, side(v["ci95"]), ev, rule)


def cost(results: dict) -> dict:
    c = results["cost"]
    later = c["multi_pct_of_single_later_steps"]
    pct = c["multi_pct_of_single"] if later is None else later
    cfg = results["config"]
    by_steps = 100.0 * cfg["multi_steps"] / (cfg["single_steps"] * len(_experts(results)))
    ev = (
        f"{c['multi_pct_of_single']:.1f}% of the separate runs' device-seconds"
        + ("" if later is None else f", {later:.1f}% counting the steps after the first (compiles)")
        + f"; the study {STUDY_MULTI_PCT}%; the step counts alone give {by_steps:.1f}%"
    )
    return _result(
        f"multi-task costs a fraction of the separate runs (the study: {STUDY_MULTI_PCT}%)",
        REPRODUCED if pct <= COST_SHARE else NOT_REPRODUCED,
        ev,
        f"reproduced when the multi-task run costs at most {COST_SHARE:.1f}% of the separate runs (steps after "
        "the first where measured, so each run's one-time compile does not count)",
    )


def policy_divergence(results: dict) -> dict:
    name = "merged models inherit their experts, the multi-task model diverges (policy KL)"
    rule = (
        "per expert on its own domain, KL(expert || RL-Multi) - KL(expert || merge) per sequence (stderrs "
        "added in quadrature: conservative, the sequences are shared), averaged over the experts; reproduced "
        "when the CI lies above 0, not reproduced when below"
    )
    kl = results["policy_kl"]
    merges = [o for o in (kl or {}).get("against", []) if o.startswith("merge_")]
    if not kl or "multi" not in kl["against"] or not merges:
        return _result(name, INCONCLUSIVE, "not measured: analysis.kl_against needs multi and a merge", rule)
    m, diffs, ses, parts = merges[0], [], [], []
    for e, d in _experts(results).items():
        a, b = kl["kl"]["multi"][e][d], kl["kl"][m][e][d]
        diffs.append(a["per_sequence"] - b["per_sequence"])
        ses.append(math.hypot(a["per_sequence_stderr"], b["per_sequence_stderr"]))
        parts.append(
            f"{_label(results, e)} on {d}: vs RL-Multi {a['per_token']:.3g}, vs {_label(results, m)} "
            f"{b['per_token']:.3g} nats/token"
        )
    mean, se = stats.mean_of(diffs, ses)
    ci = stats.ci95(mean, se)
    ev = f"mean difference {mean:+.3g} nats/sequence [{ci[0]:+.3g}, {ci[1]:+.3g}]; " + "; ".join(parts)
    return _result(name, side(ci), ev, rule)


def _expert_pairs(results: dict) -> list[tuple[int, int, str, str]]:
    names = results["weight_space"]["names"]
    ex = [n for n in names if n in _experts(results)]
    return [(names.index(a), names.index(b), a, b) for i, a in enumerate(ex) for b in ex[i + 1 :]]


def overlap(results: dict) -> dict:
    ws = results["weight_space"]
    pairs = _expert_pairs(results)
    name = "update overlap above random: experts change overlapping entries"
    rule = (
        "reproduced when every pair of experts overlaps (Jaccard) more than independent masks of the same "
        "densities, not reproduced when none does; inconclusive when mixed, or when an expert changed no entry "
        f"(nothing to overlap) or over {100 * MAX_DENSITY:g}% of them (overlap and baseline both near 1)"
    )
    if not pairs:
        return _result(name, INCONCLUSIVE, "needs two experts", rule)
    jac, base = ws["overlap"]["jaccard"], ws["overlap"]["random_baseline"]
    above = [jac[i][j] > base[i][j] for i, j, _, _ in pairs]
    dens = {n: ws["footprint"][n]["density"] for n in _experts(results)}
    ev = (
        "; ".join(
            f"{_label(results, a)}/{_label(results, b)} {jac[i][j]:.3f} (random {base[i][j]:.3f})"
            for i, j, a, b in pairs
        )
        + "; changed entries "
        + ", ".join(f"{_label(results, n)} {100 * p:.1f}%" for n, p in dens.items())
    )
    if max(dens.values()) > MAX_DENSITY or min(dens.values()) == 0:
        status = INCONCLUSIVE
    else:
        status = REPRODUCED if all(above) else NOT_REPRODUCED if not any(above) else INCONCLUSIVE
    return _result(name, status, ev, rule)


def cosines(results: dict) -> dict:
    ws = results["weight_space"]
    pairs = _expert_pairs(results)
    dim = ws["cosine"]["dim"]
    t = stats.Z95 / math.sqrt(dim)
    name = "task vectors of the experts point the same way (positive cosines)"
    rule = (
        f"reproduced when every pair of experts has a cosine above {t:.3f} (1.96 / sqrt({dim}): the spread of "
        f"two unrelated vectors' cosine after the {dim}-d projection); not reproduced when one lies below -{t:.3f}"
    )
    if not pairs:
        return _result(name, INCONCLUSIVE, "needs two experts", rule)
    cos = ws["cosine"]["whole"]
    vals = [cos[i][j] for i, j, _, _ in pairs]
    status = NOT_REPRODUCED if min(vals) < -t else REPRODUCED if min(vals) > t else INCONCLUSIVE
    names = ws["names"]
    multi = (
        "; RL-Multi with "
        + ", ".join(f"{_label(results, e)} {cos[names.index('multi')][names.index(e)]:.3f}" for e in _experts(results))
        if "multi" in names
        else ""
    )
    ev = "; ".join(f"{_label(results, a)}/{_label(results, b)} {cos[i][j]:.3f}" for i, j, a, b in pairs) + multi
    return _result(name, status, ev, rule)


FINDINGS = (
    own_domain,
    interference,
    synergy,
    multi_vs_best_merge,
    adaptive_vs_fixed,
    cost,
    policy_divergence,
    overlap,
    cosines,
)


def check(results: dict) -> list[dict]:
    """Every finding, in the report's order; results needs `gains` and `verdict` (stats) beside the rest."""
    return [f(results) for f in FINDINGS]
