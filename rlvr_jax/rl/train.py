"""`rlvr-train`: the GRPO loop. `run(config, workdir)` builds everything, optionally runs the supervised
warm start, evaluates, then loops sample -> score -> advantages -> update -> metrics / checkpoint,
and evaluates again. No math here: see grpo.py (losses), update.py (the jitted update), loop.py (a step).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from typing import Any

import jax
import numpy as np

from rlvr_jax import checkpoint, cli, sharding, storage
from rlvr_jax.data import loading
from rlvr_jax.data.adaptive import AdaptiveSettings
from rlvr_jax.data.mixture import MIXINGS, AdaptiveMixture, PromptMixture, make_mixture
from rlvr_jax.data.prompts import build_prompts
from rlvr_jax.eval.evaluate import evaluate, first_per_domain, paired_gain
from rlvr_jax.metrics import MetricsWriter, flatten_config
from rlvr_jax.model import build, params_io
from rlvr_jax.rl import grpo
from rlvr_jax.rl import loop as rl_loop
from rlvr_jax.rl.loop import ConfigError
from rlvr_jax.rl.sft import warm_start
from rlvr_jax.rollout.engine import Engine
from rlvr_jax.rollout.sampling import next_pow2
from rlvr_jax.rollout.settings import engine_config
from rlvr_jax.verifiers.pool import pool_from_config

log = logging.getLogger(__name__)


def validate(config, num_devices: int) -> dict:
    """Check the config against the devices before anything compiles; returns derived sizes."""
    mesh_sizes = sharding.MeshShape.of(config.mesh).resolve(num_devices)
    batch_shards = mesh_sizes[0] * mesh_sizes[1]
    ro, g = config.rollout, config.grpo
    rows = ro.prompts_per_step * ro.samples_per_prompt
    micro = g.micro_batch_size or rows
    problems = []
    if ro.samples_per_prompt < 2:
        problems.append(f"rollout.samples_per_prompt={ro.samples_per_prompt}: GRPO needs groups of at least 2")
    if rows % micro:
        problems.append(f"grpo.micro_batch_size={micro} does not divide the {rows} rollout rows")
    problems += sharding.batch_problems(
        {"grpo.micro_batch_size (rows per micro-batch)": micro}, batch_shards, jax.process_count()
    )
    problems += sharding.batch_problems({"rollout.prompts_per_step": ro.prompts_per_step}, 1, jax.process_count())
    if config.sft.steps > 0:  # the warm start runs before the first RL step
        problems += sharding.batch_problems(
            {"sft.batch_size": config.sft.batch_size}, batch_shards, jax.process_count()
        )
    if g.loss_agg not in grpo.LOSS_AGGREGATIONS:
        problems.append(f"grpo.loss_agg={g.loss_agg!r}: choose one of {sorted(grpo.LOSS_AGGREGATIONS)}")
    if not (isinstance(g.dynamic_sampling_draws, int) and g.dynamic_sampling_draws >= 1):
        problems.append(f"grpo.dynamic_sampling_draws={g.dynamic_sampling_draws!r}: expected an integer >= 1")
    elif g.dynamic_sampling_draws > 1 and not g.dynamic_sampling:
        problems.append("grpo.dynamic_sampling_draws > 1 needs grpo.dynamic_sampling=True")
    if g.advantage not in grpo.ADVANTAGE_ESTIMATORS:
        problems.append(f"grpo.advantage={g.advantage!r}: choose one of {sorted(grpo.ADVANTAGE_ESTIMATORS)}")
    if config.train.steps < 1:
        problems.append(f"train.steps={config.train.steps} must be >= 1")
    problems += _mixing_problems(config.data)
    problems += _partial_problems(ro, g)
    for field in ro.keys():  # a config file of its own may still set a retired field
        if why := cli.retired_field(f"rollout.{field}"):
            problems.append(f"rollout.{field}: {why}")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return {"rows": rows, "num_micro": rows // micro, "mesh": mesh_sizes}


def _partial_problems(ro, g) -> list[str]:
    """What partial rollouts (rollout.partial) need of the rest of the config."""
    if not ro.get("partial", False):
        return []
    problems = []
    if g.tis_cap <= 0:
        problems.append("rollout.partial needs grpo.tis_cap > 0: the TIS weight corrects tokens of older policies")
    if g.dynamic_sampling_draws > 1:
        problems.append("rollout.partial needs grpo.dynamic_sampling_draws = 1 (partial rollouts over-sample instead)")
    if ro.partial_oversample < 1.0 or ro.max_staleness < 0:
        problems.append(
            f"rollout.partial_oversample={ro.partial_oversample} (>= 1.0), rollout.max_staleness={ro.max_staleness} (>= 0)"
        )
    return problems


def adaptive_settings(data) -> AdaptiveSettings:
    """The adaptive mixture's settings from a config's `data.adaptive` block (configs/grpo.py)."""
    a = data.adaptive
    return AdaptiveSettings(
        signal=a.signal, temperature=a.temperature, discount=a.discount, explore=a.explore, floor=a.floor
    )


def _mixing_problems(data) -> list[str]:
    """What is wrong with the `data` block's mixing fields (before anything loads or compiles)."""
    if data.mixing not in MIXINGS:
        return [f"data.mixing={data.mixing!r}: choose one of {MIXINGS}"]
    if data.mixing == "fixed":
        return []
    problems = adaptive_settings(data).problems(len([d for d in data.domains.split(",") if d]))
    if data.weights:
        problems.append(f"data.weights={data.weights!r} fixes the mix; data.mixing='adaptive' chooses it: set one")
    return problems


def make_engine(ro, graphdef, cfg, mesh, pad_id: int, min_prompt_bucket: int = 16) -> Engine:
    """The rollout engine a `rollout` config section describes (configs/grpo.py), sized by engine_config."""
    return Engine(graphdef, cfg, mesh, engine_config(ro), pad_id=pad_id, min_prompt_bucket=min_prompt_bucket)


def _eval(config, engine, params, tokenizer, pool, prompt_config, domains, tag):
    e = config.eval
    if e.items_per_domain <= 0:
        return None
    if jax.process_count() > 1:
        log.warning("in-run evaluation is single-process only; skipped (run rlvr-eval on a checkpoint)")
        return None
    # Built-in held-out sets: as many items as asked for, or all a domain has (code: ~230).
    records = loading.load_records(
        config.data.eval, "eval", domains, builtin_size=e.items_per_domain, builtin_up_to=True
    )
    chosen = first_per_domain(records, e.items_per_domain)  # JSONL data may hold more
    res = evaluate(
        engine,
        params,
        tokenizer,
        chosen,
        pool,
        prompt_config=prompt_config,
        samples=e.samples,
        temperature=e.temperature,
        max_new_tokens=e.max_new_tokens,
        seed=config.seed,
    )
    log.info("eval (%s): %s", tag, {d: round(m[f"avg@{e.samples}"], 3) for d, m in res["per_domain"].items()})
    return res


def _gain(before, after) -> dict | None:
    """Paired gain statistics, or None when the before-RL evaluation came from a checkpoint written
    before per-item results were kept (the table then shows the gains without their error)."""
    return paired_gain(before, after) if "items" in before and "items" in after else None


def _table(before, after, samples) -> str:
    """Before/after Avg@K per domain; the gain's standard error is paired over items
    (evaluate.paired_gain), and z = gain / stderr says how far it stands above that noise."""
    key = f"avg@{samples}"
    gain = _gain(before, after)
    lines = ["| domain | before RL | after RL | gain | ±stderr | z |", "|---|---|---|---|---|---|"]

    def row(name, b, a, g):
        if g is None:
            return f"| {name} | {b:.3f} | {a:.3f} | {a - b:+.3f} | - | - |"
        z = g["gain"] / g["stderr"] if g["stderr"] else float("nan")
        return f"| {name} | {b:.3f} | {a:.3f} | {g['gain']:+.3f} | {g['stderr']:.3f} | {z:+.1f} |"

    for d in before["per_domain"]:
        lines.append(row(d, before["per_domain"][d][key], after["per_domain"][d][key], gain and gain[d]))
    mb = np.mean([m[key] for m in before["per_domain"].values()])
    ma = np.mean([m[key] for m in after["per_domain"].values()])
    lines.append(row("**mean**", mb, ma, gain and gain["mean"]))
    return "\n".join(lines)


@dataclasses.dataclass
class _Parts:
    """What a run builds once, before its first step (the weights and optimizer state travel apart)."""

    mesh: Any
    tokenizer: Any
    domains: tuple[str, ...]
    prompt_config: Any  # data.prompts.PromptConfig
    cfg: Any  # model config
    graphdef: Any
    param_shardings: Any
    optimizer: Any
    opt_shardings: Any
    mixture: PromptMixture | AdaptiveMixture
    prompt_counts: dict
    engine: Engine
    pool: Any  # verifiers.VerifierPool
    ckpt: checkpoint.Checkpointer
    writer: MetricsWriter


def run(config, workdir: str) -> dict:
    """Train as configured; returns a summary (also written to workdir/summary.json)."""
    cli.initialize_distributed(config.distributed)
    sizes = validate(config, jax.device_count())
    workdir = storage.resolve(workdir)
    storage.makedirs(workdir)
    p, params, opt_state = _build(config, workdir)
    base_key = jax.random.key(config.seed)
    try:
        start, params, opt_state, eval_before = _start(config, workdir, p, params, opt_state, base_key)
        summary = _train(config, sizes, p, params, opt_state, start=start, base_key=base_key, eval_before=eval_before)
        params = summary.pop("params")
        p.ckpt.wait()
        eval_after = _eval(config, p.engine, params, p.tokenizer, p.pool, p.prompt_config, p.domains, "after RL")
    finally:
        p.pool.close()
        p.writer.close()
        p.ckpt.close()
    summary.update(eval_before=eval_before, eval_after=eval_after, compilations={"sampler": p.engine.num_compilations})
    if eval_before and eval_after:
        summary["table"] = _table(eval_before, eval_after, config.eval.samples)
        summary["gain"] = _gain(eval_before, eval_after)
        _print_table(config, eval_after, summary["table"])
    if jax.process_index() == 0:
        _write_summary(workdir, summary, eval_before, eval_after)
    return summary


def _build(config, workdir: str):
    """The mesh, tokenizer, model, optimizer, prompt mixture, engine, verifier pool, checkpointer and metrics
    writer of a run. Returns (parts, params, opt_state)."""
    mesh = sharding.make_mesh(sharding.MeshShape.of(config.mesh))
    m, ro, t = config.model, config.rollout, config.train
    tokenizer = build.load_tokenizer(config.tokenizer, m.checkpoint)
    domains = tuple(x for x in config.data.domains.split(",") if x)
    prompt_config = loading.prompt_config(config.data)

    cfg, graphdef, params, param_shardings = build.build_model(
        m, mesh, vocab_size=tokenizer.vocab_size, seed=config.seed
    )
    optimizer = rl_loop.run_optimizer(config)
    opt_state, opt_shardings = sharding.init_optimizer_state(optimizer, params, param_shardings, mesh)
    mixture, prompt_counts, longest = _prompt_mixture(config, tokenizer, domains, prompt_config)
    # One prompt bucket for the whole run: the update compiles exactly once. The in-run evaluation samples
    # with the same engine: one KV pool (its sampling parameters add their own programs).
    prompt_bucket = next_pow2(longest, 16)
    engine = make_engine(ro, graphdef, cfg, mesh, tokenizer.pad_id, min_prompt_bucket=prompt_bucket)

    pool = pool_from_config(config.verifier, thinking=config.data.thinking)
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=t.checkpoint_every, keep=t.keep)
    if jax.process_index() == 0:  # beside the steps, so rlvr-generate / rlvr-eval / rlvr-convert find it
        tokenizer.save(os.path.join(workdir, "checkpoints", "tokenizer"))
    writer = MetricsWriter(workdir, "train")
    writer.hparams(flatten_config(config))
    parts = _Parts(
        mesh=mesh,
        tokenizer=tokenizer,
        domains=domains,
        prompt_config=prompt_config,
        cfg=cfg,
        graphdef=graphdef,
        param_shardings=param_shardings,
        optimizer=optimizer,
        opt_shardings=opt_shardings,
        mixture=mixture,
        prompt_counts=prompt_counts,
        engine=engine,
        pool=pool,
        ckpt=ckpt,
        writer=writer,
    )
    return parts, params, opt_state


def _prompt_mixture(config, tokenizer, domains, prompt_config):
    """This process's prompt stream over the training records. Returns (mixture, prompts per domain, the
    longest prompt's length in tokens)."""
    ro = config.rollout
    train_records = loading.load_records(config.data.train, "train", domains, config.data.builtin_train_size)
    weights = None
    if config.data.weights:
        weights = {k: float(v) for k, v in (kv.split("=") for kv in config.data.weights.split(","))}
    by_domain, prompt_counts = build_prompts(train_records, tokenizer, prompt_config)
    mixture = make_mixture(
        by_domain,
        mixing=config.data.mixing,
        batch_size=ro.prompts_per_step,
        seed=config.seed,
        weights=weights,
        adaptive=adaptive_settings(config.data) if config.data.mixing == "adaptive" else None,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    longest = max(len(it["prompt_ids"]) for items in by_domain.values() for it in items)
    return mixture, prompt_counts, longest


def _start(config, workdir: str, p: _Parts, params, opt_state, base_key):
    """A new run: the optional SFT warm start, the before-RL evaluation and checkpoint step 0. Else the
    newest readable step. Returns (start step, params, opt_state, the before-RL evaluation)."""
    start = p.ckpt.latest_step()
    if start is None:
        if config.sft.steps > 0:
            params = _warm_start(config, workdir, p, params)
        eval_before = _eval(config, p.engine, params, p.tokenizer, p.pool, p.prompt_config, p.domains, "before RL")
        p.ckpt.save(
            0,
            checkpoint.step_arrays(params, opt_state, 0, base_key),
            _checkpoint_meta(config, p, eval_before),
            force=True,
        )
        return 0, params, opt_state, eval_before
    abstract = checkpoint.abstract_step_arrays(params, opt_state, p.param_shardings, p.opt_shardings)
    start, restored, meta = p.ckpt.restore(abstract)
    p.mixture.set_state(meta["data_state"])
    print(f"resumed from step {start} in {p.ckpt.directory}", file=sys.stderr)  # what a restart did
    return start, restored["params"], restored["opt_state"], meta.get("eval_before")


def _warm_start(config, workdir: str, p: _Parts, params):
    """The supervised warm start of the `sft` block; returns the new params."""
    params, _ = warm_start(config, workdir, p.graphdef, params, p.param_shardings, p.mesh, p.tokenizer)
    return params


def _checkpoint_meta(config, p: _Parts, eval_before) -> dict:
    """The JSON metadata every step saves (checkpoint.step_meta), the data iterator's state as of now."""
    return checkpoint.step_meta(
        data_state=p.mixture.get_state(),
        config=config,
        model_config=params_io.model_config_to_json(p.cfg),
        eval_before=eval_before,
    )


def _train(config, sizes, p: _Parts, params, opt_state, *, start: int, base_key, eval_before) -> dict:
    """The GRPO steps after `start` (loop.py); returns loop.loop's summary."""
    settings, components = rl_loop.build_components(
        config,
        sizes=sizes,
        graphdef=p.graphdef,
        params=params,
        optimizer=p.optimizer,
        param_shardings=p.param_shardings,
        opt_shardings=p.opt_shardings,
        mesh=p.mesh,
        cfg=p.cfg,
        engine=p.engine,
        pool=p.pool,
        tokenizer=p.tokenizer,
        mixture=p.mixture,
        ckpt=p.ckpt,
        writer=p.writer,
        checkpoint_meta=lambda: _checkpoint_meta(config, p, eval_before),
        prompt_counts=p.prompt_counts,
    )
    return rl_loop.loop(settings, components, params, opt_state, start=start, base_key=base_key)


def _print_table(config, eval_after, table: str) -> None:
    items = ", ".join(f"{d} {m['n_items']}" for d, m in eval_after["per_domain"].items())
    print(
        "\nHeld-out accuracy per domain (Avg@%d, temperature %g; items: %s):\n%s\n"
        % (config.eval.samples, config.eval.temperature, items, table),
        file=sys.stderr,
    )


def _write_summary(workdir: str, summary: dict, eval_before, eval_after) -> None:
    """summary.json (the evaluations without their per-item results) and eval_{before,after}.json."""
    slim = {k: v for k, v in summary.items() if k not in ("eval_before", "eval_after")}
    slim["eval_before"] = eval_before and {k: v for k, v in eval_before.items() if k != "items"}
    slim["eval_after"] = eval_after and {k: v for k, v in eval_after.items() if k != "items"}
    storage.write_json(storage.join(workdir, "summary.json"), slim, indent=1)
    for tag, res in (("before", eval_before), ("after", eval_after)):
        if res:  # per-item correctness, for rlvr-analyze's gain consistency and later comparisons
            storage.write_json(storage.join(workdir, f"eval_{tag}.json"), res, indent=None)


def main(argv=None) -> int:
    return cli.run_entry(argv, prog="rlvr-train", description=__doc__, run=run)


if __name__ == "__main__":
    sys.exit(main())
