"""The report's self-verification section (results.json `self_verification`): one table per judging mode, rows
the judged models, columns the domains, and the verifier's base rate to read the accuracies against."""

from __future__ import annotations

from rlvr_jax.study.layout import DOMAIN_LABELS
from rlvr_jax.study.render_analyses import pct, table

MODE_TITLES = {"outcome": "Outcome (the judge sees the final answer only)", "process": "Process (the whole response)"}


def _cell(m: dict, key: str) -> str:
    return "-" if m.get(key) is None else pct(m[key])


def self_verification_section(results: dict) -> list[str]:
    """## Self-verification: accuracy (unparsable share in brackets) per model, mode and domain, in %."""
    sv = results.get("self_verification") or {}
    if not sv:
        return []
    models = results["models"]
    names = [n for n in models if n in sv] + [n for n in sv if n not in models]
    first = sv[names[0]]
    modes = list(first)
    judged = [d for d in first[modes[0]] if d != "all"]
    study = list(results.get("eval", {}).get("items_per_domain", {}))  # the study's domain order
    domains = [d for d in study if d in judged] + [d for d in judged if d not in study] + ["all"]
    header = ["model"] + [DOMAIN_LABELS.get(d, "All" if d == "all" else d) for d in domains]
    K = results["config"]["analysis"]["self_verification"]["samples"]
    items = max(first[modes[0]][d]["n"] for d in domains[:-1]) // K
    out = [
        "## Self-verification",
        "",
        f"Each model samples {K} answers to each of the first {items} eval items of a domain and then judges "
        "each of its own answers (greedy Yes/No; prompts in the config's "
        "`analysis.self_verification`). Accuracy is agreement with the rule-based verifier, in %, with the share "
        "of verdicts that were neither yes nor no in brackets (counted as wrong). Read it against the base rate "
        "below: a judge that always says yes scores the base rate, one that always says no scores 100 minus it.",
        "",
    ]
    for mode in modes:
        rows = [
            [models.get(n, {}).get("label", n)]
            + [f"{_cell(sv[n][mode][d], 'accuracy')} ({_cell(sv[n][mode][d], 'unparsable')})" for d in domains]
            for n in names
        ]
        out += [f"{MODE_TITLES.get(mode, mode)}:", "", table(header, rows), ""]
    rows = [
        [models.get(n, {}).get("label", n)] + [_cell(sv[n][modes[0]][d], "base_rate") for d in domains] for n in names
    ]
    out += ["Base rate (share of the judged samples the verifier accepts, %):", "", table(header, rows), ""]
    out += [
        "Precision of each verdict (of samples judged correct, the share truly correct; likewise for incorrect) "
        "is in results.json `self_verification`.",
        "",
    ]
    return out
