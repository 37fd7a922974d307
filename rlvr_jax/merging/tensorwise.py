"""Per-tensor jitted work over sharded pytrees: one compiled kernel per (kernel, static options,
output sharding), replicated shardings for small reductions, and reading those back on any host.
Shared by merging, the k-th largest selection and the weight-space analyses."""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec


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
