"""The device side of the paged rollout engine (engine.py drives it from the host): the decoder over a
paged KV pool, and the two jitted programs, a prefill chunk per batch shard and a burst of decode steps over
every slot. Each token's random draw is keyed by (seed, prompt, sample, position) only.
Letters beyond docs/CONTRACTS.md: G batch shards, A pool pages per shard, J pages per sequence, C prefill
chunk, S decode slots per shard, N samples per prompt, W pool slots a token is written to.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlvr_jax import sharding
from rlvr_jax.model.decoder import Rope, flat_matmul, rope_inverse_frequencies, rope_tables
from rlvr_jax.rollout import snapshot_attention as snap
from rlvr_jax.rollout.paged_attention import PackedChunk, sharded_ragged_paged_attention
from rlvr_jax.rollout.sampling import SamplingParams, sample_step


def positions_rope(model, positions):
    """The rotary tables of token positions (any shape), once for every layer. A decode program computes
    them for all its steps before its loop: computed inside, XLA:CPU fused cos and sin into each layer's
    query and key fusions and evaluated them per element and per head. (An optimization barrier does not
    stop that on XLA:CPU, which expands barriers before fusing: a prefill chunk still pays it.)"""
    return rope_tables(positions, rope_inverse_frequencies(model.cfg))


def decoder_layers(model, tokens_GxT, rope: Rope, states, attend):
    """The decoder over T tokens per batch shard, rotated by `rope` ([G, T, D/2] tables), with attention
    delegated: per layer, `attend(state, q [G, T, H, D], k, v [G, T, K, D])` returns (out [G, T, H, D], the
    layer's new state). Returns the final-normed hidden states [G, T, E] and the new states."""
    h = jnp.take(model.embed.embedding[...], tokens_GxT, axis=0)
    h = sharding.constrain(h, ("batch", "length", "act_embed"))
    new_states = []
    for block, state in zip(model.layers, states):
        q, k, v = block.attn.project(block.input_norm(h), rope)
        out_GxTxHxD, state = attend(state, q, k, v)
        h = sharding.constrain(h + block.attn.o_proj(out_GxTxHxD.astype(h.dtype)), ("batch", "length", "act_embed"))
        h = sharding.constrain(h + block.mlp(block.post_attn_norm(h)), ("batch", "length", "act_embed"))
        new_states.append(state)
    return model.final_norm(h), tuple(new_states)


def paged_forward(
    model,
    tokens_GxT,
    positions_GxT,
    write_GxTxW,
    pool,
    pages_GxBxJ,
    kv_lens_GxB,
    cu_q_lens_GxB1,
    num_seqs_Gx1,
    max_q_len,
    packed=False,
    rope: Rope | None = None,
):
    """The decoder over T tokens per batch shard of up to B sequences each (ragged, laid out as in
    paged_attention.py): each token's keys and values are written at its shard's flat pool slots `write`
    [G, T, W] (page * page_size + offset, W places a token; padding writes to the scratch page 0), then it
    attends to its sequence's pages (`rope`: the positions' rotary tables, when the caller has them).
    Returns the final-normed hidden states [G, T, E] and the updated pool."""
    G, T = tokens_GxT.shape
    K, D = model.cfg.num_kv_heads, model.cfg.head_dim

    def write_one(layer, slots_TxW, kv_Tx2KxD):
        kv = jnp.broadcast_to(kv_Tx2KxD[:, None], (*slots_TxW.shape, *kv_Tx2KxD.shape[1:]))
        return layer.reshape(-1, 2 * K, D).at[slots_TxW].set(kv).reshape(layer.shape)

    def attend(layer, q, k, v):
        kv_GxTx2KxD = jnp.stack([k, v], axis=3).reshape(G, T, 2 * K, D).astype(layer.dtype)
        layer = jax.vmap(write_one)(layer, write_GxTxW, kv_GxTx2KxD)
        out_GxTxHxD = sharded_ragged_paged_attention(
            q,
            layer,
            kv_lens_GxB,
            pages_GxBxJ,
            cu_q_lens_GxB1,
            num_seqs_Gx1,
            sm_scale=1.0 / math.sqrt(D),
            max_q_len=max_q_len,
            packed=packed,
        )
        return out_GxTxHxD, layer

    rope = positions_rope(model, positions_GxT) if rope is None else rope
    return decoder_layers(model, tokens_GxT, rope, pool, attend)


def _slots(pages_J, positions, page_size):
    """Flat pool slots of positions in a sequence whose block table is pages_J."""
    page = pages_J[jnp.clip(positions // page_size, 0, pages_J.shape[-1] - 1)]
    return page * page_size + positions % page_size


def _slots_of(pages_GxSxJ, positions_GxS, page_size: int):
    """Flat pool slots of each slot's positions [G, S] (or [G, S, R])."""
    return jax.vmap(jax.vmap(lambda pj, p: _slots(pj, p, page_size)))(pages_GxSxJ, positions_GxS)


def _draw_key(base_key, prompt, sample, position):
    return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(base_key, prompt), sample), position)


def _sample(base_key, logits_RxV, prompt_R, sample_R, step_R, sp: SamplingParams):
    """One token per row, each from its own (prompt, sample, position) key."""
    keys = jax.vmap(_draw_key, in_axes=(None, 0, 0, 0))(base_key, prompt_R, sample_R, step_R)
    one = lambda k, lg: tuple(x[0] for x in sample_step(k, lg[None], sp.temperature, sp.top_k, sp.top_p))
    return jax.vmap(one)(keys, logits_RxV)


def _packed_layout(C, page_size, start_GxP, q_len_GxP, pages_GxPxJ, copy_from_GxP, copy_dst_GxPxN1):
    """Where a packed prefill chunk's C tokens belong: the pieces' token offsets cu [G, P + 1], each token's
    position in its sequence [G, C] and the pool slots it is written to [G, C, 1 + N - 1] (its own, then the
    copies of a prompt's partial last page; padding writes to the scratch page 0)."""
    G, P = start_GxP.shape
    cu_GxP1 = jnp.concatenate([jnp.zeros((G, 1), jnp.int32), jnp.cumsum(q_len_GxP, axis=1)], axis=1)
    t_C = jnp.arange(C, dtype=jnp.int32)
    seq_GxC = jax.vmap(lambda cu: jnp.clip(jnp.searchsorted(cu[1:], t_C, side="right"), 0, P - 1))(cu_GxP1)
    real = t_C[None] < cu_GxP1[:, -1:]
    at = lambda x_GxP: jnp.take_along_axis(x_GxP, seq_GxC, axis=1)  # each token's sequence's value
    positions = jnp.where(real, at(start_GxP) + t_C[None] - at(cu_GxP1[:, :-1]), 0)
    pages_GxCxJ = jnp.take_along_axis(pages_GxPxJ, seq_GxC[..., None], axis=1)
    slots = _slots_of(pages_GxCxJ, positions, page_size)
    mirrored = real & (positions >= at(copy_from_GxP))
    copy_dst_GxCxN1 = jnp.take_along_axis(copy_dst_GxPxN1, seq_GxC[..., None], axis=1)
    copies_GxCxN1 = copy_dst_GxCxN1 * page_size + (positions % page_size)[..., None]
    write = jnp.concatenate(
        [jnp.where(real, slots, 0)[..., None], jnp.where(mirrored[..., None], copies_GxCxN1, 0)], axis=-1
    )
    return cu_GxP1, positions, write


def prefill_program(graphdef, sp: SamplingParams, page_size: int, layout: PackedChunk = PackedChunk()):
    """One prefill chunk per batch shard: pieces of up to P sequences packed into C tokens (q_len 0: no
    piece; the pieces fill the chunk from its start, in order; only the first may start past position 0).
    The tokens at positions >= copy_from (a prompt's partial last page) are also written into its copies
    `copy_dst`, one per extra sample (copying the page after the chunk made XLA copy the whole pool). Each
    piece's last token samples N first tokens (the host keeps those of a prompt's last chunk). `layout`: what
    the XLA attention may assume of the pieces (paged_attention.PackedChunk)."""

    def prefill(
        params,
        pool,
        base_key,
        tokens_GxC,
        start_GxP,
        q_len_GxP,
        pages_GxPxJ,
        prompt_GxP,
        copy_from_GxP,
        copy_dst_GxPxN1,
    ):
        model = nnx.merge(graphdef, params)
        G, C = tokens_GxC.shape
        P = start_GxP.shape[1]
        cu_GxP1, positions, write = _packed_layout(
            C, page_size, start_GxP, q_len_GxP, pages_GxPxJ, copy_from_GxP, copy_dst_GxPxN1
        )
        num_seqs = jnp.sum(q_len_GxP > 0, axis=1, dtype=jnp.int32)[:, None]
        hidden_GxCxE, pool = paged_forward(
            model,
            tokens_GxC,
            positions,
            write,
            pool,
            pages_GxPxJ,
            start_GxP + q_len_GxP,
            cu_GxP1,
            num_seqs,
            max_q_len=C,
            packed=layout,
        )
        last_GxP = jnp.maximum(cu_GxP1[:, 1:] - 1, 0)
        last_GxPxE = jnp.take_along_axis(hidden_GxCxE, last_GxP[..., None], axis=1)
        logits_RxV = flat_matmul(last_GxPxE.reshape(G * P, -1), model.head_kernel(), 1)
        n = sp.n
        logits_RxV = jnp.repeat(logits_RxV, n, axis=0)  # R = G x P x N rows, shard-major
        sample_R = jnp.tile(jnp.arange(n, dtype=jnp.int32), G * P)
        first, q_lp, p_lp = _sample(
            base_key, logits_RxV, jnp.repeat(prompt_GxP.reshape(-1), n), sample_R, jnp.zeros_like(sample_R), sp
        )
        return pool, first.reshape(G, P, n), q_lp.reshape(G, P, n), p_lp.reshape(G, P, n)

    return prefill


def _paged_decoder(model, pages_GxSxJ, page_size: int):
    """A decode step's forward over the paged pool (its state): each slot's token writes its keys and values
    to the pool, then attends to its pages (paged_attention)."""
    G, S = pages_GxSxJ.shape[:2]
    cu = jnp.broadcast_to(jnp.arange(S + 1, dtype=jnp.int32), (G, S + 1))
    num_seqs = jnp.full((G, 1), S, jnp.int32)

    def forward(pool, tok, pos, rope, active, i):
        write = jnp.where(active, _slots_of(pages_GxSxJ, pos, page_size), 0)[..., None]
        kv_lens = jnp.where(active, pos + 1, 1)
        # each slot is one sequence with one query token: [G, S] tokens as [G, T = S]
        return paged_forward(model, tok, pos, write, pool, pages_GxSxJ, kv_lens, cu, num_seqs, 1, rope=rope)

    return forward


def _snapshot_decoder(model, pool, pages_GxSxJ, snapshot_pages: int, start_GxS):
    """A decode step's forward over a snapshot of each slot's first `snapshot_pages` pages (positions below
    start, taken now) and a buffer of the run's own keys and values (its state; snapshot_attention.py)."""
    snapshots = [snap.take_snapshot(layer, pages_GxSxJ[:, :, :snapshot_pages]) for layer in pool]
    sm_scale = 1.0 / math.sqrt(model.cfg.head_dim)

    def forward(buffers, tok, pos, rope, active, i):
        def attend(state, q, k, v):
            snapshot_l, buffer = state
            buffer = snap.append(buffer, i, k, v)
            return snap.attend(q, snapshot_l, start_GxS, buffer, i, sm_scale=sm_scale), buffer

        return decoder_layers(model, tok, rope, tuple(zip(snapshots, buffers)), attend)

    return forward


def decode_program(graphdef, sp: SamplingParams, page_size: int, steps: int, snapshot_pages: int = 0):
    """`steps` decode steps over every slot (a burst, or bursts back to back while no row can stop early).
    snapshot_pages 0: each step writes its keys and values to the pool and attends to the slots' pages
    (paged_attention). snapshot_pages J' > 0 (XLA; every seated row's written positions within its first J'
    pages): attention reads a snapshot of those pages taken once and the program's own keys and values from
    a buffer, written to the pool once, at the end (snapshot_attention.py)."""
    stop_ids = np.asarray(sp.stop_token_ids or (-1,), np.int32)  # a constant of the trace (no device here)

    def decode(
        params,
        pool,
        base_key,
        tokens_GxS,
        pos_GxS,
        steps_GxS,
        budget_GxS,
        active_GxS,
        prompt_GxS,
        sample_GxS,
        pages_GxSxJ,
    ):
        model = nnx.merge(graphdef, params)
        G, S = tokens_GxS.shape
        if snapshot_pages:
            forward = _snapshot_decoder(model, pool, pages_GxSxJ, snapshot_pages, pos_GxS)
            K, D = model.cfg.num_kv_heads, model.cfg.head_dim
            state = tuple(snap.empty_buffer(G * S, K, D, steps, layer.dtype) for layer in pool)
        else:
            forward, state = _paged_decoder(model, pages_GxSxJ, page_size), pool

        def step(carry, xs):
            i, rope = xs
            state, tok, pos, steps, budget, active = carry
            hidden_GxSxE, state = forward(state, tok, pos, rope, active, i)
            logits_RxV = flat_matmul(hidden_GxSxE.reshape(G * S, -1), model.head_kernel(), 1)
            flat = lambda x: x.reshape(G * S)
            new, q_lp, p_lp = _sample(base_key, logits_RxV, flat(prompt_GxS), flat(sample_GxS), flat(steps), sp)
            new, q_lp, p_lp = (x.reshape(G, S) for x in (new, q_lp, p_lp))
            new = jnp.where(active, new, 0)
            hit_stop = active & jnp.any(new[..., None] == stop_ids, axis=-1)
            budget = budget - active
            out = (new, active, jnp.where(active, q_lp, 0.0), jnp.where(active, p_lp, 0.0))
            carry = (state, new, pos + 1, steps + 1, budget, active & ~hit_stop & (budget > 0))
            return carry, out

        init = (state, tokens_GxS, pos_GxS, steps_GxS, budget_GxS, active_GxS)
        step_R = jnp.arange(steps, dtype=pos_GxS.dtype)
        rope_R = positions_rope(model, pos_GxS[None] + step_R[:, None, None])  # each step's [G, S, D/2] tables
        (state, *_), outs = jax.lax.scan(step, init, (step_R, rope_R))
        tokens, valid, q_lp, p_lp = (x.transpose(1, 0, 2) for x in outs)  # [G, steps, S]
        if snapshot_pages:  # the run's keys and values where each token that was made belongs
            positions_GxSxR = pos_GxS[..., None] + jnp.arange(steps)
            slots = jnp.where(valid.transpose(0, 2, 1), _slots_of(pages_GxSxJ, positions_GxSxR, page_size), 0)
            state = tuple(snap.flush(layer, buffer, slots) for layer, buffer in zip(pool, state))
        return state, tokens, valid, q_lp, p_lp

    return decode
