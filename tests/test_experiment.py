"""A shortened mix-vs-merge experiment end to end (tiny model, 2 domains, 2 merge methods, a few steps,
the adaptive-mixing arm included):
stage outputs exist, report.md's tables say what results.json says, results.json says what the stages
measured (its gains and verdict recomputed from the per-item eval files), a rerun skips finished stages,
and an interrupted eval resumes to the same numbers. Without running anything: seeds repeat the RL stages
under their own names, and a single-seed workdir keeps its names."""

import collections
import copy
import json
import os
import re
import shutil

import numpy as np
import pytest

from rlvr_jax.config_args import load_config_file
from rlvr_jax.eval.evaluate import summarize
from rlvr_jax.study import experiment, layout, render, stages
from rlvr_jax.study import report as experiment_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
mix_vs_merge = load_config_file(os.path.join(REPO, "configs", "mix_vs_merge.py"))


def short_config():
    c = mix_vs_merge.get_config("tiny")
    c.domains = "math,if"
    o = c.base.model.overrides
    o.hidden_size, o.intermediate_size, o.num_layers = 64, 128, 2
    c.base.rollout.prompts_per_step, c.base.rollout.samples_per_prompt, c.base.rollout.max_new_tokens = 4, 4, 12
    c.base.sft.steps, c.base.sft.batch_size, c.base.sft.warmup_steps = 8, 8, 2
    c.base.data.builtin_train_size, c.base.verifier.workers = 40, 2
    # per batch shard (8): at most 2 prompts' rows, each up to a 64-token prompt (eval's may be longer) + 12 new
    c.base.rollout.num_slots, c.base.rollout.num_pages = 8, 64
    c.single_steps = 1
    c.merge.methods = "average,ties"
    c.opd.prompts_per_step = 4
    c.eval.items_per_domain, c.eval.samples, c.eval.items_by_domain = 4, 2, ""
    c.analysis.kl_prompts_per_domain, c.analysis.kl_samples, c.analysis.proj_dim = 2, 2, 8
    c.lanes = 1  # in this process, which the checks below read; tests/test_lanes.py runs stages in lanes
    return c


def md_table(md: str, heading: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the first table after `## heading`."""
    lines = md.split(f"## {heading}", 1)[1].splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    cells = [[c.strip() for c in x.strip("|").split("|")] for x in lines[start:end]]
    return cells[0], cells[2:]


# One test: the experiment runs once (a module fixture would run once per xdist worker).
@pytest.mark.slow
def test_shortened_experiment_end_to_end(tmp_path, capsys):
    wd, config = str(tmp_path / "run"), short_config()
    config.xla_cache_dir = str(tmp_path / "xla")  # the four RL runs share compiled programs
    results = experiment.run(config, wd)
    check_stage_outputs(config, wd)
    check_results_are_the_measured_numbers(wd, results)
    check_report_tables_agree_with_results_json(wd, results)
    check_gains_and_verdict_are_paired_over_items(wd, results)
    check_verdict_and_findings_sections(wd, results)
    check_rerun_skips_and_interrupted_eval_resumes(config, wd, results, capsys)
    check_a_second_seed_is_pooled_per_item(config, wd, results)


def check_stage_outputs(config, wd):
    assert config.multi_steps == 2  # the study's ratio follows the single-domain override
    stages = ["sft", "rl_math", "rl_if", "merge_average", "merge_ties", "opd", "multi", "multi_adaptive"]
    stages += ["eval", "analysis", "report"]
    for s in stages:
        marker = json.load(open(os.path.join(wd, s, "DONE.json")))
        assert marker["wall_s"] > 0 and marker["device_seconds"] == pytest.approx(
            marker["wall_s"] * marker["device_count"]
        )
    assert os.path.isdir(os.path.join(wd, "sft", "anchor", "tokenizer"))
    for s, steps in (("rl_math", 1), ("rl_if", 1), ("opd", 1), ("multi", 2), ("multi_adaptive", 2)):
        assert os.path.isdir(os.path.join(wd, s, "checkpoints", str(steps)))
        assert len(open(os.path.join(wd, s, "metrics_train.jsonl")).readlines()) == steps
    # both multi-task runs log each domain's share of the batch; only the adaptive one its weights
    for s in ("multi", "multi_adaptive"):
        for row in map(json.loads, open(os.path.join(wd, s, "metrics_train.jsonl"))):
            assert sum(row[f"mixing/share/{d}"] for d in ("math", "if")) == pytest.approx(1.0)
            assert ("mixing/weight/math" in row) == (s == "multi_adaptive")
    for m in ("average", "ties"):
        assert os.path.exists(os.path.join(wd, f"merge_{m}", "model", "merge_recipe.json"))
    for name in ("sft", "rl_math", "rl_if", "merge_average", "merge_ties", "opd", "multi", "multi_adaptive"):
        ev = json.load(open(os.path.join(wd, "eval", f"{name}.json")))
        assert len(ev["items"]) == 8 and all(len(it["correct"]) == 2 for it in ev["items"])
    for f in ("analysis.json", "overlap.png", "cosine.png", "cosine_per_layer.png"):
        assert os.path.getsize(os.path.join(wd, "analysis", f)) > 0
    for f in (
        "report.md",
        "results.json",
        "learning_curves.png",
        "accuracy_bars.png",
        "domain_shares.png",
        "overlap.png",
        "cosine.png",
        "policy_kl.png",
    ):
        assert os.path.getsize(os.path.join(wd, "report", f)) > 0


def check_results_are_the_measured_numbers(wd, res):
    K = res["eval"]["samples"]
    for name in res["models"]:
        items = json.load(open(os.path.join(wd, "eval", f"{name}.json")))["items"]
        for d in ("math", "if"):
            correct = np.asarray([it["correct"] for it in items if it["domain"] == d])
            assert res["eval"]["per_model"][name][d][f"avg@{K}"] == pytest.approx(correct.mean())
            assert res["eval"]["per_model"][name][d][f"pass@{K}"] == pytest.approx(correct.max(1).mean())
    c = res["cost"]
    walls = {
        s: json.load(open(os.path.join(wd, s, "DONE.json")))["device_seconds"]
        for s in ("rl_math", "rl_if", "multi", "multi_adaptive")
    }
    assert c["single_total_device_s"] == pytest.approx(walls["rl_math"] + walls["rl_if"])
    assert c["multi_pct_of_single"] == pytest.approx(100 * walls["multi"] / c["single_total_device_s"])
    assert c["multi_adaptive_device_s"] == pytest.approx(walls["multi_adaptive"])
    assert c["multi_adaptive_pct_of_single"] == pytest.approx(
        100 * walls["multi_adaptive"] / c["single_total_device_s"]
    )
    assert set(c["step_times"]) == {"rl_math", "rl_if", "opd", "multi", "multi_adaptive"}
    # one stage at a time: the elapsed time is the stages' walls end to end
    assert c["experiment_wall_s"] == pytest.approx(c["stages_wall_sum_s"], rel=1e-3)
    # curves and domain shares: the runs' logged metrics, step by step
    for s in ("multi", "multi_adaptive"):
        rows = [json.loads(x) for x in open(os.path.join(wd, s, "metrics_train.jsonl"))]
        assert res["curves"][s]["if"] == [[r["step"], r["reward/if/mean"]] for r in rows]
        assert res["mixing_curves"][s]["share"]["math"] == [[r["step"], r["mixing/share/math"]] for r in rows]
    assert set(res["mixing_curves"]["multi_adaptive"]) >= {"share", "weight", "signal"}
    kl = res["policy_kl"]["kl"]
    assert set(kl) == {"multi", "merge_ties"} and set(kl["multi"]) == {"rl_math", "rl_if"}
    assert all(
        np.isfinite(v["per_token"]) and v["n_tokens"] > 0 for o in kl.values() for e in o.values() for v in e.values()
    )


def check_report_tables_agree_with_results_json(wd, res):
    md = open(os.path.join(wd, "report", "report.md")).read()
    K = res["eval"]["samples"]
    by_label = {m["label"]: n for n, m in res["models"].items()}
    dom = {"Math": "math", "IF": "if"}
    pm, mean = res["eval"]["per_model"], res["eval"]["mean_avg"]
    # one run at one commit: every stage attempt recorded that commit, and the report names it alone
    assert all(st["code"] == [res["provenance"]] for st in res["stages"].values()), res["stages"]
    assert f"Code: commit {res['provenance']['git_commit'][:10]}" in md

    header, rows = md_table(md, f"Main results (Avg@{K}, %)")
    cols = [by_label[h] for h in header[1:]]
    assert cols == ["sft", "rl_math", "rl_if", "merge_ties", "opd", "multi", "multi_adaptive"]
    for r in rows:
        for n, cell in zip(cols, r[1:]):
            want = mean[n] if r[0] == "**Mean**" else pm[n][dom[r[0]]][f"avg@{K}"]
            assert cell == f"{100 * want:.2f}", (r[0], n)
    assert [r[0] for r in rows] == ["Math", "IF", "**Mean**"]

    header, rows = md_table(md, f"Merge methods (Avg@{K}, %)")
    assert [by_label[r[0]] for r in rows] == ["merge_average", "merge_ties", "opd", "multi", "multi_adaptive"]
    for r in rows:
        n = by_label[r[0]]
        assert r[1:] == [
            f"{100 * pm[n]['math'][f'avg@{K}']:.2f}",
            f"{100 * pm[n]['if'][f'avg@{K}']:.2f}",
            f"{100 * mean[n]:.2f}",
        ]

    _, rows = md_table(md, f"pass@{K} (unbiased, %)")
    assert len(rows) == len(res["models"])
    for r in rows:
        n = by_label[r[0]]
        assert r[1:] == [f"{100 * pm[n][d][f'pass@{K}']:.2f}" for d in ("math", "if")]

    _, rows = md_table(md, "Cost")
    cost = {r[0]: r for r in rows}
    st = res["stages"]
    assert cost["RL-Math (GRPO)"][3] == f"{st['rl_math']['device_seconds']:.1f}"
    assert cost["**RL-Multi (GRPO, mixed)**"][3] == f"{st['multi']['device_seconds']:.1f}"
    assert cost["**RL-Multi (GRPO, mixed)**"][4] == f"{res['cost']['multi_pct_of_single']:.1f}"
    ada = cost["**RL-Multi-Adaptive (GRPO, adaptive mixing)**"]
    assert ada[3:] == [
        f"{st['multi_adaptive']['device_seconds']:.1f}",
        f"{res['cost']['multi_adaptive_pct_of_single']:.1f}",
    ]
    assert "![domain shares](domain_shares.png)" in md
    assert cost["**separate single-domain runs (sum)**"][3] == f"{res['cost']['single_total_device_s']:.1f}"
    assert f"**{res['cost']['multi_pct_of_single']:.1f}%**" in md

    _, rows = md_table(md, "Weight space")
    names = res["weight_space"]["names"]
    assert {by_label[r[0]]: r[1] for r in rows} == {
        n: f"{100 * res['weight_space']['footprint'][n]['density']:.2f}" for n in names
    }


def per_item(wd, name, domain) -> np.ndarray:
    """A model's per-item scores (mean over its K samples) on one domain, in the eval file's item order."""
    items = json.load(open(os.path.join(wd, "eval", f"{name}.json")))["items"]
    return np.asarray([np.mean(it["correct"]) for it in items if it["domain"] == domain])


def paired(wd, a, b) -> dict:
    """a - b per domain and on the mean, as the report documents: mean of per-item differences, stderr
    sd(ddof 1) / sqrt(n); the mean over domains averages them, its stderr sqrt(sum se^2) / D."""
    out = {}
    for d in ("math", "if"):
        x = per_item(wd, a, d) - per_item(wd, b, d)
        out[d] = (x.mean(), x.std(ddof=1) / np.sqrt(len(x)))
    out["mean"] = (np.mean([v[0] for v in out.values()]), np.sqrt(sum(v[1] ** 2 for v in out.values())) / 2)
    return out


def check_gains_and_verdict_are_paired_over_items(wd, res):
    assert set(res["gains"]) == set(res["models"]) - {"sft"}
    for name, row in res["gains"].items():
        want = paired(wd, name, "sft")
        assert set(row) == set(want)
        for d, (gain, se) in want.items():
            assert row[d]["gain"] == pytest.approx(gain, abs=1e-12) and row[d]["stderr"] == pytest.approx(se)
            assert row[d]["z"] == (pytest.approx(gain / se) if se > 0 else None)

    mean = res["eval"]["mean_avg"]
    best = max(["merge_average", "merge_ties"], key=lambda n: (mean[n], n == "merge_average"))
    # RL-Multi against every merge and MT-OPD, then RL-Multi-Adaptive against RL-Multi and the same best merge
    pairs = [("multi", b) for b in ("merge_average", "merge_ties", "opd")] + [
        ("multi_adaptive", b) for b in ("multi", best)
    ]
    assert list(dict.fromkeys((v["a"], v["b"]) for v in res["verdict"])) == pairs
    assert sorted((v["a"], v["b"], v["domain"]) for v in res["verdict"]) == sorted(
        (a, b, d) for a, b in pairs for d in ("math", "if", "mean")
    )
    for v in res["verdict"]:
        diff, se = paired(wd, v["a"], v["b"])[v["domain"]]
        assert v["best"] == (v["b"] == best)
        assert v["diff"] == pytest.approx(diff, abs=1e-12)
        assert v["ci95"] == pytest.approx([diff - 1.959964 * se, diff + 1.959964 * se], abs=1e-6)
        lo, hi = v["ci95"]
        assert v["verdict"] == ("better" if lo > 0 else "worse" if hi < 0 else "indistinguishable at this scale")

    assert [f["finding"].split(":")[0].split(" (")[0] for f in res["findings"]] == [
        "each expert gains on its own domain",
        "little interference",
        "synergy",
        "multi-task about equal to the best merge",
        "adaptive mixing beats fixed mixing at this scale",
        "multi-task costs a fraction of the separate runs",
        "merged models inherit their experts, the multi-task model diverges",
        "update overlap above random",
        "task vectors of the experts point the same way",
    ]
    assert all(f["status"] in ("reproduced", "not reproduced", "inconclusive") for f in res["findings"])
    syn = res["findings"][2]
    assert syn["status"] == "inconclusive" and "needs two reasoning domains" in syn["evidence"]  # math and IF
    ada, row = (
        res["findings"][4],
        next(v for v in res["verdict"] if v["a"] == "multi_adaptive" and v["b"] == "multi" and v["domain"] == "mean"),
    )
    lo, hi = row["ci95"]
    assert ada["status"] == ("reproduced" if lo > 0 else "not reproduced" if hi < 0 else "inconclusive")
    assert ada["evidence"].startswith(
        f"RL-Multi-Adaptive - RL-Multi on the mean: {100 * row['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    )


def check_verdict_and_findings_sections(wd, res):
    md = open(os.path.join(wd, "report", "report.md")).read()
    headings = re.findall(r"^## (.+)$", md, flags=re.M)
    assert headings[:4] == ["Verdict", "Findings", "Gains over the anchor", "Main results (Avg@2, %)"], headings
    labels = {n: m["label"] for n, m in res["models"].items()}
    words = {"better": "better", "worse": "worse", "indistinguishable at this scale": "indistinguishable"}
    cells = {(v["b"], v["domain"]): v for v in res["verdict"] if v["a"] == "multi"}
    best = next(v for v in res["verdict"] if v["a"] == "multi" and v["best"] and v["domain"] == "mean")

    def pt(x):
        return f"{100 * x:+.2f}"

    assert (
        f"**RL-Multi against the best merge ({labels[best['b']]}, best by mean Avg@2): {pt(best['diff'])} points "
        f"on the mean over domains, 95% CI [{pt(best['ci95'][0])}, {pt(best['ci95'][1])}]: {best['verdict']}.**"
    ) in md
    header, rows = md_table(md, "Verdict")
    assert header == ["RL-Multi vs", "Math", "IF", "Mean"]
    assert rows[0][0] == f"{labels[best['b']]} (best merge)"
    by_label = {m: n for n, m in labels.items()}
    assert [by_label[r[0].removesuffix(" (best merge)")] for r in rows[1:]] == [
        b for b in ("merge_average", "merge_ties", "opd") if b != best["b"]
    ]
    for r in rows:
        b = by_label[r[0].removesuffix(" (best merge)")]
        for d, cell in zip(("math", "if", "mean"), r[1:]):
            v = cells[(b, d)]
            assert cell == f"{words[v['verdict']]}: {pt(v['diff'])} [{pt(v['ci95'][0])}, {pt(v['ci95'][1])}]"

    # the third arm's table follows RL-Multi's: against RL-Multi, then the best merge
    ada = md.split("| RL-Multi-Adaptive vs |", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    ada_cells = {(v["b"], v["domain"]): v for v in res["verdict"] if v["a"] == "multi_adaptive"}
    for line, b in zip(ada, ("multi", best["b"]), strict=True):
        r = [c.strip() for c in line.strip("|").split("|")]
        assert r[0] == labels[b] + (" (best merge)" if b == best["b"] else "")
        for d, cell in zip(("math", "if", "mean"), r[1:]):
            v = ada_cells[(b, d)]
            assert cell == f"{words[v['verdict']]}: {pt(v['diff'])} [{pt(v['ci95'][0])}, {pt(v['ci95'][1])}]"

    _, rows = md_table(md, "Findings")
    assert rows == [[f["finding"], f"**{f['status']}**", f["evidence"]] for f in res["findings"]]
    for f in res["findings"]:
        assert f"- {f['finding']}: {f['rule']}." in md

    _, rows = md_table(md, "Gains over the anchor")
    for r in rows:
        n = by_label[r[0]]
        for d, cell in zip(("math", "if", "mean"), r[1:]):
            x = res["gains"][n][d]
            assert cell == f"{pt(x['gain'])} (z {'n/a' if x['z'] is None else format(x['z'], '.1f')})"


def check_rerun_skips_and_interrupted_eval_resumes(config, wd, first, capsys):
    stamps = {s: os.path.getmtime(os.path.join(wd, s, "DONE.json")) for s in ("sft", "rl_math", "multi", "report")}
    capsys.readouterr()
    again = experiment.run(copy.deepcopy(config), wd)
    err = capsys.readouterr().err
    assert len(re.findall(r"done before, skipped", err)) == 11, err
    assert again == first
    assert stamps == {s: os.path.getmtime(os.path.join(wd, s, "DONE.json")) for s in stamps}

    # An eval interrupted after every model but one: only that model is evaluated again, the stages that
    # read eval are redone, and the numbers (seeded) come out the same.
    os.remove(os.path.join(wd, "eval", "DONE.json"))
    os.remove(os.path.join(wd, "eval", "multi.json"))
    resumed = experiment.run(copy.deepcopy(config), wd)
    err = capsys.readouterr().err
    assert re.findall(r"  eval (\S+)", err) == ["multi"]
    assert "analysis: footprints" in err and "(redone: eval ran again)" in err
    assert resumed["eval"] == first["eval"]
    assert os.path.getmtime(os.path.join(wd, "sft", "DONE.json")) == stamps["sft"]

    # A changed setting is refused rather than mixed into finished stages.
    changed = copy.deepcopy(config)
    changed.single_steps = 3
    with pytest.raises(experiment.ExperimentError, match="single_steps"):
        experiment.run(changed, wd)


def test_seeds_repeat_the_rl_stages_and_one_seed_keeps_its_names(tmp_path):
    config, wd = short_config(), str(tmp_path)
    one = [s.name for s in stages.plan(config, wd)]
    in_order = ["rl_math", "rl_if", "multi", "multi_adaptive", "opd", "merge_average", "merge_ties"]
    assert one == ["sft"] + in_order + ["eval", "analysis", "report"]
    rl = ["rl_math", "rl_if", "merge_average", "merge_ties", "opd", "multi", "multi_adaptive"]  # the model table's

    config.seeds = "0,3"
    experiment.validate(config)
    assert [s.name for s in stages.plan(config, wd)] == (
        ["sft"] + in_order + [f"{n}_seed3" for n in in_order] + ["eval", "analysis", "report"]
    )
    runs = layout.runs_of(config, wd)
    assert list(runs) == ["sft"] + rl[:2] + rl[2:] + [f"{n}_seed3" for n in rl]
    assert runs["rl_math_seed3"]["path"] == os.path.join(wd, "rl_math_seed3", "checkpoints")
    assert (runs["merge_ties_seed3"]["model"], runs["merge_ties_seed3"]["seed"]) == ("merge_ties", 3)
    assert (runs["sft"]["seed"], runs["rl_math"]["seed"]) == (0, 0)
    # seed 3's merge and MT-OPD read seed 3's experts, and its RL runs train with seed 3
    assert layout.model_table(config, wd, 3)["rl_if"]["path"] == os.path.join(wd, "rl_if_seed3", "checkpoints")
    c = stages.rl_config(config, domains="math", steps=1, start="a", seed=3)
    assert (c.seed, config.base.seed) == (3, 0)

    # more seeds may join a finished workdir; any other change is refused
    experiment.check_same_config(short_config(), wd)
    experiment.check_same_config(config, wd)
    config.single_steps = 2
    with pytest.raises(experiment.ExperimentError, match="single_steps"):
        experiment.check_same_config(config, wd)

    for bad in ("0,x", "1,1"):
        config = short_config()
        config.seeds = bad
        with pytest.raises(experiment.ExperimentError, match="seeds"):
            experiment.validate(config)


def test_the_adaptive_arm_is_rl_multi_with_adaptive_mixing(tmp_path):
    config, wd = short_config(), str(tmp_path)
    multi = stages.rl_config(config, domains=config.domains, steps=config.multi_steps, start="a", seed=0)
    ada = stages.adaptive_config(multi)
    fixed, adaptive = json.loads(multi.to_json_best_effort()), json.loads(ada.to_json_best_effort())
    assert adaptive["data"].pop("mixing") == "adaptive" and fixed["data"].pop("mixing", "fixed") == "fixed"
    assert adaptive == fixed  # steps, batch, hyper-parameters, seed, start and the adaptive settings: RL-Multi's
    m = layout.model_table(config, wd)["multi_adaptive"]
    assert (m["label"], m["kind"]) == ("RL-Multi-Adaptive", "multi_adaptive")
    assert m["path"] == os.path.join(wd, "multi_adaptive", "checkpoints")

    # its settings are checked before the first stage, not when its stage comes after every other RL run
    config.base.data.adaptive.floor = 0.6
    config.base.data.weights = "math=1,if=1"
    with pytest.raises(experiment.ExperimentError, match=r"floor=0.6.*\n.*data.weights='math=1,if=1'"):
        experiment.validate(config)

    config.multi_adaptive = False  # the study as published: no third stage, model or comparison
    experiment.validate(config)
    assert "multi_adaptive" not in [s.name for s in stages.plan(config, wd)]
    assert "multi_adaptive" not in layout.model_table(config, wd)


def check_a_second_seed_is_pooled_per_item(config, wd, first):
    """Seed 1's stages stood in by copies of seed 0's (its RL-Multi answering every sample the other way):
    the report pools per item (RL-Multi scores .5 on every item), sums costs and says so."""
    config = copy.deepcopy(config)
    config.seeds = "0,1"
    for run, m in layout.runs_of(config, wd).items():
        if m["seed"] != 1:
            continue
        os.makedirs(os.path.join(wd, run))
        for f in ("DONE.json", "metrics_train.jsonl"):
            if os.path.exists(os.path.join(wd, m["model"], f)):
                shutil.copy(os.path.join(wd, m["model"], f), os.path.join(wd, run, f))
        ev = json.load(open(os.path.join(wd, "eval", f"{m['model']}.json")))
        flip = m["model"] == "multi"
        items = [dict(it, correct=[1.0 - x if flip else x for x in it["correct"]]) for it in ev["items"]]
        json.dump(summarize(items, ev["samples"]), open(os.path.join(wd, "eval", f"{run}.json"), "w"))
    res = experiment_report.build_results(config, wd)
    assert res["seeds"] == [0, 1] and res["stage_suffix"] == ["", "_seed1"]
    assert res["gains"]["rl_math"] == first["gains"]["rl_math"]  # two equal seeds pool to the same numbers
    for d in ("math", "if"):
        assert res["gains"]["multi"][d]["gain"] == pytest.approx(0.5 - per_item(wd, "sft", d).mean())
        assert res["eval"]["per_model"]["multi"][d]["avg@2"] == pytest.approx(0.5)
    assert res["cost"]["single_total_device_s"] == pytest.approx(2 * first["cost"]["single_total_device_s"])
    assert res["eval"]["per_item_files"]["multi"] == ["eval/multi.json", "eval/multi_seed1.json"]
    md = render.render(res)
    assert "averaged over the 2 seeds" in md and "Seeds: every RL stage" in md
    _, rows = md_table(md, "Cost")
    assert {r[0]: r for r in rows}["RL-Math (GRPO)"][3] == f"{2 * first['stages']['rl_math']['device_seconds']:.1f}"


def test_eval_items_per_domain_with_per_domain_counts():
    config = short_config()
    config.eval.items_by_domain = "math=6"
    assert layout.eval_items_of(config) == {"math": 6, "if": 4}
    counts = collections.Counter(r["domain"] for r in stages.eval_records(config))
    assert counts == {"math": 6, "if": 4}
    for bad, why in (("code=3", "'code' is not one of the domains"), ("math:3", "'math:3' is not DOMAIN=N")):
        config.eval.items_by_domain = bad
        with pytest.raises(experiment.ExperimentError, match=why):
            experiment.validate(config)
