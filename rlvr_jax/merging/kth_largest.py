"""Exact k-th largest value over every tensor of a sharded pytree, without gathering any tensor:
the merge methods' global trim thresholds (TIES, breadcrumbs, SCE).

|x| of a finite fp32 is a non-negative int32 bit pattern ordered like the value, so the rank-th
largest is found on bits: a histogram of the 16 high bits over all tensors, then one of the 15 low
bits inside the high bin found. Each histogram is summed tensor by tensor under jit; only the
histograms (not the data) reach the host. Hand-written: no library selects over a sharded pytree.

Shapes (docs/CONTRACTS.md "Shape legend"): W value streams (one per expert, or one), R ranks per stream,
Y histogram bins.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from rlvr_jax.pytree import host, jitted, replicated

_LO_BITS = 15
_HI_BINS = 1 << (31 - _LO_BITS)
_LO_BINS = 1 << _LO_BITS
_INT32_MAX = 2**31 - 1


def _add_counts(acc_Y, idx, ref):
    """acc_Y.at[idx].add(1), out-of-range indices dropped; explicit meshes need the (replicated)
    result sharding spelled out, auto meshes and single devices infer it."""
    mesh = jax.typeof(ref).sharding.mesh
    kw = {"out_sharding": NamedSharding(mesh, PartitionSpec())} if mesh.explicit_axes else {}
    return acc_Y.at[idx].add(1, mode="drop", **kw)


# One 1-D scatter per stream with an index array of the tensor's own shape: no reshape of sharded
# data, and about twice as fast on CPU as one scatter with a (stream, bin) index pair.
def _hist_hi(acc_WxY, a, xs, h, seed, *, value_fn, drop_rate):
    vs = value_fn(a, xs, h, seed, drop_rate=drop_rate)
    his = [jax.lax.bitcast_convert_type(v, jnp.int32) >> _LO_BITS for v in vs]
    return jnp.stack([_add_counts(acc_WxY[s], hi, vs[s]) for s, hi in enumerate(his)])


def _hist_lo(acc_WxRxY, a, xs, h, seed, bins_WxR, *, value_fn, drop_rate):
    vs = value_fn(a, xs, h, seed, drop_rate=drop_rate)
    out = []
    for s, v in enumerate(vs):
        bits = jax.lax.bitcast_convert_type(v, jnp.int32)
        hi, lo = bits >> _LO_BITS, bits & (_LO_BINS - 1)
        out.append(
            jnp.stack(
                [  # entries outside the query's high bin go out of range and drop
                    _add_counts(acc_WxRxY[s, r], jnp.where(hi == bins_WxR[s, r], lo, _LO_BINS), v)
                    for r in range(acc_WxRxY.shape[1])
                ]
            )
        )
    return jnp.stack(out)


def _locate(hist_Y, rank):
    """Bin holding the rank-th largest (1-based) and the rank left inside that bin."""
    c = np.cumsum(hist_Y[::-1])
    i = int(np.searchsorted(c, rank))
    return len(hist_Y) - 1 - i, rank - (int(c[i - 1]) if i else 0)


def _histogram(kernel, statics, init, items, extra=()):
    """Sum a per-tensor int32 histogram over items, flushed to int64 before int32 could overflow."""
    total, acc, counted = None, None, 0
    for a, xs, h, seed in items:
        if acc is None or counted + a.size > _INT32_MAX:
            if acc is not None:
                total = host(acc).astype(np.int64) + (0 if total is None else total)
            acc, counted = jax.device_put(init, replicated(a.sharding)), 0
        fn = jitted(kernel, statics, replicated(a.sharding), True)
        acc = fn(acc, a, xs, h, seed, *extra)
        counted += a.size
    return host(acc).astype(np.int64) + (0 if total is None else total)


def kth_largest(value_fn, items, ranks_WxR, *, drop_rate=0.0) -> np.ndarray:
    """Exact rank-th largest value per stream over all items ((a, xs, hash, seed) per tensor).

    value_fn(a, xs, h, seed, drop_rate=) gives non-negative fp32 values (W, ...). Rank 0 gives
    +inf (nothing is >= it). Ties: the result is the value itself, so `v >= result` keeps every
    entry tied with the rank-th largest (at least `rank` entries, more when ties straddle it).
    Two passes: a histogram of the 16 high bits, then of the 15 low bits inside the bin found.
    """
    ranks = np.asarray(ranks_WxR, np.int64)
    W, R = ranks.shape
    statics = (("value_fn", value_fn), ("drop_rate", float(drop_rate)))
    hist_hi = _histogram(_hist_hi, statics, np.zeros((W, _HI_BINS), np.int32), items)
    bins, rest = np.full((W, R), -1, np.int32), np.zeros((W, R), np.int64)
    for s in range(W):
        n = int(hist_hi[s].sum())
        for r in range(R):
            if ranks[s, r] > n:
                raise ValueError(f"rank {ranks[s, r]} > {n} entries")
            if ranks[s, r] > 0:
                bins[s, r], rest[s, r] = _locate(hist_hi[s], int(ranks[s, r]))
    hist_lo = _histogram(_hist_lo, statics, np.zeros((W, R, _LO_BINS), np.int32), items, (jnp.asarray(bins),))
    out = np.full((W, R), np.inf, np.float32)
    for s in range(W):
        for r in range(R):
            if ranks[s, r] > 0:
                low, _ = _locate(hist_lo[s, r], int(rest[s, r]))
                out[s, r] = np.array((int(bins[s, r]) << _LO_BITS) | low, np.int32).view(np.float32)
    return out
