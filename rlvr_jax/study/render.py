"""report.md from an experiment's results (report.build_results): the verdict with confidence intervals,
the study's findings checked, gains over the anchor, then the study's tables (main results, merge methods,
pass@K, cost in device-seconds, then the analyses: render_analyses.py). Markdown only: no I/O."""

from __future__ import annotations

from rlvr_jax.study import findings, stats
from rlvr_jax.study.findings import STUDY_MULTI_PCT
from rlvr_jax.study.layout import DOMAIN_LABELS
from rlvr_jax.study.plots import has_share_curves
from rlvr_jax.study.render_analyses import gains_section, kl_section, pct, table, weight_space_section
from rlvr_jax.study.render_self_verification import self_verification_section


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


def main_table_models(results: dict) -> list[str]:
    """SFT, the experts, the main merge, MT-OPD, RL-Multi (and RL-Multi-Adaptive where it ran): the columns
    of the study's results table."""
    main = f"merge_{results['config']['merge']['main']}"
    return [n for n, m in results["models"].items() if m["kind"] in ("anchor", "expert")] + [
        main,
        "opd",
        *[n for n in ("multi", "multi_adaptive") if n in results["models"]],
    ]


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
    out += weight_space_section(results)
    out += gains_section(results)
    out += kl_section(results)
    out += self_verification_section(results)
    out += _plots_section(results)
    return "\n".join(out)


def _title(results: dict) -> list[str]:
    return [
        f"# Mix or merge? The experiment on `{results['config']['base']['model']['preset']}`"
        f"{' from ' + results['config']['anchor'] if results['config']['anchor'] else ''}",
        "",
    ]


def _side_by_side(cost: dict) -> str:
    """What the stages' walls sum to, when stages ran side by side (lanes) and so overlapped in time."""
    total = cost.get("stages_wall_sum_s", 0.0)
    if total <= 1.01 * cost["experiment_wall_s"]:
        return ""
    return f" (stages ran side by side; their wall times sum to {total / 60:.1f} min)"


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
        f"{results['cost']['experiment_wall_s'] / 60:.1f} min{_side_by_side(results['cost'])}. {code_line(results)}",
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
        table(["benchmark"] + [models[n]["label"] for n in cols], rows),
        "",
    ]


def _merge_methods_section(results: dict) -> list[str]:
    """Avg@K per domain of every merge, MT-OPD and RL-Multi."""
    K = results["eval"]["samples"]
    models, pm = results["models"], results["eval"]["per_model"]
    domains = list(results["eval"]["items_per_domain"])
    avg = f"avg@{K}"
    merge_rows = [n for n, m in models.items() if m["kind"] in ("merge", "opd", "multi", "multi_adaptive")]
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
        table(["model"] + [DOMAIN_LABELS.get(d, d) for d in domains] + ["Mean"], rows),
        "",
    ]


def _pass_at_k_section(results: dict) -> list[str]:
    K = results["eval"]["samples"]
    models, pm = results["models"], results["eval"]["per_model"]
    domains = list(results["eval"]["items_per_domain"])
    pk = f"pass@{K}"
    rows = [[models[n]["label"]] + [pct(pm[n][d][pk]) for d in domains] for n in models]
    return [f"## pass@{K} (unbiased, %)", "", table(["model"] + [DOMAIN_LABELS.get(d, d) for d in domains], rows), ""]


def _plots_section(results: dict) -> list[str]:
    out = [
        "## Plots",
        "",
        "![learning curves](learning_curves.png)",
        "",
        "![accuracy](accuracy_bars.png)",
        "",
    ]
    if has_share_curves(results):
        out += [
            "Each domain's share of the multi-task runs' batches per step (RL-Multi draws by dataset size; "
            "RL-Multi-Adaptive by its adaptive weights, dashed):",
            "",
            "![domain shares](domain_shares.png)",
            "",
        ]
    out += [
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


def verdict_rows(results: dict, a: str = "multi") -> list[str]:
    """The models `a` is compared with, in its verdict table's order: RL-Multi (for RL-Multi-Adaptive), the
    best merge, then the rest in results' order (the other merges, MT-OPD)."""
    v = [x for x in results["verdict"] if x["a"] == a]
    names = list(dict.fromkeys(x["b"] for x in v))
    return sorted(names, key=lambda n: (n != "multi", not any(x["best"] for x in v if x["b"] == n)))


def _verdicttable(results: dict, a: str) -> str:
    models, domains = results["models"], list(results["eval"]["items_per_domain"])
    cell = {(x["b"], x["domain"]): x for x in results["verdict"] if x["a"] == a}
    rows = [
        [models[b]["label"] + (" (best merge)" if cell[(b, "mean")]["best"] else "")]
        + [verdict_cell(cell[(b, d)]) for d in domains + ["mean"]]
        for b in verdict_rows(results, a)
    ]
    return table([f"{models[a]['label']} vs"] + [DOMAIN_LABELS.get(d, d) for d in domains] + ["Mean"], rows)


def _adaptive_headline(results: dict) -> list[str]:
    """RL-Multi-Adaptive's line under RL-Multi's: against RL-Multi and against the same best merge."""
    vs = {b: findings.verdict_row(results, "multi_adaptive", b) for b in ("multi", None)}
    if vs["multi"] is None:
        return []
    parts = [
        f"against {'RL-Multi' if b else results['models'][v['b']]['label'] + ' (best merge)'} "
        f"{points(v['diff'])} [{points(v['ci95'][0])}, {points(v['ci95'][1])}]: {v['verdict']}"
        for b, v in vs.items()
        if v is not None
    ]
    return [f"**RL-Multi-Adaptive (adaptive domain mixing), on the mean over domains: {'; '.join(parts)}.**", ""]


def _verdict_section(results: dict) -> list[str]:
    v, models = results["verdict"], results["models"]
    K = results["eval"]["samples"]
    best = findings.verdict_row(results, "multi")
    lo, hi = best["ci95"]
    arms = list(dict.fromkeys(x["a"] for x in v))  # RL-Multi, then RL-Multi-Adaptive where it ran
    a = models[arms[0]]["label"] if len(arms) == 1 else "the table's model"
    seeds = len(results["seeds"])
    return [
        "## Verdict",
        "",
        f"**{models[best['a']]['label']} against the best merge ({models[best['b']]['label']}, best by mean "
        f"Avg@{K}): {points(best['diff'])} points on the mean over domains, 95% CI [{points(lo)}, {points(hi)}]: "
        f"{best['verdict']}.**",
        "",
        *_adaptive_headline(results),
        f"Each cell: {a} minus the row's model in points of Avg@{K}, its 95% confidence interval in brackets, "
        f"and the verdict for {'it' if len(arms) > 1 else a}: better (the interval lies above 0), worse (below 0), or indistinguishable "
        "at this scale (it holds 0). The differences are paired over the eval items, which every model "
        f"answers: an item's score is the mean of its {K} samples"
        + (f", averaged over the {seeds} seeds" if seeds > 1 else "")
        + "; a domain's difference is the mean over its n items of the per-item differences, with standard "
        "error sd / sqrt(n); the mean over the D domains is the average of the domain differences, with "
        "standard error sqrt(sum of squared domain errors) / D (the domains share no items); the interval is "
        "the difference +- 1.96 standard errors. The best merge is picked by the same numbers it is compared "
        "on, which flatters it a little" + (", and it is the same merge for both arms." if len(arms) > 1 else "."),
        "",
        *[line for x in arms for line in (_verdicttable(results, x), "")],
    ]


def _findings_section(results: dict) -> list[str]:
    rows = [[f["finding"], f"**{f['status']}**", f["evidence"]] for f in results["findings"]]
    return [
        "## Findings",
        "",
        "The study's findings (its summary and analyses)"
        + (", and the third arm's question (adaptive mixing)" if "multi_adaptive" in results["models"] else "")
        + ", each checked on this run. Differences are in points "
        "of Avg@K with 95% confidence intervals (as in the verdict). A finding with an interval is reproduced "
        "when the interval lies wholly on the claim's side, not reproduced when it lies wholly on the "
        "negation's side, and inconclusive when it holds both; "
        f"'little' and 'about equal' mean within {100 * findings.MARGIN:g} points.",
        "",
        table(["finding", "status", "evidence"], rows),
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
        table(["model"] + [DOMAIN_LABELS.get(d, d) for d in domains] + ["Mean"], rows),
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
    if "multi_adaptive" in models:
        rows.append(row("**RL-Multi-Adaptive (GRPO, adaptive mixing)**", "multi_adaptive"))
    rows += [row(f"{n} (not part of training cost)", n, ("",)) for n in ("eval", "analysis") if n in st]
    out = [
        "## Cost (device-seconds = measured wall time x device count)",
        "",
        table(["stage", "wall s", "devices", "device-s", "% of separate runs"], rows),
        "",
        f"The multi-task run cost **{c['multi_pct_of_single']:.1f}%** of the separate single-domain runs "
        f"(the study: {STUDY_MULTI_PCT}% in GPU-hours, with {results['config']['multi_step_ratio']}x the steps "
        f"of one run)"
        + (
            f"; with adaptive mixing, **{c['multi_adaptive_pct_of_single']:.1f}%**"
            if "multi_adaptive_pct_of_single" in c
            else ""
        )
        + ". Every merge or MT-OPD also needs all single-domain runs first."
        + (f" The RL stages' figures are sums over the {len(seeds)} seeds." if len(seeds) > 1 else "")
        + _lanes_sentence(results),
        "",
    ]
    return out + _step_times_section(results)


def _lanes_sentence(results: dict) -> str:
    """Which stages ran side by side on part of the CPU (lanes.py), whose wall times are of a shared machine."""
    n = results["machine"]["cpu_count"]
    shared = {k: s["cpu_cores"] for k, s in results["stages"].items() if any(c < n for c in s.get("cpu_cores", []))}
    if not shared:
        return ""
    parts = ", ".join(f"{k} ({'+'.join(map(str, c))})" for k, c in sorted(shared.items()))
    return (
        f" Stages ran side by side (lanes = {results['config'].get('lanes', 1)}), each pinned to part of the "
        f"{n} cores, so their wall times are those of a shared machine; cores per attempt: {parts}."
    )


def _step_times_section(results: dict) -> list[str]:
    """The cost section's second table: step 1 against the later steps of every RL run."""
    c, models, seeds = results["cost"], results["models"], results["seeds"]
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
    out = [
        "Where the RL time goes (`time/total` per step in each run's metrics_train.jsonl; step 1 includes "
        "compiling the update and most of the rollout engine's programs, which every run pays once; a later "
        "step compiles any block-table width step 1 did not need, `rollout/compilations`):",
        "",
        table(["run", "steps", "step 1 s", "later steps: mean s", "later steps: sum s"], rows),
        "",
    ]
    if c["multi_pct_of_single_later_steps"] is not None:
        ada = c.get("multi_adaptive_pct_of_single_later_steps")
        out += [
            f"Counting only the steps after the first, the multi-task run took "
            f"{c['multi_pct_of_single_later_steps']:.1f}% of the single-domain runs' time"
            + ("" if ada is None else f" (with adaptive mixing {ada:.1f}%)")
            + ".",
            "",
        ]
    return out
