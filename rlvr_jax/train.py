"""`rlvr-train`: the GRPO loop. `run(config, workdir)` builds everything, optionally runs the supervised
warm start, evaluates, then loops sample -> score -> advantages -> update -> metrics / checkpoint,
and evaluates again. No math here: see grpo.py (losses), rl_step.py (the jitted update).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from rlvr_jax import checkpoint, grpo, optim, rl_step, runtime, sharding
from rlvr_jax.data.mixture import PromptMixture
from rlvr_jax.data.prompts import PromptConfig, build_prompts
from rlvr_jax.evaluate import decode_completion, evaluate
from rlvr_jax.metrics import MetricsWriter, flatten_config
from rlvr_jax.sampling import Sampler, SamplingParams, next_pow2

log = logging.getLogger(__name__)


class ConfigError(ValueError):
  pass


def validate(config, num_devices: int) -> dict:
  """Check the config against the devices before anything compiles; returns derived sizes."""
  mesh_sizes = sharding.MeshShape(config.mesh.data, config.mesh.fsdp, config.mesh.tensor).resolve(num_devices)
  batch_shards = mesh_sizes[0] * mesh_sizes[1]
  ro, g = config.rollout, config.grpo
  rows = ro.prompts_per_step * ro.samples_per_prompt
  micro = g.micro_batch_size or rows
  problems = []
  if ro.samples_per_prompt < 2:
    problems.append(f"rollout.samples_per_prompt={ro.samples_per_prompt}: GRPO needs groups of at least 2")
  if rows % micro:
    problems.append(f"grpo.micro_batch_size={micro} does not divide the {rows} rollout rows")
  if micro % batch_shards:
    problems.append(f"micro-batch of {micro} rows is not divisible by data*fsdp={batch_shards}")
  if ro.prompts_per_step % jax.process_count():
    problems.append(f"rollout.prompts_per_step={ro.prompts_per_step} is not divisible by "
                    f"{jax.process_count()} processes")
  if g.loss_agg not in grpo.LOSS_AGGREGATIONS:
    problems.append(f"grpo.loss_agg={g.loss_agg!r}: choose one of {sorted(grpo.LOSS_AGGREGATIONS)}")
  if g.advantage not in grpo.ADVANTAGE_ESTIMATORS:
    problems.append(f"grpo.advantage={g.advantage!r}: choose one of {sorted(grpo.ADVANTAGE_ESTIMATORS)}")
  if config.train.steps < 1:
    problems.append(f"train.steps={config.train.steps} must be >= 1")
  if problems:
    raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
  return {"rows": rows, "num_micro": rows // micro, "mesh": mesh_sizes}


def _loss_settings(g, ro) -> rl_step.LossSettings:
  return rl_step.LossSettings(
      loss_agg=g.loss_agg, ratio_level=g.ratio_level, eps_low=g.eps_low, eps_high=g.eps_high,
      dual_clip_c=g.dual_clip_c or None, tis_level=g.tis_level, tis_mode=g.tis_mode, tis_cap=g.tis_cap,
      use_tis=g.tis_cap > 0, kl_coef=0.0 if g.kl_in_reward else g.kl_coef, kl_estimator=g.kl_estimator,
      entropy_coef=g.entropy_coef, temperature=ro.temperature if ro.temperature > 0 else 1.0,
      norm_len=ro.max_new_tokens)


class _Preemption:
  """SIGTERM (preemption) sets a flag; the loop saves a checkpoint and exits cleanly."""

  def __init__(self):
    self.event = threading.Event()
    if threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, lambda *_: self.event.set())


def _eval(config, sampler, params, tokenizer, pool, prompt_config, domains, tag):
  e = config.eval
  if e.items_per_domain <= 0:
    return None
  if jax.process_count() > 1:
    log.warning("in-run evaluation is single-process only; skipped (run rlvr-eval on a checkpoint)")
    return None
  records = runtime.load_records(config.data.eval, "eval", domains)
  per = defaultdict(int)
  chosen = []
  for r in records:
    if per[r["domain"]] < e.items_per_domain:
      per[r["domain"]] += 1
      chosen.append(r)
  res = evaluate(sampler, params, tokenizer, chosen, pool, prompt_config=prompt_config, samples=e.samples,
                 temperature=e.temperature, max_new_tokens=e.max_new_tokens, seed=config.seed)
  log.info("eval (%s): %s", tag, {d: round(m[f"avg@{e.samples}"], 3) for d, m in res["per_domain"].items()})
  return res


def _table(before, after, samples) -> str:
  key = f"avg@{samples}"
  lines = [f"| domain | before RL | after RL | gain | ±stderr |", "|---|---|---|---|---|"]
  for d in before["per_domain"]:
    b, a = before["per_domain"][d], after["per_domain"][d]
    se = max(b["stderr"], a["stderr"])
    lines.append(f"| {d} | {b[key]:.3f} | {a[key]:.3f} | {a[key] - b[key]:+.3f} | {se:.3f} |")
  mb = np.mean([m[key] for m in before["per_domain"].values()])
  ma = np.mean([m[key] for m in after["per_domain"].values()])
  lines.append(f"| **mean** | {mb:.3f} | {ma:.3f} | {ma - mb:+.3f} | |")
  return "\n".join(lines)


def run(config, workdir: str) -> dict:
  """Train as configured; returns a summary (also written to workdir/summary.json)."""
  d = config.distributed
  runtime.maybe_initialize_distributed(d.enabled, d.coordinator, d.num_processes, d.process_id)
  sizes = validate(config, jax.device_count())
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh(sharding.MeshShape(config.mesh.data, config.mesh.fsdp, config.mesh.tensor))
  m, ro, g, o, t = config.model, config.rollout, config.grpo, config.optim, config.train
  tokenizer = runtime.load_tokenizer(config.tokenizer, m.checkpoint)
  domains = tuple(x for x in config.data.domains.split(",") if x)
  prompt_config = PromptConfig(thinking=config.data.thinking, system_prompt=config.data.system_prompt,
                               domain_prefixes=config.data.domain_prefixes,
                               max_prompt_tokens=config.data.max_prompt_tokens)

  if m.checkpoint:
    cfg, graphdef, params, param_shardings = runtime.load_model(m.checkpoint, mesh, m.param_dtype, m.remat)
  else:
    cfg = runtime.model_config(m.preset, {k: v for k, v in m.overrides.items() if v is not None}, vocab_size=tokenizer.vocab_size,
                               param_dtype=m.param_dtype, remat=m.remat)
    graphdef, params, param_shardings = runtime.init_model(cfg, mesh, config.seed)
  optimizer = optim.make_optimizer(learning_rate=o.learning_rate, schedule=o.schedule, warmup_steps=o.warmup_steps,
                                   total_steps=t.steps, weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps,
                                   grad_clip_norm=o.grad_clip_norm)
  opt_state, opt_shardings = sharding.init_optimizer_state(optimizer, params, param_shardings, mesh)

  train_records = runtime.load_records(config.data.train, "train", domains, config.data.builtin_train_size)
  weights = None
  if config.data.weights:
    weights = {k: float(v) for k, v in (kv.split("=") for kv in config.data.weights.split(","))}
  by_domain, prompt_counts = build_prompts(train_records, tokenizer, prompt_config)
  mixture = PromptMixture(by_domain, batch_size=ro.prompts_per_step, seed=config.seed, weights=weights,
                          process_index=jax.process_index(), process_count=jax.process_count())
  longest = max(len(it["prompt_ids"]) for items in by_domain.values() for it in items)
  # One prompt bucket for the whole run: the sampler and the update each compile exactly once.
  prompt_bucket = next_pow2(longest, 16)
  sampler = Sampler(graphdef, cfg, mesh, cache_dtype=ro.cache_dtype, pad_id=tokenizer.pad_id,
                    min_prompt_bucket=prompt_bucket)
  eval_sampler = Sampler(graphdef, cfg, mesh, cache_dtype=ro.cache_dtype, pad_id=tokenizer.pad_id)

  from rlvr_jax.verifiers import VerifierConfig
  from rlvr_jax.verifiers.pool import VerifierPool
  pool = VerifierPool(config.verifier.workers or None, deadline_s=config.verifier.deadline_s,
                      config=VerifierConfig(thinking=config.data.thinking,
                                            allow_unsandboxed=config.verifier.allow_unsandboxed))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=t.checkpoint_every, keep=t.keep)
  writer = MetricsWriter(workdir, "train")
  writer.hparams(flatten_config(config))
  base_key = jax.random.key(config.seed)
  start = ckpt.latest_step()
  try:
    if start is None:
      if config.sft.steps > 0:
        from rlvr_jax.sft import run_sft
        s = config.sft
        sft_records = runtime.load_records(s.data or config.data.train, "train", domains, config.data.builtin_train_size)
        params, _ = run_sft(graphdef, params, param_shardings, mesh, tokenizer, sft_records,
                            prompt_config=prompt_config, steps=s.steps, batch_size=s.batch_size, max_len=s.max_len,
                            learning_rate=s.learning_rate, warmup_steps=s.warmup_steps, seed=config.seed,
                            workdir=workdir)
      eval_before = _eval(config, eval_sampler, params, tokenizer, pool, prompt_config, domains, "before RL")
      start = 0
      ckpt.save(0, _arrays(params, opt_state, 0, base_key), _meta(config, cfg, mixture, eval_before), force=True)
    else:
      abstract = {
          "params": checkpoint.abstract_with_shardings(jax.eval_shape(lambda: params), param_shardings),
          "opt_state": checkpoint.abstract_with_shardings(jax.eval_shape(lambda: opt_state), opt_shardings),
          "train": {"step": np.zeros((), np.int32), "rng": np.zeros((2,), np.uint32)}}
      start, restored, meta = ckpt.restore(abstract)
      params, opt_state = restored["params"], restored["opt_state"]
      mixture.set_state(meta["data_state"])
      eval_before = meta.get("eval_before")
      log.info("resumed from step %d in %s", start, ckpt.directory)
    summary = _loop(config, sizes, start, graphdef, params, opt_state, param_shardings, opt_shardings, optimizer,
                    mesh, sampler, pool, tokenizer, mixture, ckpt, writer, base_key, cfg, prompt_counts)
    params = summary.pop("params")
    ckpt.wait()
    eval_after = _eval(config, eval_sampler, params, tokenizer, pool, prompt_config, domains, "after RL")
  finally:
    pool.close()
    writer.close()
    ckpt.close()
  summary.update(eval_before=eval_before, eval_after=eval_after,
                 compilations={"sampler": sampler.num_compilations})
  if eval_before and eval_after:
    summary["table"] = _table(eval_before, eval_after, config.eval.samples)
    print("\nHeld-out accuracy per domain (greedy, Avg@%d):\n%s\n" % (config.eval.samples, summary["table"]),
          file=sys.stderr)
  if jax.process_index() == 0:
    slim = {k: v for k, v in summary.items() if k not in ("eval_before", "eval_after")}
    slim["eval_before"] = eval_before and {k: v for k, v in eval_before.items() if k != "items"}
    slim["eval_after"] = eval_after and {k: v for k, v in eval_after.items() if k != "items"}
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(slim, f, indent=1)
  return summary


def _arrays(params, opt_state, step, key):
  return {"params": params, "opt_state": opt_state,
          # host numpy values: identical on every process, so they need no sharding
          "train": {"step": np.asarray(step, np.int32), "rng": np.asarray(jax.random.key_data(key), np.uint32)}}


def _meta(config, cfg, mixture, eval_before):
  return {"data_state": mixture.get_state(), "config": json.loads(config.to_json_best_effort()),
          "model_config": checkpoint.model_config_to_json(cfg),
          "eval_before": eval_before and {k: v for k, v in eval_before.items() if k != "items"}}


def _loop(config, sizes, start, graphdef, params, opt_state, param_shardings, opt_shardings, optimizer, mesh,
          sampler, pool, tokenizer, mixture, ckpt, writer, base_key, cfg, prompt_counts):
  ro, g, t = config.rollout, config.grpo, config.train
  settings = _loss_settings(g, ro)
  update = rl_step.make_update_step(graphdef, optimizer, settings, num_micro=sizes["num_micro"],
                                    param_shardings=param_shardings, opt_shardings=opt_shardings, mesh=mesh)
  need_old = g.updates_per_rollout > 1
  ref_params = None
  if g.kl_coef > 0:  # the reference model exists only when some KL term uses it
    ref_params = jax.tree_util.tree_map(jnp.copy, params)
  teachers = _load_teachers(config.opd.teachers, mesh, cfg)
  logprob_fn = (rl_step.make_logprob_fn(graphdef, mesh, settings.temperature)
                if (need_old or ref_params is not None or teachers) else None)
  sp = SamplingParams(temperature=ro.temperature, top_p=ro.top_p, top_k=ro.top_k, max_new_tokens=ro.max_new_tokens,
                      n=ro.samples_per_prompt, stop_token_ids=tuple(tokenizer.eos_ids), seed=config.seed)
  preempt = _Preemption()
  pending = None
  domain_rewards = {}
  bar = tqdm(range(start + 1, t.steps + 1), desc="GRPO", file=sys.stderr, dynamic_ncols=True, initial=start,
             total=t.steps)
  last_step = start
  for step in bar:
    t0 = time.perf_counter()
    items = next(mixture)
    key = jax.random.fold_in(base_key, step)
    rollout = sampler.generate(params, [it["prompt_ids"] for it in items], sp, key=key)
    if pending is not None:  # step n's device metrics are read only after step n+1 is dispatched
      domain_rewards = _flush(writer, pending, bar, ckpt)
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
      shaped = shaped + np.asarray(grpo.soft_overlong_penalty(
          jnp.asarray(lengths), max_len=ro.max_new_tokens, buffer_len=g.overlong_buffer, penalty=g.overlong_penalty))
    keep = np.ones(len(rows), bool)
    if g.dynamic_sampling:
      keep_ds, _ = grpo.dynamic_sampling_keep(jnp.asarray(shaped), group_size=ro.samples_per_prompt)
      keep &= np.asarray(keep_ds)
    if g.overlong_filter:
      keep &= stopped
    loss_mask = valid & keep[:, None]
    batch = {"prompt_tokens": rollout.prompt_tokens, "prompt_valid": rollout.prompt_valid,
             "completion_tokens": rollout.completion_tokens, "sampler_logp": rollout.policy_logprobs,
             "loss_mask": sampler.to_global(loss_mask)}
    t2 = time.perf_counter()
    if ref_params is not None:
      ref_logp = logprob_fn(ref_params, batch)
      if g.kl_in_reward:
        shaped = np.asarray(grpo.kl_penalized_rewards(
            jnp.asarray(shaped), jnp.asarray(local(batch["sampler_logp"])), jnp.asarray(local(ref_logp)),
            jnp.asarray(loss_mask), kl_coef=g.kl_coef, estimator=g.kl_estimator))
      else:
        batch["ref_logp"] = ref_logp
    if teachers:  # MT-OPD: per-token advantage = log p_teacher(domain) - log p_student, on the student's samples
      domains_B = np.asarray([r["domain"] for r in rows])
      teacher_logp = np.zeros(loss_mask.shape, np.float32)
      for dom, t_params in teachers.items():
        if np.any(domains_B == dom):
          teacher_logp = np.where((domains_B == dom)[:, None], local(logprob_fn(t_params, batch)), teacher_logp)
      adv = np.asarray(grpo.opd_advantages(jnp.asarray(teacher_logp), jnp.asarray(local(batch["sampler_logp"])),
                                           jnp.asarray(loss_mask)))
      batch["adv"] = sampler.to_global(adv.astype(np.float32))
    else:
      adv_B = np.asarray(grpo.advantages(jnp.asarray(shaped), group_size=ro.samples_per_prompt,
                                         estimator=g.advantage))
      batch["adv"] = sampler.to_global((adv_B[:, None] * loss_mask).astype(np.float32))
    if need_old:
      batch["old_logp"] = logprob_fn(params, batch)
      jax.block_until_ready(batch["old_logp"])
    t_logprobs = time.perf_counter() - t2

    t3 = time.perf_counter()
    for _ in range(g.updates_per_rollout):
      params, opt_state, dev_metrics = update(params, opt_state, batch)
    host = _host_metrics(rows, rewards, scores, lengths, stopped, valid, ro.max_new_tokens, keep)
    host.update({f"prompts/{k.split('/', 1)[1]}": v for k, v in prompt_counts.items()} if step == 1 else {})
    host.update({k: v for k, v in pool.counters(reset=True).items()})
    host = _across_hosts(host)
    host["lr"] = optim.lr_at(step - 1, learning_rate=config.optim.learning_rate, schedule=config.optim.schedule,
                             warmup_steps=config.optim.warmup_steps, total_steps=t.steps)
    host["time/rollout"], host["time/verify"], host["time/logprobs"] = t_rollout, t_verify, t_logprobs
    ckpt.save(step, _arrays(params, opt_state, step, base_key),
              _meta(config, cfg, mixture, None), force=preempt.event.is_set() or step == t.steps)
    host["time/update_dispatch"] = time.perf_counter() - t3
    host["time/total"] = time.perf_counter() - t0
    n_tokens = int(valid.sum())
    host["throughput/tokens_per_s"] = n_tokens / max(host["time/total"], 1e-9)
    pending = (step, host, dev_metrics)
    last_step = step
    if preempt.event.is_set():
      log.warning("SIGTERM: saved checkpoint at step %d; exiting", step)
      break
  if pending is not None:
    _flush(writer, pending, bar, ckpt)
  bar.close()
  return {"params": params, "last_step": last_step, "update_compilations": update._cache_size()}


def _load_teachers(spec: str, mesh, student_cfg) -> dict:
  """'math=DIR,code=DIR,...' -> {domain: params} on the student's mesh (MT-OPD teachers)."""
  teachers = {}
  for part in filter(None, spec.split(",")):
    dom, _, path = part.partition("=")
    if not path:
      raise ConfigError(f"opd.teachers entry {part!r}: expected DOMAIN=CHECKPOINT")
    t_cfg, _, t_params = checkpoint.load_params_any(path, mesh, param_dtype=student_cfg.param_dtype)
    if dataclasses.replace(t_cfg, remat=student_cfg.remat) != student_cfg:
      raise ConfigError(f"teacher {path} has a different architecture than the student: {t_cfg} vs {student_cfg}")
    teachers[dom] = t_params
  return teachers


def _across_hosts(host: dict) -> dict:
  """Combine per-host metrics: counts add up, maxima take the max, the rest average (hosts hold
  equal row counts, so the average of host means is the global mean)."""
  if jax.process_count() == 1:
    return host
  from jax.experimental import multihost_utils
  from rlvr_jax.verifiers import DOMAINS
  # Hosts may hold different domains this step: gather over one fixed key list, NaN where absent.
  per_domain = [f"reward/{d}/mean" for d in DOMAINS] + [f"accuracy/{d}" for d in DOMAINS] + [
      f"verifier/{d}/{k}" for d in DOMAINS + ("other",)
      for k in ("scored", "timeouts", "errors", "restarts", "latency_mean_s", "latency_max_s")]
  keys = sorted(set(k for k in host if not k.startswith(("reward/", "accuracy/", "verifier/"))) | set(per_domain)
                | {"reward/mean", "verifier/scored", "verifier/timeouts", "verifier/errors", "verifier/restarts"})
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


def _host_metrics(rows, rewards, scores, lengths, stopped, valid, max_new, keep):
  out = {"reward/mean": float(rewards.mean()), "response_length/mean": float(lengths.mean()),
         "response_length/max": float(lengths.max()), "truncated_frac": float((~stopped).mean()),
         "kept_frac": float(keep.mean()),
         "verifier/timeouts": float(sum(s.reason == "timeout" for s in scores)),
         "verifier/errors": float(sum(s.reason == "error" for s in scores))}
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
    raise FloatingPointError(f"non-finite loss at step {step}; last good checkpoint: step "
                             f"{ckpt.latest_step()} in {ckpt.directory}")
  writer.write(step, metrics)
  accs = {k.split("/")[1]: v for k, v in metrics.items() if k.startswith("accuracy/")}
  bar.set_postfix({"reward": f"{metrics['reward/mean']:.2f}", **{d[:4]: f"{v:.2f}" for d, v in sorted(accs.items())}})
  return accs


def main(argv=None) -> int:
  from rlvr_jax import cli
  return cli.run_entry(argv, prog="rlvr-train", description=__doc__, runner="train")


if __name__ == "__main__":
  sys.exit(main())
