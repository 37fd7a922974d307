"""Generic helpers for params pytrees: flattening to named tensors with a stable per-path hash, and
per-tensor jitted work over sharded trees (one compiled kernel per kernel, static options and output
sharding; replicated small reductions read back on any host). Shared by merging, eval and the planner."""

from __future__ import annotations

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec


def path_str(path) -> str:
    """`layers/3/attn/q_proj/kernel` for a jax key path."""
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def flatten(tree):
    """(paths, leaves, treedef) with leaves turned into jax arrays (numpy inputs allowed)."""
    pairs, treedef = jax.tree_util.tree_flatten_with_path(tree)
    leaves = [x if isinstance(x, jax.Array) else jnp.asarray(x) for _, x in pairs]
    return [path_str(p) for p, _ in pairs], leaves, treedef


def path_hash(path: str) -> int:
    """Stable 31-bit hash of a tensor path: seeds per-tensor randomness independent of tree order."""
    return zlib.crc32(path.encode()) & 0x7FFFFFFF


def replicated(sharding):
    """A fully replicated sharding on the same devices (small reductions come back this way)."""
    if isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, PartitionSpec())
    return sharding


@functools.cache
def jitted(kernel, statics: tuple, out_sharding, donate: bool):
    """One jit per (kernel, static options, output sharding); jax caches compiles per shape."""
    kw = {} if out_sharding is None else {"out_shardings": out_sharding}
    return jax.jit(functools.partial(kernel, **dict(statics)), donate_argnums=(0,) if donate else (), **kw)


def host(x) -> np.ndarray:
    """A small replicated result as numpy (works when other processes hold the other copies)."""
    return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)
