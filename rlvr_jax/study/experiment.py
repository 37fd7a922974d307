"""`rlvr-experiment`: the mix-vs-merge study end to end (REFERENCE.md; configs/mix_vs_merge.py): sft ->
rl_<domain> -> multi -> multi_adaptive -> opd -> merge_<method> -> eval -> analysis -> report, the RL
stages once per seed (`seeds`); on a CPU host, `lanes` of them at once. Each stage writes into its own
subdirectory of the workdir and finishes with DONE.json, so a rerun skips finished stages. Here: the checks
and the wiring; the stages are stages.py, the resumable runner runner.py (side by side: lanes.py), the
report report.py."""

from __future__ import annotations

import json
import os
import sys

import jax

from rlvr_jax import cli, storage
from rlvr_jax.merging import methods as merge
from rlvr_jax.plan.chips import chip_of
from rlvr_jax.plan.planner import plan_for
from rlvr_jax.plan.report import table as plan_table
from rlvr_jax.rl.train import adaptive_settings
from rlvr_jax.study import analyses, runner
from rlvr_jax.study.lanes import run_in_lanes
from rlvr_jax.study.layout import domains_of, eval_items_of, merge_methods_of, model_table, seeds_of
from rlvr_jax.study.stage_process import stage_processes
from rlvr_jax.study.stages import ExperimentError, adaptive_config, plan, rl_config


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
    try:
        eval_items_of(config)
    except ValueError as e:
        problems.append(str(e))
    if not isinstance(config.lanes, int) or config.lanes < 1:
        problems.append(f"lanes={config.lanes!r} must be an integer >= 1")
    for k in ("single_steps", "multi_steps", "opd.steps"):
        node = config
        for part in k.split("."):
            node = node[part]
        if node < 1:
            problems.append(f"{k}={node} must be >= 1")
    problems += _adaptive_problems(config, domains)
    problems += analyses.self_verification_problems(config)
    known = set(model_table(config, "")) - {"sft"}
    for name in filter(None, config.analysis.kl_against.split(",")):
        if name not in known:
            problems.append(f"analysis.kl_against: {name!r} is not a model of this experiment ({sorted(known)})")
    if problems:
        raise ExperimentError("invalid experiment config:\n  " + "\n  ".join(problems))


def _adaptive_problems(config, domains: list[str]) -> list[str]:
    """RL-Multi-Adaptive's mixing settings (base.data.adaptive), checked now rather than when its stage starts
    after every other RL stage has run. No device is touched: a pod has not initialised JAX yet."""
    if not config.multi_adaptive:
        return []
    data = adaptive_config(rl_config(config, domains=config.domains, steps=1, start="", seed=config.seed)).data
    problems = [f"multi_adaptive: base.{p}" for p in adaptive_settings(data).problems(len(domains))]
    if data.weights:
        problems.append(
            f"multi_adaptive: base.data.weights={data.weights!r} fixes the mix that adaptive mixing chooses; "
            "clear it, or set multi_adaptive=False"
        )
    return problems


def run(config, workdir: str) -> dict:
    """Run (or resume) every stage; returns the results dict that report/results.json holds."""
    validate(config)
    cli.initialize_distributed(config.base.distributed)  # every stage runs on all hosts of a pod
    workdir = storage.resolve(workdir)
    storage.makedirs(workdir)
    check_same_config(config, workdir)
    check_fit(config)
    report_md = os.path.join(workdir, "report", "report.md")
    stages, epilogue = plan(config, workdir), f"; report: {report_md}"
    lanes = lanes_here(config.lanes)
    with runner.xla_cache(config.xla_cache_dir):
        if lanes > 1:
            with stage_processes(config, workdir) as spawn:
                run_in_lanes(stages, workdir, lanes=lanes, spawn=spawn, label="experiment", epilogue=epilogue)
        else:
            runner.run_stages(stages, workdir, label="experiment", epilogue=epilogue)
    return storage.read_json(storage.join(workdir, "report", "results.json"))


def lanes_here(lanes: int) -> int:
    """The lanes this host runs stages in: `lanes` on a single-process CPU run (at most one per core),
    otherwise 1 (a pod's or a GPU's stages each use all its devices), said when that overrides the config."""
    if lanes <= 1:
        return 1
    if jax.process_count() > 1 or jax.devices()[0].platform != "cpu":
        print(f"[experiment] lanes={lanes} applies to one CPU host; stages run one at a time here", file=sys.stderr)
        return 1
    return min(lanes, len(os.sched_getaffinity(0)))


def check_same_config(config, workdir: str) -> None:
    """A workdir holds one experiment: refuse to mix stages run under different settings. report.* and lanes aside,
    and `seeds`: more seeds add stages beside the finished ones (a single-seed workdir's are the main seed's)."""
    now = json.loads(config.to_json_best_effort())
    diff = runner.config_changes(workdir, now, ignore=lambda k: k.startswith("report.") or k in ("seeds", "lanes"))
    if diff:
        raise ExperimentError(
            f"{workdir} holds an experiment run with a different config (fields: "
            f"{', '.join(diff[:8])}{' ...' if len(diff) > 8 else ''}); use a new workdir, or "
            f"delete the stages to redo and config.json"
        )
    runner.write_json(os.path.join(workdir, "config.json"), now)


def check_fit(config, devices=None) -> None:
    """On a TPU, compile the stages' programs for this slice (rlvr-plan's) before any stage runs, so a
    stage that cannot fit stops the experiment before hours go into the ones before it. `check_fit=False`
    skips it; elsewhere (CPU, GPU) there is nothing to check."""
    devices = devices or jax.devices()
    if not config.check_fit or devices[0].platform != "tpu":
        return
    name = f"{len(devices)} x {devices[0].device_kind}"
    print(f"[experiment] compiling every stage for this slice ({name}) first", file=sys.stderr, flush=True)
    report = plan_for(config.base, devices, chip_of(devices[0].device_kind), name)
    if not all(s["fits"] for s in report["stages"]):
        raise ExperimentError(
            "a stage cannot fit this slice (--config.check_fit=False skips this check):\n" + plan_table(report)
        )


def main(argv=None) -> int:
    try:
        return cli.run_entry(argv, prog="rlvr-experiment", description=__doc__, run=run)
    except ExperimentError as e:
        print(f"rlvr-experiment: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
