"""The jitted, donated GRPO update: teacher-forced logprobs, the clipped policy loss of grpo.py over
micro-batches (gradients accumulated in a scan, normalised by global counts), one optax step.

Micro-batches whose rows all have zero advantage are skipped (`skip_zero_advantage`) when the loss is
the policy term alone: each row's gradient is then a multiple of its advantage, so a skipped
micro-batch adds exactly zero and the update is unchanged. GRPO zeroes every group whose rewards are
all equal (about half of them at the built-in default); the loop puts such rows last so that whole
micro-batches go. The token-mean metrics (entropy, ratio, clip and TIS) are then over the rows with a
non-zero advantage, whatever the micro-batch layout.

Shapes (docs/CONTRACTS.md "Shape legend"): B rows, P prompt bucket, T completion slots, U micro-batches.
  prompt_tokens/prompt_valid [B,P], completion_tokens [B,T], loss_mask [B,T], adv [B,T],
  sampler_logp [B,T], optional old_logp [B,T] and ref_logp [B,T].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from rlvr_jax import sharding
from rlvr_jax.rl import grpo
from rlvr_jax.rollout.sampling import completion_logprobs

# The update batch's required arrays, each [B, P] or [B, T]: name -> (its second axis, dtype). The loop builds
# them (loop.build_update_batch) and the planner compiles the logprob pass and the update on update_batch_spec.
UPDATE_BATCH = {
    "prompt_tokens": ("P", jnp.int32),
    "prompt_valid": ("P", jnp.bool_),
    "completion_tokens": ("T", jnp.int32),
    "loss_mask": ("T", jnp.bool_),
    "adv": ("T", jnp.float32),
    "sampler_logp": ("T", jnp.float32),
}


# Arrays that join the batch when the loss needs them: the old policy's logprobs (several updates per
# rollout) and the reference policy's (a KL term in the loss).
OPTIONAL_UPDATE_ARRAYS = {"old_logp": ("T", jnp.float32), "ref_logp": ("T", jnp.float32)}


def optional_update_arrays(*, updates_per_rollout: int, kl_coef: float, kl_in_reward: bool) -> tuple[str, ...]:
    """The optional arrays the loop adds to the update batch for these loss settings."""
    return (("old_logp",) if updates_per_rollout > 1 else ()) + (
        ("ref_logp",) if kl_coef > 0 and not kl_in_reward else ()
    )


def update_batch_spec(mesh, B: int, P: int, T: int, optional: tuple[str, ...] = ()) -> dict:
    """ShapeDtypeStructs of the update batch for B rows, a prompt bucket of P and T completion slots, rows
    over the mesh's batch axes (the required arrays and the `optional` ones named): what a planner compiles
    the update on."""
    width = {"P": P, "T": T}
    rows = sharding.batch_sharding(mesh, 2)
    arrays = {**UPDATE_BATCH, **{k: OPTIONAL_UPDATE_ARRAYS[k] for k in optional}}
    return {k: jax.ShapeDtypeStruct((B, width[ax]), dt, sharding=rows) for k, (ax, dt) in arrays.items()}


def _split_micro(x, num_micro: int):
    B = x.shape[0]
    x = x.reshape(num_micro, B // num_micro, *x.shape[1:])
    return sharding.constrain(x, (None, "batch") + (None,) * (x.ndim - 2))


def loss_and_metrics(graphdef, params, mb: dict, counts: dict, s: grpo.LossSettings):
    want_entropy = s.entropy_coef != 0  # negative: an entropy penalty
    out = completion_logprobs(
        graphdef,
        params,
        mb["prompt_tokens"],
        mb["prompt_valid"],
        mb["completion_tokens"],
        mb["loss_mask"],
        s.temperature,
        return_entropy=want_entropy,
    )
    logp, entropy = out if want_entropy else (out, None)
    # One update per rollout: the old policy *is* the current one, so old logprobs need no forward pass.
    old = mb["old_logp"] if "old_logp" in mb else jax.lax.stop_gradient(logp)
    metric_mask = None
    if "metric_tokens" in counts:  # skipping: metrics over the rows with a gradient, in any layout
        metric_mask = mb["loss_mask"] & rows_with_gradient(mb["adv"], mb["loss_mask"])[:, None]
    return grpo.policy_loss(
        logp,
        old,
        mb["adv"],
        mb["loss_mask"],
        s,
        global_num_tokens=counts["tokens"],
        global_num_seqs=counts["seqs"],
        sampler_logp_BxT=mb["sampler_logp"] if s.use_tis else None,
        ref_logp_BxT=mb.get("ref_logp"),
        entropy_BxT=entropy,
        metric_mask_BxT=metric_mask,
        metric_num_tokens=counts.get("metric_tokens"),
    )


def rows_with_gradient(adv_BxT, loss_mask_BxT):
    """[B] bool: rows whose policy gradient can be non-zero (some unmasked token has an advantage)."""
    return jnp.any((adv_BxT != 0) & loss_mask_BxT, axis=-1)


def accumulated_gradients(graphdef, params, batch: dict, settings: grpo.LossSettings, *, num_micro: int, skip: bool):
    """The batch's f32 gradient, loss and metric sums over `num_micro` micro-batches in a scan (normalised by
    the global batch's counts), skipping micro-batches without a gradient when `skip`. Returns (grads, loss,
    metrics, computed_U: which micro-batches were computed)."""
    mask = batch["loss_mask"]
    counts = {"tokens": mask.sum().astype(jnp.float32), "seqs": jnp.any(mask, axis=-1).sum().astype(jnp.float32)}
    micro = jax.tree_util.tree_map(lambda x: _split_micro(x, num_micro), batch)
    computed_U = jnp.ones((num_micro,), bool)
    if skip:
        computed_U = jnp.any(rows_with_gradient(micro["adv"], micro["loss_mask"]), axis=-1)
        counts["metric_tokens"] = jnp.sum(mask & rows_with_gradient(batch["adv"], mask)[:, None]).astype(jnp.float32)
    grad_fn = jax.value_and_grad(lambda p, mb: loss_and_metrics(graphdef, p, mb, counts, settings), has_aux=True)
    first = jax.tree_util.tree_map(lambda x: x[0], micro)
    zero_metrics = jax.tree_util.tree_map(
        jnp.zeros_like, jax.eval_shape(lambda: loss_and_metrics(graphdef, params, first, counts, settings)[1])
    )
    zero_grads = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), params)

    def micro_step(mb):
        (loss_mb, m), g = grad_fn(params, mb)
        return g, loss_mb, m

    def accumulate(carry, xs):
        grads, loss, metrics = carry
        mb, computed = xs
        if skip:  # a skipped micro-batch's gradient, loss and metric sums are exactly zero
            g, loss_mb, m = jax.lax.cond(computed, micro_step, lambda _: (zero_grads, jnp.float32(0), zero_metrics), mb)
        else:
            g, loss_mb, m = micro_step(mb)
        return (
            jax.tree_util.tree_map(jnp.add, grads, g),
            loss + loss_mb,
            jax.tree_util.tree_map(jnp.add, metrics, m),
        ), None

    (grads, loss, metrics), _ = jax.lax.scan(
        accumulate, (zero_grads, jnp.float32(0), zero_metrics), (micro, computed_U)
    )
    return grads, loss, metrics, computed_U


def make_update_step(
    graphdef,
    optimizer: optax.GradientTransformation,
    settings: grpo.LossSettings,
    *,
    num_micro: int,
    param_shardings,
    opt_shardings,
    mesh,
    skip_zero_advantage: bool = False,
):
    """jitted (params, opt_state, batch) -> (params, opt_state, metrics); params/opt_state donated.
    With `skip_zero_advantage` (effective only when settings.gradient_scales_with_advantage), micro-batches
    without any non-zero advantage are not computed; metrics["update/computed_frac"] is the fraction that was."""
    skip = skip_zero_advantage and settings.gradient_scales_with_advantage

    def step(params, opt_state, batch):
        grads, loss, metrics, computed_U = accumulated_gradients(
            graphdef, params, batch, settings, num_micro=num_micro, skip=skip
        )
        grads = jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), grads, params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = dict(
            metrics,
            **{
                "loss/total": loss,
                "grad/global_norm": optax.tree.norm(grads),
                "update/computed_frac": computed_U.mean(dtype=jnp.float32),
            },
        )
        return params, opt_state, metrics

    with sharding.activate(mesh):
        return sharding.ActivatedJit(
            jax.jit(step, donate_argnums=(0, 1), out_shardings=(param_shardings, opt_shardings, None)), mesh
        )


def make_logprob_fn(graphdef, mesh, temperature: float):
    """jitted teacher-forced logprobs (old policy or reference), no gradient."""

    def fn(params, batch):
        return completion_logprobs(
            graphdef,
            params,
            batch["prompt_tokens"],
            batch["prompt_valid"],
            batch["completion_tokens"],
            batch["loss_mask"],
            temperature,
        )

    return sharding.ActivatedJit(jax.jit(fn), mesh)
