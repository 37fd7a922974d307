"""Blocked self-attention equals the dense reference (values and gradients) with GQA, left padding,
packed segments and T not a multiple of the block, and its compiled memory grows linearly with T."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.model import attention

B, K, Q, D = 2, 2, 3, 8


def _inputs(T, seed=0, packed=False):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(B, T, K, Q, D)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(B, K, T, D)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(B, K, T, D)), jnp.float32)
    valid = jnp.asarray(np.arange(T)[None, :] >= np.array([0, 4])[:, None])  # row 1 left-padded by 4
    segments = None
    if packed:  # row 0: three examples then padding; row 1: two examples
        seg = np.zeros((B, T), np.int32)
        seg[0, : T // 3], seg[0, T // 3 : 2 * T // 3], seg[0, 2 * T // 3 : T - 2] = 1, 2, 3
        seg[1, : T // 2], seg[1, T // 2 :] = 1, 2
        segments = jnp.asarray(seg)
        valid = segments > 0
    return q, k, v, valid, segments


@pytest.mark.parametrize("T,block", [(13, 4), (16, 16), (16, 64), (29, 8)])
@pytest.mark.parametrize("packed", [False, True])
def test_blocked_equals_dense(T, block, packed):
    q, k, v, valid, segments = _inputs(T, packed=packed)
    want = attention.dense(q, k, v, valid, segments)
    got = attention.blocked(q, k, v, valid, segments, block=block)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    w = jnp.asarray(np.random.default_rng(1).normal(size=want.shape), jnp.float32) * valid[:, :, None, None, None]

    def loss(fn, q, k, v):
        return jnp.sum(w * fn(q, k, v))

    g_dense = jax.grad(lambda *a: loss(lambda q, k, v: attention.dense(q, k, v, valid, segments), *a), (0, 1, 2))(
        q, k, v
    )
    g_blocked = jax.grad(
        lambda *a: loss(lambda q, k, v: attention.blocked(q, k, v, valid, segments, block=block), *a), (0, 1, 2)
    )(q, k, v)
    for a, b in zip(g_blocked, g_dense):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["dense", "blocked"])
def test_bf16_inputs_attend_with_an_fp32_softmax(impl):
    """bf16 queries, keys and values (compute_dtype=bfloat16): scores and softmax in fp32, an fp32 output equal
    to the fp32 computation on the same (bf16) inputs up to the probabilities' bf16 rounding before the
    product with V (8 bits: 4e-3 relative); gradients reach the bf16 inputs."""
    q, k, v, valid, segments = _inputs(16, packed=True)
    q16, k16, v16 = (x.astype(jnp.bfloat16) for x in (q, k, v))
    fn = lambda q, k, v: attention.IMPLEMENTATIONS[impl](q, k, v, valid, segments)
    got = fn(q16, k16, v16)
    assert got.dtype == jnp.float32
    want = attention.dense(*(x.astype(jnp.float32) for x in (q16, k16, v16)), valid, segments)
    np.testing.assert_allclose(got, want, atol=2e-2, rtol=1e-2)
    assert not np.allclose(got, want, atol=1e-6, rtol=1e-6)  # bf16 probabilities: not the fp32 computation
    exps = [e for e in _walk(jax.make_jaxpr(fn)(q16, k16, v16).jaxpr) if e.primitive.name == "exp"]
    assert exps and all(e.invars[0].aval.dtype == jnp.float32 for e in exps)
    grads = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * valid[:, :, None, None, None]), argnums=(0, 1, 2))(
        q16, k16, v16
    )
    assert all(
        g.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0 for g in grads
    )


def _walk(jaxpr):
    for e in jaxpr.eqns:
        yield e
        for val in e.params.values():
            for sub in val if isinstance(val, (tuple, list)) else (val,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _walk(inner)


def _temp_bytes(fn, T):
    q, k, v, valid, _ = _inputs(T)

    def loss(q, k, v):
        return fn(q, k, v, valid).sum()

    compiled = jax.jit(jax.grad(loss, (0, 1, 2))).lower(q, k, v).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_blocked_memory_grows_linearly_with_T():
    blocked = [_temp_bytes(lambda *a: attention.blocked(*a, block=128), T) for T in (1024, 2048, 4096)]
    dense = [_temp_bytes(attention.dense, T) for T in (1024, 2048)]
    assert dense[1] > 3.5 * dense[0]  # the dense gradient holds [T, T] scores: x4 per doubling
    assert blocked[1] < 2.3 * blocked[0] and blocked[2] < 2.3 * blocked[1], blocked  # x2 per doubling
    assert blocked[2] < dense[1]  # 4,096 blocked tokens cost less than 2,048 dense ones


def test_unknown_impl_is_refused():
    q, k, v, valid, _ = _inputs(8)
    with pytest.raises(ValueError, match="attention impl 'flash'"):
        attention.self_attention(q, k, v, valid, impl="flash")
