"""Paired comparisons over eval items: seeds pooled per item, gains over the anchor with their standard
error and z, differences between two models with a 95% confidence interval and a verdict word.

Every model answers the same eval items, so an item's own difficulty cancels in a per-item difference:
- per-item score s_i = the mean of a model's K samples on item i; with several seeds, the mean over every
  seed's samples (each seed draws K, so this is the mean of the seeds' per-item scores);
- one domain of n items: diff = mean_i (a_i - b_i), stderr = sd_i(a_i - b_i, ddof 1) / sqrt(n)
  (evaluate.paired_gain);
- the mean over D domains: diff = mean_d diff_d, stderr = sqrt(sum_d stderr_d^2) / D (the domains share
  no items, so their errors are independent);
- 95% CI = diff +- 1.96 stderr (normal approximation); z = diff / stderr (None when stderr is 0);
- verdict: "better" when the CI lies above 0, "worse" when below, else "indistinguishable at this scale".
"""

from __future__ import annotations

import math

import numpy as np

from rlvr_jax.eval.evaluate import paired_gain, summarize

Z95 = 1.959963984540054  # two-sided 95% quantile of the normal distribution
BETTER, WORSE, TIED = "better", "worse", "indistinguishable at this scale"


def pool_seeds(evals: list[dict]) -> dict:
    """One evaluation from the same items evaluated once per seed: each item's samples concatenated
    (its score is then the mean over seeds), Avg@K and the stderr recomputed from the pooled per-item
    scores, pass@K the mean of the seeds' pass@K. One seed: that evaluation unchanged."""
    if len(evals) == 1:
        return evals[0]
    K = evals[0]["samples"]
    correct = {}
    for ev in evals:
        for it in ev["items"]:
            correct.setdefault((it["domain"], it["id"]), []).append(it["correct"])
    if any(len(c) != len(evals) for c in correct.values()):
        raise ValueError("pool_seeds: the seeds' evaluations do not cover the same items")
    items = [{"id": i, "domain": d, "correct": [x for c in cs for x in c]} for (d, i), cs in correct.items()]
    out = summarize(items, K * len(evals))
    for d, row in out["per_domain"].items():
        row[f"avg@{K}"] = row.pop(f"avg@{K * len(evals)}")
        row.pop(f"pass@{K * len(evals)}")
        row[f"pass@{K}"] = float(np.mean([ev["per_domain"][d][f"pass@{K}"] for ev in evals]))
    return dict(out, samples=K, seeds=len(evals))


def z_of(gain: float, stderr: float) -> float | None:
    return gain / stderr if stderr > 0 else None


def ci95(diff: float, stderr: float) -> list[float]:
    return [diff - Z95 * stderr, diff + Z95 * stderr]


def verdict_of(ci: list[float]) -> str:
    lo, hi = ci
    return BETTER if lo > 0 else WORSE if hi < 0 else TIED


def gains(evals: dict[str, dict], anchor: str = "sft") -> dict[str, dict]:
    """model -> domain (and "mean") -> {gain, stderr, z} against the anchor, for every other model."""
    out = {}
    for name, ev in evals.items():
        if name == anchor:
            continue
        g = paired_gain(evals[anchor], ev)
        out[name] = {d: {**v, "z": z_of(v["gain"], v["stderr"])} for d, v in g.items()}
    return out


def best_of(mean_avg: dict[str, float], names: list[str]) -> str:
    """The name with the highest mean Avg@K (the first of equals)."""
    return max(names, key=lambda n: (mean_avg[n], -names.index(n)))


def verdicts(evals: dict[str, dict], a: str, others: list[str], best: str) -> list[dict]:
    """a against each of `others`, per domain and on the mean: {a, b, domain, diff, stderr, ci95, verdict,
    best} (best: b is the model `best` names, e.g. the best merge)."""
    out = []
    for b in others:
        for d, v in paired_gain(evals[b], evals[a]).items():
            ci = ci95(v["gain"], v["stderr"])
            out.append(
                {
                    "a": a,
                    "b": b,
                    "domain": d,
                    "diff": v["gain"],
                    "stderr": v["stderr"],
                    "ci95": ci,
                    "verdict": verdict_of(ci),
                    "best": b == best,
                }
            )
    return out


def mean_of(values: list[float], stderrs: list[float]) -> tuple[float, float]:
    """Mean of independent estimates and its standard error, sqrt(sum se^2) / n."""
    return float(np.mean(values)), math.sqrt(sum(s * s for s in stderrs)) / len(stderrs)
