"""report.md's analysis sections (weight space, gain consistency, policy KL) and the markdown pieces every
section of the report uses (tables, percentages). Markdown only: no I/O."""

from __future__ import annotations

from rlvr_jax.study.layout import DOMAIN_LABELS


def pct(x: float) -> str:
    """Accuracies are shown as percentages with two decimals, like REFERENCE.md."""
    return f"{100.0 * x:.2f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def weight_space_section(results: dict) -> list[str]:
    ws, models = results["weight_space"], results["models"]
    names = ws["names"]
    rows = [[models[n]["label"], pct(ws["footprint"][n]["density"])] for n in names]
    out = [
        "## Weight space",
        "",
        "Update footprint: an entry changed iff |w - w_anchor| > "
        f"{results['config']['analysis']['rel_tol']} x max(|w|, |w_anchor|).",
        "",
        table(["model", "changed entries (%)"], rows),
        "",
    ]
    core = [n for n in names if models[n]["kind"] in ("expert", "multi", "multi_adaptive")]
    idx = {n: i for i, n in enumerate(names)}
    rows = [
        [
            f"{models[a]['label']} / {models[b]['label']}",
            f"{ws['overlap']['jaccard'][idx[a]][idx[b]]:.3f}",
            f"{ws['overlap']['random_baseline'][idx[a]][idx[b]]:.3f}",
        ]
        for i, a in enumerate(core)
        for b in core[i + 1 :]
    ]
    out += [
        "Overlap of the changed entries (Jaccard) against independent random masks of the same densities:",
        "",
        table(["pair", "Jaccard", "random baseline"], rows),
        "",
    ]
    rows = [[models[a]["label"]] + [f"{ws['cosine']['whole'][idx[a]][idx[b]]:.3f}" for b in core] for a in core]
    out += [
        f"Task-vector cosines after one shared seeded projection to {ws['cosine']['dim']} dimensions "
        "(all models: cosine.png; per layer: cosine_per_layer.png):",
        "",
        table([""] + [models[b]["label"] for b in core], rows),
        "",
    ]
    return out


def gains_section(results: dict) -> list[str]:
    g, models = results["gain_consistency"], results["models"]
    domains = list(results["eval"]["items_per_domain"])

    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    rows = [[models[n]["label"]] + [f(g[n]["all"])] + [f(g[n][d]) for d in domains] for n in g]
    return [
        "## Gain consistency",
        "",
        "Cosine between a model's per-item gains over the anchor (clipped at 0) and "
        "the item-wise maximum of the experts' gains; n/a where a gain vector is all zero.",
        "",
        table(["model", "all"] + [DOMAIN_LABELS.get(d, d) for d in domains], rows),
        "",
    ]


def kl_section(results: dict) -> list[str]:
    kl, models = results["policy_kl"], results["models"]
    if not kl:
        return []
    domains = list(results["eval"]["items_per_domain"])
    out = [
        "## Policy neighbourhood",
        "",
        f"KL(expert || model) on each domain's held-out prompts "
        f"({kl['prompts_per_domain']} prompts x {kl['samples']} completions sampled from the expert, teacher-forced "
        "through both): nats per token (per sequence in brackets).",
        "",
    ]
    for o in kl["against"]:
        rows = [
            [models[e]["label"]]
            + [f"{kl['kl'][o][e][d]['per_token']:.4f} ({kl['kl'][o][e][d]['per_sequence']:.2f})" for d in domains]
            for e in kl["kl"][o]
        ]
        out += [
            f"Against {models[o]['label']}:",
            "",
            table(["expert"] + [DOMAIN_LABELS.get(d, d) for d in domains], rows),
            "",
        ]
    return out
