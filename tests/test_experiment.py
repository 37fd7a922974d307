"""A shortened mix-vs-merge experiment end to end (tiny model, 2 domains, 2 merge methods, a few steps):
stage outputs exist, report.md's tables say what results.json says, results.json says what the stages
measured, a rerun skips finished stages, and an interrupted eval resumes to the same numbers."""

import copy
import json
import os
import re

import numpy as np
import pytest

from rlvr_jax.config_args import load_config_file

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
    c.single_steps = 1
    c.merge.methods = "average,ties"
    c.opd.prompts_per_step = 4
    c.eval.items_per_domain, c.eval.samples = 4, 2
    c.analysis.kl_prompts_per_domain, c.analysis.kl_samples, c.analysis.proj_dim = 2, 2, 8
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
    from rlvr_jax.study import experiment

    wd, config = str(tmp_path / "run"), short_config()
    config.xla_cache_dir = str(tmp_path / "xla")  # the four RL runs share compiled programs
    results = experiment.run(config, wd)
    check_stage_outputs(config, wd)
    check_results_are_the_measured_numbers(wd, results)
    check_report_tables_agree_with_results_json(wd, results)
    check_rerun_skips_and_interrupted_eval_resumes(config, wd, results, capsys)


def check_stage_outputs(config, wd):
    assert config.multi_steps == 2  # the study's ratio follows the single-domain override
    stages = ["sft", "rl_math", "rl_if", "merge_average", "merge_ties", "opd", "multi", "eval", "analysis", "report"]
    for s in stages:
        marker = json.load(open(os.path.join(wd, s, "DONE.json")))
        assert marker["wall_s"] > 0 and marker["device_seconds"] == pytest.approx(
            marker["wall_s"] * marker["device_count"]
        )
    assert os.path.isdir(os.path.join(wd, "sft", "anchor", "tokenizer"))
    for s, steps in (("rl_math", 1), ("rl_if", 1), ("opd", 1), ("multi", 2)):
        assert os.path.isdir(os.path.join(wd, s, "checkpoints", str(steps)))
        assert len(open(os.path.join(wd, s, "metrics_train.jsonl")).readlines()) == steps
    for m in ("average", "ties"):
        assert os.path.exists(os.path.join(wd, f"merge_{m}", "model", "merge_recipe.json"))
    for name in ("sft", "rl_math", "rl_if", "merge_average", "merge_ties", "opd", "multi"):
        ev = json.load(open(os.path.join(wd, "eval", f"{name}.json")))
        assert len(ev["items"]) == 8 and all(len(it["correct"]) == 2 for it in ev["items"])
    for f in ("analysis.json", "overlap.png", "cosine.png", "cosine_per_layer.png"):
        assert os.path.getsize(os.path.join(wd, "analysis", f)) > 0
    for f in (
        "report.md",
        "results.json",
        "learning_curves.png",
        "accuracy_bars.png",
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
        s: json.load(open(os.path.join(wd, s, "DONE.json")))["device_seconds"] for s in ("rl_math", "rl_if", "multi")
    }
    assert c["single_total_device_s"] == pytest.approx(walls["rl_math"] + walls["rl_if"])
    assert c["multi_pct_of_single"] == pytest.approx(100 * walls["multi"] / c["single_total_device_s"])
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

    header, rows = md_table(md, f"Main results (Avg@{K}, %)")
    cols = [by_label[h] for h in header[1:]]
    assert cols == ["sft", "rl_math", "rl_if", "merge_ties", "opd", "multi"]
    for r in rows:
        for n, cell in zip(cols, r[1:]):
            want = mean[n] if r[0] == "**Mean**" else pm[n][dom[r[0]]][f"avg@{K}"]
            assert cell == f"{100 * want:.2f}", (r[0], n)
    assert [r[0] for r in rows] == ["Math", "IF", "**Mean**"]

    header, rows = md_table(md, f"Merge methods (Avg@{K}, %)")
    assert [by_label[r[0]] for r in rows] == ["merge_average", "merge_ties", "opd", "multi"]
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
    assert cost["**separate single-domain runs (sum)**"][3] == f"{res['cost']['single_total_device_s']:.1f}"
    assert f"**{res['cost']['multi_pct_of_single']:.1f}%**" in md

    _, rows = md_table(md, "Weight space")
    names = res["weight_space"]["names"]
    assert {by_label[r[0]]: r[1] for r in rows} == {
        n: f"{100 * res['weight_space']['footprint'][n]['density']:.2f}" for n in names
    }


def check_rerun_skips_and_interrupted_eval_resumes(config, wd, first, capsys):
    from rlvr_jax.study import experiment

    stamps = {s: os.path.getmtime(os.path.join(wd, s, "DONE.json")) for s in ("sft", "rl_math", "multi", "report")}
    capsys.readouterr()
    again = experiment.run(copy.deepcopy(config), wd)
    err = capsys.readouterr().err
    assert len(re.findall(r"done before, skipped", err)) == 10, err
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
