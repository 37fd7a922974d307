"""Attention of a batch of query tokens against a paged KV pool, prefill and decode mixed: one function,
`ragged_paged_attention`, with jax's argument layout, choosing by platform between jax's Pallas kernel on
TPU and an XLA implementation elsewhere (gather each sequence's pages, masked softmax) that tests check
against jax's own reference and dense causal attention.

Layout (jax's): queries of all sequences concatenated, [T, H, D]; the pool of one layer [A, page_size, 2K, D] with
keys and values interleaved on the third axis (key of kv head k at 2k, its value at 2k + 1); per sequence
its KV length, its block table [J] of page numbers and its query span cu_q_lens[b]:cu_q_lens[b + 1]. A
sequence's queries are its last q_len tokens: query j sits at position kv_len - q_len + j and sees keys
0..that position. Letters beyond docs/CONTRACTS.md: A pages in the pool,
J pages per sequence (block-table width); S = J * page_size key positions of a sequence.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import ragged_paged_attention as tpu_rpa

from rlvr_jax import sharding

MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
# keys a round of XLA decode attention reads (64 pages of 16: the best of 32 to 256 on CPU, mixed lengths)
KEYS_PER_ROUND = 1024
# queries per block of a packed prefill chunk's XLA attention (each scores only the keys its pieces can see)
PREFILL_BLOCK = 64


def xla_ragged_paged_attention(
    q_TxHxD, kv_pages, kv_lens_B, page_indices_BxJ, cu_q_lens_B1, num_seqs_1, *, sm_scale, max_q_len=None
):
    """The XLA implementation. Queries are laid out per sequence as [B, max_q_len] (a static bound on any one
    sequence's query tokens in this call; default all T), so a decode batch (max_q_len=1) costs B x S scores
    and a one-sequence prefill chunk max_q_len x S; a mixed batch under a loose bound pays B x bound x S.
    Tokens past cu_q_lens[num_seqs] come back as zeros."""
    T, H, D = q_TxHxD.shape
    page_size, K = kv_pages.shape[1], kv_pages.shape[2] // 2
    B, J = page_indices_BxJ.shape
    Q = H // K
    M = T if max_q_len is None else max_q_len
    live_B = jnp.arange(B) < num_seqs_1[0]
    q_lens_B = jnp.where(live_B, cu_q_lens_B1[1:] - cu_q_lens_B1[:-1], 0)
    # queries per sequence: [B, M] token numbers, rows past the sequence's q_len masked
    j_M = jnp.arange(M)
    tok_BxM = cu_q_lens_B1[:-1, None] + j_M[None, :]
    q_valid_BxM = j_M[None, :] < q_lens_B[:, None]
    q_BxMxKxQxD = q_TxHxD[jnp.clip(tok_BxM, 0, T - 1)].reshape(B, M, K, Q, D)
    # each sequence's keys and values in position order: [B, S, K, D]
    kv_BxSxKx2xD = kv_pages[page_indices_BxJ].reshape(B, J * page_size, K, 2, D)
    k_BxSxKxD, v_BxSxKxD = kv_BxSxKx2xD[..., 0, :], kv_BxSxKx2xD[..., 1, :]
    scores = jnp.einsum(
        "bmkqd,bskd->bkqms", q_BxMxKxQxD, k_BxSxKxD.astype(q_TxHxD.dtype), preferred_element_type=jnp.float32
    )
    scores = scores * sm_scale
    qpos_BxM = (kv_lens_B - q_lens_B)[:, None] + j_M[None, :]
    s_S = jnp.arange(J * page_size)
    mask_BxMxS = (s_S[None, None, :] <= qpos_BxM[:, :, None]) & (s_S[None, None, :] < kv_lens_B[:, None, None])
    mask_BxMxS = mask_BxMxS & q_valid_BxM[:, :, None]
    scores = jnp.where(mask_BxMxS[:, None, None], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1)
    out_BxMxKxQxD = jnp.einsum(
        "bkqms,bskd->bmkqd", probs.astype(v_BxSxKxD.dtype), v_BxSxKxD, preferred_element_type=jnp.float32
    )
    # back to the flat token order: token t belongs to the sequence whose span holds it
    t_T = jnp.arange(T)
    seq_T = jnp.clip(jnp.searchsorted(cu_q_lens_B1[1:], t_T, side="right"), 0, B - 1)
    row_T = t_T - cu_q_lens_B1[seq_T]
    out_TxKxQxD = out_BxMxKxQxD[seq_T, jnp.clip(row_T, 0, M - 1)]
    real_T = (t_T < cu_q_lens_B1[num_seqs_1[0]]) & (row_T < M)
    out_TxKxQxD = jnp.where(real_T[:, None, None, None], out_TxKxQxD, 0.0)
    return out_TxKxQxD.reshape(T, H, D).astype(q_TxHxD.dtype)


def xla_decode_attention(q_TxHxD, kv_pages, kv_lens_B, page_indices_BxJ, cu_q_lens_B1, num_seqs_1, *, sm_scale):
    """The XLA implementation when each sequence has at most one query token (a decode step). Each sequence
    costs its own pages, not the block table's width: the (sequence, page) pairs in use are numbered in one
    flat list, and a loop takes W of them a round (about KEYS_PER_ROUND keys), scores them, and folds each
    into its sequence's running softmax (max, sum, weighted values) with scatters. The loop runs
    ceil(pages in use / W) rounds, so one long sequence among short ones no longer makes every sequence read
    as many pages as it (the page-by-page loop over the table's width did), and no [B, S] block of keys is
    gathered at once (XLA:CPU ran that form 3-5x slower at 256 sequences)."""
    T, H, D = q_TxHxD.shape
    page_size, K = kv_pages.shape[1], kv_pages.shape[2] // 2
    B, J = page_indices_BxJ.shape
    Q = H // K
    W = max(1, min(B * J, KEYS_PER_ROUND // page_size))
    f32 = jnp.float32
    q_TxHxD, kv_pages, kv_lens_B, page_indices_BxJ, cu_q_lens_B1 = map(
        jnp.asarray, (q_TxHxD, kv_pages, kv_lens_B, page_indices_BxJ, cu_q_lens_B1)
    )
    tok_B = cu_q_lens_B1[:-1]
    live_B = (jnp.arange(B) < num_seqs_1[0]) & (cu_q_lens_B1[1:] > tok_B)
    q_BxKxQxD = q_TxHxD[jnp.clip(tok_B, 0, T - 1)].reshape(B, K, Q, D).astype(f32) * sm_scale
    # the flat list: sequence b owns items start[b] .. end[b] - 1, one per page it uses
    pages_B = jnp.where(live_B, jnp.clip((kv_lens_B + page_size - 1) // page_size, 0, J), 0)
    end_B = jnp.cumsum(pages_B)
    start_B = end_B - pages_B
    total = end_B[-1]

    def round_(carry):
        r, m_BxKxQ, l_BxKxQ, acc_BxKxQxD = carry
        item_W = r * W + jnp.arange(W)
        seq_W = jnp.clip(jnp.searchsorted(end_B, item_W, side="right"), 0, B - 1)
        page_W = jnp.clip(item_W - start_B[seq_W], 0, J - 1)
        into_W = jnp.where(item_W < total, seq_W, B)  # items past the list are dropped by the scatters
        kv = kv_pages[page_indices_BxJ[seq_W, page_W]].reshape(W, page_size, K, 2, D).astype(f32)
        scores_WxKxQxP = jnp.einsum("wkqd,wpkd->wkqp", q_BxKxQxD[seq_W], kv[..., 0, :])
        seen_WxP = page_W[:, None] * page_size + jnp.arange(page_size)[None, :] < kv_lens_B[seq_W][:, None]
        scores_WxKxQxP = jnp.where(seen_WxP[:, None, None], scores_WxKxQxP, MASK_VALUE)
        m_new = m_BxKxQ.at[into_W].max(scores_WxKxQxP.max(-1), mode="drop")
        rescale = jnp.exp(m_BxKxQ - m_new)
        probs = jnp.exp(scores_WxKxQxP - m_new[seq_W][..., None])
        l_new = l_BxKxQ * rescale + jnp.zeros_like(l_BxKxQ).at[into_W].add(probs.sum(-1), mode="drop")
        values_WxKxQxD = jnp.einsum("wkqp,wpkd->wkqd", probs, kv[..., 1, :])
        acc = acc_BxKxQxD * rescale[..., None] + jnp.zeros_like(acc_BxKxQxD).at[into_W].add(values_WxKxQxD, mode="drop")
        return r + 1, m_new, l_new, acc

    init = (0, jnp.full((B, K, Q), MASK_VALUE, f32), jnp.zeros((B, K, Q), f32), jnp.zeros((B, K, Q, D), f32))
    _, _, l_BxKxQ, acc_BxKxQxD = jax.lax.while_loop(lambda c: c[0] * W < total, round_, init)
    out_BxHxD = (acc_BxKxQxD / jnp.maximum(l_BxKxQ, 1e-30)[..., None]).reshape(B, H, D)
    out_TxHxD = jnp.zeros((T, H, D), f32).at[jnp.where(live_B, tok_B, T)].set(out_BxHxD, mode="drop")
    return out_TxHxD.astype(q_TxHxD.dtype)


@dataclasses.dataclass(frozen=True)
class PackedChunk:
    """What the XLA path may assume of a packed prefill chunk (the kernel needs none of it): every token's
    piece starts at most `reach` tokens before it (None: anywhere in the chunk); `past`: the first piece
    may continue a sequence whose earlier positions are in the pool, and `past_queries`: that piece lies
    within the chunk's first past_queries tokens (None: it may fill the chunk). `packed_chunk` picks them
    from the pieces."""

    reach: int | None = None
    past: bool = True
    past_queries: int | None = None


def _blocks_bucket(tokens: int) -> int:
    """Tokens rounded up to a power of two blocks of PREFILL_BLOCK (0 for none)."""
    blocks = -(-max(tokens, 0) // PREFILL_BLOCK)
    return (1 << (blocks - 1).bit_length()) * PREFILL_BLOCK if blocks else 0


def packed_chunk(
    longest_piece: int, any_continues: bool, chunk: int, continued_piece: int | None = None
) -> PackedChunk:
    """The PackedChunk for a chunk of `chunk` tokens whose longest piece has `longest_piece` tokens and whose
    continued first piece (if any) has `continued_piece` tokens (None: unknown): the reach and the past's
    queries rounded up to a power of two blocks of PREFILL_BLOCK (few programs), or None where they would
    span the chunk anyway."""
    if chunk % PREFILL_BLOCK:
        return PackedChunk(None, any_continues)
    reach = _blocks_bucket(longest_piece - 1)
    past_queries = _blocks_bucket(continued_piece) if any_continues and continued_piece is not None else chunk
    return PackedChunk(
        reach if reach + PREFILL_BLOCK < chunk else None,
        any_continues,
        past_queries if past_queries < chunk else None,
    )


def xla_packed_prefill_attention(
    q_TxHxD, kv_pages, kv_lens_B, page_indices_BxJ, cu_q_lens_B1, num_seqs_1, *, sm_scale, layout=PackedChunk()
):
    """The XLA implementation for a packed prefill chunk: up to B sequences' query tokens side by side in T,
    every sequence after the first starting at position 0 (its keys are all in this chunk), the first
    maybe continuing earlier pages. Each token attends to the chunk's tokens of its own sequence at or before
    it (block-diagonal causal) and, in the first sequence, to that sequence's positions before the chunk
    (S = J x page_size keys read from its pages, when `layout.past`). The chunk is cut into blocks of
    PREFILL_BLOCK queries, each scoring the window of keys from `layout.reach` before it to its end, and only
    the blocks within `layout.past_queries` score the past: T x (PREFILL_BLOCK + reach) + past_queries x S
    scores, not T x (S + T) (reach and past_queries None: one block, the whole chunk). The chunk's keys and
    values are read back from the pool where this call's tokens were written."""
    T, H, D = q_TxHxD.shape
    page_size, K = kv_pages.shape[1], kv_pages.shape[2] // 2
    B, J = page_indices_BxJ.shape
    Q = H // K
    f32 = jnp.float32
    q_lens_B = jnp.where(jnp.arange(B) < num_seqs_1[0], cu_q_lens_B1[1:] - cu_q_lens_B1[:-1], 0)
    t_T = jnp.arange(T)
    real_T = t_T < cu_q_lens_B1[num_seqs_1[0]]
    seq_T = jnp.clip(jnp.searchsorted(cu_q_lens_B1[1:], t_T, side="right"), 0, B - 1)
    start_B = kv_lens_B - q_lens_B
    pos_T = start_B[seq_T] + t_T - cu_q_lens_B1[seq_T]
    page_T = page_indices_BxJ[seq_T, jnp.clip(pos_T // page_size, 0, J - 1)]
    chunk_Tx2KxD = kv_pages[page_T, pos_T % page_size].astype(f32)
    # query blocks [I, Bq] and the window of chunk keys each one scores [I, Wn] (static)
    blocked = T % PREFILL_BLOCK == 0 and (layout.reach is not None or (layout.past and layout.past_queries))
    Bq = PREFILL_BLOCK if blocked else T
    reach = layout.reach if layout.reach is not None else T - Bq
    Wn = min(T, Bq + reach)
    window_IxWn = np.stack([min(max(0, i - reach), T - Wn) + np.arange(Wn) for i in range(0, T, Bq)])
    q_IxBqxKxQxD = q_TxHxD.reshape(T // Bq, Bq, K, Q, D).astype(f32) * sm_scale
    kv_IxWnx2KxD = chunk_Tx2KxD[window_IxWn]
    scores = jnp.einsum("ibkqd,iwkd->ikqbw", q_IxBqxKxQxD, kv_IxWnx2KxD[:, :, 0::2])
    qt_IxBq = t_T.reshape(T // Bq, Bq)
    same = seq_T[qt_IxBq][:, :, None] == seq_T[window_IxWn][:, None, :]
    own_IxBqxWn = same & (window_IxWn[:, None, :] <= qt_IxBq[:, :, None]) & real_T[window_IxWn][:, None, :]
    scores = jnp.where(own_IxBqxWn[:, None, None], scores, MASK_VALUE)
    values_IxWnxKxD = kv_IxWnx2KxD[:, :, 1::2]
    # the first Ip blocks may hold the continued first piece: they also score its positions before the chunk
    blocks = T // Bq
    Ip = min(blocks, -(-(layout.past_queries or T) // Bq)) if layout.past else 0
    if Ip:
        past_Sx2KxD = kv_pages[page_indices_BxJ[0]].reshape(J * page_size, 2 * K, D).astype(f32)
        past_scores = jnp.einsum("ibkqd,skd->ikqbs", q_IxBqxKxQxD[:Ip], past_Sx2KxD[:, 0::2])
        s_S = jnp.arange(J * page_size)
        past_TxS = (seq_T[:, None] == 0) & (s_S[None, :] < start_B[0])
        past_scores = jnp.where(past_TxS[: Ip * Bq].reshape(Ip, Bq, -1)[:, None, None], past_scores, MASK_VALUE)
        probs = jax.nn.softmax(jnp.concatenate([past_scores, scores[:Ip]], axis=-1), axis=-1)
        out = jnp.einsum("ikqbw,iwkd->ibkqd", probs[..., -Wn:], values_IxWnxKxD[:Ip])
        out = out + jnp.einsum("ikqbs,skd->ibkqd", probs[..., :-Wn], past_Sx2KxD[:, 1::2])
    if Ip < blocks:
        rest = jnp.einsum("ikqbw,iwkd->ibkqd", jax.nn.softmax(scores[Ip:], axis=-1), values_IxWnxKxD[Ip:])
        out = jnp.concatenate([out, rest], axis=0) if Ip else rest
    out_TxKxQxD = jnp.where(real_T[:, None, None, None], out.reshape(T, K, Q, D), 0.0)
    return out_TxKxQxD.reshape(T, H, D).astype(q_TxHxD.dtype)


def kernel_block_sizes(T: int, page_size: int, J: int) -> tuple[int, int]:
    """The kernel's (num_kv_pages_per_block, num_queries_per_block) for T query tokens and J pages of
    page_size per sequence, when the caller gives none: about 256 keys a block, queries up to 32."""
    return max(1, min(J, 256 // page_size)), min(32, 1 << max(0, math.ceil(math.log2(T))))


def pallas_ragged_paged_attention(
    q_TxHxD,
    kv_pages,
    kv_lens_B,
    page_indices_BxJ,
    cu_q_lens_B1,
    num_seqs_1,
    *,
    sm_scale,
    num_kv_pages_per_block=None,
    num_queries_per_block=None,
    vmem_limit_bytes=None,
):
    """jax's TPU kernel, with block sizes always given: its tuned-size lookup reads the host's first device,
    which is a CPU when compiling for a topology from a CPU host. A Pallas call is not partitioned by XLA,
    so on an active mesh it runs under shard_map, each device on its query heads and their kv heads."""
    T = q_TxHxD.shape[0]
    kv_fit, q_fit = kernel_block_sizes(T, kv_pages.shape[1], page_indices_BxJ.shape[1])
    kv_blk = num_kv_pages_per_block or kv_fit
    q_blk = num_queries_per_block or q_fit

    def run(q, kv, kv_lens, pages, cu, n):
        return tpu_rpa.ragged_paged_attention(
            q,
            kv,
            kv_lens,
            pages,
            cu,
            n,
            sm_scale=sm_scale,
            num_kv_pages_per_block=kv_blk,
            num_queries_per_block=q_blk,
            vmem_limit_bytes=vmem_limit_bytes,
        )

    mesh = sharding.active_mesh()
    if mesh is not None:
        H, K = q_TxHxD.shape[1], kv_pages.shape[2] // 2
        heads = sharding.logical_spec((None, "heads", None), (T, H, 1), mesh)
        # the interleaved axis splits into whole (key, value) pairs when the kv heads divide
        kv = sharding.logical_spec((None, None, "kv_heads", None), (1, 1, K, 1), mesh)
        if heads[1] != kv[2]:  # GQA with fewer kv heads than tensor shards: heads and pages replicated
            heads = kv = jax.sharding.PartitionSpec()
        rep = jax.sharding.PartitionSpec()
        run = jax.shard_map(run, mesh=mesh, in_specs=(heads, kv, rep, rep, rep, rep), out_specs=heads, check_vma=False)
    return run(q_TxHxD, kv_pages, kv_lens_B, page_indices_BxJ, cu_q_lens_B1, num_seqs_1)


def platform() -> str:
    """Where the function being traced will run: the active mesh's devices, else a `jax.default_device`
    in force (how a topology's device is named when compiling for it), else the default backend."""
    mesh = sharding.active_mesh()
    if mesh is not None:
        return mesh.devices.flat[0].platform
    device = jax.config.jax_default_device
    if device is not None and not isinstance(device, str):
        return device.platform
    return jax.default_backend()


IMPLEMENTATIONS = ("xla", "pallas")
KERNEL_LANES = 128  # the kernel's head_dim must be a multiple of a TPU vector register's lanes


def auto_impl(head_dim: int) -> str:
    """The Pallas kernel on TPU where it takes the head size, else XLA (tiny test models on a TPU)."""
    return "pallas" if platform() == "tpu" and head_dim % KERNEL_LANES == 0 else "xla"


def auto_impl_for(mesh, head_dim: int) -> str:
    """`auto_impl` for programs that will run on `mesh`'s devices, decided outside a trace."""
    tpu = mesh.devices.flat[0].platform == "tpu"
    return "pallas" if tpu and head_dim % KERNEL_LANES == 0 else "xla"


def ragged_paged_attention(
    q_TxHxD,
    kv_pages,
    kv_lens_B,
    page_indices_BxJ,
    cu_q_lens_B1,
    num_seqs_1,
    *,
    sm_scale: float = 1.0,
    impl: str = "auto",
    max_q_len: int | None = None,
    packed: bool | PackedChunk = False,
    num_kv_pages_per_block: int | None = None,
    num_queries_per_block: int | None = None,
    vmem_limit_bytes: int | None = None,
):
    """Attention of T query tokens [T, H, D] of up to B sequences against their pages of one layer's pool
    `kv_pages` [A, page_size, 2K, D] (arguments as jax's `ragged_paged_attention`). impl "auto": the Pallas kernel on TPU
    (`platform()`), XLA elsewhere. `max_q_len` bounds the query tokens of any one sequence (the XLA path's
    padding; the kernel ignores it); the kernel's block sizes default to a fit for the shapes. `packed`: the
    call is a packed prefill chunk, every sequence after the first starting at position 0 (the XLA path then
    masks block-diagonally within the chunk: `xla_packed_prefill_attention`; a PackedChunk says what more it
    may assume; the kernel needs no hint)."""
    if impl == "auto":
        impl = auto_impl(q_TxHxD.shape[-1])
    if impl == "xla" and packed:
        layout = packed if isinstance(packed, PackedChunk) else PackedChunk()
        return xla_packed_prefill_attention(
            q_TxHxD, kv_pages, kv_lens_B, page_indices_BxJ, cu_q_lens_B1, num_seqs_1, sm_scale=sm_scale, layout=layout
        )
    if impl == "xla" and max_q_len == 1:
        return xla_decode_attention(
            q_TxHxD, kv_pages, kv_lens_B, page_indices_BxJ, cu_q_lens_B1, num_seqs_1, sm_scale=sm_scale
        )
    if impl == "xla":
        return xla_ragged_paged_attention(
            q_TxHxD,
            kv_pages,
            kv_lens_B,
            page_indices_BxJ,
            cu_q_lens_B1,
            num_seqs_1,
            sm_scale=sm_scale,
            max_q_len=max_q_len,
        )
    if impl == "pallas":
        return pallas_ragged_paged_attention(
            q_TxHxD,
            kv_pages,
            kv_lens_B,
            page_indices_BxJ,
            cu_q_lens_B1,
            num_seqs_1,
            sm_scale=sm_scale,
            num_kv_pages_per_block=num_kv_pages_per_block,
            num_queries_per_block=num_queries_per_block,
            vmem_limit_bytes=vmem_limit_bytes,
        )
    raise ValueError(f"paged attention impl {impl!r}: expected 'auto' or one of {IMPLEMENTATIONS}")


def sharded_ragged_paged_attention(
    q_GxTxHxD,
    kv_pages_G,
    kv_lens_GxB,
    page_indices_GxBxJ,
    cu_q_lens_GxB1,
    num_seqs_Gx1,
    *,
    sm_scale: float = 1.0,
    impl: str = "auto",
    max_q_len: int | None = None,
    packed: bool | PackedChunk = False,
):
    """`ragged_paged_attention` of G independent batch shards at once, each with its own pool of pages
    `kv_pages_G` [G, A, page_size, 2K, D] and its own block tables (page numbers local to its pool). The
    leading axis lies over the mesh's batch axes, so each shard's pages stay on its devices: under XLA the
    shards are a vmap (a batched gather that SPMD keeps local); on TPU the kernel runs under shard_map,
    each device on its shard's pool and its kv heads."""
    if impl == "auto":
        impl = auto_impl(q_GxTxHxD.shape[-1])
    one = lambda q, kv, lens, pages, cu, n: ragged_paged_attention(
        q, kv, lens, pages, cu, n, sm_scale=sm_scale, impl=impl, max_q_len=max_q_len, packed=packed
    )
    args = (q_GxTxHxD, kv_pages_G, kv_lens_GxB, page_indices_GxBxJ, cu_q_lens_GxB1, num_seqs_Gx1)
    mesh = sharding.active_mesh()
    if impl == "xla":
        return jax.vmap(one)(*args)
    if impl != "pallas":
        raise ValueError(f"paged attention impl {impl!r}: expected 'auto' or one of {IMPLEMENTATIONS}")
    if mesh is None:
        return jax.lax.map(lambda a: one(*a), args)
    G, T, H, _ = q_GxTxHxD.shape
    K = kv_pages_G.shape[3] // 2
    shards = sharding.logical_spec(("batch",), (G,), mesh)[0]
    heads = sharding.logical_spec((None, "heads"), (T, H), mesh)[1]
    kv_heads = sharding.logical_spec((None, "kv_heads"), (1, K), mesh)[1]
    if heads != kv_heads:  # GQA with fewer kv heads than tensor shards: heads replicated
        heads = kv_heads = None
    P = jax.sharding.PartitionSpec
    specs = (
        P(shards, None, heads, None),
        P(shards, None, None, kv_heads, None),
        P(shards, None),
        P(shards, None, None),
        P(shards, None),
        P(shards, None),
    )

    def local(q, kv, lens, pages, cu, n):  # this device's shards (one when G equals the batch shards)
        run = lambda a: pallas_ragged_paged_attention(*a, sm_scale=sm_scale)
        if q.shape[0] == 1:
            return run((q[0], kv[0], lens[0], pages[0], cu[0], n[0]))[None]
        return jax.lax.map(run, (q, kv, lens, pages, cu, n))

    # inside shard_map no mesh is active: the kernel is called on local blocks, unpartitioned
    with sharding.deactivate():
        return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=specs[0], check_vma=False)(*args)
