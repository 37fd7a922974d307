"""`rlvr-experiment`: the mix-vs-merge study end to end (REFERENCE.md; configs/mix_vs_merge.py). Each stage
writes into its own subdirectory of the workdir and finishes with DONE.json (outputs, measured wall time,
device count), so a rerun skips finished stages: sft -> rl_<domain> -> merge_<method> -> opd -> multi ->
eval -> analysis -> report. With several seeds (`seeds`), the RL stages from rl_<domain> to multi repeat per
seed from the one anchor (stage names: layout.suffix). The report itself is written by report.py."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import shutil
import sys
import time
from collections import defaultdict
from typing import Callable

import jax
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

from rlvr_jax import cli, sharding
from rlvr_jax import plan as fit_plan
from rlvr_jax.data import loading
from rlvr_jax.data.prompts import PromptConfig, render_prompt
from rlvr_jax.eval import analysis, analysis_cli
from rlvr_jax.eval.evaluate import evaluate
from rlvr_jax.eval.policy_kl import policy_kl
from rlvr_jax.merging import cli as merge_cli
from rlvr_jax.merging import methods as merge
from rlvr_jax.model import build, params_io
from rlvr_jax.rl import sft, train
from rlvr_jax.rl import update as rl_step
from rlvr_jax.rollout.sampling import SamplingParams
from rlvr_jax.study import report as experiment_report
from rlvr_jax.study.layout import (
    anchor_path,
    domains_of,
    merge_methods_of,
    model_table,
    pooled_evals,
    runs_of,
    seeds_of,
    stage_done,
    suffix,
)
from rlvr_jax.verifiers import VerifierConfig
from rlvr_jax.verifiers.pool import VerifierPool


class ExperimentError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # subdirectory of the workdir
    what: str  # one line of progress output
    fn: Callable[[str], dict]  # stage dir -> JSON-able outputs (recorded in DONE.json)
    resumable: bool  # True: a rerun continues the partial stage; False: its partial directory is wiped
    deps: tuple[str, ...] = ()  # stages whose outputs it reads: if one of them runs, this one is redone


# ------------------------------------------------------------------ the models of the study


def validate(config) -> None:
    """Fail before the first stage on anything a later stage would trip over."""
    problems = []
    domains = domains_of(config)
    try:
        seeds = seeds_of(config)
    except ValueError:  # every model name below needs the seeds
        raise ExperimentError(
            f"invalid experiment config: seeds={config.seeds!r} is not 0,1,2-style integers"
        ) from None
    if len(set(seeds)) != len(seeds):
        problems.append(f"seeds={config.seeds!r} repeats a seed")
    if not domains:
        problems.append("domains is empty")
    for m in merge_methods_of(config):
        if m not in merge.MERGE_METHODS:
            problems.append(f"merge.methods: unknown method {m!r} (known: {sorted(merge.MERGE_METHODS)})")
            continue
        if m == "slerp" and len(domains) > 2:
            problems.append(f"merge.methods: slerp merges two models, not {len(domains)} experts")
        opts = dict(config.merge.options.get(m, {}))
        bad = set(opts) - merge.method_options(m)
        if bad:
            problems.append(f"merge.options.{m}: {sorted(bad)} do not apply to {m}")
    if config.merge.main not in merge_methods_of(config):
        problems.append(f"merge.main={config.merge.main!r} is not in merge.methods")
    if not config.anchor and config.base.sft.steps < 1:
        problems.append("no anchor: set --config.anchor=CHECKPOINT (or --config.base.sft.steps > 0 to train one)")
    for k in ("single_steps", "multi_steps", "opd.steps"):
        node = config
        for part in k.split("."):
            node = node[part]
        if node < 1:
            problems.append(f"{k}={node} must be >= 1")
    known = set(model_table(config, "")) - {"sft"}
    for name in filter(None, config.analysis.kl_against.split(",")):
        if name not in known:
            problems.append(f"analysis.kl_against: {name!r} is not a model of this experiment ({sorted(known)})")
    if problems:
        raise ExperimentError("invalid experiment config:\n  " + "\n  ".join(problems))


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


def _sft(config, stage_dir: str) -> dict:
    c = copy.deepcopy(config.base)
    c.data.domains = config.domains
    path = sft.run(c, stage_dir)
    return {"anchor": path}


def _train(c, stage_dir: str) -> dict:
    summary = train.run(c, stage_dir)
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


def _prompt_config(data):
    return PromptConfig(
        thinking=data.thinking,
        system_prompt=data.system_prompt,
        domain_prefixes=data.domain_prefixes,
        max_prompt_tokens=data.max_prompt_tokens,
    )


def eval_records(config) -> list[dict]:
    """The first eval.items_per_domain held-out records of each domain (0: every record of JSONL data, the
    built-in default size of built-in data, which otherwise makes as many as asked, up to all a domain has)."""
    n = config.eval.items_per_domain
    records = loading.load_records(config.eval.data, "eval", tuple(domains_of(config)), n, builtin_up_to=True)
    per, out = defaultdict(int), []
    for r in records:
        if not n or per[r["domain"]] < n:
            per[r["domain"]] += 1
            out.append(r)
    missing = [d for d in domains_of(config) if not per[d]]
    if missing:
        raise ExperimentError(f"eval.data={config.eval.data!r} has no records of domain(s) {missing}")
    return out


def _mesh(config):
    m = config.base.mesh
    return sharding.make_mesh(sharding.MeshShape(m.data, m.fsdp, m.tensor))


def _pool(config):
    v = config.base.verifier
    return VerifierPool(
        v.workers or None,
        deadline_s=v.deadline_s,
        config=VerifierConfig(thinking=config.base.data.thinking, allow_unsandboxed=v.allow_unsandboxed),
    )


def _eval(config, workdir: str, stage_dir: str) -> dict:
    """Every model of every seed on every domain: Avg@K, pass@K and per-item correctness, one JSON per run
    (eval/<run>.json, sampled with the run's seed; a rerun evaluates only the runs without one)."""
    e = config.eval
    mesh = _mesh(config)
    tokenizer = build.load_tokenizer(config.base.tokenizer, anchor_path(config, workdir))
    records = eval_records(config)
    engine = None
    pool = _pool(config)
    try:
        for name, m in runs_of(config, workdir).items():
            out = os.path.join(stage_dir, f"{name}.json")
            if os.path.exists(out):
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
                prompt_config=_prompt_config(config.base.data),
                samples=e.samples,
                temperature=e.temperature,
                max_new_tokens=e.max_new_tokens,
                seed=m["seed"],
                batch_prompts=e.batch_prompts,
            )
            res.update(model=name, checkpoint=m["path"], wall_s=time.perf_counter() - t0)
            _write_json(out, res)
            del params
    finally:
        pool.close()
    per = defaultdict(int)
    for r in records:
        per[r["domain"]] += 1
    return {"samples": e.samples, "items_per_domain": dict(per), "models": list(runs_of(config, workdir))}


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
    pc = _prompt_config(config.base.data)
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


def _analysis(config, workdir: str, stage_dir: str) -> dict:
    a = config.analysis
    mesh = _mesh(config)
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
    if jax.process_index() == 0:
        analysis_cli.write(report, stage_dir)
    return {"analysis": os.path.join(stage_dir, "analysis.json")}


def _report(config, workdir: str, stage_dir: str) -> dict:
    results = experiment_report.build_results(config, workdir)
    if jax.process_index() == 0:
        experiment_report.write(results, stage_dir, workdir)
    return {"report": os.path.join(stage_dir, "report.md"), "results": os.path.join(stage_dir, "results.json")}


def _rl_stages(config, workdir: str, seed: int, sft: tuple[str, ...]) -> list[Stage]:
    """One seed's RL stages from the anchor: the single-domain runs, the merges of their experts, MT-OPD
    from them and the multi-task run; names end with the seed's suffix."""
    anchor, domains, sfx = anchor_path(config, workdir), domains_of(config), suffix(config, seed)
    of_seed = f" (seed {seed})" if sfx else ""
    stages = []
    for dom in domains:
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
    experts = sft + tuple(f"rl_{dom}{sfx}" for dom in domains)
    for m in merge_methods_of(config):
        stages.append(
            Stage(
                f"merge_{m}{sfx}",
                f"merge the {len(domains)} experts with {m}{of_seed}",
                lambda d, m=m: _merge(config, workdir, m, seed, d),
                resumable=False,
                deps=experts,
            )
        )
    table = model_table(config, workdir, seed)
    teachers = ",".join(f"{dom}={table[f'rl_{dom}']['path']}" for dom in domains)
    opd = rl_config(config, domains=config.domains, steps=config.opd.steps, start=anchor, seed=seed, teachers=teachers)
    opd.rollout.prompts_per_step, opd.rollout.samples_per_prompt = (
        config.opd.prompts_per_step,
        config.opd.samples_per_prompt,
    )
    opd.optim.learning_rate = config.opd.learning_rate
    opd.grpo.eps_low = opd.grpo.eps_high = config.opd.eps
    multi = rl_config(config, domains=config.domains, steps=config.multi_steps, start=anchor, seed=seed)
    return stages + [
        Stage(
            f"opd{sfx}",
            f"MT-OPD: the anchor distils the experts, {config.opd.steps} steps{of_seed}",
            lambda d: _train(opd, d),
            resumable=True,
            deps=experts,
        ),
        Stage(
            f"multi{sfx}",
            f"multi-task GRPO on {config.domains}, {config.multi_steps} steps{of_seed}",
            lambda d: _train(multi, d),
            resumable=True,
            deps=sft,
        ),
    ]


def plan(config, workdir: str) -> list[Stage]:
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
        )
    )
    stages.append(
        Stage(
            "analysis",
            "footprints, overlaps, cosines, gain consistency, policy KL",
            lambda d: _analysis(config, workdir, d),
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


def _write_json(path: str, obj) -> None:
    if jax.process_index() != 0:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)  # a marker is either whole or absent


def _config_json(config) -> dict:
    return json.loads(config.to_json_best_effort())


def _check_same_config(config, workdir: str) -> None:
    """A workdir holds one experiment: refuse to mix stages run under different settings. report.* aside,
    and `seeds`: more seeds add stages beside the finished ones (a single-seed workdir's are the main seed's)."""
    path = os.path.join(workdir, "config.json")
    now = _config_json(config)
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
        diff = sorted(
            k
            for k in set(_flat(before)) | set(_flat(now))
            if not k.startswith("report.") and k != "seeds" and _flat(before).get(k) != _flat(now).get(k)
        )
        if diff:
            raise ExperimentError(
                f"{workdir} holds an experiment run with a different config (fields: "
                f"{', '.join(diff[:8])}{' ...' if len(diff) > 8 else ''}); use a new workdir, or "
                f"delete the stages to redo and config.json"
            )
    _write_json(path, now)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run(config, workdir: str) -> dict:
    """Run (or resume) every stage; returns the results dict that report/results.json holds."""
    validate(config)
    os.makedirs(workdir, exist_ok=True)
    _check_same_config(config, workdir)
    check_fit(config)
    with _xla_cache(config.xla_cache_dir):
        _run_stages(plan(config, workdir), workdir)
    with open(os.path.join(workdir, "report", "results.json")) as f:
        return json.load(f)


def check_fit(config, devices=None) -> None:
    """On a TPU, compile the stages' programs for this slice (rlvr-plan's) before any stage runs, so a
    stage that cannot fit stops the experiment before hours go into the ones before it. `check_fit=False`
    skips it; elsewhere (CPU, GPU) there is nothing to check."""
    devices = devices or jax.devices()
    if not config.check_fit or devices[0].platform != "tpu":
        return
    name = f"{len(devices)} x {devices[0].device_kind}"
    print(f"[experiment] compiling every stage for this slice ({name}) first", file=sys.stderr, flush=True)
    report = fit_plan.plan_for(config.base, devices, fit_plan.chip_of(devices[0].device_kind), name)
    if not all(s["fits"] for s in report["stages"]):
        raise ExperimentError(
            "a stage cannot fit this slice (--config.check_fit=False skips this check):\n" + fit_plan.table(report)
        )


@contextlib.contextmanager
def _xla_cache(path: str):
    """The persistent compilation cache on `path` for the experiment only (restored afterwards)."""
    if not path:
        yield
        return

    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
        compilation_cache.reset_cache()


def _run_stages(stages: list[Stage], workdir: str) -> None:
    t_all = time.perf_counter()
    ran: set[str] = set()
    for i, st in enumerate(stages, 1):
        tag = f"[experiment {i}/{len(stages)}] {st.name}"
        stale = sorted(set(st.deps) & ran)
        if stage_done(workdir, st.name) and not stale:
            print(f"{tag}: done before, skipped", file=sys.stderr)
            continue
        d = os.path.join(workdir, st.name)
        redo = os.path.exists(d) and bool(stale)
        if os.path.exists(d) and (stale or not st.resumable):
            # Inputs that changed make every output stale; a partial non-resumable stage starts over.
            shutil.rmtree(d)
        os.makedirs(d, exist_ok=True)
        print(
            f"{tag}: {st.what}" + (f" (redone: {', '.join(stale)} ran again)" if redo else ""),
            file=sys.stderr,
            flush=True,
        )
        ran.add(st.name)
        code = experiment_report.provenance()  # the code this attempt runs (the report names every commit used)
        load0, t0 = os.getloadavg(), time.perf_counter()
        try:
            outputs = st.fn(d)
        finally:  # an interrupted attempt still counts toward the stage's cost
            if jax.process_index() == 0:
                with open(os.path.join(d, "attempts.jsonl"), "a") as f:
                    f.write(
                        json.dumps(
                            {
                                "wall_s": time.perf_counter() - t0,
                                "loadavg_start": load0,
                                "loadavg_end": os.getloadavg(),
                                "code": code,
                            }
                        )
                        + "\n"
                    )
        with open(os.path.join(d, "attempts.jsonl")) as f:
            attempts = [json.loads(x) for x in f if x.strip()]
        wall = sum(a["wall_s"] for a in attempts)
        n_dev = jax.device_count()
        _write_json(
            os.path.join(d, "DONE.json"),
            {
                "stage": st.name,
                "wall_s": wall,
                "device_count": n_dev,
                "device_seconds": wall * n_dev,
                "device_kind": jax.devices()[0].device_kind,
                "attempts": attempts,
                "outputs": outputs,
                "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            },
        )
        print(f"{tag}: finished in {wall:.1f} s", file=sys.stderr, flush=True)
    print(
        f"[experiment] all stages done ({time.perf_counter() - t_all:.1f} s in this call); report: "
        f"{os.path.join(workdir, 'report', 'report.md')}",
        file=sys.stderr,
    )


def main(argv=None) -> int:
    try:
        return cli.run_entry(argv, prog="rlvr-experiment", description=__doc__, run=run)
    except ExperimentError as e:
        print(f"rlvr-experiment: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
