"""Merge methods on params pytrees (anchor + experts), jitted tensor by tensor, sharded in and out.

Every method works on task vectors tau_k = theta_k - theta_anchor in fp32 whatever the storage
dtype (RL deltas are tiny; bf16 loses them), merges each tensor under `jax.jit` with
`out_shardings` equal to the anchor tensor's sharding, and casts to the requested dtype. No
tensor is ever gathered to the host: the global TIES threshold is an exact k-th largest found
by two histogram passes over the bits of |tau| (rlvr_jax/merging/kth_largest.py).

Legend: M experts; W value streams (one per expert, or one) and R ranks per stream in selection.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax.merging.kth_largest import kth_largest
from rlvr_jax.pytree import flatten, jitted, path_hash

F32 = jnp.float32


class MergeError(ValueError):
    """An expert that cannot be merged with the anchor; the message names the first bad tensor."""


# ---------------------------------------------------------------- pytree plumbing


def validate(anchor, experts, names=None) -> None:
    """Refuse experts whose tensor names, structure, shapes or dtypes differ from the anchor."""
    a_paths, a_leaves, a_def = flatten(anchor)
    a_map = dict(zip(a_paths, a_leaves))
    for i, e in enumerate(experts):
        name = names[i] if names else f"expert {i}"
        e_paths, e_leaves, e_def = flatten(e)
        e_map = dict(zip(e_paths, e_leaves))
        for p in a_paths:
            if p not in e_map:
                raise MergeError(f"{name}: tensor '{p}' of the anchor is missing")
            x, a = e_map[p], a_map[p]
            if x.shape != a.shape:
                raise MergeError(f"{name}: tensor '{p}' has shape {x.shape}, anchor {a.shape}")
            if x.dtype != a.dtype:
                raise MergeError(f"{name}: tensor '{p}' has dtype {x.dtype}, anchor {a.dtype}")
        for p in e_paths:
            if p not in a_map:
                raise MergeError(f"{name}: tensor '{p}' is not in the anchor")
        if e_def != a_def:  # same names but e.g. a list where the anchor has a dict
            raise MergeError(
                f"{name}: tree structure differs from the anchor at or after "
                f"'{a_paths[0] if a_paths else ''}': {e_def} vs {a_def}"
            )


# ---------------------------------------------------------------- per-tensor math (inside jit)


def dare_keep_mask(shape, drop_rate, seed, path_or_hash, expert_index):
    """DARE keep mask of one expert's tensor: Bernoulli(1 - drop_rate) from fold_in(seed, path, k)."""
    h = path_hash(path_or_hash) if isinstance(path_or_hash, str) else path_or_hash
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), h), expert_index)
    return jax.random.bernoulli(key, 1.0 - drop_rate, shape)


def _deltas(a, xs, h, seed, drop_rate):
    """Anchor and task vectors in fp32; DARE drops each entry w.p. drop_rate and rescales the rest."""
    a32 = a.astype(F32)
    taus = [x.astype(F32) - a32 for x in xs]
    if drop_rate:
        # vmapped over experts: one threefry in the HLO instead of K (compiles K times faster)
        keep = jax.vmap(lambda k: dare_keep_mask(a.shape, drop_rate, seed, h, k))(jnp.arange(len(xs)))
        taus = [jnp.where(keep[k], t * np.float32(1.0 / (1.0 - drop_rate)), 0.0) for k, t in enumerate(taus)]
    return a32, taus


def _disjoint_mean(taus, coef, *, weighted_election: bool):
    """Elect sign(sum_k coef_k tau_k), or sign(sum_k tau_k) without weighted_election; return the
    coef-weighted mean of the non-zero entries that agree with it (else 0)."""
    s = coef[0] * taus[0] if weighted_election else taus[0]
    for k in range(1, len(taus)):
        s = s + (coef[k] * taus[k] if weighted_election else taus[k])
    sign = jnp.sign(s)
    num = jnp.zeros_like(s)
    den = jnp.zeros_like(s)
    for k, t in enumerate(taus):
        agree = (jnp.sign(t) == sign) & (t != 0)
        num = num + jnp.where(agree, coef[k] * t, 0.0)
        den = den + jnp.where(agree, coef[k], 0.0)
    return jnp.where(den != 0, num / jnp.where(den != 0, den, 1.0), 0.0)


def _k_linear(a, xs, h, seed, coef, *, drop_rate, out_dtype):
    a32, taus = _deltas(a, xs, h, seed, drop_rate)
    acc = coef[0] * taus[0]
    for k in range(1, len(taus)):
        acc = acc + coef[k] * taus[k]
    return (a32 + acc).astype(out_dtype)


def _k_ties(a, xs, h, seed, w, scale, thr_M, *, drop_rate, out_dtype):
    a32, taus = _deltas(a, xs, h, seed, drop_rate)
    kept = [jnp.where(jnp.abs(t) >= thr_M[k], t, 0.0) for k, t in enumerate(taus)]
    # mergekit's TIES weights the deltas before its sign election; with equal weights it is Σ_k τ̂_k.
    return (a32 + scale * _disjoint_mean(kept, w, weighted_election=True)).astype(out_dtype)


def _k_breadcrumbs(a, xs, h, seed, w, scale, thr_Mx2, *, drop_rate, out_dtype):
    a32, taus = _deltas(a, xs, h, seed, drop_rate)
    acc = jnp.zeros_like(a32)
    for k, t in enumerate(taus):
        m = jnp.abs(t)
        acc = acc + w[k] * jnp.where((m >= thr_Mx2[k, 0]) & (m < thr_Mx2[k, 1]), t, 0.0)
    return (a32 + scale * acc).astype(out_dtype)


def _variance(taus):
    """Population variance over experts, entry-wise, in a fixed summation order."""
    mean = sum(taus[1:], taus[0]) / np.float32(len(taus))
    sq = [(t - mean) ** 2 for t in taus]
    return sum(sq[1:], sq[0]) / np.float32(len(taus))


def _k_sce(a, xs, h, seed, scale, thr, *, select, out_dtype):
    a32, taus = _deltas(a, xs, h, seed, 0.0)
    if select:
        sel = _variance(taus) >= thr
        taus = [jnp.where(sel, t, 0.0) for t in taus]
    coef = jnp.stack([jnp.mean(t * t) for t in taus])  # expert weight ~ mean squared delta
    return (a32 + scale * _disjoint_mean(taus, coef, weighted_election=False)).astype(out_dtype)


def _k_model_stock(a, xs, h, seed, *, out_dtype):
    a32, taus = _deltas(a, xs, h, seed, 0.0)
    n = len(taus)
    norms = [jnp.sqrt(jnp.sum(t * t)) for t in taus]
    cos = []
    for i in range(n):
        for j in range(i + 1, n):
            d = norms[i] * norms[j]
            cos.append(jnp.where(d > 0, jnp.sum(taus[i] * taus[j]) / jnp.where(d > 0, d, 1.0), 0.0))
    # Opposed or orthogonal experts fall back to the anchor (t = 0) instead of extrapolating.
    c = jnp.clip(sum(cos[1:], cos[0]) / len(cos), 0.0, 1.0)
    t = n * c / (1.0 + (n - 1) * c)
    mean = sum(taus[1:], taus[0]) / np.float32(n)
    return (a32 + t * mean).astype(out_dtype)


def _k_slerp(a, xs, h, seed, t, *, out_dtype):
    v0, v1 = (xs[0].astype(F32), xs[1].astype(F32)) if len(xs) == 2 else (a.astype(F32), xs[0].astype(F32))
    n0, n1 = jnp.sqrt(jnp.sum(v0 * v0)), jnp.sqrt(jnp.sum(v1 * v1))
    ok = (n0 > 0) & (n1 > 0)
    dot = jnp.clip(jnp.sum(v0 * v1) / jnp.where(ok, n0 * n1, 1.0), -1.0, 1.0)
    theta = jnp.arccos(dot)
    sin = jnp.sin(theta)
    # Nearly colinear (or zero) tensors: the sphere is flat there; interpolate linearly.
    lerp = ~ok | (jnp.abs(dot) > SLERP_COLINEAR)
    s0 = jnp.where(lerp, 1.0 - t, jnp.sin((1.0 - t) * theta) / jnp.where(lerp, 1.0, sin))
    s1 = jnp.where(lerp, t, jnp.sin(t * theta) / jnp.where(lerp, 1.0, sin))
    return (s0 * v0 + s1 * v1).astype(out_dtype)


SLERP_COLINEAR = 0.9995


# ---------------------------------------------------------------- values whose k-th largest trims


def _v_abs_tau(a, xs, h, seed, *, drop_rate):
    _, taus = _deltas(a, xs, h, seed, drop_rate)
    return [jnp.abs(t) for t in taus]


def _v_var(a, xs, h, seed, *, drop_rate):
    _, taus = _deltas(a, xs, h, seed, drop_rate)
    return [_variance(taus)]


def keep_count(fraction: float, n: int) -> int:
    """Entries kept out of n for a fraction in (0, 1]: round(fraction * n), at least 1."""
    return min(n, max(1, round(fraction * n)))


# ---------------------------------------------------------------- driver


def _prepare(anchor, experts, names, weights, seed):
    validate(anchor, experts, names)
    if not experts:
        raise MergeError("no experts to merge")
    paths, a_leaves, treedef = flatten(anchor)
    x_leaves = [flatten(e)[1] for e in experts]
    w = np.ones(len(experts), np.float32) if weights is None else np.asarray(weights, np.float32)
    if w.shape != (len(experts),) or not np.all(np.isfinite(w)):
        raise MergeError(f"weights {weights} do not match {len(experts)} experts")
    seed = np.uint32(seed)
    items = [
        (a, tuple(x[i] for x in x_leaves), np.uint32(path_hash(p)), seed)
        for i, (p, a) in enumerate(zip(paths, a_leaves))
    ]
    return treedef, items, w


def _apply(kernel, statics, treedef, items, per_item_args, out_dtype, consume):
    """Run a per-tensor kernel; `consume` frees each input tensor once its result exists."""
    outs = []
    for i, (a, xs, h, seed) in enumerate(items):
        dt = jnp.dtype(out_dtype or a.dtype)
        donate = consume and dt == a.dtype
        fn = jitted(kernel, statics + (("out_dtype", dt),), getattr(a, "sharding", None), donate)
        outs.append(fn(a, xs, h, seed, *per_item_args(i)))
        if consume:  # the same array may appear twice (an expert listed twice)
            for x in xs + (() if donate else (a,)):
                if not x.is_deleted():
                    x.delete()
    return jax.tree_util.tree_unflatten(treedef, outs)


def _thresholds(value_fn, items, fractions, trim_scope, drop_rate):
    """Per item, fp32 thresholds (W, R): rank round(f*n) largest for each cumulative fraction f."""

    def ranks(n, W):
        return np.array([[0 if f == 0 else (n if f >= 1 else keep_count(f, n)) for f in fractions]] * W)

    W = len(items[0][1]) if value_fn is _v_abs_tau else 1
    if trim_scope == "global":
        n = sum(a.size for a, *_ in items)
        thr = kth_largest(value_fn, items, ranks(n, W), drop_rate=drop_rate)
        return [thr] * len(items)
    if trim_scope == "tensor":
        return [kth_largest(value_fn, [it], ranks(it[0].size, W), drop_rate=drop_rate) for it in items]
    raise ValueError(f"trim_scope must be 'global' or 'tensor', got {trim_scope!r}")


def _check_fraction(name, v, lo_open=True):
    if not ((0 < v <= 1) if lo_open else (0 <= v < 1)):
        raise ValueError(f"{name}={v} is out of range")


def average(anchor, experts, *, weights=None, out_dtype=None, consume=False, names=None):
    """anchor + sum_k w_k tau_k / sum_k w_k (the weighted mean of the experts)."""
    treedef, items, w = _prepare(anchor, experts, names, weights, 0)
    if w.sum() == 0:
        raise MergeError("weights sum to zero")
    coef = jnp.asarray(w / w.sum())
    return _apply(_k_linear, (("drop_rate", 0.0),), treedef, items, lambda i: (coef,), out_dtype, consume)


def task_arithmetic(
    anchor, experts, *, weights=None, scale=1.0, drop_rate=0.0, seed=0, out_dtype=None, consume=False, names=None
):
    """anchor + scale * sum_k w_k tau_k; drop_rate > 0 applies DARE to each tau_k first."""
    _check_fraction("drop_rate", drop_rate, lo_open=False)
    treedef, items, w = _prepare(anchor, experts, names, weights, seed)
    coef = jnp.asarray(np.float32(scale) * w)
    return _apply(_k_linear, (("drop_rate", float(drop_rate)),), treedef, items, lambda i: (coef,), out_dtype, consume)


def task_arithmetic_program(tensor, num_experts: int, mesh):
    """(jitted function, abstract arguments) of task arithmetic's per-tensor kernel (no DARE) for an anchor
    tensor like `tensor` (a ShapeDtypeStruct with its sharding) and `num_experts` experts' tensors alike: what a
    planner compiles to cost a merge. The arguments are those task_arithmetic passes: the anchor's tensor, the
    experts', the tensor's path hash and the seed, and the experts' coefficients."""
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    fn = jitted(_k_linear, (("drop_rate", 0.0), ("out_dtype", jnp.dtype(tensor.dtype))), tensor.sharding, False)
    scalar = lambda dtype, *shape: jax.ShapeDtypeStruct(shape, dtype, sharding=rep)
    return fn, (tensor, (tensor,) * num_experts, scalar(jnp.uint32), scalar(jnp.uint32), scalar(F32, num_experts))


def ties(
    anchor,
    experts,
    *,
    weights=None,
    scale=1.0,
    density=0.2,
    trim_scope="global",
    drop_rate=0.0,
    seed=0,
    out_dtype=None,
    consume=False,
    names=None,
):
    """TIES: keep |tau_k| >= its round(density*n)-th largest (over the model or per tensor; ties at
    the threshold all kept), elect sign(sum w_k tau_k), w-weighted mean of agreeing entries."""
    _check_fraction("density", density)
    _check_fraction("drop_rate", drop_rate, lo_open=False)
    treedef, items, w = _prepare(anchor, experts, names, weights, seed)
    if density >= 1:
        thr = [np.zeros((len(experts), 1), np.float32)] * len(items)
    else:
        thr = _thresholds(_v_abs_tau, items, [density], trim_scope, drop_rate)
    wj, sj = jnp.asarray(w), jnp.float32(scale)
    return _apply(
        _k_ties,
        (("drop_rate", float(drop_rate)),),
        treedef,
        items,
        lambda i: (wj, sj, jnp.asarray(thr[i][:, 0])),
        out_dtype,
        consume,
    )


def dare_task_arithmetic(
    anchor, experts, *, drop_rate=0.2, weights=None, scale=1.0, seed=0, out_dtype=None, consume=False, names=None
):
    """DARE (drop w.p. drop_rate, rescale by 1/(1-drop_rate), seeded per tensor) then task arithmetic."""
    _check_fraction("drop_rate", drop_rate, lo_open=False)
    return task_arithmetic(
        anchor,
        experts,
        weights=weights,
        scale=scale,
        drop_rate=drop_rate,
        seed=seed,
        out_dtype=out_dtype,
        consume=consume,
        names=names,
    )


def dare_ties(
    anchor,
    experts,
    *,
    drop_rate=0.2,
    weights=None,
    scale=1.0,
    density=0.2,
    trim_scope="global",
    seed=0,
    out_dtype=None,
    consume=False,
    names=None,
):
    """DARE then TIES (the trim sees the dropped, rescaled task vectors)."""
    return ties(
        anchor,
        experts,
        weights=weights,
        scale=scale,
        density=density,
        trim_scope=trim_scope,
        drop_rate=drop_rate,
        seed=seed,
        out_dtype=out_dtype,
        consume=consume,
        names=names,
    )


def breadcrumbs(
    anchor,
    experts,
    *,
    weights=None,
    scale=1.0,
    density=0.9,
    gamma=0.01,
    trim_scope="tensor",
    out_dtype=None,
    consume=False,
    names=None,
):
    """Model breadcrumbs: per expert drop the top round(gamma*n) |tau| (outliers) and keep the next
    keep_count(density, n); then task arithmetic. Thresholds are exact rank values: entries tied
    with the last outlier are dropped with it, entries tied with the last kept one are kept."""
    _check_fraction("density", density)
    _check_fraction("gamma", gamma, lo_open=False)
    treedef, items, w = _prepare(anchor, experts, names, weights, 0)

    def fr(n):  # cumulative ranks with the same rounding as keep_count
        top = round(gamma * n)
        return top, min(n, top + keep_count(density, n))

    thr = []
    if trim_scope == "global":
        n = sum(a.size for a, *_ in items)
        top, end = fr(n)
        t = kth_largest(_v_abs_tau, items, [[end, top]] * len(experts))
        thr = [t] * len(items)
    elif trim_scope == "tensor":
        for it in items:
            top, end = fr(it[0].size)
            thr.append(kth_largest(_v_abs_tau, [it], [[end, top]] * len(experts)))
    else:
        raise ValueError(f"trim_scope must be 'global' or 'tensor', got {trim_scope!r}")
    wj, sj = jnp.asarray(w), jnp.float32(scale)
    return _apply(
        _k_breadcrumbs,
        (("drop_rate", 0.0),),
        treedef,
        items,
        lambda i: (wj, sj, jnp.asarray(thr[i])),
        out_dtype,
        consume,
    )


def sce(anchor, experts, *, scale=1.0, density=1.0, out_dtype=None, consume=False, names=None):
    """SCE per tensor: (density < 1) keep entries whose variance over experts is in the top
    density; expert weight ~ mean(tau_k^2); erase entries against sign(sum tau_k); weighted mean.

    The majority sign comes from the unweighted sum of the (selected) task vectors, as REFERENCE.md
    defines SCE and mergekit computes it (its sign mask is taken before the weights): the weights
    only average the entries that survive the election, they do not vote in it."""
    _check_fraction("density", density)
    treedef, items, _ = _prepare(anchor, experts, names, None, 0)
    select = density < 1
    thr = (
        _thresholds(_v_var, items, [density], "tensor", 0.0) if select else [np.zeros((1, 1), np.float32)] * len(items)
    )
    sj = jnp.float32(scale)
    return _apply(
        _k_sce, (("select", select),), treedef, items, lambda i: (sj, jnp.float32(thr[i][0, 0])), out_dtype, consume
    )


def slerp(anchor, experts, *, t=0.5, out_dtype=None, consume=False, names=None):
    """Spherical interpolation per tensor of the raw weights: between the two experts (t=0 gives
    the first), or between anchor and the single expert; linear where they are nearly colinear."""
    if len(experts) not in (1, 2):
        raise MergeError(f"slerp takes one or two experts, got {len(experts)}")
    treedef, items, _ = _prepare(anchor, experts, names, None, 0)
    tj = jnp.float32(t)
    return _apply(_k_slerp, (), treedef, items, lambda i: (tj,), out_dtype, consume)


def model_stock(anchor, experts, *, out_dtype=None, consume=False, names=None):
    """Model stock per tensor: c = mean pairwise cosine of the tau_k (clipped to [0, 1]),
    t = K c / (1 + (K-1) c), anchor + t * mean_k tau_k."""
    if len(experts) < 2:
        raise MergeError("model_stock needs at least two experts")
    treedef, items, _ = _prepare(anchor, experts, names, None, 0)
    return _apply(_k_model_stock, (), treedef, items, lambda i: (), out_dtype, consume)


MERGE_METHODS = {
    "average": average,
    "task_arithmetic": task_arithmetic,
    "ties": ties,
    "dare_task_arithmetic": dare_task_arithmetic,
    "dare_ties": dare_ties,
    "breadcrumbs": breadcrumbs,
    "sce": sce,
    "slerp": slerp,
    "model_stock": model_stock,
}


def method_options(name: str) -> set[str]:
    """Keyword options a method accepts (the CLI refuses flags a method would ignore)."""
    return set(inspect.signature(MERGE_METHODS[name]).parameters) - {"anchor", "experts"}
