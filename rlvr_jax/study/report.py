"""The mix-vs-merge report: results.json (every measured number), report.md (the verdict with confidence
intervals, the study's findings checked, gains over the anchor, then the study's tables: main results,
merge methods, pass@K, cost in device-seconds, weight space, gain consistency, policy KL) and PNG plots,
built only from what the experiment's stages wrote into the workdir. With several seeds, accuracies are
pooled per item over the seeds (stats.pool_seeds) and costs summed over them."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess

import jax
import numpy as np

from rlvr_jax.study import findings, stats
from rlvr_jax.study.findings import STUDY_MULTI_PCT
from rlvr_jax.study.layout import DOMAIN_LABELS, domains_of, model_table, pooled_evals, seeds_of, stage_done, suffix


def provenance() -> dict:
    """The code the numbers came from: commit and whether the work tree had changes (None outside git)."""

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "dirty": None}
    return {"git_commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def machine_info(note: str) -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {
        "cpu": cpu or platform.processor(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "note": note,
    }


def _curves(workdir: str, stage: str) -> dict[str, list[list[float]]]:
    """domain -> [[step, reward/<domain>/mean], ...] from a run's metrics (the last row of a step wins:
    a resumed run logs its replayed steps again)."""
    path = os.path.join(workdir, stage, "metrics_train.jsonl")
    if not os.path.exists(path):
        return {}
    rows = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                rows[r["step"]] = r
    out = {}
    for step in sorted(rows):
        for k, v in rows[step].items():
            if k.startswith("reward/") and k.endswith("/mean") and k.count("/") == 2:
                out.setdefault(k.split("/")[1], []).append([step, v])
    return out


def _step_times(workdir: str, stage: str) -> dict:
    """From a run's metrics: step 1's time/total (it includes compiling the sampler and the update)
    and the sum and mean over the later steps."""
    rows = {}
    with open(os.path.join(workdir, stage, "metrics_train.jsonl")) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                rows[r["step"]] = r["time/total"]
    later = [v for k, v in rows.items() if k > 1]
    return {
        "steps": len(rows),
        "first_step_s": rows.get(1),
        "later_steps_s": sum(later),
        "later_step_mean_s": sum(later) / len(later) if later else None,
    }


def _cost(config, workdir: str, stages: dict, models: dict) -> dict:
    """Device-seconds of the separate runs, the multi-task run, MT-OPD and the merges, each summed over the
    seeds, and the per-step times of every RL run."""
    domains, seeds = domains_of(config), seeds_of(config)

    def total(stage):
        return sum(stages[stage + suffix(config, s)]["device_seconds"] for s in seeds)

    single = {d: total(f"rl_{d}") for d in domains}
    single_total = sum(single.values())
    runs = {
        name + suffix(config, s): {"model": name, "seed": s}
        for s in seeds
        for name in [f"rl_{d}" for d in domains] + ["opd", "multi"]
    }
    cost = {
        "single_device_s": single,
        "single_total_device_s": single_total,
        "multi_device_s": total("multi"),
        "multi_pct_of_single": 100.0 * total("multi") / single_total,
        "opd_device_s": total("opd"),
        "merge_device_s": {n[len("merge_") :]: total(n) for n in models if n.startswith("merge_")},
        # the report stage is still running while this is computed: every stage before it
        "experiment_wall_s": sum(v["wall_s"] for v in stages.values()),
        "step_times": {r: dict(_step_times(workdir, r), **who) for r, who in runs.items()},
    }
    later = cost["step_times"]
    single_later = sum(t["later_steps_s"] for t in later.values() if t["model"].startswith("rl_"))
    multi_later = sum(t["later_steps_s"] for t in later.values() if t["model"] == "multi")
    # None when the single-domain runs had no step after the first (compile-bearing) one
    cost["multi_pct_of_single_later_steps"] = 100.0 * multi_later / single_later if single_later > 0 else None
    return cost


def build_results(config, workdir: str) -> dict:
    """Everything the report shows, gathered from the stage outputs."""
    models = model_table(config, workdir)
    seeds = seeds_of(config)
    K = config.eval.samples
    root = os.path.abspath(workdir)
    shown = {
        n: dict(
            m,
            path=os.path.relpath(os.path.abspath(m["path"]), root)
            if os.path.abspath(m["path"]).startswith(root + os.sep)
            else m["path"],
        )
        for n, m in models.items()
    }  # paths inside the workdir are kept relative to it
    evals = pooled_evals(config, workdir)
    per_model = {n: evals[n]["per_domain"] for n in models}
    domains = domains_of(config)
    mean_avg = {n: float(np.mean([per_model[n][d][f"avg@{K}"] for d in domains])) for n in models}
    stages = {}
    for name in os.listdir(workdir):
        done = stage_done(workdir, name)
        if done:
            stages[name] = {
                k: done[k] for k in ("wall_s", "device_count", "device_seconds", "device_kind", "finished_at")
            }
            loads = [x for a in done["attempts"] for x in (a["loadavg_start"][0], a["loadavg_end"][0])]
            stages[name]["loadavg_1min_range"] = [min(loads), max(loads)]
            # the code of each attempt (stages finished before this field existed have none)
            stages[name]["code"] = [a["code"] for a in done["attempts"] if "code" in a]
    with open(os.path.join(workdir, "analysis", "analysis.json")) as f:
        analysis = json.load(f)
    merges = [n for n in models if n.startswith("merge_")]
    results = {
        "question": "mix (one multi-task GRPO run) or merge (per-domain GRPO experts, then merge or distil)?",
        "machine": machine_info(config.report.machine),
        "provenance": provenance(),
        "config": json.loads(config.to_json_best_effort()),
        "models": shown,
        # RL seeds, the main one first; stage and model files of seed n end with stage_suffix[n]
        "seeds": seeds,
        "stage_suffix": [suffix(config, s) for s in seeds],
        "eval": {
            "samples": K,
            "temperature": config.eval.temperature,
            "data": config.eval.data,
            "items_per_domain": {d: per_model["sft"][d]["n_items"] for d in domains},
            "per_model": per_model,
            "mean_avg": mean_avg,
            "per_item_files": {
                n: sorted({f"eval/{n if n == 'sft' else n + suffix(config, s)}.json" for s in seeds}) for n in models
            },
        },
        "stages": stages,
        "cost": _cost(config, workdir, stages, models),
        # paired over the eval items against the anchor, and RL-Multi against each merge and MT-OPD (stats)
        "gains": stats.gains(evals),
        "verdict": stats.verdicts(evals, "multi", merges + ["opd"], stats.best_of(mean_avg, merges)),
        "weight_space": {k: analysis[k] for k in ("names", "footprint", "overlap", "cosine")},
        "gain_consistency": analysis["gain_consistency"],
        "policy_kl": analysis["policy_kl"],
        # the main seed's runs
        "curves": {
            s: _curves(workdir, s + suffix(config, seeds[0])) for s in [f"rl_{d}" for d in domains] + ["opd", "multi"]
        },
    }
    results["findings"] = findings.check(results)
    return results


# ------------------------------------------------------------------ markdown


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
    K = results["eval"]["samples"]
    models, pm = results["models"], results["eval"]["per_model"]
    domains = list(results["eval"]["items_per_domain"])
    avg = f"avg@{K}"
    mc = results["machine"]
    out = [
        f"# Mix or merge? The experiment on `{results['config']['base']['model']['preset']}`"
        f"{' from ' + results['config']['anchor'] if results['config']['anchor'] else ''}",
        "",
    ]
    loads = [x for s in results["stages"].values() for x in s["loadavg_1min_range"]]
    cfg = results["config"]
    b, ro = cfg["base"], cfg["base"]["rollout"]
    anchor = cfg["anchor"] or f"SFT of the base model on all domains, {b['sft']['steps']} steps"
    out += [
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
    out += _verdict_section(results)
    out += _findings_section(results)
    out += _anchor_gains_section(results)

    cols = main_table_models(results)
    rows = [[DOMAIN_LABELS.get(d, d)] + [pct(pm[n][d][avg]) for n in cols] for d in domains]
    rows.append(["**Mean**"] + [pct(results["eval"]["mean_avg"][n]) for n in cols])
    out += [
        "## Main results (Avg@%d, %%)" % K,
        "",
        _table(["benchmark"] + [models[n]["label"] for n in cols], rows),
        "",
    ]

    merge_rows = [n for n, m in models.items() if m["kind"] in ("merge", "opd", "multi")]
    rows = [
        [models[n]["label"]] + [pct(pm[n][d][avg]) for d in domains] + [pct(results["eval"]["mean_avg"][n])]
        for n in merge_rows
    ]
    out += [
        "## Merge methods (Avg@%d, %%)" % K,
        "",
        "All merges are anchored on the SFT model, over all parameters, "
        "in fp32; options per method are in results.json (`config.merge.options`).",
        "",
        _table(["model"] + [DOMAIN_LABELS.get(d, d) for d in domains] + ["Mean"], rows),
        "",
    ]

    pk = f"pass@{K}"
    rows = [[models[n]["label"]] + [pct(pm[n][d][pk]) for d in domains] for n in models]
    out += [f"## pass@{K} (unbiased, %)", "", _table(["model"] + [DOMAIN_LABELS.get(d, d) for d in domains], rows), ""]

    out += _cost_section(results)
    out += _weight_space_section(results)
    out += _gains_section(results)
    out += _kl_section(results)
    out += [
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
    return "\n".join(out)


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
        "compiling the sampler and the update, which every run pays once):",
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


def _plt():
    import matplotlib  # local: heavy; only the figures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # local: after matplotlib.use('Agg')

    return plt


def plot_curves(results: dict, path: str) -> None:
    """Per domain: training reward of its expert, of RL-Multi and of MT-OPD against the step."""
    plt = _plt()
    domains = list(results["eval"]["items_per_domain"])
    w = max(1, int(results["config"]["report"]["curve_smoothing"]))
    fig, axes = plt.subplots(1, len(domains), figsize=(4 * len(domains), 3.2), squeeze=False)
    for ax, d in zip(axes[0], domains):
        for stage, label in (
            (f"rl_{d}", results["models"][f"rl_{d}"]["label"]),
            ("multi", "RL-Multi"),
            ("opd", "MT-OPD"),
        ):
            pts = results["curves"].get(stage, {}).get(d)
            if not pts:
                continue
            x, y = np.asarray(pts).T
            k = min(w, len(y))
            ax.plot(x[k - 1 :], np.convolve(y, np.ones(k) / k, mode="valid"), label=label)
        ax.set_ylim(-0.02, 1.02)  # binary rewards
        ax.set_title(f"{d}: training reward (mean of {w} steps)")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy(results: dict, path: str) -> None:
    plt = _plt()
    K = results["eval"]["samples"]
    domains = list(results["eval"]["items_per_domain"])
    names = list(results["models"])
    groups = domains + ["mean"]
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(groups) * len(names) / 4), 4))
    width = 0.8 / len(names)
    cmap = plt.get_cmap("tab20")
    for i, n in enumerate(names):
        vals = [results["eval"]["per_model"][n][d][f"avg@{K}"] for d in domains] + [results["eval"]["mean_avg"][n]]
        ax.bar(
            np.arange(len(groups)) + (i - len(names) / 2 + 0.5) * width,
            100 * np.asarray(vals),
            width,
            label=results["models"][n]["label"],
            color=cmap(i % 20),
        )
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(f"Avg@{K} (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_kl(results: dict, path: str) -> None:
    plt = _plt()
    kl, models = results["policy_kl"], results["models"]
    domains = list(results["eval"]["items_per_domain"])
    fig, axes = plt.subplots(1, len(kl["against"]), figsize=(4.5 * len(kl["against"]), 3.5), squeeze=False)
    for ax, o in zip(axes[0], kl["against"]):
        experts = list(kl["kl"][o])
        mat = np.asarray([[kl["kl"][o][e][d]["per_token"] for d in domains] for e in experts])
        im = ax.imshow(mat, cmap="magma")
        ax.set_xticks(range(len(domains)), domains)
        ax.set_yticks(range(len(experts)), [models[e]["label"] for e in experts])
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                ax.text(j, i, f"{mat[i, j]:.3f}", ha="center", va="center", color="c", fontsize=7)
        ax.set_title(f"KL(expert || {models[o]['label']}) per token", fontsize=9)
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict, out_dir: str, workdir: str) -> None:
    """results.json, report.md and the PNGs (the weight-space heatmaps copied from the analysis stage)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot_curves(results, os.path.join(out_dir, "learning_curves.png"))
    plot_accuracy(results, os.path.join(out_dir, "accuracy_bars.png"))
    if results["policy_kl"]:
        plot_kl(results, os.path.join(out_dir, "policy_kl.png"))
    src = os.path.join(workdir, "analysis")
    for name in ("overlap.png", "cosine.png", "cosine_per_layer.png"):
        if os.path.exists(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(out_dir, name))
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(render(results))
