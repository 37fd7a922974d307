"""Merge methods against plain numpy implementations of their definitions, on one device and a (2,2,2) mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rlvr_jax import pytree
from rlvr_jax.merging import methods as M
from rlvr_jax.model import params_io

E, H, D, F, V = 8, 4, 2, 16, 32
SHAPES = {
    "embed/embedding": (V, E),
    "layers/0/attn/q_proj/kernel": (E, H, D),
    "layers/0/mlp/up_proj/kernel": (E, F),
    "layers/0/input_norm/scale": (E,),
    "layers/1/attn/q_proj/kernel": (E, H, D),
    "layers/1/mlp/up_proj/kernel": (E, F),
    "layers/1/input_norm/scale": (E,),
    "final_norm/scale": (E,),
}


def _tree(flat):
    """{'a/b/0/c': x} -> nested dict, with `layers` keyed by int like nnx pure dicts."""
    out = {}
    for path, x in flat.items():
        node = out
        parts = [int(p) if p.isdigit() else p for p in path.split("/")]
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = x
    return out


def _flat(tree):
    paths, leaves, _ = pytree.flatten(tree)
    return {p: np.asarray(x, np.float32) for p, x in zip(paths, leaves)}


def models(k=3, seed=0, quantized=False, scale=1e-2, shapes=SHAPES):
    """Anchor + k experts. Quantized values (multiples of 2^-6) make fp32 arithmetic exact and tie-rich."""
    rng = np.random.default_rng(seed)

    def draw(shape, s):
        if quantized:
            return (rng.integers(-int(s * 64), int(s * 64) + 1, size=shape) / 64.0).astype(np.float32)
        return (s * rng.standard_normal(shape)).astype(np.float32)

    anchor = {p: draw(s, 8 if quantized else 1.0) for p, s in shapes.items()}
    experts = [{p: x + draw(x.shape, 4 if quantized else scale) for p, x in anchor.items()} for _ in range(k)]
    return anchor, experts


def taus(anchor, experts):
    return [{p: e[p] - anchor[p] for p in anchor} for e in experts]


def kth(values, k):
    return np.sort(values)[::-1][k - 1]


def np_disjoint(ts, w, weighted_election=True):
    """Elect sign(sum w_k t_k) (TIES, as mergekit) or sign(sum t_k) (SCE); w-weighted mean of the agreeing."""
    s = sum((w[k] if weighted_election else 1) * t for k, t in enumerate(ts))
    num, den = np.zeros_like(s), np.zeros_like(s)
    for k, t in enumerate(ts):
        agree = (np.sign(t) == np.sign(s)) & (t != 0)
        num += np.where(agree, w[k] * t, 0)
        den += np.where(agree, w[k], 0)
    return np.where(den != 0, num / np.where(den != 0, den, 1), 0)


def np_ties(anchor, experts, density, scope, w, lam=1.0, masks=None, drop=0.0):
    ts = taus(anchor, experts)
    if masks is not None:  # DARE applied with our masks (the RNG is jax's), then numpy TIES
        ts = [
            {p: np.where(masks[k][p], t[p] * np.float32(1 / (1 - drop)), 0).astype(np.float32) for p in t}
            for k, t in enumerate(ts)
        ]
    out = {}
    for p in anchor:
        kept = []
        for t in ts:
            vals = np.concatenate([np.abs(t[q]).ravel() for q in anchor]) if scope == "global" else np.abs(t[p]).ravel()
            thr = kth(vals, M.keep_count(density, vals.size))
            kept.append(np.where(np.abs(t[p]) >= thr, t[p], 0))
        out[p] = anchor[p] + lam * np_disjoint(kept, w)
    return out


def check(tree, ref, tol=1e-6):
    got = _flat(tree)
    assert set(got) == set(ref)
    for p in ref:
        np.testing.assert_allclose(got[p], ref[p], rtol=tol, atol=tol, err_msg=p)


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))


def shard(tree, mesh):
    def put(x):
        spec = P("fsdp", "tensor") if x.ndim >= 2 else P("fsdp")
        return jax.device_put(x, NamedSharding(mesh, spec))

    return jax.tree.map(put, tree)


def test_average_and_task_arithmetic_match_numpy():
    a, xs = models()
    ts = taus(a, xs)
    w = np.array([0.5, 1.0, 2.0], np.float32)
    check(M.average(_tree(a), [_tree(x) for x in xs]), {p: a[p] + sum(t[p] for t in ts) / 3 for p in a})
    check(
        M.average(_tree(a), [_tree(x) for x in xs], weights=w),
        {p: a[p] + sum(w[k] * ts[k][p] for k in range(3)) / w.sum() for p in a},
    )
    check(
        M.task_arithmetic(_tree(a), [_tree(x) for x in xs], weights=w, scale=0.7),
        {p: a[p] + 0.7 * sum(w[k] * ts[k][p] for k in range(3)) for p in a},
    )


@pytest.mark.parametrize("scope", ["global", "tensor"])
def test_ties_matches_numpy(scope):
    a, xs = models(k=3, seed=1)
    w = np.array([1.0, 0.5, 2.0], np.float32)
    got = M.ties(_tree(a), [_tree(x) for x in xs], density=0.3, trim_scope=scope, weights=w, scale=0.9)
    check(got, np_ties(a, xs, 0.3, scope, w, lam=0.9))


def test_global_threshold_is_exact_kth_largest_with_ties(mesh):
    a, xs = models(k=4, seed=2, quantized=True)  # many equal |tau|: ties at the threshold
    ts = taus(a, xs)
    paths, al, _ = pytree.flatten(shard(_tree(a), mesh))
    xl = [pytree.flatten(shard(_tree(x), mesh))[1] for x in xs]
    items = [
        (al[i], tuple(x[i] for x in xl), np.uint32(pytree.path_hash(p)), np.uint32(0)) for i, p in enumerate(paths)
    ]
    n = sum(v.size for v in a.values())
    ranks = np.array([[1, 7, n // 5, n - 1, n]] * 4)
    got = M.kth_largest(M._v_abs_tau, items, ranks)
    for k, t in enumerate(ts):
        vals = np.concatenate([np.abs(t[p]).ravel() for p in paths])
        want = [kth(vals, r) for r in ranks[k]]
        np.testing.assert_array_equal(got[k], np.array(want, np.float32))
        # documented tie semantics: `>= threshold` keeps every entry tied with the k-th largest
        kept = int((vals >= got[k, 2]).sum())
        assert kept >= n // 5 and kept == int((vals > got[k, 2]).sum()) + int((vals == got[k, 2]).sum())
    assert (got[:, 2] == 0).sum() == 0 and (
        ranks[:, 2]
        < np.array(
            [
                (np.concatenate([np.abs(t[p]).ravel() for p in paths]) == got[k, 2]).sum() + n // 5
                for k, t in enumerate(ts)
            ]
        )
    ).all()
    assert M.kth_largest(M._v_abs_tau, items, np.zeros((4, 1), int))[0, 0] == np.inf


def test_breadcrumbs_and_sce_match_numpy():
    a, xs = models(k=4, seed=3, quantized=True)
    ts = taus(a, xs)
    w = np.array([1.0, 2.0, 0.5, 1.0], np.float32)
    ref = {}
    for p in a:
        acc = 0
        for k, t in enumerate(ts):
            m = np.abs(t[p])
            n = m.size
            top = round(0.1 * n)
            end = min(n, top + M.keep_count(0.6, n))
            hi = kth(m.ravel(), top) if top else np.inf
            lo = kth(m.ravel(), end)
            acc = acc + w[k] * np.where((m >= lo) & (m < hi), t[p], 0)
        ref[p] = a[p] + 0.8 * acc
    check(M.breadcrumbs(_tree(a), [_tree(x) for x in xs], density=0.6, gamma=0.1, weights=w, scale=0.8), ref)

    ref = {}
    for p in a:
        T = np.stack([t[p] for t in ts])
        var = ((T - T.mean(0)) ** 2).mean(0)
        sel = var >= kth(var.ravel(), M.keep_count(0.5, var.size))
        T = np.where(sel, T, 0)
        ref[p] = a[p] + np_sce(list(T))
    check(M.sce(_tree(a), [_tree(x) for x in xs], density=0.5), ref, tol=1e-5)


def np_sce(ts):
    """SCE's merged delta: weights mean(t_k^2); the majority sign of the UNWEIGHTED sum (REFERENCE.md)."""
    return np_disjoint(ts, np.array([np.mean(t * t) for t in ts]), weighted_election=False)


def test_sce_elects_the_sign_of_the_unweighted_sum():
    # Expert 0's few huge entries give it ~1000x the weight of experts 1 and 2; everywhere else it is
    # small and against them. The weighted sum follows expert 0 there, the plain sum follows 1 and 2.
    rng = np.random.default_rng(7)
    shape = (64, 32)
    a = rng.standard_normal(shape).astype(np.float32)
    sign = rng.choice([-1.0, 1.0], size=shape)
    t0 = 0.01 * sign
    t0.flat[:4] = 50.0
    t1 = -sign * rng.uniform(0.05, 0.15, size=shape)
    t2 = -sign * rng.uniform(0.05, 0.15, size=shape)
    ts = [t.astype(np.float32) for t in (t0, t1, t2)]
    w = np.array([np.mean(t * t) for t in ts])
    weighted, plain = np.sign(sum(wk * t for wk, t in zip(w, ts))), np.sign(sum(ts))
    assert (weighted != plain).mean() > 0.9  # the two elections disagree almost everywhere
    ref = {"w/kernel": a + np_sce(ts)}
    got = M.sce({"w": {"kernel": a}}, [{"w": {"kernel": a + t}} for t in ts])
    check(got, ref, tol=1e-5)
    # Off the huge entries the merge moves with experts 1 and 2 (expert 0 is erased there).
    delta = np.asarray(got["w"]["kernel"]) - a
    assert (np.sign(delta).flat[4:] == plain.flat[4:]).all()


def test_slerp_and_model_stock_match_numpy():
    a, xs = models(k=3, seed=4)
    rng = np.random.default_rng(9)
    far = {p: rng.standard_normal(x.shape).astype(np.float32) for p, x in a.items()}  # not colinear

    def np_slerp(v0, v1, t):
        v0, v1 = v0.astype(np.float64), v1.astype(np.float64)
        dot = np.clip(np.sum(v0 * v1) / np.linalg.norm(v0) / np.linalg.norm(v1), -1, 1)
        if abs(dot) > M.SLERP_COLINEAR:
            return (1 - t) * v0 + t * v1
        th = np.arccos(dot)
        return (np.sin((1 - t) * th) * v0 + np.sin(t * th) * v1) / np.sin(th)

    check(
        M.slerp(_tree(a), [_tree(xs[0]), _tree(far)], t=0.3), {p: np_slerp(xs[0][p], far[p], 0.3) for p in a}, tol=2e-5
    )
    check(
        M.slerp(_tree(a), [_tree(xs[1])], t=0.25),  # anchor-expert: colinear, so linear
        {p: 0.75 * a[p] + 0.25 * xs[1][p] for p in a},
    )

    ts = taus(a, xs)
    ref = {}
    for p in a:
        T = [t[p].ravel().astype(np.float64) for t in ts]
        cos = [T[i] @ T[j] / np.linalg.norm(T[i]) / np.linalg.norm(T[j]) for i in range(3) for j in range(i + 1, 3)]
        c = np.clip(np.mean(cos), 0, 1)
        tt = 3 * c / (1 + 2 * c)
        ref[p] = a[p] + tt * sum(t[p] for t in ts) / 3
    check(M.model_stock(_tree(a), [_tree(x) for x in xs]), ref, tol=2e-6)


# One tensor per rank (2-D, 3-D, 1-D) keeps the number of SPMD compiles small.
MESH_SHAPES = {p: SHAPES[p] for p in ("embed/embedding", "layers/0/attn/q_proj/kernel", "final_norm/scale")}
# threefry compiles slowly on CPU: DARE tests use one (3-D) shape, large enough for statistics.
DARE_SHAPES = {f"layers/{i}/attn/q_proj/kernel": (64, 16, 8) for i in range(2)}


def test_dare_statistics_and_numpy_equivalence():
    a, xs = models(k=2, seed=5, shapes=DARE_SHAPES)
    ts = taus(a, xs)
    p_drop = 0.2
    mask_fn = jax.jit(M.dare_keep_mask, static_argnums=(0, 1))  # eager RNG compiles op by op
    masks = [{p: np.asarray(mask_fn(a[p].shape, p_drop, 11, pytree.path_hash(p), k)) for p in a} for k in range(2)]
    keep = np.concatenate([m[p].ravel() for m in masks for p in a])
    n = keep.size
    assert abs(keep.mean() - 0.8) < 4 * np.sqrt(0.16 / n)  # Bernoulli(0.8) within 4 sigma
    m_other = np.concatenate([np.asarray(mask_fn(a[p].shape, p_drop, 12, pytree.path_hash(p), 0)).ravel() for p in a])
    assert (m_other != np.concatenate([masks[0][p].ravel() for p in a])).mean() > 0.2  # seed matters

    got = _flat(M.dare_task_arithmetic(_tree(a), [_tree(x) for x in xs], drop_rate=p_drop, seed=11))
    for p in a:
        ref = a[p] + sum(np.where(masks[k][p], ts[k][p] * np.float32(1 / 0.8), 0) for k in range(2))
        np.testing.assert_allclose(got[p], ref, rtol=1e-6, atol=1e-6)
    # rescaling keeps the task vector unbiased: mean of the merged delta ~ mean of the plain sum
    d_dare = np.concatenate([(got[p] - a[p]).ravel() for p in a])
    d_ta = np.concatenate([(ts[0][p] + ts[1][p]).ravel() for p in a])
    assert abs(d_dare.sum() - d_ta.sum()) < 6 * np.sqrt((d_ta**2).sum() * 0.25)

    w = np.ones(2, np.float32)
    got = M.dare_ties(_tree(a), [_tree(x) for x in xs], drop_rate=p_drop, seed=11, density=0.4)
    check(got, np_ties(a, xs, 0.4, "global", w, masks=masks, drop=p_drop))


@pytest.mark.parametrize(
    "name,kw",
    [
        ("average", {}),
        ("task_arithmetic", {"scale": 0.5}),
        ("ties", {"density": 0.3}),
        ("ties", {"density": 0.3, "trim_scope": "tensor"}),
        ("dare_ties", {"seed": 3}),
        ("dare_task_arithmetic", {"seed": 3}),
        ("breadcrumbs", {}),
        ("sce", {"density": 0.5}),
        ("model_stock", {}),
        ("slerp", {"t": 0.4}),
    ],
)
def test_mesh_equals_single_device(mesh, name, kw):
    a, xs = models(
        k=2 if name == "slerp" or "dare" in name else 3, seed=6, shapes=DARE_SHAPES if "dare" in name else MESH_SHAPES
    )
    A, X = _tree(a), [_tree(x) for x in xs]
    As, Xs = shard(A, mesh), [shard(x, mesh) for x in X]
    one = _flat(M.MERGE_METHODS[name](A, X, **kw))
    out = M.MERGE_METHODS[name](As, Xs, **kw)
    want = dict(zip(*pytree.flatten(As)[:2]))
    for p, x in zip(*pytree.flatten(out)[:2]):
        assert x.sharding == want[p].sharding, p
    check(out, one, tol=1e-6 if name not in ("sce", "model_stock", "slerp") else 1e-5)


def test_bf16_storage_merges_in_fp32():
    a, xs = models(k=2, seed=7, scale=1e-3)
    A = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), _tree(a))
    X = [jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), _tree(x)) for x in xs]
    a32, x32 = _flat(A), [_flat(x) for x in X]  # the stored bf16 values, exactly, in fp32
    ref = {p: a32[p] + 0.5 * ((x32[0][p] - a32[p]) + (x32[1][p] - a32[p])) for p in a32}
    out = M.average(A, X, out_dtype="float32")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(out))
    check(out, ref)
    out16 = M.average(A, X)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(out16))
    for p, x in _flat(out16).items():
        np.testing.assert_array_equal(x, np.asarray(jnp.asarray(ref[p], jnp.bfloat16), np.float32))


def test_consume_frees_inputs_and_gives_same_result():
    a, xs = models(k=2, seed=8)
    ref = _flat(M.task_arithmetic(_tree(a), [_tree(x) for x in xs]))
    A = jax.tree.map(jnp.asarray, _tree(a))
    X = [jax.tree.map(jnp.asarray, _tree(x)) for x in xs]
    out = M.task_arithmetic(A, X, consume=True)
    check(out, ref, tol=0)
    assert all(x.is_deleted() for t in [A, *X] for x in jax.tree.leaves(t))


def test_validation_names_the_first_bad_tensor():
    a, xs = models(k=2, seed=9)
    A = _tree(a)
    bad = dict(xs[1])
    bad["layers/1/mlp/up_proj/kernel"] = np.zeros((E, F + 1), np.float32)
    with pytest.raises(M.MergeError, match=r"expert 1: tensor 'layers/1/mlp/up_proj/kernel' has shape"):
        M.ties(A, [_tree(xs[0]), _tree(bad)])
    missing = {p: x for p, x in xs[0].items() if p != "final_norm/scale"}
    with pytest.raises(M.MergeError, match=r"math: tensor 'final_norm/scale' of the anchor is missing"):
        M.average(A, [_tree(missing)], names=["math"])
    extra = dict(xs[0], **{"lm_head/kernel": np.zeros((E, V), np.float32)})
    with pytest.raises(M.MergeError, match=r"tensor 'lm_head/kernel' is not in the anchor"):
        M.average(A, [_tree(extra)])
    vocab = dict(xs[0], **{"embed/embedding": np.zeros((V + 8, E), np.float32)})
    with pytest.raises(M.MergeError, match=r"'embed/embedding' has shape \(40, 8\), anchor \(32, 8\)"):
        M.task_arithmetic(A, [_tree(vocab)])
    dt = dict(xs[0], **{"layers/0/input_norm/scale": xs[0]["layers/0/input_norm/scale"].astype(np.float16)})
    with pytest.raises(M.MergeError, match=r"'layers/0/input_norm/scale' has dtype float16"):
        M.average(A, [_tree(dt)])
    with pytest.raises(M.MergeError, match="weights"):
        M.average(A, [_tree(xs[0])], weights=[1.0, 2.0])


def test_registry_and_options():
    assert set(M.MERGE_METHODS) == {
        "average",
        "task_arithmetic",
        "ties",
        "dare_ties",
        "dare_task_arithmetic",
        "sce",
        "slerp",
        "breadcrumbs",
        "model_stock",
    }
    assert "trim_scope" in M.method_options("dare_ties") and "weights" not in M.method_options("sce")
    assert M.keep_count(0.2, 10) == 2 and M.keep_count(0.2, 1) == 1 and M.keep_count(1.0, 7) == 7


@pytest.mark.slow
def test_cli_merges_orbax_checkpoints_and_refuses_other_architectures(tmp_path):
    import dataclasses
    import json

    from flax import nnx

    from rlvr_jax import sharding
    from rlvr_jax.merging import cli as merge_cli
    from rlvr_jax.model.decoder import Decoder, ModelConfig

    cfg = ModelConfig(
        family="qwen3",
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        head_dim=8,
        qk_norm=True,
    )
    mesh = sharding.make_mesh(sharding.MeshShape(1, -1, 1))

    def save(name, seed, c=cfg):
        _, params, _ = sharding.create_sharded(lambda: Decoder(c, rngs=nnx.Rngs(seed)), mesh)
        params_io.save_params_any(params, c, str(tmp_path / name), "orbax")
        return str(tmp_path / name)

    anchor, e1, e2 = save("anchor", 0), save("math", 1), save("code", 2)
    # cheap linear merges here: every method's math is checked above, this checks the plumbing
    rc = merge_cli.main(
        [
            "--anchor",
            anchor,
            "--experts",
            f"{e1},{e2}",
            "--method",
            "task_arithmetic",
            "--scale",
            "0.5",
            "--weights",
            "1,2",
            "--out",
            str(tmp_path / "ta"),
        ]
    )
    assert rc == 0
    loaded = [params_io.load_params_any(p, mesh)[2] for p in (anchor, e1, e2, str(tmp_path / "ta"))]
    want = M.task_arithmetic(loaded[0], loaded[1:3], scale=0.5, weights=[1.0, 2.0])
    check(loaded[3], _flat(want))
    assert json.load(open(tmp_path / "ta" / "merge_recipe.json"))["options"] == {"scale": 0.5}

    assert (
        merge_cli.main(
            [
                "--anchor",
                anchor,
                "--experts",
                e1,
                "--method",
                "average",
                "--density",
                "0.3",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )  # an option the method does not take
    other = save("wide", 3, dataclasses.replace(cfg, rope_theta=1e6))
    assert (
        merge_cli.main(["--anchor", anchor, "--experts", other, "--method", "average", "--out", str(tmp_path / "y")])
        == 2
    )
    # recipe file with per-expert weights, overridden from the command line
    rc = merge_cli.main(
        [
            "--config",
            "configs/merge.py:average",
            f"--config.anchor={anchor}",
            f"--config.experts.math.path={e1}",
            f"--config.experts.code.path={e2}",
            f"--config.experts.science.path={e1}",
            f"--config.experts.if.path={e2}",
            "--config.experts.code.weight=0.5",
            "--dtype",
            "bfloat16",
            "--out",
            str(tmp_path / "avg"),
        ]
    )
    assert rc == 0
    out_cfg, _, got = params_io.load_params_any(str(tmp_path / "avg"), mesh)
    assert out_cfg.param_dtype == "bfloat16"
    want = M.average(loaded[0], [loaded[1], loaded[2], loaded[1], loaded[2]], weights=[1, 0.5, 1, 1])
    check(got, _flat(jax.tree.map(lambda x: x.astype(jnp.bfloat16), want)), tol=8e-3)  # 1 bf16 ulp


def test_cli_recipe_is_parsed_by_ml_collections_and_flags_win(monkeypatch, capsys):
    import os

    from rlvr_jax import cli
    from rlvr_jax.merging import cli as merge_cli

    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    config, rest = cli.parse_config(
        [
            "--anchor",
            "flag-anchor",
            "--config=configs/merge.py:ties",
            "--config.anchor=ckpt/sft",
            "--config.options.density=0.5",
            "--config.experts.code.weight=0.5",
            "--config.experts.math.path",
            "ckpt/rl-math",
            "--config.experts.if.path=ckpt/rl-if",  # `if` is a Python keyword: ml-collections needs it quoted
            "--drop-rate",
            "0.1",
            "--out",
            "o",
        ],
        "rlvr-merge",
    )
    assert rest == ["--anchor", "flag-anchor", "--drop-rate", "0.1", "--out", "o"]  # left for argparse, in order
    r = merge_cli.resolve(merge_cli.build_parser().parse_args(rest), config)
    assert r["anchor"] == "flag-anchor" and r["out"] == "o" and r["method"] == "ties"
    assert r["options"] == {"density": 0.5, "trim_scope": "global", "scale": 1.0, "drop_rate": 0.1}
    assert dict(r["experts"])["math"] == "ckpt/rl-math" and dict(r["experts"])["if"] == "ckpt/rl-if"
    assert dict(zip([n for n, _ in r["experts"]], r["weights"])) == {"math": 1, "code": 0.5, "science": 1, "if": 1}
    for argv, want in [
        (["--config=configs/merge.py:tyes"], "configs/merge.py: unknown word 'tyes' in ':tyes'; allowed: one method"),
        (["--config.anchor=x"], "--config.anchor=x without --config"),
        (["--config.anchor=x", "--config=configs/merge.py"], "before a value for --config"),
        (["--config=configs/merge.py", "--config.experts.math.weight=abc"], "--config.experts.math.weight=abc"),
    ]:
        assert merge_cli.main(argv) == 2
        assert want in capsys.readouterr().err
