"""The GRPO / MT-OPD step loop: sample -> score (asynchronous pool) -> shape rewards -> advantages ->
(old / reference / teacher logprobs) -> jitted update -> metrics and checkpoint, host by host.
Each host reads, scores and shapes only its own rows; the update sees the global batch. What a step
saves is checkpoint.py's; its host metrics and their combination across processes are host_metrics.py's."""

from __future__ import annotations

import dataclasses
import functools
import logging
import signal
import sys
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from rlvr_jax import checkpoint
from rlvr_jax.eval.evaluate import decode_completion
from rlvr_jax.model import params_io
from rlvr_jax.rl import carried, grpo, host_metrics, optim
from rlvr_jax.rl import update as rl_step
from rlvr_jax.rollout import partial as partial_lib
from rlvr_jax.rollout.sampling import SamplingParams

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    pass


# Where MT-OPD's student log-probabilities come from: the trainer's teacher-forced pass of the current
# params (the teachers' numerics: the study) or the sampler's (no extra pass, but its numerics differ
# from the teachers' by as much as the per-token teacher-student gap of experts close to the anchor).
OPD_STUDENT_LOGP = ("trainer", "sampler")


class _Preemption:
    """SIGTERM (preemption) sets a flag; the loop saves a checkpoint and exits cleanly."""

    def __init__(self):
        self.event = threading.Event()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.event.set())


def loss_settings(config) -> grpo.LossSettings:
    """The policy loss's settings from a run config (its `grpo` and `rollout` blocks)."""
    g, ro = config.grpo, config.rollout
    return grpo.LossSettings(
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


def run_optimizer(config):
    """The run's optimizer from its `optim` block, scheduled over `train.steps` (trainer and planner alike)."""
    o = config.optim
    return optim.make_optimizer(
        learning_rate=o.learning_rate,
        schedule=o.schedule,
        warmup_steps=o.warmup_steps,
        total_steps=config.train.steps,
        weight_decay=o.weight_decay,
        b1=o.b1,
        b2=o.b2,
        eps=o.eps,
        grad_clip_norm=o.grad_clip_norm,
    )


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """What a GRPO / MT-OPD step reads from the config, destructured once at the boundary."""

    steps: int  # last step of the run
    group_size: int  # samples per prompt
    max_new_tokens: int
    thinking: bool  # responses are graded after their </think>
    draws: int  # prompt batches sampled per step (DAPO refill keeps the informative groups; 1 = none)
    dynamic_sampling: bool
    overlong_buffer: int  # soft overlong penalty's buffer in tokens (0 = off)
    overlong_penalty: float
    overlong_filter: bool  # truncated rows leave the loss
    advantage: str  # grpo.ADVANTAGE_ESTIMATORS
    kl_coef: float  # > 0: a reference model exists (in the loss or in the reward)
    kl_in_reward: bool
    kl_estimator: str
    opd_student_logp: str  # OPD_STUDENT_LOGP: MT-OPD's student log-probabilities (used only with teachers)
    updates_per_rollout: int
    skip_zero_advantage: bool  # effective: the loss has no term that acts on zero-advantage rows
    num_micro: int
    lr_at: Callable[[int], float]  # learning rate at an optimizer step, for the metrics

    @classmethod
    def from_config(cls, config, num_micro: int, loss: grpo.LossSettings) -> StepSettings:
        ro, g, o = config.rollout, config.grpo, config.optim
        if config.opd.student_logp not in OPD_STUDENT_LOGP:
            raise ConfigError(f"opd.student_logp={config.opd.student_logp!r}: expected one of {OPD_STUDENT_LOGP}")
        return cls(
            steps=config.train.steps,
            group_size=ro.samples_per_prompt,
            max_new_tokens=ro.max_new_tokens,
            thinking=config.data.thinking,
            draws=g.dynamic_sampling_draws if g.dynamic_sampling else 1,
            dynamic_sampling=g.dynamic_sampling,
            overlong_buffer=g.overlong_buffer,
            overlong_penalty=g.overlong_penalty,
            overlong_filter=g.overlong_filter,
            advantage=g.advantage,
            kl_coef=g.kl_coef,
            kl_in_reward=g.kl_in_reward,
            kl_estimator=g.kl_estimator,
            opd_student_logp=config.opd.student_logp,
            updates_per_rollout=g.updates_per_rollout,
            skip_zero_advantage=g.skip_zero_advantage and loss.gradient_scales_with_advantage,
            num_micro=num_micro,
            lr_at=functools.partial(
                optim.lr_at,
                learning_rate=o.learning_rate,
                schedule=o.schedule,
                warmup_steps=o.warmup_steps,
                total_steps=config.train.steps,
            ),
        )

    @property
    def optional_arrays(self) -> tuple[str, ...]:
        """The optional update-batch arrays these settings add (update.OPTIONAL_UPDATE_ARRAYS)."""
        return rl_step.optional_update_arrays(
            updates_per_rollout=self.updates_per_rollout, kl_coef=self.kl_coef, kl_in_reward=self.kl_in_reward
        )

    @property
    def need_old_logp(self) -> bool:
        return "old_logp" in self.optional_arrays


@dataclasses.dataclass
class Components:
    """Everything a step uses besides the weights: built once by the entry point."""

    engine: Any  # rollout.engine.Engine
    sampling: SamplingParams
    pool: Any  # verifiers.VerifierPool
    tokenizer: Any
    mixture: Any  # data.mixture.PromptMixture or AdaptiveMixture (its `adaptive` says which)
    update: Callable  # jitted (params, opt_state, batch) -> (params, opt_state, device metrics)
    logprob_fn: Callable | None  # jitted teacher-forced logprobs (old / reference / teacher / student), when needed
    ref_params: Any  # the reference policy's params, when a KL term uses them
    teachers: dict  # MT-OPD: domain -> teacher params
    ckpt: Any  # checkpoint.Checkpointer
    writer: Any  # metrics.MetricsWriter
    checkpoint_meta: Callable[[], dict]  # JSON metadata saved with every step
    prompt_counts: dict  # prompts per domain, logged at step 1
    partial: Any = None  # rollout.partial.PartialRollouts: rows carried between steps (rollout.partial)


def build_components(
    config, *, sizes, graphdef, params, optimizer, param_shardings, opt_shardings, mesh, cfg, **parts
) -> tuple[StepSettings, Components]:
    """The step settings and the components of a run: the jitted update, the logprob pass and the
    reference / teacher weights it needs. `parts`: engine, pool, tokenizer, mixture, ckpt, writer,
    checkpoint_meta, prompt_counts."""
    loss = loss_settings(config)
    s = StepSettings.from_config(config, sizes["num_micro"], loss)
    update = rl_step.make_update_step(
        graphdef,
        optimizer,
        loss,
        num_micro=s.num_micro,
        param_shardings=param_shardings,
        opt_shardings=opt_shardings,
        mesh=mesh,
        skip_zero_advantage=s.skip_zero_advantage,
    )
    # the reference model exists only when some KL term uses it
    ref_params = jax.tree_util.tree_map(jnp.copy, params) if s.kl_coef > 0 else None
    teachers = _load_teachers(config.opd.teachers, mesh, cfg)
    need_logprobs = s.need_old_logp or ref_params is not None or teachers
    logprob_fn = rl_step.make_logprob_fn(graphdef, mesh, loss.temperature) if need_logprobs else None
    ro = config.rollout
    sampling = SamplingParams(
        temperature=ro.temperature,
        top_p=ro.top_p,
        top_k=ro.top_k,
        max_new_tokens=ro.max_new_tokens,
        n=ro.samples_per_prompt,
        stop_token_ids=tuple(parts["tokenizer"].eos_ids),
        seed=config.seed,
    )
    partial = None
    if ro.get("partial", False):
        settings = partial_lib.PartialSettings(
            groups_per_step=ro.prompts_per_step // jax.process_count(),
            oversample=ro.partial_oversample,
            max_staleness=ro.max_staleness,
        )
        partial = partial_lib.PartialRollouts(parts["engine"], sampling, settings)
    comps = Components(
        sampling=sampling,
        update=update,
        logprob_fn=logprob_fn,
        ref_params=ref_params,
        teachers=teachers,
        partial=partial,
        **parts,
    )
    return s, comps


@dataclasses.dataclass
class Scored:
    """One step's rollout, this host's rows of it, and their rewards."""

    rollout: Any  # rollout.sampling.Rollout (global arrays)
    records: list[dict]  # this host's rows' records
    completion_BxT: np.ndarray
    valid_BxT: np.ndarray
    stopped_B: np.ndarray
    lengths_B: np.ndarray
    scores: list  # verifiers.Score per row
    rewards_B: np.ndarray


def roll_out(c: Components, s: StepSettings, params, key, step: int):
    """The step's generation: `draws` prompt batches x group_size samples, or (partial rollouts) the first
    complete groups of the prompts in flight. Returns (prompt items, rollout, partial-rollout metrics) once
    generated (the engine's host scheduler reads every decode burst)."""
    if c.partial is not None:
        out = c.partial.step(params, lambda: next(c.mixture), key, step)
        return out.items, out.rollout, out.metrics
    items = [it for _ in range(s.draws) for it in next(c.mixture)]
    return items, c.engine.generate(params, [it["prompt_ids"] for it in items], c.sampling, key=key), {}


def score(c: Components, s: StepSettings, items, rollout) -> Scored:
    """Decode and score this host's rows in the verifier pool (which zeroes the rows cut at max_new_tokens
    when its config's truncated_zero says so: the study's rule, in one place for training and evaluation)."""
    local = c.engine.local_rows  # each host reads, scores and shapes only its own rows
    comp, valid = local(rollout.completion_tokens), local(rollout.completion_valid)
    stopped = local(rollout.stopped)
    records = [items[i]["record"] for i in rollout.prompt_index]
    texts = [decode_completion(c.tokenizer, t, v) for t, v in zip(comp, valid)]
    scores = c.pool.submit(records, texts, thinking=s.thinking, truncated=~stopped).result()
    rewards = np.asarray([x.reward for x in scores], np.float32)
    return Scored(rollout, records, comp, valid, stopped, local(rollout.lengths), scores, rewards)


@dataclasses.dataclass
class UpdateBatch:
    """The update's global batch and what the metrics need of how it was chosen."""

    batch: dict  # global arrays: prompt_tokens, prompt_valid, completion_tokens, sampler_logp, loss_mask, adv, ...
    keep_B: np.ndarray  # rows the loss uses (dynamic sampling, overlong filter)
    informative_N: np.ndarray  # groups whose rewards are not all equal
    valid_BxT: np.ndarray  # this host's generated tokens of the update's rows
    rewards_B: np.ndarray  # this host's shaped rewards of every sampled row (all draws, before a refill's pick)


def build_update_batch(c: Components, s: StepSettings, sc: Scored, params) -> UpdateBatch:
    """Shape the rewards, choose the rows, compute advantages (GRPO groups or MT-OPD teachers) and the
    logprob passes the loss needs (reference, old policy, MT-OPD's student). Host arrays are this host's
    rows; the batch is global: its arrays are update.UPDATE_BATCH's, with old_logp / ref_logp when the
    loss needs them."""
    local, to_global = c.engine.local_rows, c.engine.to_global
    shaped = _shaped_rewards(s, sc)
    informative_N = np.asarray(grpo.informative_groups(jnp.asarray(shaped), group_size=s.group_size))
    sampled_shaped = shaped
    batch, records, shaped, valid, keep = _choose_rows(c, s, sc, shaped, informative_N)
    loss_mask = valid & keep[:, None]
    batch["loss_mask"] = to_global(loss_mask)
    if c.ref_params is not None:
        shaped = _reference_logp(c, s, batch, shaped, loss_mask)
    # MT-OPD's student on the teachers' numerics: the current params teacher-forced, the pass that old_logp
    # (the same params on the same rows) then reuses
    trainer_logp = c.logprob_fn(params, batch) if c.teachers and s.opd_student_logp == "trainer" else None
    batch["adv"] = to_global(_advantages(c, s, batch, records, shaped, loss_mask, trainer_logp))
    if s.need_old_logp:
        batch["old_logp"] = c.logprob_fn(params, batch) if trainer_logp is None else trainer_logp
        jax.block_until_ready(batch["old_logp"])
    if s.skip_zero_advantage and s.num_micro > 1:  # rows with a gradient first: the update skips whole micro-batches
        batch = rows_with_gradient_first(batch, local, to_global)
    return UpdateBatch(batch, keep, informative_N, valid, sampled_shaped)


def _shaped_rewards(s: StepSettings, sc: Scored) -> np.ndarray:
    """[B] this host's rewards, with the soft overlong penalty when it is on."""
    shaped = sc.rewards_B.copy()
    if s.overlong_buffer > 0:
        shaped = shaped + np.asarray(
            grpo.soft_overlong_penalty(
                jnp.asarray(sc.lengths_B),
                max_len=s.max_new_tokens,
                buffer_len=s.overlong_buffer,
                penalty=s.overlong_penalty,
            )
        )
    return shaped


def _choose_rows(c: Components, s: StepSettings, sc: Scored, shaped, informative_N):
    """The update's rows: a refill's picked groups (draws > 1) or every row, and which of them the loss
    keeps (dynamic sampling, overlong filter). Returns (global batch of the rollout's arrays, and this
    host's records, shaped rewards, valid tokens and keep flags of those rows)."""
    local, to_global = c.engine.local_rows, c.engine.to_global
    r = sc.rollout
    batch = {
        "prompt_tokens": r.prompt_tokens,
        "prompt_valid": r.prompt_valid,
        "completion_tokens": r.completion_tokens,
        "sampler_logp": r.policy_logprobs,
    }
    records, valid, stopped = sc.records, sc.valid_BxT, sc.stopped_B
    keep = np.ones(len(records), bool)
    if s.draws > 1:  # keep the informative groups of the oversampled rollout: the update's batch is fixed
        pick, keep = grpo.refill_rows(informative_N, group_size=s.group_size, num_groups=len(informative_N) // s.draws)
        batch = {k: to_global(local(v)[pick]) for k, v in batch.items()}
        records, shaped, valid, stopped = [records[i] for i in pick], shaped[pick], valid[pick], stopped[pick]
    elif s.dynamic_sampling:
        keep_ds, _ = grpo.dynamic_sampling_keep(jnp.asarray(shaped), group_size=s.group_size)
        keep &= np.asarray(keep_ds)
    if s.overlong_filter:
        keep &= stopped
    return batch, records, shaped, valid, keep


def _reference_logp(c: Components, s: StepSettings, batch: dict, shaped, loss_mask):
    """The reference policy's logprobs: a KL penalty in the rewards (returned), or batch["ref_logp"] for
    the loss's KL term (then the rewards come back as they were)."""
    local = c.engine.local_rows
    ref_logp = c.logprob_fn(c.ref_params, batch)
    if not s.kl_in_reward:
        batch["ref_logp"] = ref_logp
        return shaped
    return np.asarray(
        grpo.kl_penalized_rewards(
            jnp.asarray(shaped),
            jnp.asarray(local(batch["sampler_logp"])),
            jnp.asarray(local(ref_logp)),
            jnp.asarray(loss_mask),
            kl_coef=s.kl_coef,
            estimator=s.kl_estimator,
        )
    )


def _advantages(c: Components, s: StepSettings, batch: dict, records, shaped, loss_mask, trainer_logp) -> np.ndarray:
    """[B, T] float32 advantages of this host's rows: GRPO's group advantages on every kept token, or
    MT-OPD's per-token log p_teacher(domain) - log p_student on the student's samples, the student's from
    `trainer_logp` (global [B, T], the trainer's pass) or, when it is None, from the sampler."""
    local = c.engine.local_rows
    if not c.teachers:
        adv_B = np.asarray(grpo.advantages(jnp.asarray(shaped), group_size=s.group_size, estimator=s.advantage))
        return (adv_B[:, None] * loss_mask).astype(np.float32)
    domains_B = np.asarray([rec["domain"] for rec in records])
    teacher_logp = np.zeros(loss_mask.shape, np.float32)
    for dom, t_params in c.teachers.items():
        if np.any(domains_B == dom):
            teacher_logp = np.where((domains_B == dom)[:, None], local(c.logprob_fn(t_params, batch)), teacher_logp)
    student_logp = batch["sampler_logp"] if trainer_logp is None else trainer_logp
    adv = grpo.opd_advantages(jnp.asarray(teacher_logp), jnp.asarray(local(student_logp)), jnp.asarray(loss_mask))
    return np.asarray(adv).astype(np.float32)


def update_and_checkpoint(
    c: Components, s: StepSettings, params, opt_state, ub: UpdateBatch, step: int, base_key, *, force_save: bool
):
    """Dispatch the update(s) and the step's checkpoint. Returns (params, opt_state, device metrics)."""
    for _ in range(s.updates_per_rollout):
        params, opt_state, dev_metrics = c.update(params, opt_state, ub.batch)
    carried.save(c.partial, c.ckpt, step, force=force_save)
    # every checkpoint carries the before-RL evaluation, so a resumed run still reports the gain
    c.ckpt.save(step, checkpoint.step_arrays(params, opt_state, step, base_key), c.checkpoint_meta(), force=force_save)
    return params, opt_state, dev_metrics


def loop(s: StepSettings, c: Components, params, opt_state, *, start: int, base_key) -> dict:
    """Steps start+1 .. s.steps: roll out -> score -> build the update batch -> update and checkpoint ->
    metrics. Step n's device metrics are read only after step n+1's rollout."""
    preempt = _Preemption()
    carried.restore(c.partial, c.ckpt, start)
    pending = None
    bar = tqdm(
        range(start + 1, s.steps + 1), desc="GRPO", file=sys.stderr, dynamic_ncols=True, initial=start, total=s.steps
    )
    last_step = start
    for step in bar:
        t0 = time.perf_counter()
        items, rollout, partial_metrics = roll_out(c, s, params, jax.random.fold_in(base_key, step), step)
        if pending is not None:
            flush_metrics(c.writer, pending, bar, c.ckpt)
            pending = None
        jax.block_until_ready(rollout.completion_tokens)  # the rollout's time includes its device time
        t1 = time.perf_counter()
        sc = score(c, s, items, rollout)
        t2 = time.perf_counter()
        host_metrics.record_lengths(c.writer.workdir, sc.lengths_B, s.max_new_tokens)  # rlvr-plan reads it
        times = {"time/rollout": t1 - t0, "time/verify": t2 - t1}
        ub = build_update_batch(c, s, sc, params)
        t3 = time.perf_counter()
        times["time/logprobs"] = t3 - t2
        host = host_metrics.step_host_metrics(c, s, sc, ub, step, partial_metrics)  # adaptive mixing moves its weights
        host.update(times)
        # Read once: a SIGTERM landing after this line is handled at the next step, never between a
        # save that did not see it and the exit below (which then left no checkpoint of this step).
        preempted = preempt.event.is_set()
        params, opt_state, dev_metrics = update_and_checkpoint(
            c, s, params, opt_state, ub, step, base_key, force_save=preempted or step == s.steps
        )
        host["time/update_dispatch"] = time.perf_counter() - t3
        host["time/total"] = time.perf_counter() - t0
        host["throughput/tokens_per_s"] = int(ub.valid_BxT.sum()) / max(host["time/total"], 1e-9)
        pending = (step, host, dev_metrics)
        last_step = step
        if preempted:
            log.warning("SIGTERM: saved checkpoint at step %d; exiting", step)
            break
    if pending is not None:
        flush_metrics(c.writer, pending, bar, c.ckpt)
    bar.close()
    return {"params": params, "last_step": last_step, "update_compilations": c.update.cache_size()}


def rows_with_gradient_first(batch: dict, local, to_global) -> dict:
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
        run_as_student = {k: getattr(student_cfg, k) for k in ("remat", "remat_policy", "scan_layers", "compute_dtype")}
        if dataclasses.replace(t_cfg, **run_as_student) != student_cfg:
            raise ConfigError(f"teacher {path} has a different architecture than the student: {t_cfg} vs {student_cfg}")
        teachers[dom] = t_params
    return teachers


def flush_metrics(writer, pending, bar, ckpt):
    """Write a step's host and device metrics (read only now: the next step is dispatched) and show them
    on the progress bar; a non-finite loss stops the run, naming the step and the last good checkpoint."""
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
