"""The study's analyses of its trained models (the `analysis` stage): weight space (footprints, overlaps,
cosines), gain consistency of every model against the experts, and the policy KL between experts and
the mixed or merged models on each domain's held-out prompts, and self-verification (each chosen model judging
its own samples, analysis.self_verification)."""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict

import jax
import numpy as np

from rlvr_jax.data import loading
from rlvr_jax.data.prompts import render_prompt
from rlvr_jax.eval import analysis, analysis_cli
from rlvr_jax.eval import self_verification as sv
from rlvr_jax.eval.evaluate import first_per_domain
from rlvr_jax.eval.policy_kl import policy_kl
from rlvr_jax.model import build, params_io
from rlvr_jax.rl import train
from rlvr_jax.rl import update as rl_step
from rlvr_jax.rollout.sampling import SamplingParams
from rlvr_jax.study.layout import anchor_path, domains_of, model_table, pooled_evals
from rlvr_jax.verifiers.pool import pool_from_config


def item_scores(ev: dict) -> dict[str, float]:
    """'domain/id' -> mean correctness over the K samples."""
    return {f"{it['domain']}/{it['id']}": float(np.mean(it["correct"])) for it in ev["items"]}


def _gains(config, workdir: str, models: dict) -> dict:
    """Gain consistency over all items and per domain (None where a gain vector is all zero), on the
    per-item scores pooled over the seeds."""
    evals = {n: item_scores(e) for n, e in pooled_evals(config, workdir).items()}
    experts = [n for n, m in models.items() if m["kind"] == "expert"]
    items = list(evals["sft"])
    out = {}
    for n in models:
        if n == "sft":
            continue
        row = {}
        for dom in [None] + domains_of(config):
            sel = [i for i in items if dom is None or i.split("/", 1)[0] == dom]
            g = analysis.gain_consistency(
                [evals["sft"][i] for i in sel],
                [evals[n][i] for i in sel],
                [[evals[x][i] for i in sel] for x in experts],
            )
            row["all" if dom is None else dom] = None if np.isnan(g) else g
        out[n] = row
    return out


def _policy_kl(config, workdir: str, models: dict, params: dict, mesh, cfg, graphdef) -> dict:
    """KL(expert_B || other) on each domain A's held-out prompts, sampled from expert_B."""
    a = config.analysis
    others = [n for n in a.kl_against.split(",") if n]
    if not others:
        return {}
    tokenizer = build.load_tokenizer(config.base.tokenizer, anchor_path(config, workdir))
    pc = loading.prompt_config(config.base.data)
    by_dom = defaultdict(list)
    for r in loading.load_records(config.eval.data, "eval", tuple(domains_of(config))):
        if len(by_dom[r["domain"]]) < a.kl_prompts_per_domain:
            by_dom[r["domain"]].append(tokenizer.encode(render_prompt(r, tokenizer, pc)))
    engine = train.make_engine(config.base.rollout, graphdef, cfg, mesh, tokenizer.pad_id)
    logprob_fn = rl_step.make_logprob_fn(graphdef, mesh, 1.0)
    sp = SamplingParams(
        temperature=1.0,
        max_new_tokens=a.kl_max_new_tokens,
        n=a.kl_samples,
        stop_token_ids=tuple(tokenizer.eos_ids),
        seed=config.seed,
    )
    out = {o: {} for o in others}
    for e in [n for n, m in models.items() if m["kind"] == "expert"]:
        for dom in domains_of(config):
            res = policy_kl(
                engine,
                logprob_fn,
                params[e],
                {o: params[o] for o in others},
                by_dom[dom],
                sp,
                batch_prompts=config.eval.batch_prompts,
            )
            for o in others:
                out[o].setdefault(e, {})[dom] = res[o]
            print(
                f"  policy KL {e} on {dom}: " + ", ".join(f"{o} {res[o]['per_token']:.4f}/token" for o in others),
                file=sys.stderr,
            )
    return {
        "against": others,
        "samples": a.kl_samples,
        "prompts_per_domain": a.kl_prompts_per_domain,
        "max_new_tokens": a.kl_max_new_tokens,
        "kl": out,
    }


def self_verification_models(spec: str, models: dict, main_merge: str) -> tuple[list[str], list[str]]:
    """(names to judge, names skipped because the run has no such model) of a comma-separated `spec` of
    model-table names, where "experts" is every expert and "main_merge" is merge_<main_merge>."""
    names = []
    for word in (w.strip() for w in spec.split(",")):
        if word == "experts":
            names += [n for n, m in models.items() if m["kind"] == "expert"]
        elif word == "main_merge":
            names.append(f"merge_{main_merge}")
        elif word:
            names.append(word)
    names = list(dict.fromkeys(names))
    return [n for n in names if n in models], [n for n in names if n not in models]


def judge_settings(config) -> sv.JudgeSettings:
    """The self-verification settings of a study config: its own section, sampled like the eval."""
    s, e = config.analysis.self_verification, config.eval
    return sv.JudgeSettings(
        samples=s.samples,
        temperature=e.temperature,
        max_new_tokens=e.max_new_tokens,
        judge_max_new_tokens=s.max_new_tokens,
        judge_thinking=s.thinking,
        outcome_template=s.outcome_template,
        process_template=s.process_template,
        seed=config.seed,
        batch_prompts=e.batch_prompts,
    )


def self_verification_problems(config) -> list[str]:
    """What in analysis.self_verification would stop the analysis stage (templates, sizes): for the
    experiment's checks before the first stage."""
    try:
        judge_settings(config)
    except ValueError as e:
        return [f"analysis.self_verification: {e}"]
    return []


def _self_verification(config, workdir: str, models: dict, params: dict, mesh, cfg, graphdef) -> dict:
    """Each chosen model judges its own samples of the first items of each domain's eval set."""
    s = config.analysis.self_verification
    names, skipped = self_verification_models(s.models, models, config.merge.main)
    if skipped:
        print(f"  self-verification: no model(s) {skipped} in this run; skipped", file=sys.stderr)
    if not names or s.items_per_domain <= 0:
        return {}
    settings = judge_settings(config)  # the templates are checked here, before anything is sampled
    n = min(s.items_per_domain, config.eval.items_per_domain or s.items_per_domain)
    records = loading.load_records(config.eval.data, "eval", tuple(domains_of(config)), n, builtin_up_to=True)
    records = first_per_domain(records, n)
    tokenizer = build.load_tokenizer(config.base.tokenizer, anchor_path(config, workdir))
    engine = train.make_engine(config.base.rollout, graphdef, cfg, mesh, tokenizer.pad_id)
    out = {"skipped": skipped}
    pool = pool_from_config(config.base.verifier, thinking=config.base.data.thinking)
    try:
        for name in names:
            t0 = time.perf_counter()
            res = sv.self_verify(
                engine,
                params[name],
                tokenizer,
                records,
                pool,
                prompt_config=loading.prompt_config(config.base.data),
                settings=settings,
                progress=False,
            )
            print(f"  {sv.add_result(out, name, res, time.perf_counter() - t0)}", file=sys.stderr)
    finally:
        pool.close()
    return out


def run_analysis(config, workdir: str, stage_dir: str, mesh) -> dict:
    """The analysis stage: every trained model against the anchor on `mesh`; writes analysis.json."""
    a = config.analysis
    models = model_table(config, workdir)
    cfg, graphdef, anchor = params_io.load_params_any(anchor_path(config, workdir), mesh)
    params = {n: params_io.load_params_any(m["path"], mesh)[2] for n, m in models.items() if n != "sft"}
    t0 = time.perf_counter()
    report = {
        "anchor": anchor_path(config, workdir),
        **analysis_cli.weight_space(anchor, params, dim=a.proj_dim, seed=a.proj_seed, rel_tol=a.rel_tol),
    }
    print(
        f"  weight space (footprints, overlaps, {a.proj_dim}-d cosines) of {len(params)} models in "
        f"{time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    report["gain_consistency"] = _gains(config, workdir, models)
    t0 = time.perf_counter()
    report["policy_kl"] = _policy_kl(config, workdir, models, params, mesh, cfg, graphdef)
    print(f"  policy KL in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    report["self_verification"] = _self_verification(
        config, workdir, models, dict(params, sft=anchor), mesh, cfg, graphdef
    )
    if jax.process_index() == 0:
        analysis_cli.write(report, stage_dir)
    return {"analysis": os.path.join(stage_dir, "analysis.json")}
