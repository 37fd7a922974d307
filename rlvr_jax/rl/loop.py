"""The GRPO / MT-OPD step loop: sample -> score (asynchronous pool) -> shape rewards -> advantages ->
(old / reference / teacher logprobs) -> jitted update -> metrics and checkpoint, host by host.
Each host reads, scores and shapes only its own rows; the update sees the global batch."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import threading
import time
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from rlvr_jax.eval.evaluate import decode_completion
from rlvr_jax.model import params_io
from rlvr_jax.rl import grpo, optim
from rlvr_jax.rl import update as rl_step
from rlvr_jax.rollout.sampling import SamplingParams
from rlvr_jax.verifiers import DOMAINS

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    pass


def _loss_settings(g, ro) -> rl_step.LossSettings:
    return rl_step.LossSettings(
        loss_agg=g.loss_agg,
        ratio_level=g.ratio_level,
        eps_low=g.eps_low,
        eps_high=g.eps_high,
        dual_clip_c=g.dual_clip_c or None,
        tis_level=g.tis_level,
        tis_mode=g.tis_mode,
        tis_cap=g.tis_cap,
        use_tis=g.tis_cap > 0,
        kl_coef=0.0 if g.kl_in_reward else g.kl_coef,
        kl_estimator=g.kl_estimator,
        entropy_coef=g.entropy_coef,
        temperature=ro.temperature if ro.temperature > 0 else 1.0,
        norm_len=ro.max_new_tokens,
    )


class _Preemption:
    """SIGTERM (preemption) sets a flag; the loop saves a checkpoint and exits cleanly."""

    def __init__(self):
        self.event = threading.Event()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.event.set())


def arrays(params, opt_state, step, key):
    return {
        "params": params,
        "opt_state": opt_state,
        # host numpy values: identical on every process, so they need no sharding
        "train": {"step": np.asarray(step, np.int32), "rng": np.asarray(jax.random.key_data(key), np.uint32)},
    }


def meta(config, cfg, mixture, eval_before):
    return {
        "data_state": mixture.get_state(),
        "config": json.loads(config.to_json_best_effort()),
        "model_config": params_io.model_config_to_json(cfg),
        # with its per-item results: a resumed run still pairs them with the after-RL evaluation
        "eval_before": eval_before,
    }


def loop(
    config,
    sizes,
    start,
    graphdef,
    params,
    opt_state,
    param_shardings,
    opt_shardings,
    optimizer,
    mesh,
    sampler,
    pool,
    tokenizer,
    mixture,
    ckpt,
    writer,
    base_key,
    cfg,
    prompt_counts,
    eval_before=None,
):
    ro, g, t = config.rollout, config.grpo, config.train
    settings = _loss_settings(g, ro)
    skip = g.skip_zero_advantage and settings.gradient_scales_with_advantage
    update = rl_step.make_update_step(
        graphdef,
        optimizer,
        settings,
        num_micro=sizes["num_micro"],
        param_shardings=param_shardings,
        opt_shardings=opt_shardings,
        mesh=mesh,
        skip_zero_advantage=skip,
    )
    need_old = g.updates_per_rollout > 1
    # DAPO refill: each step samples `draws` batches of prompts and updates on the informative groups
    draws = g.dynamic_sampling_draws if g.dynamic_sampling else 1
    ref_params = None
    if g.kl_coef > 0:  # the reference model exists only when some KL term uses it
        ref_params = jax.tree_util.tree_map(jnp.copy, params)
    teachers = _load_teachers(config.opd.teachers, mesh, cfg)
    logprob_fn = (
        rl_step.make_logprob_fn(graphdef, mesh, settings.temperature)
        if (need_old or ref_params is not None or teachers)
        else None
    )
    sp = SamplingParams(
        temperature=ro.temperature,
        top_p=ro.top_p,
        top_k=ro.top_k,
        max_new_tokens=ro.max_new_tokens,
        n=ro.samples_per_prompt,
        stop_token_ids=tuple(tokenizer.eos_ids),
        seed=config.seed,
    )
    preempt = _Preemption()
    pending = None
    bar = tqdm(
        range(start + 1, t.steps + 1), desc="GRPO", file=sys.stderr, dynamic_ncols=True, initial=start, total=t.steps
    )
    last_step = start
    for step in bar:
        t0 = time.perf_counter()
        items = [it for _ in range(draws) for it in next(mixture)]
        key = jax.random.fold_in(base_key, step)
        rollout = sampler.generate(params, [it["prompt_ids"] for it in items], sp, key=key)
        if pending is not None:  # step n's device metrics are read only after step n+1 is dispatched
            _flush(writer, pending, bar, ckpt)
            pending = None
        local = sampler.local_rows  # each host reads, scores and shapes only its own rows
        comp, valid = local(rollout.completion_tokens), local(rollout.completion_valid)
        stopped, lengths = local(rollout.stopped), local(rollout.lengths)
        t_rollout = time.perf_counter() - t0

        t1 = time.perf_counter()
        rows = [items[i]["record"] for i in rollout.prompt_index]
        texts = [decode_completion(tokenizer, c, v) for c, v in zip(comp, valid)]
        scores = pool.submit(rows, texts, thinking=config.data.thinking).result()
        rewards = np.asarray([s.reward for s in scores], np.float32)
        t_verify = time.perf_counter() - t1

        shaped = rewards.copy()
        if g.overlong_buffer > 0:
            shaped = shaped + np.asarray(
                grpo.soft_overlong_penalty(
                    jnp.asarray(lengths),
                    max_len=ro.max_new_tokens,
                    buffer_len=g.overlong_buffer,
                    penalty=g.overlong_penalty,
                )
            )
        informative_N = np.asarray(grpo.informative_groups(jnp.asarray(shaped), group_size=ro.samples_per_prompt))
        batch = {
            "prompt_tokens": rollout.prompt_tokens,
            "prompt_valid": rollout.prompt_valid,
            "completion_tokens": rollout.completion_tokens,
            "sampler_logp": rollout.policy_logprobs,
        }
        keep = np.ones(len(rows), bool)
        sampled = dict(rows=rows, lengths=lengths, stopped=stopped)  # every scored row, for the metrics
        if draws > 1:  # keep the informative groups of the oversampled rollout: the update's batch is fixed
            pick, keep = grpo.refill_rows(
                informative_N, group_size=ro.samples_per_prompt, num_groups=len(informative_N) // draws
            )
            batch = {k: sampler.to_global(local(v)[pick]) for k, v in batch.items()}
            rows, shaped, comp, valid, stopped, lengths = (
                [rows[i] for i in pick],
                shaped[pick],
                comp[pick],
                valid[pick],
                stopped[pick],
                lengths[pick],
            )
        elif g.dynamic_sampling:
            keep_ds, _ = grpo.dynamic_sampling_keep(jnp.asarray(shaped), group_size=ro.samples_per_prompt)
            keep &= np.asarray(keep_ds)
        if g.overlong_filter:
            keep &= stopped
        loss_mask = valid & keep[:, None]
        batch["loss_mask"] = sampler.to_global(loss_mask)
        t2 = time.perf_counter()
        if ref_params is not None:
            ref_logp = logprob_fn(ref_params, batch)
            if g.kl_in_reward:
                shaped = np.asarray(
                    grpo.kl_penalized_rewards(
                        jnp.asarray(shaped),
                        jnp.asarray(local(batch["sampler_logp"])),
                        jnp.asarray(local(ref_logp)),
                        jnp.asarray(loss_mask),
                        kl_coef=g.kl_coef,
                        estimator=g.kl_estimator,
                    )
                )
            else:
                batch["ref_logp"] = ref_logp
        if teachers:  # MT-OPD: per-token advantage = log p_teacher(domain) - log p_student, on the student's samples
            domains_B = np.asarray([r["domain"] for r in rows])
            teacher_logp = np.zeros(loss_mask.shape, np.float32)
            for dom, t_params in teachers.items():
                if np.any(domains_B == dom):
                    teacher_logp = np.where(
                        (domains_B == dom)[:, None], local(logprob_fn(t_params, batch)), teacher_logp
                    )
            adv = np.asarray(
                grpo.opd_advantages(
                    jnp.asarray(teacher_logp), jnp.asarray(local(batch["sampler_logp"])), jnp.asarray(loss_mask)
                )
            )
            batch["adv"] = sampler.to_global(adv.astype(np.float32))
        else:
            adv_B = np.asarray(
                grpo.advantages(jnp.asarray(shaped), group_size=ro.samples_per_prompt, estimator=g.advantage)
            )
            batch["adv"] = sampler.to_global((adv_B[:, None] * loss_mask).astype(np.float32))
        if skip and sizes["num_micro"] > 1:  # rows with a gradient first: the update skips whole micro-batches
            batch = _rows_with_gradient_first(batch, local, sampler.to_global)
        if need_old:
            batch["old_logp"] = logprob_fn(params, batch)
            jax.block_until_ready(batch["old_logp"])
        t_logprobs = time.perf_counter() - t2

        t3 = time.perf_counter()
        for _ in range(g.updates_per_rollout):
            params, opt_state, dev_metrics = update(params, opt_state, batch)
        host = _host_metrics(rewards=rewards, scores=scores, keep=keep, **sampled)
        host["groups/informative_frac"] = float(informative_N.mean())
        host.update({f"prompts/{k.split('/', 1)[1]}": v for k, v in prompt_counts.items()} if step == 1 else {})
        host.update({k: v for k, v in pool.counters(reset=True).items()})
        host = _across_hosts(host)
        host["lr"] = optim.lr_at(
            step - 1,
            learning_rate=config.optim.learning_rate,
            schedule=config.optim.schedule,
            warmup_steps=config.optim.warmup_steps,
            total_steps=t.steps,
        )
        host["time/rollout"], host["time/verify"], host["time/logprobs"] = t_rollout, t_verify, t_logprobs
        # Read once: a SIGTERM landing after this line is handled at the next step, never between a
        # save that did not see it and the exit below (which then left no checkpoint of this step).
        preempted = preempt.event.is_set()
        ckpt.save(
            step,
            arrays(params, opt_state, step, base_key),
            # every checkpoint carries the before-RL evaluation, so a resumed run still reports the gain
            meta(config, cfg, mixture, eval_before),
            force=preempted or step == t.steps,
        )
        host["time/update_dispatch"] = time.perf_counter() - t3
        host["time/total"] = time.perf_counter() - t0
        n_tokens = int(valid.sum())
        host["throughput/tokens_per_s"] = n_tokens / max(host["time/total"], 1e-9)
        pending = (step, host, dev_metrics)
        last_step = step
        if preempted:
            log.warning("SIGTERM: saved checkpoint at step %d; exiting", step)
            break
    if pending is not None:
        _flush(writer, pending, bar, ckpt)
    bar.close()
    return {"params": params, "last_step": last_step, "update_compilations": update._cache_size()}


def _rows_with_gradient_first(batch: dict, local, to_global) -> dict:
    """The same rows, those with a non-zero advantage first (stable), each host reordering its own rows.
    Row order is free here: the update sums over rows and its groups were used up by the advantages."""
    host = {k: local(v) for k, v in batch.items()}
    order = np.argsort(~np.asarray(rl_step.rows_with_gradient(host["adv"], host["loss_mask"])), kind="stable")
    return {k: to_global(v[order]) for k, v in host.items()}


def _load_teachers(spec: str, mesh, student_cfg) -> dict:
    """'math=DIR,code=DIR,...' -> {domain: params} on the student's mesh (MT-OPD teachers)."""
    teachers = {}
    for part in filter(None, spec.split(",")):
        dom, _, path = part.partition("=")
        if not path:
            raise ConfigError(f"opd.teachers entry {part!r}: expected DOMAIN=CHECKPOINT")
        t_cfg, _, t_params = params_io.load_params_any(path, mesh, param_dtype=student_cfg.param_dtype)
        if dataclasses.replace(t_cfg, remat=student_cfg.remat) != student_cfg:
            raise ConfigError(f"teacher {path} has a different architecture than the student: {t_cfg} vs {student_cfg}")
        teachers[dom] = t_params
    return teachers


def _across_hosts(host: dict) -> dict:
    """Combine per-host metrics: counts add up, maxima take the max, the rest average (hosts hold
    equal row counts, so the average of host means is the global mean)."""
    if jax.process_count() == 1:
        return host

    # Hosts may hold different domains this step: gather over one fixed key list, NaN where absent.
    per_domain = (
        [f"reward/{d}/mean" for d in DOMAINS]
        + [f"accuracy/{d}" for d in DOMAINS]
        + [
            f"verifier/{d}/{k}"
            for d in DOMAINS + ("other",)
            for k in ("scored", "timeouts", "errors", "restarts", "latency_mean_s", "latency_max_s")
        ]
    )
    keys = sorted(
        set(k for k in host if not k.startswith(("reward/", "accuracy/", "verifier/")))
        | set(per_domain)
        | {
            "reward/mean",
            "verifier/scored",
            "verifier/timeouts",
            "verifier/errors",
            "verifier/restarts",
            "verifier/deduplicated",
        }
    )
    local = np.asarray([host.get(k, np.nan) for k in keys], np.float64)
    values = np.asarray(multihost_utils.process_allgather(local))
    out = {}
    for i, k in enumerate(keys):
        col = values[:, i]
        if np.all(np.isnan(col)):
            continue
        if k.startswith(("verifier/", "prompts/")) and "latency" not in k:
            out[k] = float(np.nansum(col))
        elif "max" in k:
            out[k] = float(np.nanmax(col))
        else:
            out[k] = float(np.nanmean(col))
    return out


def _host_metrics(*, rows, rewards, scores, lengths, stopped, keep):
    """Reward and length statistics of every sampled row; kept_frac of the rows the update uses."""
    out = {
        "reward/mean": float(rewards.mean()),
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "truncated_frac": float((~stopped).mean()),
        "kept_frac": float(keep.mean()),
        "verifier/timeouts": float(sum(s.reason == "timeout" for s in scores)),
        "verifier/errors": float(sum(s.reason == "error" for s in scores)),
    }
    by_domain = defaultdict(list)
    for r, x in zip(rows, rewards):
        by_domain[r["domain"]].append(x)
    for dom, xs in by_domain.items():
        out[f"reward/{dom}/mean"] = float(np.mean(xs))
        out[f"accuracy/{dom}"] = float(np.mean(np.asarray(xs) >= 1.0))
    return out


def _flush(writer, pending, bar, ckpt):
    step, host, dev = pending
    metrics = dict(host)
    metrics.update({k: float(np.asarray(v)) for k, v in dev.items()})
    if not np.isfinite(metrics["loss/total"]):
        raise FloatingPointError(
            f"non-finite loss at step {step}; last good checkpoint: step {ckpt.latest_step()} in {ckpt.directory}"
        )
    writer.write(step, metrics)
    accs = {k.split("/")[1]: v for k, v in metrics.items() if k.startswith("accuracy/")}
    bar.set_postfix({"reward": f"{metrics['reward/mean']:.2f}", **{d[:4]: f"{v:.2f}" for d, v in sorted(accs.items())}})
    return accs
