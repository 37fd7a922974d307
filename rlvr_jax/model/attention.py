"""Causal self-attention of a cache-free pass (update, teacher-forced logprobs, packed SFT) without a
[T, T] score matrix: one function, `self_attention`, with an XLA implementation that runs a block of
queries at a time against every key under jax.checkpoint (memory grows linearly with T), and the dense
reference it must equal."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def _mask_CxS(query_pos_C, key_valid_BxS, query_seg_BxC, key_seg_BxS):
    """[B, C, S]: causal, real keys only, and (packed rows) keys of the query's own segment."""
    S = key_valid_BxS.shape[1]
    mask = (jnp.arange(S)[None, :] <= query_pos_C[:, None])[None] & key_valid_BxS[:, None, :]
    if key_seg_BxS is not None:
        mask = mask & (query_seg_BxC[:, :, None] == key_seg_BxS[:, None, :])
    return mask


def _attend(q_BxCxKxQxD, k_BxKxSxD, v_BxKxSxD, mask_BxCxS):
    scale = 1.0 / math.sqrt(q_BxCxKxQxD.shape[-1])
    scores = jnp.einsum("bckqd,bksd->bkqcs", q_BxCxKxQxD, k_BxKxSxD, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask_BxCxS[:, None, None], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bkqcs,bksd->bckqd", probs.astype(v_BxKxSxD.dtype), v_BxKxSxD, preferred_element_type=jnp.float32)


def dense(q_BxTxKxQxD, k_BxKxTxD, v_BxKxTxD, key_valid_BxT, segments_BxT=None):
    """The reference: every score at once ([B, K, Q, T, T] fp32)."""
    T = q_BxTxKxQxD.shape[1]
    mask = _mask_CxS(jnp.arange(T), key_valid_BxT, segments_BxT, segments_BxT)
    return _attend(q_BxTxKxQxD, k_BxKxTxD, v_BxKxTxD, mask)


def blocked(q_BxTxKxQxD, k_BxKxTxD, v_BxKxTxD, key_valid_BxT, segments_BxT=None, *, block: int = 512):
    """`block` queries at a time against all keys, under jax.checkpoint in a scan: the forward holds one
    [B, K, Q, block, T] score block, and the backward recomputes each block's scores."""
    B, T, K, Q, D = q_BxTxKxQxD.shape
    C = max(1, min(block, T))
    n = -(-T // C)
    pad = n * C - T
    q_NxBxCxKxQxD = jnp.pad(q_BxTxKxQxD, ((0, 0), (0, pad), (0, 0), (0, 0), (0, 0)))
    q_NxBxCxKxQxD = q_NxBxCxKxQxD.reshape(B, n, C, K, Q, D).swapaxes(0, 1)
    pos_NxC = jnp.arange(n * C).reshape(n, C)
    seg_NxBxC = None
    if segments_BxT is not None:
        seg_NxBxC = jnp.pad(segments_BxT, ((0, 0), (0, pad))).reshape(B, n, C).swapaxes(0, 1)

    @jax.checkpoint
    def one(q_blk, pos_C, seg_BxC):
        return _attend(q_blk, k_BxKxTxD, v_BxKxTxD, _mask_CxS(pos_C, key_valid_BxT, seg_BxC, segments_BxT))

    def body(carry, xs):
        return carry, one(*xs)

    _, out = jax.lax.scan(body, None, (q_NxBxCxKxQxD, pos_NxC, seg_NxBxC))
    return out.swapaxes(0, 1).reshape(B, n * C, K, Q, D)[:, :T]


IMPLEMENTATIONS = {"dense": dense, "blocked": blocked}


def self_attention(q_BxTxKxQxD, k_BxKxTxD, v_BxKxTxD, key_valid_BxT, segments_BxT=None, *, impl: str = "blocked"):
    """Causal self-attention over T positions: queries [B, T, K, Q, D] (Q query heads per kv head), keys and
    values [B, K, T, D]; padding keys masked by key_valid, packed rows by segment ids. Returns the fp32
    output [B, T, K, Q, D]."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"attention impl {impl!r}: expected one of {sorted(IMPLEMENTATIONS)}")
    return IMPLEMENTATIONS[impl](q_BxTxKxQxD, k_BxKxTxD, v_BxKxTxD, key_valid_BxT, segments_BxT)
