"""The mix-vs-merge study's stages (REFERENCE.md; configs/mix_vs_merge.py): sft -> rl_<domain> ->
merge_<method> -> opd -> multi -> multi_adaptive -> eval -> analysis -> report, with the RL stages repeated per seed from
the one anchor (stage names: layout.suffix), and the bodies that train, merge and evaluate."""

from __future__ import annotations

import copy
import os
import sys
import time
from collections import defaultdict

import jax

from rlvr_jax import sharding, storage
from rlvr_jax.data import loading
from rlvr_jax.eval.evaluate import evaluate
from rlvr_jax.merging import cli as merge_cli
from rlvr_jax.model import build, params_io
from rlvr_jax.rl import sft, train
from rlvr_jax.study import analyses
from rlvr_jax.study import report as experiment_report
from rlvr_jax.study.layout import (
    anchor_path,
    domains_of,
    eval_items_of,
    merge_methods_of,
    model_table,
    runs_of,
    seeds_of,
    suffix,
)
from rlvr_jax.study.runner import Stage, StageInterrupted, stage_part, write_json
from rlvr_jax.verifiers.pool import pool_from_config


class ExperimentError(ValueError):
    pass


# ------------------------------------------------------------------ the stages of the study


def plan(config, workdir: str) -> list[Stage]:
    """Every stage of the study in order: the anchor, each seed's RL stages, then eval, analysis, report."""
    domains = domains_of(config)
    stages = []
    sft = () if config.anchor else ("sft",)
    if sft:
        stages.append(
            Stage(
                "sft",
                f"SFT anchor: {config.base.sft.steps} steps on {config.domains}",
                lambda d: _sft(config, d),
                resumable=False,
            )
        )
    for seed in seeds_of(config):
        stages += _rl_stages(config, workdir, seed, sft)
    trained = tuple(s.name for s in stages)
    n_models = len(runs_of(config, workdir))
    stages.append(
        Stage(
            "eval",
            f"evaluate {n_models} models on {len(domains)} domains (Avg@{config.eval.samples})",
            lambda d: _eval(config, workdir, d),
            resumable=True,
            deps=trained,
            splits=True,  # a model at a time: lanes evaluate their share of the models side by side
        )
    )
    stages.append(
        Stage(
            "analysis",
            "footprints, overlaps, cosines, gain consistency, policy KL",
            lambda d: analyses.run_analysis(config, workdir, d, _mesh(config)),
            resumable=False,
            deps=trained + ("eval",),
        )
    )
    stages.append(
        Stage(
            "report",
            "report.md, results.json, plots",
            lambda d: _report(config, workdir, d),
            resumable=False,
            deps=trained + ("eval", "analysis"),
        )
    )
    return stages


# ------------------------------------------------------------------ driver


def _rl_stages(config, workdir: str, seed: int, sft: tuple[str, ...]) -> list[Stage]:
    """One seed's RL stages from the anchor: the single-domain runs, the multi-task runs, MT-OPD from the
    experts and the merges of the experts; names end with the seed's suffix."""
    anchor, sfx = anchor_path(config, workdir), suffix(config, seed)
    of_seed = f" (seed {seed})" if sfx else ""
    experts = sft + tuple(f"rl_{dom}{sfx}" for dom in domains_of(config))
    opd = _opd_config(config, anchor, seed, model_table(config, workdir, seed))
    multi = rl_config(config, domains=config.domains, steps=config.multi_steps, start=anchor, seed=seed)
    opd_stage = Stage(
        f"opd{sfx}",
        f"MT-OPD: the anchor distils the experts, {config.opd.steps} steps{of_seed}",
        lambda d: _train(opd, d),
        resumable=True,
        deps=experts,
    )
    multi_stage = Stage(
        f"multi{sfx}",
        f"multi-task GRPO on {config.domains}, {config.multi_steps} steps{of_seed}",
        lambda d: _train(multi, d),
        resumable=True,
        deps=sft,
    )
    # The longest runs first, the merges (seconds each) last: two lanes (lanes.py) then stay busy longest.
    return (
        _expert_stages(config, anchor, seed, sft)
        + [multi_stage]
        + _adaptive_stages(config, multi, seed, sft)
        + [opd_stage]
        + _merge_stages(config, workdir, seed, experts)
    )


def _adaptive_stages(config, multi, seed: int, sft: tuple[str, ...]) -> list[Stage]:
    """RL-Multi-Adaptive (config.multi_adaptive): the multi-task run `multi` with adaptive domain mixing."""
    if not config.multi_adaptive:
        return []
    sfx = suffix(config, seed)
    c = adaptive_config(multi)
    return [
        Stage(
            f"multi_adaptive{sfx}",
            f"multi-task GRPO on {config.domains} with adaptive mixing, {config.multi_steps} steps"
            + (f" (seed {seed})" if sfx else ""),
            lambda d: _train(c, d),
            resumable=True,
            deps=sft,
        )
    ]


def _expert_stages(config, anchor: str, seed: int, sft: tuple[str, ...]) -> list[Stage]:
    """One seed's single-domain GRPO runs from the anchor: the experts."""
    sfx = suffix(config, seed)
    of_seed = f" (seed {seed})" if sfx else ""
    stages = []
    for dom in domains_of(config):
        c = rl_config(config, domains=dom, steps=config.single_steps, start=anchor, seed=seed)
        stages.append(
            Stage(
                f"rl_{dom}{sfx}",
                f"GRPO on {dom} from the anchor, {config.single_steps} steps{of_seed}",
                lambda d, c=c: _train(c, d),
                resumable=True,
                deps=sft,
            )
        )
    return stages


def _merge_stages(config, workdir: str, seed: int, experts: tuple[str, ...]) -> list[Stage]:
    """One seed's merges of its experts, one stage per merge method."""
    sfx = suffix(config, seed)
    of_seed = f" (seed {seed})" if sfx else ""
    n = len(domains_of(config))
    return [
        Stage(
            f"merge_{m}{sfx}",
            f"merge the {n} experts with {m}{of_seed}",
            lambda d, m=m: _merge(config, workdir, m, seed, d),
            resumable=False,
            deps=experts,
        )
        for m in merge_methods_of(config)
    ]


def _opd_config(config, anchor: str, seed: int, table: dict):
    """MT-OPD's run config: every domain from the anchor, each domain's expert its teacher, the `opd` block's
    batch, learning rate and clip."""
    teachers = ",".join(f"{dom}={table[f'rl_{dom}']['path']}" for dom in domains_of(config))
    opd = rl_config(config, domains=config.domains, steps=config.opd.steps, start=anchor, seed=seed, teachers=teachers)
    opd.rollout.prompts_per_step, opd.rollout.samples_per_prompt = (
        config.opd.prompts_per_step,
        config.opd.samples_per_prompt,
    )
    opd.optim.learning_rate = config.opd.learning_rate
    opd.grpo.eps_low = opd.grpo.eps_high = config.opd.eps
    return opd


# ------------------------------------------------------------------ stage bodies


def rl_config(config, *, domains: str, steps: int, start: str, seed: int, teachers: str = ""):
    """The base RL config with this stage's domains, start checkpoint, steps, seed (and MT-OPD teachers)."""
    c = copy.deepcopy(config.base)
    c.seed = seed
    c.data.domains = domains
    c.model.checkpoint = start
    c.sft.steps = 0
    c.eval.items_per_domain = 0
    c.train.steps = steps
    c.opd.teachers = teachers
    return c


def adaptive_config(multi):
    """RL-Multi-Adaptive's run config: RL-Multi's (`multi`) with only data.mixing = "adaptive" (its settings
    are base.data.adaptive, shared)."""
    c = copy.deepcopy(multi)
    with c.data.unlocked():  # data.mixing may be absent from a base config written before it existed
        c.data.mixing = "adaptive"
    return c


def _sft(config, stage_dir: str) -> dict:
    c = copy.deepcopy(config.base)
    c.data.domains = config.domains
    path = sft.run(c, stage_dir)
    return {"anchor": path}


def _train(c, stage_dir: str) -> dict:
    summary = train.run(c, stage_dir)
    if summary["last_step"] < c.train.steps:  # SIGTERM: the loop saved this step's checkpoint and returned
        raise StageInterrupted(
            f"{os.path.basename(stage_dir.rstrip('/'))} stopped at step {summary['last_step']} of {c.train.steps} "
            "(SIGTERM) with its checkpoint saved; the same command resumes it"
        )
    return {"checkpoints": os.path.join(stage_dir, "checkpoints"), "last_step": summary["last_step"]}


def _merge(config, workdir: str, method: str, seed: int, stage_dir: str) -> dict:
    base_mesh = config.base.mesh
    experts = model_table(config, workdir, seed)
    recipe = {
        "anchor": anchor_path(config, workdir),
        "method": method,
        "weights": None,
        "experts": [(d, experts[f"rl_{d}"]["path"]) for d in domains_of(config)],
        "options": dict(config.merge.options.get(method, {})),
        "out": os.path.join(stage_dir, "model"),
        "format": "orbax",
        "dtype": None,
        "mesh": f"{base_mesh.data},{base_mesh.fsdp},{base_mesh.tensor}",
    }
    out = merge_cli.run(recipe, log=lambda s: print(f"  {s}", file=sys.stderr))
    return {"model": recipe["out"], "times": out["times"], "recipe": out["recipe"]}


def eval_records(config) -> list[dict]:
    """The first held-out records of each domain, as many as layout.eval_items_of says (0: every record of
    JSONL data, the built-in default size of built-in data, which otherwise makes as many as asked, up to all
    a domain has)."""
    caps = eval_items_of(config)
    n = 0 if 0 in caps.values() else max(caps.values())
    records = loading.load_records(config.eval.data, "eval", tuple(caps), n, builtin_up_to=True)
    per, out = defaultdict(int), []
    for r in records:
        if not caps[r["domain"]] or per[r["domain"]] < caps[r["domain"]]:
            per[r["domain"]] += 1
            out.append(r)
    missing = [d for d in caps if not per[d]]
    if missing:
        raise ExperimentError(f"eval.data={config.eval.data!r} has no records of domain(s) {missing}")
    return out


def _mesh(config):
    m = config.base.mesh
    return sharding.make_mesh(sharding.MeshShape.of(m))


def _pool(config):
    return pool_from_config(config.base.verifier, thinking=config.base.data.thinking)


def _eval(config, workdir: str, stage_dir: str) -> dict:
    """Every model of every seed on every domain: Avg@K, pass@K and per-item correctness, one JSON per run
    (eval/<run>.json, sampled with the run's seed; a rerun evaluates only the runs without one). As part i
    of n of the stage (runner.stage_part), only runs i, i + n, ..."""
    e = config.eval
    mesh = _mesh(config)
    tokenizer = build.load_tokenizer(config.base.tokenizer, anchor_path(config, workdir))
    records = eval_records(config)
    engine = None
    pool = _pool(config)
    part, parts = stage_part()
    try:
        for name, m in list(runs_of(config, workdir).items())[part::parts]:
            out = os.path.join(stage_dir, f"{name}.json")
            if storage.exists(out):
                continue
            print(f"  eval {name} ({m['label']})", file=sys.stderr)
            cfg, graphdef, params = params_io.load_params_any(m["path"], mesh)
            if engine is None or engine.cfg != cfg:  # one engine: its pool and programs serve every model
                engine = train.make_engine(config.base.rollout, graphdef, cfg, mesh, tokenizer.pad_id)
            t0 = time.perf_counter()
            res = evaluate(
                engine,
                params,
                tokenizer,
                records,
                pool,
                prompt_config=loading.prompt_config(config.base.data),
                samples=e.samples,
                temperature=e.temperature,
                max_new_tokens=e.max_new_tokens,
                seed=m["seed"],
                batch_prompts=e.batch_prompts,
            )
            res.update(model=name, checkpoint=m["path"], wall_s=time.perf_counter() - t0)
            write_json(out, res)
            del params
    finally:
        pool.close()
    per = defaultdict(int)
    for r in records:
        per[r["domain"]] += 1
    return {"samples": e.samples, "items_per_domain": dict(per), "models": list(runs_of(config, workdir))}


def _report(config, workdir: str, stage_dir: str) -> dict:
    results = experiment_report.build_results(config, workdir)
    if jax.process_index() == 0:
        experiment_report.write(results, stage_dir, workdir)
    return {"report": os.path.join(stage_dir, "report.md"), "results": os.path.join(stage_dir, "results.json")}
