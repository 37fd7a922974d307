"""Weight-space analyses against numpy: footprint, Jaccard overlap, projected cosines, gain consistency."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rlvr_jax import pytree
from rlvr_jax.eval import analysis as A
from tests.test_merge import _tree

SHAPES = {
    "embed/embedding": (16, 8),
    "layers/0/mlp/up_proj/kernel": (8, 12),
    "layers/1/mlp/up_proj/kernel": (8, 12),
    "final_norm/scale": (8,),
}


def _models(seed=0):
    rng = np.random.default_rng(seed)
    a = {p: rng.standard_normal(s).astype(np.float32) for p, s in SHAPES.items()}
    out = []
    for density in (0.3, 0.5, 0.2):
        # changed entries move by 2e-3..30% relative; the rest by 5e-4 (under the 1e-3 threshold)
        m = {}
        for p, x in a.items():
            mask = rng.random(x.shape) < density
            rel = rng.choice([2e-3, 5e-2, -0.3], size=x.shape)
            m[p] = np.where(mask, x * (1 + rel), x * (1 + 5e-4)).astype(np.float32)
        out.append(m)
    return a, out


def np_changed(a, m):
    return np.abs(m - a) > 1e-3 * np.maximum(np.abs(m), np.abs(a))


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))


def shard(tree, mesh):
    return jax.tree.map(
        lambda x: jax.device_put(x, NamedSharding(mesh, P("fsdp", "tensor") if x.ndim == 2 else P("fsdp"))), tree
    )


def test_footprint_and_overlap_match_numpy(mesh):
    a, ms = _models()
    fp = A.footprint(shard(_tree(a), mesh), shard(_tree(ms[0]), mesh))
    masks = [{p: np_changed(a[p], m[p]) for p in a} for m in ms]
    n = sum(x.size for x in a.values())
    c0 = sum(int(masks[0][p].sum()) for p in a)
    assert fp["changed"] == c0 and fp["total"] == n and fp["density"] == pytest.approx(c0 / n)
    assert 0.15 < fp["density"] < 0.5  # the 5e-4 relative changes stay below the threshold
    assert set(fp["per_layer"]) == {"0", "1", "other"}
    assert fp["per_layer"]["0"] == pytest.approx(masks[0]["layers/0/mlp/up_proj/kernel"].mean())

    ov = A.overlap(_tree(a), _tree(ms[1]), _tree(ms[2]))
    ma = np.concatenate([masks[1][p].ravel() for p in a])
    mb = np.concatenate([masks[2][p].ravel() for p in a])
    assert ov["intersection"] == (ma & mb).sum() and ov["union"] == (ma | mb).sum()
    assert ov["jaccard"] == pytest.approx((ma & mb).sum() / (ma | mb).sum())
    pa, pb = ma.mean(), mb.mean()
    assert ov["random_baseline"] == pytest.approx(pa * pb / (pa + pb - pa * pb))
    assert A.random_jaccard(0.3, 0.3) == pytest.approx(0.09 / 0.51)


def test_changed_mask_is_fp32_and_relative():
    import jax.numpy as jnp

    a = jnp.asarray([1.0, 1.0, 0.0, -2.0, 100.0], jnp.bfloat16)
    m = jnp.asarray([1.0, 1.0078125, 1e-6, -2.0, 100.5], jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(A.changed_mask(a, m)), [False, True, True, False, True])


def test_projected_cosines_match_numpy_projection(mesh):
    a, ms = _models(seed=1)
    paths = list(pytree.flatten(_tree(a))[0])
    whole, per = A.project(shard(_tree(a), mesh), [shard(_tree(m), mesh) for m in ms], dim=32, seed=5)
    # numpy: rebuild the same projection tensor by tensor from the documented recipe
    ref_whole, ref_per = np.zeros((3, 32)), {}
    normal = jax.jit(lambda key, c, chunk: jax.random.normal(jax.random.fold_in(key, c), (chunk, 32)), static_argnums=2)
    for p in paths:
        n = a[p].size
        key = jax.random.fold_in(jax.random.key(5), pytree.path_hash(p))
        chunk = min(A.PROJ_CHUNK, n)
        nc = -(-n // chunk)
        G = np.concatenate([np.asarray(normal(key, c, chunk)) for c in range(nc)])[:n]
        T = np.stack([(m[p] - a[p]).ravel() for m in ms]).astype(np.float64)
        y = T @ G / np.sqrt(32)
        ref_whole += y
        ref_per[A.layer_of(p)] = ref_per.get(A.layer_of(p), 0) + y
    np.testing.assert_allclose(whole, ref_whole, rtol=1e-4, atol=1e-5)
    assert list(per) == ["0", "1", "other"]
    for k in per:
        np.testing.assert_allclose(per[k], ref_per[k], rtol=1e-4, atol=1e-5)

    cos = A.task_vector_cosines(_tree(a), [_tree(m) for m in ms], dim=32, seed=5)
    v = ref_whole / np.linalg.norm(ref_whole, axis=1, keepdims=True)
    np.testing.assert_allclose(cos["whole"], v @ v.T, atol=1e-5)
    np.testing.assert_allclose(np.diag(cos["per_layer"]["1"]), 1.0, atol=1e-6)


def test_projection_preserves_cosine_roughly():
    # a shared 256-d Gaussian projection keeps cosines to about 1/sqrt(256)
    rng = np.random.default_rng(3)
    a = {"layers/0/w": np.zeros((64, 64), np.float32)}
    u = rng.standard_normal((64, 64)).astype(np.float32)
    v = (0.6 * u + 0.8 * rng.standard_normal((64, 64))).astype(np.float32)
    true = float((u * v).sum() / np.linalg.norm(u) / np.linalg.norm(v))
    cos = A.task_vector_cosines(_tree(a), [_tree({"layers/0/w": u}), _tree({"layers/0/w": v})], seed=1)
    assert abs(cos["whole"][0, 1] - true) < 0.2


def test_gain_consistency():
    anchor = np.array([0.2, 0.5, 0.0, 1.0, 0.3])
    e1 = np.array([0.6, 0.5, 0.1, 0.9, 0.3])
    e2 = np.array([0.1, 0.9, 0.0, 1.0, 0.8])
    model = np.array([0.5, 0.7, 0.4, 0.2, 0.3])
    g = np.clip(model - anchor, 0, None)
    e = np.maximum(np.clip(e1 - anchor, 0, None), np.clip(e2 - anchor, 0, None))
    assert A.gain_consistency(anchor, model, [e1, e2]) == pytest.approx(g @ e / np.linalg.norm(g) / np.linalg.norm(e))
    assert A.gain_consistency(anchor, e1 * 0 + anchor, [e1]) != A.gain_consistency(anchor, e1 * 0 + anchor, [e1])  # nan
    with pytest.raises(ValueError, match="differ in length"):
        A.gain_consistency(anchor, model[:3], [e1])


def test_analyze_cli_writes_json_and_heatmaps(tmp_path):
    import json

    from rlvr_jax.eval import analysis_cli

    a, ms = _models(seed=2)
    rep = analysis_cli.weight_space(
        _tree(a), {"math": _tree(ms[0]), "code": _tree(ms[1]), "sci": _tree(ms[2])}, dim=16, seed=0, rel_tol=1e-3
    )
    o = A.overlap(_tree(a), _tree(ms[0]), _tree(ms[2]))
    assert rep["overlap"]["jaccard"][0][2] == pytest.approx(o["jaccard"])
    assert rep["overlap"]["random_baseline"][2][0] == pytest.approx(o["random_baseline"])
    assert rep["footprint"]["code"]["changed"] == A.footprint(_tree(a), _tree(ms[1]))["changed"]
    assert set(rep["cosine"]["per_layer"]) == {"0", "1", "other"}
    gains = {
        "anchor": {"q1": 0.0, "q2": 0.5, "q3": 1.0},
        "experts": {"math": {"q1": 1.0, "q2": 0.5, "q3": 1.0}, "code": {"q1": 0.0, "q2": 1.0, "q3": 1.0}},
        "models": {"ties": {"q1": 1.0, "q2": 0.75, "q3": 0.0}},
    }
    (tmp_path / "gains.json").write_text(json.dumps(gains))
    rep["gain_consistency"] = analysis_cli.gains_report(gains)
    assert rep["gain_consistency"]["ties"] == pytest.approx((1 * 1 + 0.25 * 0.5) / np.sqrt(1 + 0.0625) / np.sqrt(1.25))
    analysis_cli.write(rep, str(tmp_path / "out"))
    for f in ("analysis.json", "overlap.png", "cosine.png", "cosine_per_layer.png"):
        assert (tmp_path / "out" / f).stat().st_size > 0
    assert analysis_cli.main(["--gains", str(tmp_path / "gains.json"), "--out", str(tmp_path / "g")]) == 0
    assert json.loads((tmp_path / "g" / "analysis.json").read_text())["gain_consistency"]["math"] is not None
    del gains["models"]["ties"]["q3"]
    (tmp_path / "bad.json").write_text(json.dumps(gains))
    assert analysis_cli.main(["--gains", str(tmp_path / "bad.json"), "--out", str(tmp_path / "b")]) == 2
