"""Chunked LM-head statistics equal the dense ones (values and gradients, T not a multiple of the chunk),
and the compiled gradient holds no [B, T, V] array."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.model.chunked_logprobs import token_stats

B, T, E, V = 2, 37, 16, 53


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(B, T, E)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(E, V)) * 0.5, jnp.float32)
    targets = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
    return hidden, kernel, targets


def _dense(hidden, kernel, targets, temperature):
    logits = (hidden @ kernel) / temperature
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    logp = jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    is_top = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] >= logits.max(-1)
    return logp, entropy, is_top


@pytest.mark.parametrize("chunk", [1, 8, 37, 64])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_gradients_equal_dense(chunk, temperature):
    hidden, kernel, targets = _inputs()
    targets = targets.at[0, :5].set(jnp.argmax(hidden[0, :5] @ kernel, -1))  # some targets are the top token
    got = token_stats(hidden, kernel, targets, temperature=temperature, chunk=chunk, entropy=True)
    logp, entropy, is_top = _dense(hidden, kernel, targets, temperature)
    np.testing.assert_allclose(got["logp"], logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["entropy"], entropy, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["is_top"], is_top)
    assert bool(is_top[0, :5].all())

    w = jnp.asarray(np.random.default_rng(1).normal(size=(B, T)), jnp.float32)

    def chunked_loss(h, k):
        s = token_stats(h, k, targets, temperature=temperature, chunk=chunk, entropy=True)
        return jnp.sum(w * s["logp"]) + 0.3 * jnp.sum(w * s["entropy"])

    def dense_loss(h, k):
        lp, ent, _ = _dense(h, k, targets, temperature)
        return jnp.sum(w * lp) + 0.3 * jnp.sum(w * ent)

    g_chunked = jax.grad(chunked_loss, argnums=(0, 1))(hidden, kernel)
    g_dense = jax.grad(dense_loss, argnums=(0, 1))(hidden, kernel)
    for a, b in zip(g_chunked, g_dense):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _shapes_in(hlo: str):
    return {tuple(int(d) for d in dims.split(",") if d) for dims in re.findall(r"f32\[([\d,]*)\]", hlo)}


def test_no_full_logits_in_the_compiled_gradient():
    T_long, V_big, chunk = 512, 1000, 64
    rng = np.random.default_rng(2)
    hidden = jnp.asarray(rng.normal(size=(1, T_long, E)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(E, V_big)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, V_big, (1, T_long)), jnp.int32)

    def loss(h, k):
        return token_stats(h, k, targets, chunk=chunk, entropy=True)["logp"].sum()

    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(hidden, kernel).compile().as_text()
    full = [s for s in _shapes_in(hlo) if T_long in s and V_big in s]
    assert not full, f"[T, V]-sized arrays in the gradient: {full}"
    assert any(chunk in s and V_big in s for s in _shapes_in(hlo))  # the chunk-sized block is there

    dense = jax.jit(jax.grad(lambda h, k: _dense(h, k, targets, 1.0)[0].sum(), argnums=(0, 1)))
    assert [s for s in _shapes_in(dense.lower(hidden, kernel).compile().as_text()) if T_long in s and V_big in s]
