"""Decode attention for a run of steps in which no row leaves its slot (XLA platforms): each slot's keys and
values written before the run are gathered from the paged pool once, into a dense snapshot, and the run's
own keys and values go to a dense buffer indexed by step; each step attends to both with one softmax, and the
buffer is written to the pool once, at the end. The per-step XLA path (paged_attention.xla_decode_attention)
gathers every slot's pages at every step instead; on XLA:CPU that gather, not the products, was most of a
decode step's attention (docs/performance.md).
Layouts: one row per slot of every shard, N = G x S (a size-1 G axis made XLA:CPU copy the buffers every
step); keys with positions minor [N, K, D, W] (the score product reads them in place, as the static engine's
cache did), values [N, K, W, D]. Letters beyond docs/CONTRACTS.md: G batch shards, A pool pages per shard,
S slots per shard, N = G x S, W snapshot positions (pages x page_size), R the run's steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlvr_jax.rollout.paged_attention import MASK_VALUE


def take_snapshot(layer_GxAxPx2KxD, pages_GxSxJ):
    """The keys [N, K, D, W] and values [N, K, W, D] of each slot's first J pages, in position order
    (W = J x page_size), in the pool's dtype."""
    G, _, page, K2, D = layer_GxAxPx2KxD.shape
    S, J = pages_GxSxJ.shape[1:]
    kv = jax.vmap(lambda pool, pages: pool[pages])(layer_GxAxPx2KxD, pages_GxSxJ)  # [G, S, J, page, 2K, D]
    kv_NxWxKx2xD = kv.reshape(G * S, J * page, K2 // 2, 2, D)
    keys = kv_NxWxKx2xD[..., 0, :].transpose(0, 2, 3, 1)
    values = kv_NxWxKx2xD[..., 1, :].transpose(0, 2, 1, 3)
    return keys, values


def empty_buffer(N, K, D, R, dtype):
    """The run's keys [N, K, D, R] and values [N, K, R, D], before its first step."""
    return jnp.zeros((N, K, D, R), dtype), jnp.zeros((N, K, R, D), dtype)


def append(buffer, step, k_GxSxKxD, v_GxSxKxD):
    """The buffer with step `step`'s keys and values (one per slot) in place."""
    keys, values = buffer
    N, K, D = keys.shape[:3]
    k_NxKxDx1 = k_GxSxKxD.reshape(N, K, D, 1).astype(keys.dtype)
    v_NxKx1xD = v_GxSxKxD.reshape(N, K, 1, D).astype(values.dtype)
    keys = jax.lax.dynamic_update_slice_in_dim(keys, k_NxKxDx1, step, axis=3)
    values = jax.lax.dynamic_update_slice_in_dim(values, v_NxKx1xD, step, axis=2)
    return keys, values


def attend(q_GxSxHxD, snapshot, snapshot_len_GxS, buffer, step, *, sm_scale):
    """One query per slot [G, S, H, D] against its snapshot's first snapshot_len positions and the buffer's
    steps 0..step (the buffer already holds this step's keys). Returns [G, S, H, D] in the queries' dtype."""
    G, S, H, D = q_GxSxHxD.shape
    snap_k, snap_v = snapshot
    buf_k, buf_v = buffer
    K, W, R = snap_k.shape[1], snap_k.shape[-1], buf_k.shape[-1]
    f32 = jnp.float32
    q = q_GxSxHxD.reshape(G * S, K, H // K, D).astype(f32) * sm_scale
    scores_snap = jnp.einsum("nkqd,nkdw->nkqw", q, snap_k.astype(f32))
    seen_NxW = jnp.arange(W)[None, :] < snapshot_len_GxS.reshape(G * S, 1)
    scores_snap = jnp.where(seen_NxW[:, None, None], scores_snap, MASK_VALUE)
    scores_buf = jnp.einsum("nkqd,nkdr->nkqr", q, buf_k.astype(f32))
    scores_buf = jnp.where(jnp.arange(R) <= step, scores_buf, MASK_VALUE)
    probs = jax.nn.softmax(jnp.concatenate([scores_snap, scores_buf], axis=-1), axis=-1)
    out = jnp.einsum("nkqw,nkwd->nkqd", probs[..., :W], snap_v.astype(f32))
    out = out + jnp.einsum("nkqr,nkrd->nkqd", probs[..., W:], buf_v.astype(f32))
    return out.reshape(G, S, H, D).astype(q_GxSxHxD.dtype)


def flush(layer_GxAxPx2KxD, buffer, slots_GxSxR):
    """The pool layer with the buffer's keys and values written at flat pool slots [G, S, R] (page x
    page_size + offset; a step that made no token writes to the scratch page 0)."""
    G, A, page, K2, D = layer_GxAxPx2KxD.shape
    keys, values = buffer  # [N, K, D, R], [N, K, R, D]
    kv_NxRxKx2xD = jnp.stack([keys.transpose(0, 3, 1, 2), values.transpose(0, 2, 1, 3)], axis=3)
    kv_GxNx2KxD = kv_NxRxKx2xD.reshape(G, -1, K2, D).astype(layer_GxAxPx2KxD.dtype)
    write = lambda pool, slots, kv: pool.reshape(-1, K2, D).at[slots].set(kv).reshape(pool.shape)
    return jax.vmap(write)(layer_GxAxPx2KxD, slots_GxSxR.reshape(G, -1), kv_GxNx2KxD)
