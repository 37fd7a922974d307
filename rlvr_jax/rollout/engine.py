"""The paged rollout engine: continuous batching over a fixed number of decode slots on a paged KV pool
(pages.py schedules on the host; two jitted programs per block-table width run on the devices: a prefill
chunk of one sequence, and a burst of decode steps over every slot), returning the sampler's `Rollout`.

Each token's random draw is keyed by (seed, prompt, sample, position) only, so the tokens do not depend
on the number of slots, the admission order or preemptions. The pool lives in the model's dtype, one
[pages, page_size, 2K, D] array per layer with its kv heads over the mesh's `tensor` axis.
Letters beyond docs/CONTRACTS.md (as in paged_attention.py): A pool pages, J pages per sequence.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlvr_jax import sharding
from rlvr_jax.model.decoder import ModelConfig, flat_matmul, rope_inverse_frequencies
from rlvr_jax.rollout import pages as pg
from rlvr_jax.rollout.paged_attention import ragged_paged_attention
from rlvr_jax.rollout.sampling import Rollout, SamplingParams, device_memory_bytes, next_pow2, sample_step

log = logging.getLogger(__name__)


def paged_forward(model, tokens_T, positions_T, write_T, pool, page_indices_BxJ, kv_lens_B, cu_q_lens_B1, max_q_len):
    """The decoder over T tokens of up to B sequences (ragged, as paged_attention lays them out): each
    token's keys and values are written at flat pool slot `write_T` (page * page_size + offset; padding
    tokens write to the scratch page), then it attends to its sequence's pages. Returns the final-normed
    hidden states [T, E] and the updated pool."""
    cfg = model.cfg
    T = tokens_T.shape[0]
    K, D = cfg.num_kv_heads, cfg.head_dim
    num_seqs = jnp.full((1,), page_indices_BxJ.shape[0], jnp.int32)
    h = jnp.take(model.embed.embedding[...], tokens_T, axis=0)[:, None]  # [T, 1, E]: tokens as rows
    h = sharding.constrain(h, ("batch", "length", "act_embed"))
    inv_freq = rope_inverse_frequencies(cfg)
    new_pool = []
    for block, layer in zip(model.layers, pool):
        q, k, v = block.attn.project(block.input_norm(h), positions_T[:, None], inv_freq)
        kv_Tx2KxD = jnp.stack([k[:, 0], v[:, 0]], axis=2).reshape(T, 2 * K, D).astype(layer.dtype)
        A, page_size = layer.shape[:2]
        layer = layer.reshape(A * page_size, 2 * K, D).at[write_T].set(kv_Tx2KxD).reshape(layer.shape)
        out_TxHxD = ragged_paged_attention(
            q[:, 0],
            layer,
            kv_lens_B,
            page_indices_BxJ,
            cu_q_lens_B1,
            num_seqs,
            sm_scale=1.0 / math.sqrt(D),
            max_q_len=max_q_len,
        )
        h = sharding.constrain(
            h + block.attn.o_proj(out_TxHxD[:, None].astype(h.dtype)), ("batch", "length", "act_embed")
        )
        h = sharding.constrain(h + block.mlp(block.post_attn_norm(h)), ("batch", "length", "act_embed"))
        new_pool.append(layer)
    return model.final_norm(h[:, 0]), tuple(new_pool)


def _slots(pages_J, positions, page_size):
    """Flat pool slots of positions in a sequence whose block table is pages_J."""
    page = pages_J[jnp.clip(positions // page_size, 0, pages_J.shape[-1] - 1)]
    return page * page_size + positions % page_size


def _draw_key(base_key, prompt, sample, position):
    return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(base_key, prompt), sample), position)


def _sample(base_key, logits_BxV, prompt_B, sample_B, step_B, sp: SamplingParams):
    """One token per row, each from its own (prompt, sample, position) key."""
    keys = jax.vmap(_draw_key, in_axes=(None, 0, 0, 0))(base_key, prompt_B, sample_B, step_B)
    one = lambda k, lg: tuple(x[0] for x in sample_step(k, lg[None], sp.temperature, sp.top_k, sp.top_p))
    return jax.vmap(one)(keys, logits_BxV)


def _prefill_program(graphdef, sp: SamplingParams, page_size: int):
    def prefill(params, pool, base_key, tokens_C, start, q_len, pages_J, prompt, copy_src, copy_dst):
        model = nnx.merge(graphdef, params)
        C = tokens_C.shape[0]
        positions = start + jnp.arange(C, dtype=jnp.int32)
        write = jnp.where(jnp.arange(C) < q_len, _slots(pages_J, positions, page_size), 0)
        hidden_CxE, pool = paged_forward(
            model,
            tokens_C,
            positions,
            write,
            pool,
            pages_J[None],
            (start + q_len)[None],
            jnp.stack([0, q_len]).astype(jnp.int32),
            max_q_len=C,
        )
        # the samples' own copies of the prompt's partial last page (scratch-to-scratch when none)
        pool = tuple(layer.at[copy_dst].set(layer[copy_src][None]) for layer in pool)
        logits_1xV = flat_matmul(hidden_CxE[q_len - 1][None], model.head_kernel(), 1)
        n = sp.n
        logits_NxV = jnp.broadcast_to(logits_1xV, (n, logits_1xV.shape[-1]))
        idx = jnp.arange(n, dtype=jnp.int32)
        first, q_lp, p_lp = _sample(base_key, logits_NxV, jnp.full((n,), prompt), idx, jnp.zeros_like(idx), sp)
        return pool, first, q_lp, p_lp

    return prefill


def _decode_program(graphdef, sp: SamplingParams, page_size: int, burst: int):
    stop_ids = np.asarray(sp.stop_token_ids or (-1,), np.int32)  # a constant of the trace (no device here)

    def decode(params, pool, base_key, tokens_S, pos_S, steps_S, budget_S, active_S, prompt_S, sample_S, pages_SxJ):
        model = nnx.merge(graphdef, params)
        S = tokens_S.shape[0]
        cu = jnp.arange(S + 1, dtype=jnp.int32)

        def step(carry, _):
            pool, tok, pos, steps, budget, active = carry
            write = jnp.where(active, jax.vmap(lambda pj, p: _slots(pj, p, page_size))(pages_SxJ, pos), 0)
            kv_lens = jnp.where(active, pos + 1, 1)
            hidden_SxE, pool = paged_forward(model, tok, pos, write, pool, pages_SxJ, kv_lens, cu, max_q_len=1)
            logits_SxV = flat_matmul(hidden_SxE, model.head_kernel(), 1)
            new, q_lp, p_lp = _sample(base_key, logits_SxV, prompt_S, sample_S, steps, sp)
            new = jnp.where(active, new, 0)
            hit_stop = active & jnp.any(new[:, None] == stop_ids[None, :], axis=-1)
            budget = budget - active
            out = (new, active, jnp.where(active, q_lp, 0.0), jnp.where(active, p_lp, 0.0))
            carry = (pool, new, pos + 1, steps + 1, budget, active & ~hit_stop & (budget > 0))
            return carry, out

        init = (pool, tokens_S, pos_S, steps_S, budget_S, active_S)
        (pool, *_), (tokens_KxS, valid_KxS, q_KxS, p_KxS) = jax.lax.scan(step, init, None, length=burst)
        return pool, tokens_KxS, valid_KxS, q_KxS, p_KxS

    return decode


class Engine:
    """Generates from a model with a paged KV pool and `num_slots` decode slots. Compiles the pool once and,
    per sampling parameters, a prefill program per block-table width bucket (powers of two pages, from the
    longest row of a call) and a decode program per bucket of the longest seated row; counts them."""

    def __init__(
        self,
        graphdef,
        cfg: ModelConfig,
        mesh,
        *,
        num_slots: int = 64,
        page_size: int = 16,
        num_pages: int = 0,
        memory_fraction: float = 0.5,
        prefill_chunk: int = 128,
        decode_burst: int = 8,
        chunks_per_burst: int = 8,
        cache_dtype: str | None = None,
        pad_id: int = 0,
        min_prompt_bucket: int = 16,
    ):
        for name, value in dict(
            num_slots=num_slots,
            page_size=page_size,
            prefill_chunk=prefill_chunk,
            decode_burst=decode_burst,
            chunks_per_burst=chunks_per_burst,
        ).items():
            if value < 1:
                raise ValueError(f"rollout engine: {name}={value} must be >= 1")
        self.graphdef, self.cfg, self.mesh = graphdef, cfg, mesh
        self.num_slots, self.page_size, self.chunk, self.burst = num_slots, page_size, prefill_chunk, decode_burst
        self.chunks_per_burst = chunks_per_burst
        self.dtype = jnp.dtype(cache_dtype or cfg.param_dtype)
        self.pad_id, self.min_prompt_bucket = pad_id, min_prompt_bucket
        sizes = dict(zip(mesh.axis_names, mesh.devices.shape))
        tensor = sizes.get("tensor", 1)
        self.kv_spec = sharding.logical_to_spec(
            (None, None, "kv_heads", None), (1, 1, cfg.num_kv_heads, 1), sizes, where="KV pool"
        )
        shards = tensor if self.kv_spec[2] is not None else 1
        self.page_bytes = pg.page_bytes(
            cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, page_size, self.dtype.itemsize, shards
        )
        self.num_pages = pg.pool_pages(
            self.page_bytes,
            num_pages=num_pages,
            memory_fraction=memory_fraction,
            free_bytes=0 if num_pages else device_memory_bytes(),
        )
        if self.num_pages < 2:
            raise ValueError(
                f"rollout engine: a pool of {self.num_pages} pages ({self.page_bytes} bytes each per device) "
                f"holds no sequence; raise num_pages or memory_fraction"
            )
        log.info(
            "KV pool: %d pages x %d tokens = %.1f MiB per device, %d decode slots",
            self.num_pages,
            page_size,
            self.num_pages * self.page_bytes / 2**20,
            num_slots,
        )
        self.pool = None
        self._compiled: dict = {}
        self.num_compilations = 0
        self.stats: dict = {}

    # ---- programs ---------------------------------------------------------------------------------
    def _pool_sharding(self):
        return jax.sharding.NamedSharding(self.mesh, self.kv_spec)

    def _pool_shape(self):
        return (self.num_pages, self.page_size, 2 * self.cfg.num_kv_heads, self.cfg.head_dim)

    def _alloc_pool(self):
        shape = self._pool_shape()
        layers = self.cfg.num_layers
        make = jax.jit(
            lambda: tuple(jnp.zeros(shape, self.dtype) for _ in range(layers)),
            out_shardings=(self._pool_sharding(),) * layers,
        )
        self.num_compilations += 1
        return make()

    def _program(self, kind: str, params, sp: SamplingParams, J: int):
        """The compiled prefill or decode program for a block-table width J (a power of two) and the
        sampling parameters (not the seed: it is an argument)."""
        key = (kind, J, sp.temperature, sp.top_k, sp.top_p, sp.n, sp.stop_token_ids)
        if key in self._compiled:
            return self._compiled[key]
        rep = sharding.replicated(self.mesh)
        pool_sh = (self._pool_sharding(),) * self.cfg.num_layers
        pool_abs = (jax.ShapeDtypeStruct(self._pool_shape(), self.dtype),) * self.cfg.num_layers
        i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
        S, C, n = self.num_slots, self.chunk, sp.n
        if kind == "prefill":
            fn = _prefill_program(self.graphdef, sp, self.page_size)
            args = (i32(C), i32(), i32(), i32(J), i32(), i32(), i32(n - 1))
            outs = (pool_sh, rep, rep, rep)
        else:
            fn = _decode_program(self.graphdef, sp, self.page_size, self.burst)
            b = jax.ShapeDtypeStruct((S,), jnp.bool_)
            args = (i32(S), i32(S), i32(S), i32(S), b, i32(S), i32(S), i32(S, J))
            outs = (pool_sh, rep, rep, rep, rep)
        t0 = time.perf_counter()
        with sharding.activate(self.mesh):
            jitted = jax.jit(
                fn, in_shardings=(None, pool_sh) + (rep,) * (1 + len(args)), out_shardings=outs, donate_argnums=(1,)
            )
            compiled = jitted.lower(params, pool_abs, jax.eval_shape(jax.random.key, 0), *args).compile()
        log.info("rollout engine: compiled %s for %d pages per sequence in %.1fs", kind, J, time.perf_counter() - t0)
        self.num_compilations += 1
        self._compiled[key] = compiled
        return compiled

    def compile(self, params, sp: SamplingParams, pages_per_seq: int):
        """Compiles (or finds) the prefill and decode programs for a block-table width, without running them;
        params may be abstract (ShapeDtypeStructs with shardings), so a planner can compile for a TPU
        topology from a CPU host (under `jax.default_device(<a topology device>)`)."""
        J = next_pow2(pages_per_seq, 1)
        return self._program("prefill", params, sp, J), self._program("decode", params, sp, J)

    # ---- generation -------------------------------------------------------------------------------
    def generate(
        self,
        params,
        prompts: Sequence[Sequence[int]],
        sp: SamplingParams,
        key=None,
        max_new_tokens: Sequence[int] | None = None,
    ) -> Rollout:
        """Rows are prompts x sp.n in order (a prompt's samples adjacent). `max_new_tokens`, one per row,
        caps each row (at most sp.max_new_tokens, the rollout's T)."""
        N, n, T = len(prompts), sp.n, sp.max_new_tokens
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        max_new_R = [T] * (N * n) if max_new_tokens is None else [int(m) for m in max_new_tokens]
        if len(max_new_R) != N * n or any(not 1 <= m <= T for m in max_new_R):
            raise ValueError(f"max_new_tokens: one value in [1, {T}] per row ({N} prompts x {n} samples)")
        if N == 0:
            return self._rollout([], [], n, T)
        pool = pg.PagePool(self.num_pages, self.page_size)
        pg.check_fits([len(p) for p in prompts], max_new_R, n, pool)
        longest = max(len(p) + m for p, m in zip([p for p in prompts for _ in range(n)], max_new_R))
        J = next_pow2(pool.pages_for(longest), 1)
        if self.pool is None:
            self.pool = self._alloc_pool()
        prefill = self._program("prefill", params, sp, J)
        base_key = jax.random.key(sp.seed) if key is None else key
        sched = pg.Scheduler(
            pool,
            prompts,
            n,
            max_new_R,
            num_slots=self.num_slots,
            chunk=self.chunk,
            burst=self.burst,
            pages_per_seq=J,
            stop_ids=sp.stop_token_ids,
        )
        t0 = time.perf_counter()
        while not sched.done():
            # prefill chunks until the free slots have rows to take (next_prefill starts no more than that),
            # at most chunks_per_burst of them between two decode bursts
            jobs = 0
            while (job := sched.next_prefill()) is not None:
                jobs += 1
                tokens_C = np.full(self.chunk, self.pad_id, np.int32)
                tokens_C[: len(job.tokens)] = job.tokens
                pages_J = np.zeros(J, np.int32)
                pages_J[: len(job.pages)] = job.pages
                copy_dst = np.zeros(n - 1, np.int32)
                copy_dst[: len(job.copy_dst)] = job.copy_dst
                self.pool, first, q_lp, p_lp = prefill(
                    params,
                    self.pool,
                    base_key,
                    tokens_C,
                    np.int32(job.start),
                    np.int32(len(job.tokens)),
                    pages_J,
                    np.int32(job.prompt),
                    np.int32(job.copy_src),
                    copy_dst,
                )
                if job.last:
                    sched.finish_prefill(job, np.asarray(first), np.asarray(q_lp), np.asarray(p_lp))
                if jobs == self.chunks_per_burst:
                    break
            djob = sched.next_decode()
            if djob is not None:
                # the block tables as wide as the longest seated row needs: attention reads S = Jd x page_size
                # keys per slot, so a burst of short rows does not pay for the longest possible one
                Jd = min(J, next_pow2(max(len(r.pages) for r in djob.rows if r is not None), 1))
                decode = self._program("decode", params, sp, Jd)
                self.pool, *out = decode(
                    params,
                    self.pool,
                    base_key,
                    djob.tokens_S,
                    djob.pos_S,
                    djob.steps_S,
                    djob.budget_S,
                    djob.active_S,
                    djob.prompt_S,
                    djob.sample_S,
                    djob.pages_SxJ[:, :Jd],
                )
                sched.finish_decode(djob, *(np.asarray(x) for x in out))
            if not jobs and djob is None:
                raise RuntimeError("rollout engine stalled: nothing to prefill or decode (a scheduler bug)")
        rows = [sched.finished[r] for r in range(N * n)]
        self.stats = dict(
            seconds=time.perf_counter() - t0,
            pool_pages=pool.capacity,
            peak_pages=pool.peak_used,
            preemptions=sched.preemptions,
            slot_occupancy=pg.occupancy(sched),
            decode_steps=sched.decode_steps,
            tokens=sum(len(r.tokens) for r in rows),
        )
        return self._rollout(prompts, rows, n, T)

    def _rollout(self, prompts, rows, n: int, T: int) -> Rollout:
        B = len(rows)
        P = next_pow2(max((len(p) for p in prompts), default=1), self.min_prompt_bucket)
        prompt_tokens = np.full((B, P), self.pad_id, np.int32)
        prompt_valid = np.zeros((B, P), bool)
        tokens = np.zeros((B, T), np.int32)
        valid = np.zeros((B, T), bool)
        q_logp = np.zeros((B, T), np.float32)
        p_logp = np.zeros((B, T), np.float32)
        for b, row in enumerate(rows):
            p = prompts[row.prompt]
            prompt_tokens[b, P - len(p) :] = p
            prompt_valid[b, P - len(p) :] = True
            m = len(row.tokens)
            tokens[b, :m], valid[b, :m] = row.tokens, True
            q_logp[b, :m], p_logp[b, :m] = row.q_logp, row.p_logp
        lengths = valid.sum(-1).astype(np.int32)
        stopped = np.array([row.stopped for row in rows], bool)
        index = np.repeat(np.arange(len(prompts), dtype=np.int32), n)
        arrays = (prompt_tokens, prompt_valid, tokens, valid, q_logp, p_logp, lengths, stopped)
        return Rollout(*(jnp.asarray(x) for x in arrays), index)
