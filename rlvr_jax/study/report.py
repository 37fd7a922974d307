"""The mix-vs-merge report: results.json (every measured number, gathered here), report.md (render.py) and
PNG plots (plots.py), built only from what the experiment's stages wrote into the workdir. With several
seeds, accuracies are pooled per item over the seeds (stats.pool_seeds) and costs summed over them."""

from __future__ import annotations

import json
import os
import platform
import time

import jax
import numpy as np

from rlvr_jax import storage
from rlvr_jax.metrics import read_jsonl
from rlvr_jax.study import findings, stats
from rlvr_jax.study.layout import domains_of, model_table, pooled_evals, seeds_of, suffix
from rlvr_jax.study.plots import has_share_curves, plot_accuracy, plot_curves, plot_kl, plot_shares
from rlvr_jax.study.render import render
from rlvr_jax.study.runner import provenance, stage_done


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
    path = storage.join(workdir, stage, "metrics_train.jsonl")
    if not storage.exists(path):
        return {}
    rows = {r["step"]: r for r in read_jsonl(path)}
    out = {}
    for step in sorted(rows):
        for k, v in rows[step].items():
            if k.startswith("reward/") and k.endswith("/mean") and k.count("/") == 2:
                out.setdefault(k.split("/")[1], []).append([step, v])
    return out


def _mixing_curves(workdir: str, stage: str) -> dict[str, dict[str, list[list[float]]]]:
    """metric (share, weight, signal) -> domain -> [[step, value], ...] of a multi-task run's domain mixture
    (`mixing/<metric>/<domain>` in its metrics; the last row of a step wins, as for the learning curves)."""
    path = storage.join(workdir, stage, "metrics_train.jsonl")
    if not storage.exists(path):
        return {}
    rows = {r["step"]: r for r in read_jsonl(path)}
    out: dict[str, dict[str, list[list[float]]]] = {}
    for step in sorted(rows):
        for k, v in rows[step].items():
            if k.startswith("mixing/") and k.count("/") == 2:
                _, metric, domain = k.split("/")
                out.setdefault(metric, {}).setdefault(domain, []).append([step, v])
    return out


def _step_times(workdir: str, stage: str) -> dict:
    """From a run's metrics: step 1's time/total (it includes compiling the update and most of the rollout
    engine's programs) and the sum and mean over the later steps."""
    rows = {r["step"]: r["time/total"] for r in read_jsonl(storage.join(workdir, stage, "metrics_train.jsonl"))}
    later = [v for k, v in rows.items() if k > 1]
    return {
        "steps": len(rows),
        "first_step_s": rows.get(1),
        "later_steps_s": sum(later),
        "later_step_mean_s": sum(later) / len(later) if later else None,
    }


def _cost(config, workdir: str, stages: dict, models: dict) -> dict:
    """Device-seconds of the separate runs, the multi-task run(s), MT-OPD and the merges, each summed over
    the seeds, and the per-step times of every RL run."""
    domains, seeds = domains_of(config), seeds_of(config)
    multis = [n for n in ("multi", "multi_adaptive") if n in models]

    def total(stage):
        return sum(stages[stage + suffix(config, s)]["device_seconds"] for s in seeds)

    single = {d: total(f"rl_{d}") for d in domains}
    single_total = sum(single.values())
    runs = {
        name + suffix(config, s): {"model": name, "seed": s}
        for s in seeds
        for name in [f"rl_{d}" for d in domains] + ["opd"] + multis
    }
    cost = {
        "single_device_s": single,
        "single_total_device_s": single_total,
        "multi_device_s": total("multi"),
        "multi_pct_of_single": 100.0 * total("multi") / single_total,
        "opd_device_s": total("opd"),
        "merge_device_s": {n[len("merge_") :]: total(n) for n in models if n.startswith("merge_")},
        # the report stage is still running while this is computed: every stage before it. Elapsed time:
        # stages that ran side by side (lanes) count once; their walls' sum is what one at a time would take.
        "experiment_wall_s": elapsed_s(stages),
        "stages_wall_sum_s": sum(v["wall_s"] for v in stages.values()),
        "step_times": {r: dict(_step_times(workdir, r), **who) for r, who in runs.items()},
    }
    later = cost["step_times"]
    single_later = sum(t["later_steps_s"] for t in later.values() if t["model"].startswith("rl_"))
    multi_later = sum(t["later_steps_s"] for t in later.values() if t["model"] == "multi")
    # None when the single-domain runs had no step after the first (compile-bearing) one
    cost["multi_pct_of_single_later_steps"] = 100.0 * multi_later / single_later if single_later > 0 else None
    if "multi_adaptive" in models:  # the third arm, beside RL-Multi
        cost["multi_adaptive_device_s"] = total("multi_adaptive")
        cost["multi_adaptive_pct_of_single"] = 100.0 * total("multi_adaptive") / single_total
        ada_later = sum(t["later_steps_s"] for t in later.values() if t["model"] == "multi_adaptive")
        cost["multi_adaptive_pct_of_single_later_steps"] = (
            100.0 * ada_later / single_later if single_later > 0 else None
        )
    return cost


def _shown_models(models: dict, workdir: str) -> dict:
    """The model table with the paths inside the workdir relative to it."""
    root = storage.resolve(workdir)
    return {
        n: dict(
            m,
            path=os.path.relpath(storage.resolve(m["path"]), root)
            if storage.resolve(m["path"]).startswith(root + "/")
            else m["path"],
        )
        for n, m in models.items()
    }


def elapsed_s(stages: dict) -> float:
    """Seconds during which at least one of the finished stages ran: the union of their attempts' intervals
    (a stage finished before attempts had times: the wall time that ended at its finished_at). A stage
    resumed in a later call does not count the time between its calls."""
    spans = sorted(span for s in stages.values() for span in s["spans"])
    total, end = 0.0, float("-inf")
    for a, b in spans:
        total += max(0.0, b - max(a, end))
        end = max(end, b)
    return total


def _finished_stages(workdir: str) -> dict:
    """name -> wall and device time, the load average's range, the code and CPU cores of each attempt, of every
    finished stage (DONE.json)."""
    stages = {}
    for name in storage.listdir(workdir):
        done = stage_done(workdir, name)
        if done:
            stages[name] = {
                k: done[k] for k in ("wall_s", "device_count", "device_seconds", "device_kind", "finished_at")
            }
            loads = [x for a in done["attempts"] for x in (a["loadavg_start"][0], a["loadavg_end"][0])]
            stages[name]["loadavg_1min_range"] = [min(loads), max(loads)]
            # the code of each attempt (stages finished before this field existed have none)
            stages[name]["code"] = [a["code"] for a in done["attempts"] if "code" in a]
            # the CPU cores each attempt was pinned to (lanes.py; absent before this field existed)
            stages[name]["cpu_cores"] = [a["cpu_cores"] for a in done["attempts"] if "cpu_cores" in a]
            stages[name]["spans"] = _spans(done)
    return stages


def _spans(done: dict) -> list[list[float]]:
    """[start, end] in Unix time of each attempt of a stage."""
    attempts = done["attempts"]
    if all("started_at" in a for a in attempts):
        return [[a["started_at"], a["ended_at"]] for a in attempts]
    end = time.mktime(time.strptime(done["finished_at"], "%Y-%m-%d %H:%M:%S"))
    return [[end - done["wall_s"], end]]


def build_results(config, workdir: str) -> dict:
    """Everything the report shows, gathered from the stage outputs."""
    models = model_table(config, workdir)
    seeds = seeds_of(config)
    K = config.eval.samples
    evals = pooled_evals(config, workdir)
    per_model = {n: evals[n]["per_domain"] for n in models}
    domains = domains_of(config)
    mean_avg = {n: float(np.mean([per_model[n][d][f"avg@{K}"] for d in domains])) for n in models}
    stages = _finished_stages(workdir)
    analysis = storage.read_json(storage.join(workdir, "analysis", "analysis.json"))
    merges = [n for n in models if n.startswith("merge_")]
    multis = [n for n in ("multi", "multi_adaptive") if n in models]
    best = stats.best_of(mean_avg, merges)
    results = {
        "question": "mix (one multi-task GRPO run) or merge (per-domain GRPO experts, then merge or distil)?",
        "machine": machine_info(config.report.machine),
        "provenance": provenance(),
        "config": json.loads(config.to_json_best_effort()),
        "models": _shown_models(models, workdir),
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
        # paired over the eval items against the anchor, and RL-Multi against each merge and MT-OPD (stats);
        # RL-Multi-Adaptive's rows (a = multi_adaptive) against RL-Multi and the same best merge follow
        "gains": stats.gains(evals),
        "verdict": stats.verdicts(evals, "multi", merges + ["opd"], best)
        + (stats.verdicts(evals, "multi_adaptive", ["multi", best], best) if "multi_adaptive" in models else []),
        "weight_space": {k: analysis[k] for k in ("names", "footprint", "overlap", "cosine")},
        "gain_consistency": analysis["gain_consistency"],
        "policy_kl": analysis["policy_kl"],
        # {model: {mode: {domain or "all": metrics}}} (analysis.self_verification); {}: no model judged
        "self_verification": (analysis.get("self_verification") or {}).get("models", {}),
        # the main seed's runs
        "curves": {
            s: _curves(workdir, s + suffix(config, seeds[0])) for s in [f"rl_{d}" for d in domains] + ["opd"] + multis
        },
        # the main seed's multi-task runs: each domain's share of the batch (and the adaptive weights, signal)
        "mixing_curves": {s: _mixing_curves(workdir, s + suffix(config, seeds[0])) for s in multis},
    }
    results["findings"] = findings.check(results)
    return results


# ------------------------------------------------------------------ markdown


def write(results: dict, out_dir: str, workdir: str) -> None:
    """results.json, report.md and the PNGs (the weight-space heatmaps copied from the analysis stage)."""
    with storage.staged_dir(out_dir, upload=storage.is_writer()) as local:  # gs://: written here, uploaded
        storage.write_json(os.path.join(local, "results.json"), results, indent=1)
        plot_curves(results, os.path.join(local, "learning_curves.png"))
        plot_accuracy(results, os.path.join(local, "accuracy_bars.png"))
        if has_share_curves(results):
            plot_shares(results, os.path.join(local, "domain_shares.png"))
        if results["policy_kl"]:
            plot_kl(results, os.path.join(local, "policy_kl.png"))
        src = storage.join(workdir, "analysis")
        for name in ("overlap.png", "cosine.png", "cosine_per_layer.png"):
            if storage.exists(storage.join(src, name)):
                storage.copy_file(storage.join(src, name), os.path.join(local, name))
        storage.write_text(os.path.join(local, "report.md"), render(results))
