"""rlvr_jax.rl.optim: weight-decay mask, schedules, and clip + AdamW against a numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlvr_jax.rl import optim

STUDY = dict(
    learning_rate=2e-6,
    schedule="constant",
    warmup_steps=0,
    total_steps=400,
    weight_decay=0.1,
    b1=0.9,
    b2=0.98,
    eps=1e-8,
    grad_clip_norm=1.0,
)


def _params():
    rng = np.random.default_rng(0)
    a = lambda *s: jnp.asarray(rng.normal(0, 1, s), jnp.float32)
    return {
        "embed": {"embedding": a(5, 3)},
        "layers": [
            {
                "attn": {"q_proj": {"kernel": a(3, 2), "bias": a(2)}, "q_norm": {"scale": a(2)}},
                "input_norm": {"scale": a(3)},
            },
            {"mlp": {"up_proj": {"kernel": a(3, 4)}}},
        ],
        "final_norm": {"scale": a(3)},
        "lm_head": {"kernel": a(3, 5)},
    }


def test_weight_decay_mask_skips_bias_and_scale():
    mask = optim.weight_decay_mask(_params())
    assert mask["embed"]["embedding"] and mask["lm_head"]["kernel"]
    assert mask["layers"][0]["attn"]["q_proj"]["kernel"] and mask["layers"][1]["mlp"]["up_proj"]["kernel"]
    assert not mask["layers"][0]["attn"]["q_proj"]["bias"]
    assert not mask["layers"][0]["attn"]["q_norm"]["scale"]
    assert not mask["layers"][0]["input_norm"]["scale"] and not mask["final_norm"]["scale"]
    assert sum(jax.tree.leaves(mask)) == 4


def test_schedules_and_lr_at():
    kw = dict(learning_rate=1.0, total_steps=10)
    assert [optim.lr_at(s, schedule="constant", **kw) for s in (0, 5, 100)] == [1.0, 1.0, 1.0]
    warm = [optim.lr_at(s, schedule="linear_warmup_constant", warmup_steps=4, **kw) for s in range(6)]
    np.testing.assert_allclose(warm, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    cos = [optim.lr_at(s, schedule="cosine", warmup_steps=2, **kw) for s in (0, 1, 2, 6, 10, 12)]
    np.testing.assert_allclose(cos, [0.5, 1.0, 1.0, 0.5, 0.0, 0.0], atol=1e-7)
    assert optim.lr_at(3, schedule="cosine", **kw) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.3)))
    with pytest.raises(ValueError, match="warm-up"):
        optim.make_schedule(learning_rate=1.0, schedule="constant", warmup_steps=3)
    with pytest.raises(ValueError, match="unknown schedule"):
        optim.make_schedule(learning_rate=1.0, schedule="step")
    with pytest.raises(ValueError, match="total_steps"):
        optim.make_schedule(learning_rate=1.0, schedule="cosine", warmup_steps=5, total_steps=5)


def _np_reference(params, grads_seq, *, lrs, wd, b1, b2, eps, clip):
    """Clip by global norm, then torch-style AdamW; weight decay only where the last key is not bias/scale."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    p = [np.asarray(v, np.float64) for _, v in flat]
    decay = [str(getattr(path[-1], "key", "")) not in ("bias", "scale") for path, _ in flat]
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    for t, grads in enumerate(grads_seq, start=1):
        g = [np.asarray(x, np.float64) for x in jax.tree.leaves(grads)]
        norm = np.sqrt(sum((x**2).sum() for x in g))
        if clip and norm > clip:
            g = [x * clip / norm for x in g]
        lr = lrs[t - 1]
        for i in range(len(p)):
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            upd = (m[i] / (1 - b1**t)) / (np.sqrt(v[i] / (1 - b2**t)) + eps)
            p[i] = p[i] - lr * (upd + (wd * p[i] if decay[i] else 0.0))
    return jax.tree_util.tree_unflatten(treedef, p)


@pytest.mark.parametrize("clip", [1.0, None])
def test_adamw_with_clip_matches_numpy(clip):
    params = _params()
    rng = np.random.default_rng(1)
    # gradient norms far above and below the clip, so clipping changes Adam's moments, not just a scale
    scales = [30.0, 0.05, 5.0, 0.2]
    grads_seq = [
        jax.tree.map(lambda x, s=s: jnp.asarray(rng.normal(0, s, x.shape), jnp.float32), params) for s in scales
    ]
    hp = dict(STUDY, learning_rate=0.01, schedule="linear_warmup_constant", warmup_steps=2, grad_clip_norm=clip)
    tx = optim.make_optimizer(**hp)
    state = tx.init(params)
    got = params

    @jax.jit
    def step(g, s, p):
        upd, s = tx.update(g, s, p)
        return optax.apply_updates(p, upd), s, upd

    for g in grads_seq:
        got, state, _ = step(g, state, got)
    lrs = [optim.lr_at(i, learning_rate=0.01, schedule="linear_warmup_constant", warmup_steps=2) for i in range(4)]
    want = _np_reference(params, grads_seq, lrs=lrs, wd=0.1, b1=0.9, b2=0.98, eps=1e-8, clip=clip)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), got, want)
    # biases and norm scales saw no decay: with zero gradients they do not move, kernels shrink
    zero = jax.tree.map(jnp.zeros_like, params)
    _, _, upd = step(zero, tx.init(params), params)
    assert float(jnp.abs(upd["final_norm"]["scale"]).sum()) == 0.0
    assert float(jnp.abs(upd["layers"][0]["attn"]["q_proj"]["bias"]).sum()) == 0.0
    np.testing.assert_allclose(upd["lm_head"]["kernel"], -0.01 * 0.5 * 0.1 * params["lm_head"]["kernel"], rtol=1e-5)


def test_study_preset_first_update_and_state_tree_stable():
    params = _params()
    tx = optim.make_optimizer(**STUDY)
    grads = jax.tree.map(lambda x: jnp.full_like(x, 100.0), params)  # clipped to norm 1; Adam normalises
    upd, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    k = params["lm_head"]["kernel"]
    np.testing.assert_allclose(upd["lm_head"]["kernel"], -2e-6 * (1.0 + 0.1 * k), rtol=1e-4)
    no_clip = optim.make_optimizer(**dict(STUDY, grad_clip_norm=None))
    assert jax.tree.structure(no_clip.init(params)) == jax.tree.structure(tx.init(params))
