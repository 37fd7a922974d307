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
