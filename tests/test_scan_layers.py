"""Scanned layers (ModelConfig.scan_layers): the cache-free pass equals the unrolled one in values and
gradients on a sharded mesh, with and without remat policies; the program does not grow with depth; the
stored parameter tree (HF, Orbax, merging) is the same either way."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import sharding
from rlvr_jax.model import hf
from rlvr_jax.model.decoder import ModelConfig, forward, model_shardings
from rlvr_jax.rollout.sampling import completion_logprobs
from tests.hf_fixtures import save_hf_model

CFG = ModelConfig(
    family="qwen3",
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_layers=3,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    qk_norm=True,
    tie_embeddings=True,
    rope_theta=10000.0,
    max_position_embeddings=128,
)


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh(sharding.MeshShape(2, 2, 2))


def _params(cfg, mesh, seed=0):
    graphdef, abstract, shardings = model_shardings(cfg, mesh)
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(
        lambda a, s: jax.device_put(jnp.asarray(rng.normal(0, 0.2, a.shape), a.dtype), s), abstract, shardings
    )
    return graphdef, params


def _batch():
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (4, 10)), jnp.int32)
    valid = jnp.asarray(np.arange(10)[None, :] >= np.array([0, 3, 5, 1])[:, None])  # left padding
    return tokens, valid


@pytest.mark.parametrize("remat,policy", [(False, "full"), (True, "full"), (True, "dots")])
def test_scanned_pass_equals_unrolled(mesh, remat, policy):
    tokens, valid = _batch()
    outs = {}
    for scan in (False, True):
        cfg = dataclasses.replace(CFG, scan_layers=scan, remat=remat, remat_policy=policy)
        graphdef, params = _params(cfg, mesh)

        def loss(p):
            logp = completion_logprobs(graphdef, p, tokens[:, :4], valid[:, :4], tokens[:, 4:], valid[:, 4:])
            return -logp.sum(), logp

        with sharding.activate(mesh):
            (value, logp), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
            logits = jax.jit(lambda p: forward(graphdef, p, tokens, valid))(params)
        outs[scan] = (float(value), np.asarray(logp), np.asarray(logits), grads)
    assert outs[True][0] == pytest.approx(outs[False][0], rel=1e-6)
    np.testing.assert_allclose(outs[True][1], outs[False][1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outs[True][2], outs[False][2], rtol=1e-5, atol=1e-5)
    flat_s, flat_u = jax.tree_util.tree_leaves(outs[True][3]), jax.tree_util.tree_leaves(outs[False][3])
    assert len(flat_s) == len(flat_u)
    for gs, gu in zip(flat_s, flat_u):
        np.testing.assert_allclose(np.asarray(gs), np.asarray(gu), rtol=2e-4, atol=1e-6)


def _hlo_size(num_layers: int, scan: bool, mesh) -> int:
    cfg = dataclasses.replace(CFG, num_layers=num_layers, scan_layers=scan)
    graphdef, params = _params(cfg, mesh)
    tokens, valid = _batch()
    with sharding.activate(mesh):
        text = jax.jit(jax.grad(lambda p: forward(graphdef, p, tokens, valid).sum())).lower(params).as_text()
    return len(text.splitlines())


def test_program_does_not_grow_with_depth(mesh):
    scanned = _hlo_size(2, True, mesh), _hlo_size(8, True, mesh)
    unrolled = _hlo_size(2, False, mesh), _hlo_size(8, False, mesh)
    assert unrolled[1] > 2.5 * unrolled[0]  # unrolled: the program grows with the layers
    assert scanned[1] < 1.2 * scanned[0], scanned  # scanned: a few lines per extra layer's weights only


def test_stored_tree_is_the_same_and_hf_round_trip_exact(tmp_path, mesh):
    save_hf_model("qwen3", tmp_path / "src", seed=2)
    cfg, graphdef, params = hf.load(str(tmp_path / "src"), mesh)
    scanned = dataclasses.replace(cfg, scan_layers=True)
    g2, abstract, _ = model_shardings(scanned, mesh)
    assert jax.tree_util.tree_structure(abstract) == jax.tree_util.tree_structure(params)
    hf.save(params, scanned, str(tmp_path / "out"))
    cfg2, _, params2 = hf.load(str(tmp_path / "out"), mesh)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    tokens, valid = _batch()
    tokens = tokens % cfg.vocab_size
    with sharding.activate(mesh):
        want = jax.jit(lambda p: forward(graphdef, p, tokens, valid))(params)
        got = jax.jit(lambda p: forward(g2, p, tokens, valid))(params)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_unknown_remat_policy_is_refused():
    with pytest.raises(ValueError, match="remat_policy='some'"):
        dataclasses.replace(CFG, remat_policy="some")
