"""Causal self-attention of a cache-free pass (update, teacher-forced logprobs, packed SFT) without a
[T, T] score matrix: one function, `self_attention`, choosing by platform between jax's Pallas splash
attention kernel on TPU and an XLA implementation elsewhere that runs a block of queries at a time
against every key under jax.checkpoint (memory grows linearly with T); the dense reference both equal."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from rlvr_jax import sharding

MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def _mask_CxS(query_pos_C, key_valid_BxS, query_seg_BxC, key_seg_BxS):
    """[B, C, S]: causal, real keys only, and (packed rows) keys of the query's own segment."""
    S = key_valid_BxS.shape[1]
    mask = (jnp.arange(S)[None, :] <= query_pos_C[:, None])[None] & key_valid_BxS[:, None, :]
    if key_seg_BxS is not None:
        mask = mask & (query_seg_BxC[:, :, None] == key_seg_BxS[:, None, :])
    return mask


def _einsum_f32(spec, a, b):
    """einsum accumulated in, and returning, fp32, for operands of any one dtype (bf16 with compute_dtype
    bfloat16). XLA:CPU has no bf16 x bf16 -> fp32 batched dot: there bf16 operands are widened first, which
    changes no product (one of two bf16 numbers is exact in fp32)."""
    if a.dtype != jnp.float32 and _platform() == "cpu":
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _attend(q_BxCxKxQxD, k_BxKxSxD, v_BxKxSxD, mask_BxCxS):
    """Scores and softmax in fp32 whatever the operands' dtype; the probabilities meet V in V's dtype."""
    scale = 1.0 / math.sqrt(q_BxCxKxQxD.shape[-1])
    scores = _einsum_f32("bckqd,bksd->bkqcs", q_BxCxKxQxD, k_BxKxSxD) * scale
    scores = jnp.where(mask_BxCxS[:, None, None], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1)
    return _einsum_f32("bkqcs,bksd->bckqd", probs.astype(v_BxKxSxD.dtype), v_BxKxSxD)


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
    if n == 1:  # one block is the dense computation: recomputing it in the backward would save nothing
        return dense(q_BxTxKxQxD, k_BxKxTxD, v_BxKxTxD, key_valid_BxT, segments_BxT)
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


def splash(
    q_BxTxKxQxD, k_BxKxTxD, v_BxKxTxD, key_valid_BxT, segments_BxT=None, *, block: int = 512, interpret: bool = False
):
    """jax's Pallas splash attention (TPU only): per row and kv head, the Q query heads that share it run
    as one MQA kernel with a causal mask; padding and packed examples become segment ids (pads are 0).
    interpret=True runs the same kernel through Pallas's interpreter on any backend (slow; how the tests check
    it on a CPU, and what the "splash_interpret" implementation name selects)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sk  # local: a TPU kernel, traced only there

    B, T, K, Q, D = q_BxTxKxQxD.shape
    Tp = -(-T // 128) * 128  # the kernel tiles by 128 positions
    bs = max(128, min(block, Tp) // 128 * 128)
    while Tp % bs:
        bs -= 128
    seg_BxT = key_valid_BxT.astype(jnp.int32) if segments_BxT is None else jnp.where(key_valid_BxT, segments_BxT, 0)
    pad = Tp - T
    q = jnp.pad(q_BxTxKxQxD / math.sqrt(D), ((0, 0), (0, pad), (0, 0), (0, 0), (0, 0)))
    q_BxKxQxTxD = q.transpose(0, 2, 3, 1, 4).astype(v_BxKxTxD.dtype)
    k = jnp.pad(k_BxKxTxD, ((0, 0), (0, 0), (0, pad), (0, 0)))
    v = jnp.pad(v_BxKxTxD, ((0, 0), (0, 0), (0, pad), (0, 0)))
    seg = jnp.pad(seg_BxT, ((0, 0), (0, pad)))
    sizes = sk.BlockSizes(
        block_q=bs,
        block_kv=bs,
        block_kv_compute=bs,
        block_q_dkv=bs,
        block_kv_dkv=bs,
        block_kv_dkv_compute=bs,
        block_q_dq=bs,
        block_kv_dq=bs,
    )
    mask = sk.MultiHeadMask([sk.CausalMask((Tp, Tp))] * Q)
    kernel = sk.make_splash_mqa_single_device(mask=mask, block_sizes=sizes, interpret=interpret)

    def row(q_KxQxTxD, k_KxTxD, v_KxTxD, seg_T):
        ids = sk.SegmentIds(q=seg_T, kv=seg_T)
        return jax.vmap(lambda qq, kk, vv: kernel(qq, kk, vv, segment_ids=ids))(q_KxQxTxD, k_KxTxD, v_KxTxD)

    run = jax.vmap(row)
    mesh = sharding.active_mesh()
    if mesh is not None:  # a Pallas call is not partitioned by XLA: run it on each device's shard
        specs = [
            sharding.logical_spec(("batch", "kv_heads", None, "length", "head_dim"), q_BxKxQxTxD.shape, mesh),
            sharding.logical_spec(("batch", "kv_heads", "length", "head_dim"), k.shape, mesh),
            sharding.logical_spec(("batch", "kv_heads", "length", "head_dim"), v.shape, mesh),
            sharding.logical_spec(("batch", "length"), seg.shape, mesh),
        ]
        run = jax.shard_map(run, mesh=mesh, in_specs=tuple(specs), out_specs=specs[0], check_vma=False)
    out_BxKxQxTxD = run(q_BxKxQxTxD, k, v, seg)
    return out_BxKxQxTxD.transpose(0, 3, 1, 2, 4)[:, :T].astype(jnp.float32)


def _platform() -> str:
    """The platform the traced computation runs on: the active mesh's devices, else the default backend."""
    mesh = sharding.active_mesh()
    device = mesh.devices.flat[0] if mesh is not None else jax.devices()[0]
    return device.platform


def _on_tpu() -> bool:
    return _platform() == "tpu"


# "splash_interpret" is the splash kernel run by Pallas's interpreter: jax's kernel on any backend (slow), how a
# CPU checks the TPU path's numbers. Only an explicit name selects it; "auto" never does.
IMPLEMENTATIONS = {
    "dense": dense,
    "blocked": blocked,
    "splash": splash,
    "splash_interpret": functools.partial(splash, interpret=True),
}


def self_attention(q_BxTxKxQxD, k_BxKxTxD, v_BxKxTxD, key_valid_BxT, segments_BxT=None, *, impl: str = "auto"):
    """Causal self-attention over T positions: queries [B, T, K, Q, D] (Q query heads per kv head), keys and
    values [B, K, T, D], fp32 or bf16 (the softmax is fp32 either way); padding keys masked by key_valid, packed
    rows by segment ids. Returns the fp32 output [B, T, K, Q, D]. impl "auto": splash on TPU (the active mesh's devices, else the default
    backend), blocked elsewhere."""
    if impl == "auto":
        impl = "splash" if _on_tpu() else "blocked"
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"attention impl {impl!r}: expected one of {sorted(IMPLEMENTATIONS)}")
    return IMPLEMENTATIONS[impl](q_BxTxKxQxD, k_BxKxTxD, v_BxKxTxD, key_valid_BxT, segments_BxT)
