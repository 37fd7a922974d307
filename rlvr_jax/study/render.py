"""report.md from an experiment's results (report.build_results): the verdict with confidence intervals,
the study's findings checked, gains over the anchor, then the study's tables (main results, merge methods,
pass@K, cost in device-seconds, weight space, gain consistency, policy KL). Markdown only: no I/O."""

from __future__ import annotations

from rlvr_jax.study import findings, stats
from rlvr_jax.study.findings import STUDY_MULTI_PCT
from rlvr_jax.study.layout import DOMAIN_LABELS


def pct(x: float) -> str:
    """Accuracies are shown as percentages with two decimals, like REFERENCE.md."""
    return f"{100.0 * x:.2f}"


def _commit(code: dict) -> str:
    return f"{str(code['git_commit'])[:10]}{' with local changes' if code['dirty'] else ''}"


def code_line(results: dict) -> str:
    """Which code made the numbers: one commit when every stage attempt and the report ran the same one,
    else the stages of each commit (a workdir resumed across commits, or stages run before attempts
    recorded their code)."""
    report = _commit(results["provenance"])
    by_commit: dict[str, list[str]] = {}
    for name, st in sorted(results["stages"].items()):
        for commit in {_commit(c) for c in st.get("code", [])} or {"unrecorded"}:
            by_commit.setdefault(commit, []).append(name)
    if set(by_commit) <= {report}:
        return f"Code: commit {report}."
    parts = [f"{c} ({', '.join(names)})" for c, names in by_commit.items()]
    return f"Code: the report at commit {report}; the stages at {'; '.join(parts)}."


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main_table_models(results: dict) -> list[str]:
    """SFT, the experts, the main merge, MT-OPD and RL-Multi: the columns of the study's results table."""
    main = f"merge_{results['config']['merge']['main']}"
    return [n for n, m in results["models"].items() if m["kind"] in ("anchor", "expert")] + [main, "opd", "multi"]


def render(results: dict) -> str:
    """report.md: the title and setup, the verdict, findings and gains, then the tables and the plots."""
    out = _title(results) + _setup_section(results)
    out += _verdict_section(results)
    out += _findings_section(results)
    out += _anchor_gains_section(results)
    out += _main_results_section(results)
    out += _merge_methods_section(results)
    out += _pass_at_k_section(results)
    out += _cost_section(results)
    out += _weight_space_section(results)
    out += _gains_section(results)
    out += _kl_section(results)
    out += _plots_section(results)
    return "\n".join(out)


def _title(results: dict) -> list[str]:
    return [
        f"# Mix or merge? The experiment on `{results['config']['base']['model']['preset']}`"
        f"{' from ' + results['config']['anchor'] if results['config']['anchor'] else ''}",
        "",
    ]


def _setup_section(results: dict) -> list[str]:
    """How the models were trained, on what machine, how they were evaluated, and how seeds are pooled."""
    K = results["eval"]["samples"]
    models, pm = results["models"], results["eval"]["per_model"]
    domains = list(results["eval"]["items_per_domain"])
    mc = results["machine"]
    loads = [x for s in results["stages"].values() for x in s["loadavg_1min_range"]]
    cfg = results["config"]
    b, ro = cfg["base"], cfg["base"]["rollout"]
    anchor = cfg["anchor"] or f"SFT of the base model on all domains, {b['sft']['steps']} steps"
    out = [
        f"Setup: anchor = {anchor}; "
        f"GRPO with {ro['prompts_per_step']} prompts x {ro['samples_per_prompt']} samples per step, "
        f"lr {b['optim']['learning_rate']:g}, up to {ro['max_new_tokens']} response tokens; "
        f"{cfg['single_steps']} steps per single-domain run, {cfg['multi_steps']} for the multi-task run "
        f"({cfg['multi_step_ratio']}x); MT-OPD {cfg['opd']['steps']} steps of {cfg['opd']['prompts_per_step']} x "
        f"{cfg['opd']['samples_per_prompt']}, lr {cfg['opd']['learning_rate']:g}. All settings: results.json "
        "(`config`).",
        "",
    ]
    out += [
        f"Measured on: {mc['cpu']}, {mc['cpu_count']} cores, {mc['device_count']} JAX {mc['backend']} "
        f"device(s) ({mc['device_kind']}), JAX {mc['jax']}"
        + (f"; {mc['note']}" if mc["note"] else "")
        + f". 1-minute load average during the stages: "
        f"{min(loads):.1f} to {max(loads):.1f}. Wall time of all stages before the report: "
        f"{results['cost']['experiment_wall_s'] / 60:.1f} min. {code_line(results)}",
        "",
        f"Evaluation: built-in held-out items ({', '.join(f'{d} {n}' for d, n in results['eval']['items_per_domain'].items())}), "
        f"K = {K} samples per item at temperature {results['eval']['temperature']}; Avg@{K} in %. "
        f"Standard errors over items are in results.json (`eval.per_model.*.*.stderr`); the largest is "
        f"{100 * max(pm[n][d]['stderr'] for n in models for d in domains):.2f} points.",
        "",
    ]
    if len(results["seeds"]) > 1:
        out += [
            f"Seeds: every RL stage (single-domain runs, merges, MT-OPD, multi-task) ran once per seed "
            f"({', '.join(map(str, results['seeds']))}) from the one SFT anchor. Accuracies, gains and the "
            f"verdict pool the seeds: per item, each model's score is averaged over the seeds' evaluations "
            f"before any pairing (the anchor is evaluated once); pass@{K} is the mean of the seeds' pass@{K}; "
            f"costs are summed over the seeds. Weight space and policy KL use seed "
            f"{results['seeds'][0]}'s models; learning curves are seed {results['seeds'][0]}'s.",
            "",
        ]
    return out


def _main_results_section(results: dict) -> list[str]:
    """Avg@K per domain of the anchor, the experts, the main merge, MT-OPD and RL-Multi."""
    K = results["eval"]["samples"]
    models, pm = results["models"], results["eval"]["per_model"]
    domains = list(results["eval"]["items_per_domain"])
    avg = f"avg@{K}"
    cols = main_table_models(results)
    rows = [[DOMAIN_LABELS.get(d, d)] + [pct(pm[n][d][avg]) for n in cols] for d in domains]
    rows.append(["**Mean**"] + [pct(results["eval"]["mean_avg"][n]) for n in cols])
    return [
        "## Main results (Avg@%d, %%)" % K,
        "",
        _table(["benchmark"] + [models[n]["label"] for n in cols], rows),
        "",
    ]


def _merge_methods_section(results: dict) -> list[str]:
    """Avg@K per domain of every merge, MT-OPD and RL-Multi."""
    K = results["eval"]["samples"]
    models, pm = results["models"], results["eval"]["per_model"]
    domains = list(results["eval"]["items_per_domain"])
    avg = f"avg@{K}"
    merge_rows = [n for n, m in models.items() if m["kind"] in ("merge", "opd", "multi")]
    rows = [
        [models[n]["label"]] + [pct(pm[n][d][avg]) for d in domains] + [pct(results["eval"]["mean_avg"][n])]
        for n in merge_rows
    ]
    return [
        "## Merge methods (Avg@%d, %%)" % K,
        "",
        "All merges are anchored on the SFT model, over all parameters, "
        "in fp32; options per method are in results.json (`config.merge.options`).",
        "",
        _table(["model"] + [DOMAIN_LABELS.get(d, d) for d in domains] + ["Mean"], rows),
        "",
    ]


def _pass_at_k_section(results: dict) -> list[str]:
    K = results["eval"]["samples"]
    models, pm = results["models"], results["eval"]["per_model"]
    domains = list(results["eval"]["items_per_domain"])
    pk = f"pass@{K}"
    rows = [[models[n]["label"]] + [pct(pm[n][d][pk]) for d in domains] for n in models]
    return [f"## pass@{K} (unbiased, %)", "", _table(["model"] + [DOMAIN_LABELS.get(d, d) for d in domains], rows), ""]


def _plots_section(results: dict) -> list[str]:
    out = [
        "## Plots",
        "",
        "![learning curves](learning_curves.png)",
        "",
        "![accuracy](accuracy_bars.png)",
        "",
        "![overlap](overlap.png)",
        "",
        "![cosine](cosine.png)",
        "",
        "![cosine per layer](cosine_per_layer.png)",
        "",
    ]
    if results["policy_kl"]:
        out += ["![policy KL](policy_kl.png)", ""]
    out += [
        "Per-item correctness of every model: `eval/<model>.json` in the workdir; every number above: `results.json`.",
        "",
    ]
    return out


VERDICT_WORDS = {stats.BETTER: "better", stats.WORSE: "worse", stats.TIED: "indistinguishable"}


def points(x: float) -> str:
    """A difference of accuracies in points, signed."""
    return f"{100.0 * x:+.2f}"


def verdict_cell(v: dict) -> str:
    lo, hi = v["ci95"]
    return f"{VERDICT_WORDS[v['verdict']]}: {points(v['diff'])} [{points(lo)}, {points(hi)}]"


def gain_cell(g: dict) -> str:
    return f"{points(g['gain'])} (z {'n/a' if g['z'] is None else format(g['z'], '.1f')})"


def verdict_rows(results: dict) -> list[str]:
    """The models RL-Multi is compared with, in the verdict table's order: the best merge, the other merges,
    MT-OPD."""
    names = list(dict.fromkeys(v["b"] for v in results["verdict"]))
    return sorted(names, key=lambda n: not any(v["best"] for v in results["verdict"] if v["b"] == n))


def _verdict_section(results: dict) -> list[str]:
    v, models = results["verdict"], results["models"]
    K, domains = results["eval"]["samples"], list(results["eval"]["items_per_domain"])
    best = next(x for x in v if x["best"] and x["domain"] == "mean")
    lo, hi = best["ci95"]
    a = models[best["a"]]["label"]
    cell = {(x["b"], x["domain"]): x for x in v}
    rows = [
        [models[b]["label"] + (" (best merge)" if cell[(b, "mean")]["best"] else "")]
        + [verdict_cell(cell[(b, d)]) for d in domains + ["mean"]]
        for b in verdict_rows(results)
    ]
    seeds = len(results["seeds"])
    return [
        "## Verdict",
        "",
        f"**{a} against the best merge ({models[best['b']]['label']}, best by mean Avg@{K}): "
        f"{points(best['diff'])} points on the mean over domains, 95% CI [{points(lo)}, {points(hi)}]: "
        f"{best['verdict']}.**",
        "",
        f"Each cell: {a} minus the row's model in points of Avg@{K}, its 95% confidence interval in brackets, "
        f"and the verdict for {a}: better (the interval lies above 0), worse (below 0), or indistinguishable "
        "at this scale (it holds 0). The differences are paired over the eval items, which every model "
        f"answers: an item's score is the mean of its {K} samples"
        + (f", averaged over the {seeds} seeds" if seeds > 1 else "")
        + "; a domain's difference is the mean over its n items of the per-item differences, with standard "
        "error sd / sqrt(n); the mean over the D domains is the average of the domain differences, with "
        "standard error sqrt(sum of squared domain errors) / D (the domains share no items); the interval is "
        "the difference +- 1.96 standard errors. The best merge is picked by the same numbers it is compared "
        "on, which flatters it a little.",
        "",
        _table([f"{a} vs"] + [DOMAIN_LABELS.get(d, d) for d in domains] + ["Mean"], rows),
        "",
    ]


def _findings_section(results: dict) -> list[str]:
    rows = [[f["finding"], f"**{f['status']}**", f["evidence"]] for f in results["findings"]]
    return [
        "## Findings",
        "",
        "The study's findings (its summary and analyses), each checked on this run. Differences are in points "
        "of Avg@K with 95% confidence intervals (as in the verdict). A finding with an interval is reproduced "
        "when the interval lies wholly on the claim's side, not reproduced when it lies wholly on the "
        "negation's side, and inconclusive when it holds both; "
        f"'little' and 'about equal' mean within {100 * findings.MARGIN:g} points.",
        "",
        _table(["finding", "status", "evidence"], rows),
        "",
        "How each status is decided:",
        "",
        *[f"- {f['finding']}: {f['rule']}." for f in results["findings"]],
        "",
    ]


def _anchor_gains_section(results: dict) -> list[str]:
    g, models = results["gains"], results["models"]
    domains = list(results["eval"]["items_per_domain"])
    rows = [[models[n]["label"]] + [gain_cell(g[n][d]) for d in domains + ["mean"]] for n in g]
    return [
        "## Gains over the anchor",
        "",
        "Points of Avg@K over the SFT anchor, paired over items as in the verdict; z = gain / standard error "
        "(n/a where every per-item difference is equal). results.json: `gains`.",
        "",
        _table(["model"] + [DOMAIN_LABELS.get(d, d) for d in domains] + ["Mean"], rows),
        "",
    ]


def _cost_section(results: dict) -> list[str]:
    st, c, models = results["stages"], results["cost"], results["models"]
    base, seeds = c["single_total_device_s"], results["seeds"]

    def row(label, name, suffixes=tuple(results["stage_suffix"])):
        runs = [st[name + x] for x in suffixes]  # a stage of every seed, summed
        dev = sum(s["device_seconds"] for s in runs)
        return [
            label,
            f"{sum(s['wall_s'] for s in runs):.1f}",
            str(runs[0]["device_count"]),
            f"{dev:.1f}",
            f"{100 * dev / base:.1f}",
        ]

    rows = [row("SFT anchor (shared by every model)", "sft", ("",))] if "sft" in st else []
    rows += [row(f"{models[f'rl_{d}']['label']} (GRPO)", f"rl_{d}") for d in c["single_device_s"]]
    rows.append(["**separate single-domain runs (sum)**", "", "", f"{base:.1f}", "100.0"])
    rows += [row(f"{models[n]['label']} (merge step only)", n) for n in models if n.startswith("merge_")]
    rows.append(row("MT-OPD (distillation only; needs the experts)", "opd"))
    rows.append(row("**RL-Multi (GRPO, mixed)**", "multi"))
    rows += [row(f"{n} (not part of training cost)", n, ("",)) for n in ("eval", "analysis") if n in st]
    out = [
        "## Cost (device-seconds = measured wall time x device count)",
        "",
        _table(["stage", "wall s", "devices", "device-s", "% of separate runs"], rows),
        "",
        f"The multi-task run cost **{c['multi_pct_of_single']:.1f}%** of the separate single-domain runs "
        f"(the study: {STUDY_MULTI_PCT}% in GPU-hours, with {results['config']['multi_step_ratio']}x the steps "
        f"of one run). Every merge or MT-OPD also needs all single-domain runs first."
        + (f" The RL stages' figures are sums over the {len(seeds)} seeds." if len(seeds) > 1 else ""),
        "",
    ]
    t = c["step_times"]
    rows = [
        [
            models[t[n]["model"]]["label"] + (f" (seed {t[n]['seed']})" if len(seeds) > 1 else ""),
            str(t[n]["steps"]),
            f"{t[n]['first_step_s']:.1f}",
            f"{t[n]['later_step_mean_s']:.2f}",
            f"{t[n]['later_steps_s']:.1f}",
        ]
        for n in t
        if t[n]["later_step_mean_s"] is not None
    ]
    out += [
        "Where the RL time goes (`time/total` per step in each run's metrics_train.jsonl; step 1 includes "
        "compiling the update and most of the rollout engine's programs, which every run pays once; a later "
        "step compiles any block-table width step 1 did not need, `rollout/compilations`):",
        "",
        _table(["run", "steps", "step 1 s", "later steps: mean s", "later steps: sum s"], rows),
        "",
    ]
    if c["multi_pct_of_single_later_steps"] is not None:
        out += [
            f"Counting only the steps after the first, the multi-task run took "
            f"{c['multi_pct_of_single_later_steps']:.1f}% of the single-domain runs' time.",
            "",
        ]
    return out


def _weight_space_section(results: dict) -> list[str]:
    ws, models = results["weight_space"], results["models"]
    names = ws["names"]
    rows = [[models[n]["label"], pct(ws["footprint"][n]["density"])] for n in names]
    out = [
        "## Weight space",
        "",
        "Update footprint: an entry changed iff |w - w_anchor| > "
        f"{results['config']['analysis']['rel_tol']} x max(|w|, |w_anchor|).",
        "",
        _table(["model", "changed entries (%)"], rows),
        "",
    ]
    core = [n for n in names if models[n]["kind"] in ("expert", "multi")]
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
        _table(["pair", "Jaccard", "random baseline"], rows),
        "",
    ]
    rows = [[models[a]["label"]] + [f"{ws['cosine']['whole'][idx[a]][idx[b]]:.3f}" for b in core] for a in core]
    out += [
        f"Task-vector cosines after one shared seeded projection to {ws['cosine']['dim']} dimensions "
        "(all models: cosine.png; per layer: cosine_per_layer.png):",
        "",
        _table([""] + [models[b]["label"] for b in core], rows),
        "",
    ]
    return out


def _gains_section(results: dict) -> list[str]:
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
        _table(["model", "all"] + [DOMAIN_LABELS.get(d, d) for d in domains], rows),
        "",
    ]


def _kl_section(results: dict) -> list[str]:
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
            _table(["expert"] + [DOMAIN_LABELS.get(d, d) for d in domains], rows),
            "",
        ]
    return out


# ------------------------------------------------------------------ plots
