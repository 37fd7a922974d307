"""The GRPO trainer end to end on tiny settings: compile counts, update invariance to micro-batching
and to the mesh, SIGKILL + resume reproducing the uninterrupted run, SIGTERM saving a checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import sharding
from rlvr_jax.config_args import load_config_file
from rlvr_jax.metrics import read_jsonl
from rlvr_jax.model import build, params_io
from rlvr_jax.rl import grpo
from rlvr_jax.rl import update as rl_step
from rlvr_jax.rollout.sampling import next_pow2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
grpo_configs = load_config_file(os.path.join(REPO, "configs", "grpo.py"))

TINY_OVERRIDES = [
    "--config.model.overrides.hidden_size=64",
    "--config.model.overrides.intermediate_size=128",
    "--config.model.overrides.num_layers=2",
    "--config.rollout.prompts_per_step=4",
    "--config.rollout.samples_per_prompt=4",
    "--config.rollout.max_new_tokens=12",
    "--config.sft.steps=0",
    "--config.eval.items_per_domain=0",
    "--config.verifier.workers=2",
    "--config.data.builtin_train_size=40",
    "--config.rollout.num_slots=4",
    "--config.rollout.num_pages=32",
]


def tiny_config(**train):
    c = grpo_configs.get_config("multi,tiny")
    c.model.overrides.hidden_size = 64
    c.model.overrides.intermediate_size = 128
    c.model.overrides.num_layers = 2
    c.rollout.prompts_per_step, c.rollout.samples_per_prompt, c.rollout.max_new_tokens = 4, 4, 12
    c.sft.steps, c.eval.items_per_domain, c.verifier.workers, c.data.builtin_train_size = 0, 0, 2, 40
    # a batch shard's rows (at most a prompt's 4 on 8 shards) in one pool of 31 pages of 16 tokens
    c.rollout.num_slots, c.rollout.num_pages = 4, 32
    for k, v in train.items():
        setattr(c.train, k, v)
    return c


def engine_program_bound(c) -> int:
    """The most programs the rollout engine of a run of `c` compiles, whatever its steps: the pool and the
    weights' decode layout once each, then (one set of sampling parameters) a prefill and a decode program per
    block-table width of a call, widths being the powers of two up to a longest row's pages (a prompt of at most data.max_prompt_tokens and rollout.max_new_tokens new tokens).
    Decode programs are per slot count too (the fullest batch shard's rows, to a power of two): one here,
    where a step's prompts are at most the 8 batch shards, so a shard holds one prompt's rows or none."""
    longest = c.data.max_prompt_tokens + c.rollout.max_new_tokens
    widths = next_pow2(-(-longest // c.rollout.page_size), 1).bit_length()  # 1, 2, 4, ...: log2 + 1
    return 2 + 2 * widths


def test_train_loop_compiles_a_bounded_number_of_programs(tmp_path, capsys):
    from rlvr_jax.rl import train
    from rlvr_jax.rollout import generate

    config = tiny_config(steps=3, checkpoint_every=100)
    config.grpo.micro_batch_size = 8  # 2 micro-batches: the loop reorders rows and the update may skip one
    summary = train.run(config, str(tmp_path))
    assert summary["last_step"] == 3
    assert summary["update_compilations"] == 1
    rows = read_jsonl(str(tmp_path / "metrics_train.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3]
    # 76-token rows in pages of 16: widths 1, 2, 4, 8 pages, so at most 10 programs, however many steps
    bound = engine_program_bound(config)
    assert bound == 10
    counts = [r["rollout/compilations"] for r in rows]
    assert counts == sorted(counts) and counts[-1] == summary["compilations"]["sampler"] <= bound, counts
    assert all(0 < r["rollout/slot_occupancy"] <= 1 and 0 < r["rollout/peak_pages_frac"] <= 1 for r in rows)
    for key in (
        "reward/mean",
        "loss/policy",
        "grad/global_norm",
        "clip_frac/low",
        "tis/weight_mean",
        "entropy",
        "time/rollout",
        "time/verify",
        "response_length/mean",
        "truncated_frac",
        "lr",
        "update/computed_frac",
    ):
        assert key in rows[0] and np.isfinite(rows[0][key]), key
    assert any(k.startswith("accuracy/") for k in rows[0])
    assert (tmp_path / "checkpoints" / "3").is_dir()  # the last step is always saved
    # A step of the run samples with rlvr-generate as it is: the tokenizer lies beside the steps.
    capsys.readouterr()
    assert (
        generate.main(
            [
                "--checkpoint",
                str(tmp_path / "checkpoints" / "3"),
                "--prompt",
                "Tell me about rain.",
                "--chat",
                "--max-new-tokens",
                "4",
                "--json",
            ]
        )
        == 0
    )
    (sample,) = json.loads(capsys.readouterr().out)["samples"]
    assert len(sample["tokens"]) <= 4 and sample["finish_reason"] in ("stop", "length")


def test_refill_samples_extra_prompts_and_updates_a_fixed_batch(tmp_path):
    from rlvr_jax.rl import train

    c = tiny_config(steps=2, checkpoint_every=100)
    c.grpo.dynamic_sampling, c.grpo.dynamic_sampling_draws = True, 2
    summary = train.run(c, str(tmp_path))
    assert summary["compilations"]["sampler"] <= engine_program_bound(c) and summary["update_compilations"] == 1
    rows = read_jsonl(str(tmp_path / "metrics_train.jsonl"))
    # every sampled row is scored: 2 draws x 4 prompts x 4 samples
    assert all(r["verifier/scored"] + r["verifier/deduplicated"] == 32 for r in rows)
    assert all(0 <= r["groups/informative_frac"] <= 1 and np.isfinite(r["loss/total"]) for r in rows)
    c.grpo.dynamic_sampling = False
    with pytest.raises(train.ConfigError, match="dynamic_sampling_draws"):
        train.validate(c, jax.device_count())


def test_resumed_run_still_reports_the_before_rl_evaluation(tmp_path):
    from rlvr_jax.rl import train

    c = tiny_config(steps=2, checkpoint_every=1)
    c.eval.items_per_domain, c.eval.samples, c.eval.max_new_tokens = 2, 1, 12
    first = train.run(c, str(tmp_path))
    c.train.steps = 3  # resume from step 2, run one more step
    resumed = train.run(c, str(tmp_path))
    assert resumed["last_step"] == 3
    assert resumed["eval_before"] == first["eval_before"]  # per-item results included
    assert "table" in resumed and "before RL" in resumed["table"]
    assert set(resumed["gain"]) == set(resumed["eval_before"]["per_domain"]) | {"mean"}
    for tag in ("before", "after"):  # per-item results are kept beside the summary
        with open(tmp_path / f"eval_{tag}.json") as f:
            assert json.load(f)["items"] == resumed[f"eval_{tag}"]["items"]


def test_first_per_domain_keeps_each_domains_first_records_in_order():
    from rlvr_jax.eval.evaluate import first_per_domain

    records = [{"domain": d, "i": i} for i, d in enumerate("mcmmcm")]
    assert [r["i"] for r in first_per_domain(records, 2)] == [0, 1, 2, 4]
    assert first_per_domain(records, 0) == []


def test_paired_gain_matches_per_item_differences():
    from rlvr_jax.eval.evaluate import paired_gain, summarize

    rng = np.random.default_rng(0)
    before_c = rng.random((2, 30, 4)) < 0.4
    after_c = before_c | (rng.random((2, 30, 4)) < 0.2)
    mk = lambda c: summarize(
        [
            {"id": f"{d}{i}", "domain": d, "correct": c[j, i].astype(float).tolist()}
            for j, d in enumerate(("code", "math"))
            for i in range(30)
        ],
        4,
    )
    after = mk(after_c)
    after["items"] = after["items"][::-1]  # pairing is by id, not by order
    got = paired_gain(mk(before_c), after)
    diffs = after_c.mean(-1) - before_c.mean(-1)  # [domain, item]
    se = diffs.std(axis=1, ddof=1) / np.sqrt(30)
    np.testing.assert_allclose([got["code"]["gain"], got["math"]["gain"]], diffs.mean(1))
    np.testing.assert_allclose([got["code"]["stderr"], got["math"]["stderr"]], se)
    np.testing.assert_allclose(got["mean"]["gain"], diffs.mean())
    np.testing.assert_allclose(got["mean"]["stderr"], np.sqrt((se**2).sum()) / 2)
    with pytest.raises(ValueError, match="same items"):
        paired_gain(mk(before_c), {**after, "items": after["items"][1:]})


def test_table_without_per_item_results_still_shows_the_gains():
    """A run resumed from a checkpoint written before per-item results were kept still finishes."""
    from rlvr_jax.eval.evaluate import summarize
    from rlvr_jax.rl.train import _table

    before = summarize([{"id": str(i), "domain": "code", "correct": [float(i % 2), 1.0]} for i in range(10)], 2)
    after = summarize([{"id": str(i), "domain": "code", "correct": [1.0, 1.0]} for i in range(10)], 2)
    assert "| code | 0.750 | 1.000 | +0.250 | 0.083 | +3.0 |" in _table(before, after, 2)
    before.pop("items")
    assert "| code | 0.750 | 1.000 | +0.250 | - | - |" in _table(before, after, 2)


def _random_batch(rows, P, N, vocab, seed=0):
    rng = np.random.default_rng(seed)
    prompt_valid = np.ones((rows, P), bool)
    for i in range(rows):
        prompt_valid[i, : rng.integers(0, P - 1)] = False
    loss_mask = np.zeros((rows, N), bool)
    for i in range(rows):
        loss_mask[i, : rng.integers(1, N + 1)] = True
    rewards = rng.integers(0, 2, rows).astype(np.float32)
    adv = np.asarray(grpo.advantages(jnp.asarray(rewards), group_size=4))
    return {
        "prompt_tokens": rng.integers(1, vocab, (rows, P)).astype(np.int32),
        "prompt_valid": prompt_valid,
        "completion_tokens": rng.integers(1, vocab, (rows, N)).astype(np.int32),
        "loss_mask": loss_mask,
        "adv": (adv[:, None] * loss_mask).astype(np.float32),
        "sampler_logp": (-rng.random((rows, N)) * 3 - 2).astype(np.float32),
    }


def _one_update(mesh, num_micro, batch, loss_agg, skip_zero_advantage=False, compute_dtype="float32"):
    cfg = build.model_config(
        "tiny",
        dict(hidden_size=32, intermediate_size=64, num_layers=2, vocab_size=64),
        vocab_size=64,
        param_dtype="float32",
        remat=num_micro > 1,
        compute_dtype=compute_dtype,
    )
    graphdef, params, shardings = build.init_model(cfg, mesh, seed=0)
    # Plain SGD: the update is the gradient itself. (Adam's first step is ~lr*sign(g), which turns
    # float-summation-order noise in near-zero gradient entries into full-size differences.)
    import optax

    opt = optax.sgd(1.0)
    opt_state, opt_shardings = sharding.init_optimizer_state(opt, params, shardings, mesh)
    step = rl_step.make_update_step(
        graphdef,
        opt,
        grpo.LossSettings(loss_agg=loss_agg, norm_len=6),
        num_micro=num_micro,
        param_shardings=shardings,
        opt_shardings=opt_shardings,
        mesh=mesh,
        skip_zero_advantage=skip_zero_advantage,
    )
    b = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
    new_params, _, metrics = step(params, opt_state, b)
    return jax.tree_util.tree_map(np.asarray, new_params), {k: float(v) for k, v in metrics.items()}


# (atol, rtol) of the updated params, rtol of the gradient norm and of the loss, per compute dtype. bf16: the
# sums a mesh or micro-batch split reorders are fp32 (matmul accumulation, weight gradients and their
# reduction, the loss), but an activation within rounding noise of a bf16 rounding boundary lands on the other
# side, one bf16 ulp (0.4%) away, and carries that on. Measured 2026-12-06 against the one-device,
# one-micro-batch run: params (plain SGD at lr 1: the gradient) 7.8e-4 absolute at most, gradient norm 2.3e-4
# relative, loss 1.4e-3 relative; bf16 against fp32 itself moved the params by 1.2e-3. A sharding or
# accumulation bug (a missing reduction, a micro-batch counted twice) moves them by the gradient's own size.
INVARIANCE_TOL = {"float32": (1e-6, 1e-5, 1e-5, 1e-5), "bfloat16": (2e-3, 1e-2, 1e-3, 5e-3)}


# grpo's own tests check every aggregation mode's micro-batch invariance on the math; here two modes
# go through the whole jitted, sharded update, at both compute dtypes.
@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("loss_agg", ["seq-mean-token-mean", "token-mean"])
def test_update_invariant_to_micro_batches_and_mesh(loss_agg, compute_dtype):
    atol, rtol, norm_rtol, loss_rtol = INVARIANCE_TOL[compute_dtype]
    batch = _random_batch(16, 8, 6, 64)
    mesh8 = sharding.make_mesh(sharding.MeshShape(2, 2, 2))
    mesh1 = sharding.make_mesh(sharding.MeshShape(1, 1, 1), devices=jax.devices()[:1])
    ref, ref_m = _one_update(mesh1, 1, batch, loss_agg, compute_dtype=compute_dtype)
    for mesh, micro in ((mesh1, 4), (mesh8, 2)):
        got, got_m = _one_update(mesh, micro, batch, loss_agg, compute_dtype=compute_dtype)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=atol, rtol=rtol), got, ref)
        np.testing.assert_allclose(got_m["grad/global_norm"], ref_m["grad/global_norm"], rtol=norm_rtol)
        np.testing.assert_allclose(got_m["loss/policy"], ref_m["loss/policy"], rtol=loss_rtol, atol=1e-7)


def test_rows_with_a_gradient_move_first_and_keep_their_order():
    from rlvr_jax.rl.loop import rows_with_gradient_first

    adv = np.asarray([[0, 0], [1, 0], [0, 0], [-2, 0], [0, 3]], np.float32)
    mask = np.asarray([[1, 1], [1, 0], [1, 1], [1, 1], [1, 0]], bool)  # row 4's advantage sits under the mask
    batch = {"adv": jnp.asarray(adv), "loss_mask": jnp.asarray(mask), "row": jnp.arange(5)}
    out = rows_with_gradient_first(batch, np.asarray, jnp.asarray)
    assert np.asarray(out["row"]).tolist() == [1, 3, 0, 2, 4]
    np.testing.assert_array_equal(np.asarray(out["adv"]), adv[[1, 3, 0, 2, 4]])
    np.testing.assert_array_equal(np.asarray(out["loss_mask"]), mask[[1, 3, 0, 2, 4]])


def test_skipping_zero_advantage_micro_batches_leaves_the_update_unchanged():
    batch = _random_batch(16, 8, 6, 64)
    adv_B = np.tile(np.asarray([1.0, -1.0, 0.5, -0.5], np.float32), 4)
    adv_B[4:8] = adv_B[12:16] = 0  # groups 1 and 3 (rows 4-7, 12-15): all rewards equal
    batch["adv"] = adv_B[:, None] * batch["loss_mask"]
    mesh = sharding.make_mesh(sharding.MeshShape(2, 2, 2))
    ref, ref_m = _one_update(mesh, 4, batch, "seq-mean-token-mean")
    got, got_m = _one_update(mesh, 4, batch, "seq-mean-token-mean", skip_zero_advantage=True)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7, rtol=1e-6), got, ref)
    assert got_m["loss/policy"] == pytest.approx(ref_m["loss/policy"], rel=1e-6, abs=1e-9)
    assert got_m["grad/global_norm"] == pytest.approx(ref_m["grad/global_norm"], rel=1e-6)
    assert (ref_m["update/computed_frac"], got_m["update/computed_frac"]) == (1.0, 0.5)
    # token-mean metrics cover the rows with a gradient: those of a batch holding only groups 0 and 2,
    # also when a computed micro-batch holds zero-advantage rows (2 micro-batches: groups 0+1 and 2+3)
    kept = np.r_[0:4, 8:12]
    _, sub_m = _one_update(mesh, 2, {k: v[kept] for k, v in batch.items()}, "seq-mean-token-mean")
    _, mixed_m = _one_update(mesh, 2, batch, "seq-mean-token-mean", skip_zero_advantage=True)
    assert mixed_m["update/computed_frac"] == 1.0
    for k in ("entropy", "ratio/mean", "tis/weight_mean", "sampler_trainer/logp_diff_abs_mean"):
        assert got_m[k] == pytest.approx(sub_m[k], rel=1e-5), k
        assert mixed_m[k] == pytest.approx(sub_m[k], rel=1e-5), k
    assert got_m["entropy"] != pytest.approx(ref_m["entropy"], rel=1e-3)  # the unskipped mean differs


def _eqns(jaxpr):
    """Every equation of a jaxpr and of the jaxprs inside it (jit, scan, checkpoint, cond branches), each with
    a function giving an operand's dtype before a widening convert_element_type in the same jaxpr."""
    made_by = {v: e for e in jaxpr.eqns for v in e.outvars}

    def unwidened(x):
        e = made_by.get(x)
        widening = e is not None and e.primitive.name == "convert_element_type" and x.aval.dtype == jnp.float32
        return e.invars[0].aval.dtype if widening else x.aval.dtype

    for e in jaxpr.eqns:
        yield e, unwidened
        for v in e.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


def test_bf16_compute_keeps_fp32_masters_and_fp32_softmax():
    """compute_dtype=bfloat16: every matmul of the trainer's forward takes bf16 operands and accumulates in
    fp32 (attention's batched products on XLA:CPU widen theirs to fp32 first: attention._einsum_f32); softmax (attention, log-softmax over the vocabulary) and norm statistics are fp32; the backward has
    no fp32 x fp32 matmul and its kernel gradients leave bf16 x bf16 products in fp32; after an AdamW step
    the params and the optimizer state are still fp32."""
    from rlvr_jax.rl import optim
    from rlvr_jax.rollout.sampling import completion_logprobs

    V = 96  # unlike any other width here, so the vocabulary axis is recognisable
    cfg = build.model_config(
        "tiny",
        dict(hidden_size=32, intermediate_size=64, num_layers=2, vocab_size=V),
        vocab_size=V,
        param_dtype="float32",
        remat=False,
        compute_dtype="bfloat16",
    )
    mesh = sharding.make_mesh(sharding.MeshShape(2, 2, 2))
    graphdef, params, shardings = build.init_model(cfg, mesh, seed=0)
    b = {k: jnp.asarray(v) for k, v in _random_batch(8, 6, 5, V).items()}
    args = (b["prompt_tokens"], b["prompt_valid"], b["completion_tokens"], b["loss_mask"])

    traced = list(_eqns(jax.make_jaxpr(lambda p: completion_logprobs(graphdef, p, *args))(params).jaxpr))
    fwd = [e for e, _ in traced]
    dots = [(e, unwidened) for e, unwidened in traced if e.primitive.name == "dot_general"]
    weights = [e for e, _ in dots if not e.params["dimension_numbers"][1][0]]  # no batch dims: x @ kernel
    assert len(weights) >= 7 * cfg.num_layers + 1  # q k v o gate up down per layer, the LM head
    assert all(x.aval.dtype == jnp.bfloat16 for e in weights for x in e.invars), weights
    assert all(unwidened(x) == jnp.bfloat16 for e, unwidened in dots for x in e.invars), dots
    assert all(e.outvars[0].aval.dtype == jnp.float32 for e, _ in dots)
    for name in ("exp", "log", "reduce_max", "rsqrt"):  # softmaxes, logsumexp, RMSNorm statistics
        found = [e for e in fwd if e.primitive.name == name]
        assert found and all(e.invars[0].aval.dtype == jnp.float32 for e in found), (name, found)
    vocab_lse = [e for e in fwd if e.primitive.name == "reduce_max" and e.invars[0].aval.shape[-1] == V]
    assert vocab_lse, "no log-softmax over the vocabulary found"

    loss = lambda p: jnp.sum(completion_logprobs(graphdef, p, *args) * b["adv"])
    bwd = list(_eqns(jax.make_jaxpr(jax.grad(loss))(params).jaxpr))
    dots = [e for e, _ in bwd if e.primitive.name == "dot_general" and not e.params["dimension_numbers"][1][0]]
    assert not [e for e in dots if all(x.aval.dtype == jnp.float32 for x in e.invars)], "an fp32 x fp32 matmul"
    kernel_grads = [e for e in dots if e.params["dimension_numbers"][0] == ((0,), (0,)) and len(e.invars) == 2]
    assert kernel_grads and all(
        e.outvars[0].aval.dtype == jnp.float32 and {x.aval.dtype for x in e.invars} == {jnp.dtype(jnp.bfloat16)}
        for e in kernel_grads
    )

    opt = optim.make_optimizer(learning_rate=1e-3)
    opt_state, opt_shardings = sharding.init_optimizer_state(opt, params, shardings, mesh)
    step = rl_step.make_update_step(
        graphdef,
        opt,
        grpo.LossSettings(),
        num_micro=2,
        param_shardings=shardings,
        opt_shardings=opt_shardings,
        mesh=mesh,
    )
    before = jax.tree_util.tree_map(np.asarray, params)
    batch = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim)) for k, v in b.items()}
    new_params, new_opt, metrics = step(params, opt_state, batch)
    assert np.isfinite(float(metrics["loss/total"])) and float(metrics["grad/global_norm"]) > 0
    floats = [x for x in jax.tree_util.tree_leaves((new_params, new_opt)) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert len(floats) > 2 * len(jax.tree_util.tree_leaves(new_params))  # params and both Adam moments
    assert all(x.dtype == jnp.float32 for x in floats), {x.dtype for x in floats}
    moved = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))), new_params, before)
    assert max(jax.tree_util.tree_leaves(moved)) > 0


@pytest.mark.parametrize("coef", [-0.5, 0.5])
def test_entropy_coefficient_of_either_sign_reaches_the_update(coef):
    """A negative coefficient is an entropy penalty (sharpening), not a setting silently ignored."""
    import optax

    batch = _random_batch(8, 6, 5, 64)
    batch["adv"] = np.zeros_like(batch["adv"])  # no policy gradient: only the entropy term moves params
    mesh = sharding.make_mesh(sharding.MeshShape(1, 1, 1), devices=jax.devices()[:1])
    cfg = build.model_config(
        "tiny",
        dict(hidden_size=32, intermediate_size=64, num_layers=2, vocab_size=64),
        vocab_size=64,
        param_dtype="float32",
        remat=False,
    )
    graphdef, params, shardings = build.init_model(cfg, mesh, seed=0)
    opt = optax.sgd(5.0)
    opt_state, opt_shardings = sharding.init_optimizer_state(opt, params, shardings, mesh)
    step = rl_step.make_update_step(
        graphdef,
        opt,
        grpo.LossSettings(entropy_coef=coef),
        num_micro=1,
        param_shardings=shardings,
        opt_shardings=opt_shardings,
        mesh=mesh,
    )
    entropy = lambda p: float(step(p, opt_state, batch)[2]["entropy"])
    before = entropy(jax.tree_util.tree_map(jnp.copy, params))
    new_params, _, _ = step(params, opt_state, batch)
    after = entropy(new_params)
    assert (after < before) if coef < 0 else (after > before), (before, after)


def _train_cmd(workdir, steps, extra=()):
    return [
        sys.executable,
        "-m",
        "rlvr_jax.rl.train",
        "--config=configs/grpo.py:multi,tiny",
        f"--workdir={workdir}",
        f"--config.train.steps={steps}",
        "--config.train.checkpoint_every=1",
        *TINY_OVERRIDES,
        *extra,
    ]


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _last_by_step(path):
    out = {}
    for row in read_jsonl(path):
        out[row["step"]] = row
    return out


DETERMINISTIC = (
    "reward/mean",
    "loss/policy",
    "grad/global_norm",
    "response_length/mean",
    "entropy",
    "clip_frac/high",
    "tis/weight_mean",
)


@pytest.mark.slow
@pytest.mark.parametrize("partial", [False, True], ids=["synchronous", "partial-rollouts"])
def test_sigkill_then_resume_reproduces_uninterrupted_run(tmp_path, partial):
    """Partial rollouts: the rows carried at the checkpoint resume too (steps 3 and 4 train carried tokens)."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    extra = ["--config.rollout.partial=True"] if partial else []
    subprocess.run(_train_cmd(full, 4, extra), cwd=REPO, env=_env(), check=True, capture_output=True)
    proc = subprocess.Popen(
        _train_cmd(killed, 4, extra), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    metrics = killed / "metrics_train.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until step 2 is logged (its checkpoint was dispatched before)
        if metrics.exists() and any(r["step"] >= 2 for r in read_jsonl(str(metrics))):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _last_by_step(str(metrics))
    assert 4 not in done, "the run finished before it could be killed"
    subprocess.run(_train_cmd(killed, 4, extra), cwd=REPO, env=_env(), check=True, capture_output=True)
    want, got = _last_by_step(str(full / "metrics_train.jsonl")), _last_by_step(str(metrics))
    assert sorted(got) == [1, 2, 3, 4]
    keys = DETERMINISTIC + (("staleness/mean", "partial/carried_in_groups") if partial else ())
    for step in range(1, 5):
        for key in keys:
            assert got[step][key] == want[step][key], (step, key)
    if partial:
        assert max(want[s]["staleness/mean"] for s in (3, 4)) > 0, "no carried token trained after the resume"


@pytest.mark.slow
def test_sigterm_saves_and_exits(tmp_path):
    proc = subprocess.Popen(
        _train_cmd(tmp_path, 50, ["--config.train.checkpoint_every=1000"]),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    metrics = tmp_path / "metrics_train.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and read_jsonl(str(metrics))):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] >= 2 and steps[-1] < 50  # step 0 (anchor) and the step SIGTERM arrived in
    assert b"SIGTERM" in err


def test_non_finite_loss_stops_with_step_and_checkpoint_named(tmp_path):
    from rlvr_jax.checkpoint import Checkpointer
    from rlvr_jax.metrics import MetricsWriter
    from rlvr_jax.rl import loop as rl_loop

    ckpt = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
    ckpt.save(6, {"params": {"w": np.zeros(2, np.float32)}}, {}, force=True)

    class Bar:
        def set_postfix(self, *_):
            pass

    pending = (7, {"reward/mean": 0.5}, {"loss/total": jnp.float32(np.nan)})
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 7; last good checkpoint: step 6 in .*ckpt"):
        rl_loop.flush_metrics(MetricsWriter(str(tmp_path)), pending, Bar(), ckpt)
    ckpt.close()


def test_rlvr_sft_writes_a_loadable_anchor(tmp_path):
    from rlvr_jax import checkpoint
    from rlvr_jax.rl import sft

    c = tiny_config()
    c.sft.steps, c.sft.batch_size, c.sft.warmup_steps = 4, 8, 1
    anchor = sft.run(c, str(tmp_path))
    rows = read_jsonl(str(tmp_path / "metrics_sft.jsonl"))
    assert rows[-1]["step"] == 3 and rows[-1]["sft/loss"] < rows[0]["sft/loss"]
    mesh = sharding.make_mesh(sharding.MeshShape(2, 2, 2))
    cfg, _, params = params_io.load_params_any(anchor, mesh)
    assert cfg.hidden_size == 64 and cfg.num_layers == 2
    assert checkpoint.tokenizer_dir_of(anchor) is not None


def test_batch_sizes_are_checked_against_the_mesh_before_compiling():
    from rlvr_jax.rl import train

    c = tiny_config(steps=1)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 4, 2  # 4 batch shards on the 8 test devices
    c.sft.steps, c.sft.batch_size = 5, 10
    with pytest.raises(train.ConfigError, match=r"sft\.batch_size=10 must be a multiple of 4 .*use 8 or 12"):
        train.validate(c, jax.device_count())
    c.sft.batch_size = 12
    c.grpo.micro_batch_size = 2
    with pytest.raises(train.ConfigError, match=r"grpo\.micro_batch_size .*=2 must be a multiple of 4.*use 4"):
        train.validate(c, jax.device_count())
    c.grpo.micro_batch_size = 8
    train.validate(c, jax.device_count())
    assert sharding.batch_problems({"x": 6}, 2, 4) == [
        "x=6 must be a multiple of 4 (batch shards data*fsdp=2, processes=4): use 4 or 8"
    ]
