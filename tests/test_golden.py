"""Golden numbers of one tiny GRPO step and one SFT step: a change that moves them fails here instead
of surfacing in a hand-run comparison of two trainings.

Everything is built as rlvr-train builds it, from configs/grpo.py:if,tiny shrunk to a 64-wide 2-layer
model and 8 prompts x 4 samples, on built-in records, random init (no SFT warm start), on the
(data, fsdp, tensor) = (2, 2, 2) mesh of the 8 fake CPU devices. A random-init model writes junk: with
the `<think>` gate every reward is 0 and the step has no gradient, so these runs switch the gate off
(`data.thinking=False`), where junk still satisfies some IF instructions; and they use seed 5, the
first seed whose first rollout held a group with unequal rewards when it was chosen (with the static
sampler; seeds 0-4 gave none), as the paged engine's first rollout at seed 5 does too.

* `test_grpo_step`: step 1 of the loop's own parts (roll_out -> score in the verifier pool ->
  build_update_batch -> the jitted update): per-row rewards and lengths (exact), the gradient norm and
  the computed micro-batch fraction. The policy loss is only checked to be ~0: with one update per
  rollout the ratio is 1 and the TIS weights are 1 up to rounding (the sampler's and the trainer's
  logprobs of the same tokens), so the loss is a group's zero-sum advantages summed, rounding noise.
  Every number of this step moves when a sampled token flips, which needs an fp32 difference in the
  logits to carry a bound of the engine's inverse CDF past the uniform drawn: a chance of order 1e-6
  per token, 2,048 tokens here. If this test alone fails on a new machine, suspect that first.
* `test_grpo_update_on_a_fixed_batch`: the same jitted update on seeded random ids, masks, rewards and
  sampler logprobs (scattered around the model's, so the TIS weights and the loss are not trivial),
  untouched by sampling: loss, gradient norm, mean TIS weight and the norm of the clipped AdamW step.
* `test_sft_step`: the first step of the supervised warm start (packing, shuffle, the cross-entropy on
  reference responses): loss and gradient norm.

Floats are pinned at rtol 1e-5. When they were pinned, every number here agreed across the meshes
(2, 2, 2), (1, 8, 1), (8, 1, 1) and (4, 1, 2), whose float sums run in different orders, to 2e-7
relative (rewards, lengths and gradient norms bit for bit). A failure prints the observed values;
after a deliberate change, paste them here and say in the commit message why they moved.

Each test runs at both compute dtypes (model.compute_dtype; the params are fp32 masters in both). The
bf16 run is checked against the same fp32 numbers at BF16_RTOL = 1e-2: measured 2026-12-06, its largest
relative difference was 2.3e-3 (the SFT gradient norm; the fixed batch's loss 1.7e-3, the gradient norms
1e-3, the update norm 1.3e-4, the TIS weight 1.3e-5). It must also differ from them at rtol 1e-5, or
bf16 compute was not engaged. The sampled tokens, rewards and lengths are the same at both: the rollout
engine samples in its own weights dtype (fp32 in the tiny preset). At bf16 the step's policy loss is
no longer rounding noise: the TIS weights exp(trainer - sampler logp) carry the bf16 trainer's mismatch
with the fp32 sampler (mean |diff| 8e-4 per token), so it is checked to be ~0 at STEP_LOSS_ATOL_BF16.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import grpo as grpo_configs
from rlvr_jax import sharding
from rlvr_jax.data import loading
from rlvr_jax.data.mixture import PromptMixture
from rlvr_jax.data.prompts import build_prompts
from rlvr_jax.model import build
from rlvr_jax.rl import grpo, optim
from rlvr_jax.rl import loop as rl_loop
from rlvr_jax.rl.sft import run_sft
from rlvr_jax.rl.train import make_engine, validate
from rlvr_jax.rollout.sampling import next_pow2
from rlvr_jax.verifiers import VerifierConfig
from rlvr_jax.verifiers.pool import VerifierPool

MESH = (2, 2, 2)
RTOL = 1e-5
BF16_RTOL = 1e-2


def _config(mesh=MESH, compute_dtype="float32"):
    c = grpo_configs.get_config("if,tiny")
    c.model.compute_dtype = compute_dtype
    c.seed = 5
    c.model.overrides.hidden_size = 64
    c.model.overrides.intermediate_size = 128
    c.model.overrides.num_layers = 2
    c.rollout.prompts_per_step, c.rollout.samples_per_prompt = 8, 4  # 2 micro-batches of 16 rows
    # 8 rows per batch shard, of at most 64 + 64 tokens (8 pages each); the tokens do not depend on these
    c.rollout.num_slots, c.rollout.num_pages = 8, 80
    c.data.builtin_train_size = 40
    c.data.thinking = False
    c.verifier.workers = 2
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    c.sft.batch_size = 8  # the tiny default's 10 rows do not split over the mesh's 4 batch shards
    return c


def _build(c, pool):
    """The pieces of a run as rl.train.run wires them, without checkpoints or metric files."""
    sizes = validate(c, jax.device_count())
    mesh = sharding.make_mesh(sharding.MeshShape(c.mesh.data, c.mesh.fsdp, c.mesh.tensor))
    tokenizer = build.load_tokenizer(c.tokenizer, c.model.checkpoint)
    cfg, graphdef, params, shardings = build.build_model(c.model, mesh, vocab_size=tokenizer.vocab_size, seed=c.seed)
    o = c.optim
    optimizer = optim.make_optimizer(
        learning_rate=o.learning_rate,
        schedule=o.schedule,
        warmup_steps=o.warmup_steps,
        total_steps=c.train.steps,
        weight_decay=o.weight_decay,
        b1=o.b1,
        b2=o.b2,
        eps=o.eps,
        grad_clip_norm=o.grad_clip_norm,
    )
    opt_state, opt_shardings = sharding.init_optimizer_state(optimizer, params, shardings, mesh)
    domains = tuple(c.data.domains.split(","))
    records = loading.load_records(c.data.train, "train", domains, c.data.builtin_train_size)
    by_domain, prompt_counts = build_prompts(records, tokenizer, loading.prompt_config(c.data))
    mixture = PromptMixture(by_domain, batch_size=c.rollout.prompts_per_step, seed=c.seed)
    longest = max(len(it["prompt_ids"]) for items in by_domain.values() for it in items)
    engine = make_engine(c.rollout, graphdef, cfg, mesh, tokenizer.pad_id, min_prompt_bucket=next_pow2(longest, 16))
    settings, comps = rl_loop.build_components(
        c,
        sizes=sizes,
        graphdef=graphdef,
        params=params,
        optimizer=optimizer,
        param_shardings=shardings,
        opt_shardings=opt_shardings,
        mesh=mesh,
        cfg=cfg,
        engine=engine,
        pool=pool,
        tokenizer=tokenizer,
        mixture=mixture,
        ckpt=None,
        writer=None,
        checkpoint_meta=None,
        prompt_counts=prompt_counts,
    )
    return dict(
        config=c,
        settings=settings,
        comps=comps,
        params=params,
        opt_state=opt_state,
        graphdef=graphdef,
        shardings=shardings,
        mesh=mesh,
        tokenizer=tokenizer,
    )


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def run(request):
    c = _config(compute_dtype=request.param)
    pool = VerifierPool(c.verifier.workers, deadline_s=c.verifier.deadline_s, config=VerifierConfig(thinking=False))
    try:
        yield _build(c, pool)
    finally:
        pool.close()


def _copy(tree):  # the update and the SFT step donate their params and optimizer state
    return jax.tree_util.tree_map(jnp.copy, tree)


def _update(run, batch):
    before = jax.tree_util.tree_map(np.asarray, run["params"])
    params, _, metrics = run["comps"].update(_copy(run["params"]), _copy(run["opt_state"]), batch)
    moved = jax.tree_util.tree_map(lambda a, b: np.sum((np.asarray(a, np.float64) - b) ** 2), params, before)
    out = {k: float(v) for k, v in metrics.items()}
    out["update_norm"] = float(np.sqrt(sum(jax.tree_util.tree_leaves(moved))))
    return out


def _close(got: dict, want: dict, rtol: float = RTOL) -> bool:
    return set(got) == set(want) and all(np.isclose(got[k], want[k], rtol=rtol, atol=0) for k in want)


def _matches(run, got: dict, want: dict) -> bool:
    """fp32: the pinned numbers at RTOL; bf16: within BF16_RTOL of them, but not within RTOL of all of them."""
    if run["config"].model.compute_dtype == "float32":
        return _close(got, want)
    moved = {k: v for k, v in want.items() if k != "update/computed_frac"}  # a fraction of micro-batches
    return _close(got, want, BF16_RTOL) and not _close({k: got[k] for k in moved}, moved)


# ------------------------------------------------------------------ one GRPO step

# Re-pinned 2026-12-05 when the paged engine replaced the static Sampler: its draws are keyed by (seed, prompt,
# sample, position) where the Sampler's split one key per decode step, so other tokens are sampled (the same on
# all four meshes below, the gradient norm to 7e-8). Were: rewards {16: 1.0}, lengths [64, 64, 54, 64, 64, 4, 64,
# 64, 63] + [64] * 10 + [62] + [64] * 11 + [43], grad/global_norm 0.11206802725791931.
STEP_REWARDS = {16: 1.0, 18: 1.0, 19: 1.0}  # row: reward; the other rows scored 0
STEP_LENGTHS = [64] * 11 + [33, 64, 64, 31] + [64] * 7 + [8, 44] + [64] * 8
STEP = {"grad/global_norm": 0.10942184180021286, "update/computed_frac": 0.5}
STEP_LOSS_ATOL = 1e-6
STEP_LOSS_ATOL_BF16 = 1e-4  # observed -4.1e-6


def grpo_step(run):
    c, s, comps = run["config"], run["settings"], run["comps"]
    items, rollout, _ = rl_loop.roll_out(comps, s, run["params"], jax.random.fold_in(jax.random.key(c.seed), 1), 1)
    scored = rl_loop.score(comps, s, items, rollout)
    ub = rl_loop.build_update_batch(comps, s, scored, run["params"])
    m = _update(run, ub.batch)
    rewards = {int(i): float(scored.rewards_B[i]) for i in np.flatnonzero(scored.rewards_B)}
    return rewards, scored.lengths_B.tolist(), m


def test_grpo_step(run):
    rewards, lengths, m = grpo_step(run)
    got = {k: m[k] for k in ("grad/global_norm", "update/computed_frac")}
    observed = f"observed: rewards {rewards}, lengths {lengths}, {got}, loss/policy {m['loss/policy']!r}"
    assert rewards == STEP_REWARDS and lengths == STEP_LENGTHS, observed
    assert _matches(run, got, STEP), observed
    bf16 = run["config"].model.compute_dtype == "bfloat16"
    assert abs(m["loss/policy"]) < (STEP_LOSS_ATOL_BF16 if bf16 else STEP_LOSS_ATOL), observed


# ------------------------------------------------------------------ the update on a fixed batch

UPDATE = {
    "loss/policy": -0.040793731808662415,
    "grad/global_norm": 1.0165399312973022,  # over grad_clip_norm 1.0: the clipped step is pinned too
    "tis/weight_mean": 1.0763095617294312,
    "update/computed_frac": 0.5,
    "update_norm": 0.09055456110554749,
}


def fixed_batch(run):
    """32 rows of seeded random ids in the rollout's layout: left-padded prompts, completions valid up
    to their length, GRPO advantages of fixed rewards (group 3 all equal; groups 4-7, the second
    micro-batch, all equal: it is skipped), and sampler logprobs scattered around the model's -log V."""
    c, tokenizer = run["config"], run["tokenizer"]
    V, pad = tokenizer.vocab_size, tokenizer.pad_id
    P, T = run["comps"].engine.min_prompt_bucket, c.rollout.max_new_tokens
    rewards = np.asarray([1, 0, 0, 1, 0, 1, 1, 1, 0, 0, 1, 0, 1, 1, 1, 1] + [0, 0, 0, 0] * 2 + [1] * 8, np.float32)
    B = len(rewards)
    rng = np.random.default_rng(0)
    prompt_valid = np.arange(P)[None, :] >= P - rng.integers(4, P + 1, B)[:, None]
    loss_mask = np.arange(T)[None, :] < rng.integers(1, T + 1, B)[:, None]
    adv = np.asarray(grpo.advantages(jnp.asarray(rewards), group_size=c.rollout.samples_per_prompt))
    batch = {
        "prompt_tokens": np.where(prompt_valid, rng.integers(1, V, (B, P)), pad).astype(np.int32),
        "prompt_valid": prompt_valid,
        "completion_tokens": rng.integers(1, V, (B, T)).astype(np.int32),
        "sampler_logp": rng.normal(-np.log(V), 0.5, (B, T)).astype(np.float32),
        "loss_mask": loss_mask,
        "adv": (adv[:, None] * loss_mask).astype(np.float32),
    }
    return {k: run["comps"].engine.to_global(v) for k, v in batch.items()}


def test_grpo_update_on_a_fixed_batch(run):
    m = _update(run, fixed_batch(run))
    got = {
        k: m[k] for k in ("loss/policy", "grad/global_norm", "tis/weight_mean", "update/computed_frac", "update_norm")
    }
    assert _matches(run, got, UPDATE), f"observed: {got}"


# ------------------------------------------------------------------ one SFT step

# Re-pinned 2026-12-05 when the built-in SFT data changed (150 science records instead of 1,250, and the
# science task's answer letter fixed per question): was loss 7.334911823272705, norm 1.6521272659301758.
SFT = {"sft/loss": 7.341384410858154, "grad/global_norm": 2.0136642456054688}


def sft_step(run, workdir):
    c, s = run["config"], run["config"].sft
    domains = tuple(grpo_configs.DOMAINS["multi"].split(","))  # every domain's reference responses
    records = loading.load_records(s.data, "train", domains, c.data.builtin_train_size)
    _, m = run_sft(
        run["graphdef"],
        _copy(run["params"]),
        run["shardings"],
        run["mesh"],
        run["tokenizer"],
        records,
        prompt_config=loading.prompt_config(c.data),
        steps=1,
        batch_size=s.batch_size,
        max_len=s.max_len,
        learning_rate=s.learning_rate,
        warmup_steps=0,  # the pinned numbers are those before the first update; one step cannot warm up
        seed=c.seed,
        workdir=workdir,
    )
    return {k: m[k] for k in ("sft/loss", "grad/global_norm")}


def test_sft_step(run, tmp_path):
    got = sft_step(run, str(tmp_path))
    assert _matches(run, got, SFT), f"observed: {got}"
