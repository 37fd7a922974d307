"""Weight-space analyses of models around an anchor: update footprint, overlap, projected task-vector
cosines (whole model and per layer), and gain consistency from per-item results.

Everything runs tensor by tensor under jit on sharded params; only counts and 256-d vectors reach
the host. The policy KL neighbourhood needs the sampler and is not here (`policy_kl` belongs with
evaluation). Shapes (docs/CONTRACTS.md "Shape legend"): M models, Z projected dimensions.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax.merging.methods import F32, validate
from rlvr_jax.pytree import flatten, host, jitted, path_hash, replicated

REL_TOL = 1e-3  # the study's footprint threshold, relative to the larger magnitude
PROJ_DIM = 256
# Rows of the Gaussian projection generated per step: 2^15 x 256 fp32 = 32 MiB, never the whole matrix.
PROJ_CHUNK = 1 << 15
_LAYER = re.compile(r"(?:^|/)layers/(\d+)(?:/|$)")


def layer_of(path: str) -> str:
    """'7' for `layers/7/...`, 'other' for embeddings, final norm and head."""
    m = _LAYER.search(path)
    return m.group(1) if m else "other"


def changed_mask(anchor_leaf, model_leaf, rel_tol=REL_TOL):
    """Entry changed iff |w_m - w_a| > rel_tol * max(|w_m|, |w_a|), in fp32."""
    a, m = anchor_leaf.astype(F32), model_leaf.astype(F32)
    return jnp.abs(m - a) > rel_tol * jnp.maximum(jnp.abs(m), jnp.abs(a))


def _k_counts(a, ms, *, rel_tol):
    """Per model: changed count; then per pair of the first two: intersection and union."""
    masks = [changed_mask(a, m, rel_tol) for m in ms]
    out = [jnp.sum(x, dtype=jnp.int32) for x in masks]
    if len(masks) == 2:
        out += [jnp.sum(masks[0] & masks[1], dtype=jnp.int32), jnp.sum(masks[0] | masks[1], dtype=jnp.int32)]
    return jnp.stack(out)


def _counts(anchor, models, rel_tol):
    """Per layer (and 'all'): total entries and the int64 counts of `_k_counts` summed over tensors."""
    validate(anchor, models)
    paths, a_leaves, _ = flatten(anchor)
    m_leaves = [flatten(m)[1] for m in models]
    per = {}
    for i, (p, a) in enumerate(zip(paths, a_leaves)):
        fn = jitted(_k_counts, (("rel_tol", float(rel_tol)),), replicated(a.sharding), False)
        c = host(fn(a, tuple(m[i] for m in m_leaves))).astype(np.int64)
        for key in (layer_of(p), "all"):
            tot, acc = per.get(key, (0, 0))
            per[key] = (tot + a.size, acc + c)
    return per


def footprint(anchor, model, rel_tol=REL_TOL) -> dict:
    """Changed entries of `model` w.r.t. the anchor: count, total, density, and density per layer."""
    per = _counts(anchor, [model], rel_tol)
    tot, c = per["all"]
    return {
        "changed": int(c[0]),
        "total": int(tot),
        "density": float(c[0] / tot),
        "per_layer": {k: float(v[1][0] / v[0]) for k, v in sorted(per.items(), key=_layer_key) if k != "all"},
    }


def random_jaccard(p_a: float, p_b: float) -> float:
    """Jaccard of two independent random masks of densities p_a, p_b."""
    u = p_a + p_b - p_a * p_b
    return float(p_a * p_b / u) if u > 0 else 0.0


def overlap(anchor, model_a, model_b, rel_tol=REL_TOL) -> dict:
    """Jaccard of the two changed masks, with the densities and the random baseline."""
    per = _counts(anchor, [model_a, model_b], rel_tol)
    tot, (ca, cb, inter, union) = per["all"]
    pa, pb = ca / tot, cb / tot
    return {
        "jaccard": float(inter / union) if union else 0.0,
        "random_baseline": random_jaccard(pa, pb),
        "density_a": float(pa),
        "density_b": float(pb),
        "intersection": int(inter),
        "union": int(union),
    }


def _k_project(a, ms, h, seed, *, dim, chunk):
    """Project each model's flattened task vector of this tensor with a per-tensor Gaussian matrix
    whose row block c is normal(fold_in(fold_in(key(seed), path_hash), c), (chunk, dim))."""
    a32 = a.astype(F32).reshape(-1)
    n = a32.shape[0]
    nc = math.ceil(n / chunk)
    taus = jnp.stack([m.astype(F32).reshape(-1) - a32 for m in ms])
    taus = jnp.pad(taus, ((0, 0), (0, nc * chunk - n))).reshape(len(ms), nc, chunk)
    key = jax.random.fold_in(jax.random.key(seed), h)

    def step(y_MxZ, c):
        g = jax.random.normal(jax.random.fold_in(key, c), (chunk, dim), F32)
        blk = jax.lax.dynamic_index_in_dim(taus, c, axis=1, keepdims=False)
        return y_MxZ + jnp.dot(blk, g, precision=jax.lax.Precision.HIGHEST), None

    y, _ = jax.lax.scan(step, jnp.zeros((len(ms), dim), F32), jnp.arange(nc))
    return y / np.float32(math.sqrt(dim))


def project(anchor, models, *, dim=PROJ_DIM, seed=0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Task vectors projected to `dim` by one shared seeded Gaussian projection: (M, Z) for the
    whole model and {layer: (M, Z)}; the whole-model vector is the sum of the per-tensor ones."""
    validate(anchor, models)
    paths, a_leaves, _ = flatten(anchor)
    m_leaves = [flatten(m)[1] for m in models]
    per: dict[str, np.ndarray] = {}
    for i, (p, a) in enumerate(zip(paths, a_leaves)):
        chunk = min(PROJ_CHUNK, a.size)  # small tensors need not pad to a full block
        fn = jitted(_k_project, (("dim", dim), ("chunk", chunk)), replicated(a.sharding), False)
        y = host(fn(a, tuple(m[i] for m in m_leaves), np.uint32(path_hash(p)), np.uint32(seed)))
        per[layer_of(p)] = per.get(layer_of(p), 0) + y.astype(np.float64)
    whole = sum(per.values())
    return whole, dict(sorted(per.items(), key=_layer_key))


def cosine_matrix(v_MxZ) -> np.ndarray:
    """Pairwise cosines of the rows (0 where a row is all zero)."""
    v = np.asarray(v_MxZ, np.float64)
    n = np.linalg.norm(v, axis=1)
    d = np.outer(n, n)
    return np.where(d > 0, v @ v.T / np.where(d > 0, d, 1.0), 0.0)


def task_vector_cosines(anchor, models, *, dim=PROJ_DIM, seed=0) -> dict:
    """Cosines of projected task vectors: {'whole': (M, M), 'per_layer': {layer: (M, M)}}."""
    whole, per = project(anchor, models, dim=dim, seed=seed)
    return {"whole": cosine_matrix(whole), "per_layer": {k: cosine_matrix(v) for k, v in per.items()}}


def gain_consistency(anchor_scores, model_scores, expert_scores) -> float:
    """Cosine between the model's per-item gains over the anchor (clipped at 0) and the item-wise
    max of the experts' clipped gains; nan when either gain vector is all zero."""
    a = np.asarray(anchor_scores, np.float64)
    m = np.asarray(model_scores, np.float64)
    xs = [np.asarray(x, np.float64) for x in expert_scores]
    if any(x.shape != a.shape for x in [m, *xs]):
        raise ValueError(
            f"score vectors differ in length: anchor {a.shape}, model {m.shape}, experts {[x.shape for x in xs]}"
        )
    g = np.clip(m - a, 0, None)
    e = np.max([np.clip(x - a, 0, None) for x in xs], axis=0)
    d = np.linalg.norm(g) * np.linalg.norm(e)
    return float(g @ e / d) if d > 0 else float("nan")


def _layer_key(kv):
    k = kv[0]
    return (0, int(k)) if k.isdigit() else (1, k)
