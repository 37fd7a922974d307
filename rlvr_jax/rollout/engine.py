"""The paged rollout engine: continuous batching over decode slots on a paged KV pool, returning the
sampler's `Rollout`. scheduler.py schedules on the host (pages.py keeps the pool's books); programs.py holds
the jitted programs that run on the devices: a prefill chunk (pieces of up to `prefill_seqs` sequences packed
per batch shard) and a burst of decode steps over every slot (bursts run back to back when no row can end
early); calls.py keeps a call's books and statistics; settings.py sizes it (`EngineConfig`).

Sharding. The mesh's batch axes (data x fsdp) give G batch shards. Each shard has its own pool of pages,
its own `num_slots` decode slots and its own scheduler, and a prompt (with its n samples, which share its
prompt pages) lives on one shard; every device array has a leading G axis over the batch axes, so a row's
keys and values stay on its shard's devices, with kv heads over `tensor`. On many hosts each host schedules
the shards of its own rows; the hosts agree, per round, on which programs run (all of them run every
program, SPMD). The weights are resharded once per call from the trainer's layout to the decode layout
(sharding.DECODE_RULES: whole within a batch shard, split over tensor), on the devices.

Each token's random draw is keyed by (seed, prompt, sample, position) only, so the tokens do not depend
on the number of slots or shards, the admission order or preemptions. The pool: [G, A, page_size, 2K, D].
Letters beyond docs/CONTRACTS.md (as in paged_attention.py): G batch shards, A pool pages per shard,
J pages per sequence, C prefill chunk, S decode slots per shard, N samples per prompt.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from rlvr_jax import sharding
from rlvr_jax.model.decoder import ModelConfig, model_shardings
from rlvr_jax.rollout import calls, paged_attention, programs
from rlvr_jax.rollout import pages as pg
from rlvr_jax.rollout import scheduler as sched_lib
from rlvr_jax.rollout.sampling import (
    Rollout,
    SamplingParams,
    assemble_rollout,
    batch_multiple,
    device_free_bytes,
    local_rows,
    next_pow2,
    to_global,
)
from rlvr_jax.rollout.settings import EngineConfig

log = logging.getLogger(__name__)


class Engine:
    """Generates from a model with a paged KV pool: per batch shard `num_pages` pages of `page_size` tokens
    (0: `memory_fraction` of the memory a device has left) and `num_slots` decode slots. Compiles the pool
    and the weights' reshard once and, per sampling parameters and block-table width (a power of two pages,
    from the longest row of a call), a prefill program per chunk size (powers of two from 128 up to
    prefill_chunk) and layout (XLA: a continued piece's queries, the pieces' reach) and a decode program per number
    of slots (and, for bursts run back to back, per power of two bursts and quarter octave of snapshot pages);
    counts them (`num_compilations`) and their seconds, in the last call (`last_compile_seconds`) and in all
    (`compile_seconds`)."""

    def __init__(
        self,
        graphdef,
        cfg: ModelConfig,
        mesh,
        config: EngineConfig | None = None,
        *,
        pad_id: int = 0,
        min_prompt_bucket: int = 16,
        **sizes,
    ):
        """`config` sizes the engine (settings.engine_config reads it from a config's `rollout`); keywords
        name EngineConfig fields that replace its (`Engine(graphdef, cfg, mesh, num_slots=8)`)."""
        self.config = c = dataclasses.replace(config if config is not None else EngineConfig(), **sizes)
        self.graphdef, self.cfg, self.mesh = graphdef, cfg, mesh
        self.num_slots, self.page_size = c.num_slots, c.page_size
        self.chunk, self.burst = c.prefill_chunk, c.decode_burst
        self.prefill_seqs = min(c.prefill_seqs, c.prefill_chunk)
        self.dtype = jnp.dtype(c.cache_dtype or cfg.param_dtype)
        self.weights_dtype = jnp.dtype(c.weights_dtype) if c.weights_dtype else None
        self.pad_id, self.min_prompt_bucket = pad_id, min_prompt_bucket
        self.local_shards = batch_multiple(mesh)
        self.num_shards = self.local_shards * jax.process_count()
        self.kv_spec, self.page_bytes = self._kv_layout()
        self.num_pages = self._pool_pages()
        _, _, self.decode_shardings = model_shardings(cfg, mesh, sharding.DECODE_RULES)
        log.info(
            "KV pool: %d pages x %d tokens = %.1f MiB per device, %d batch shards x %d decode slots",
            self.num_pages,
            c.page_size,
            self.num_pages * self.page_bytes / 2**20,
            self.num_shards,
            c.num_slots,
        )
        self.attention_impl = paged_attention.auto_impl_for(mesh, cfg.head_dim)
        self.pool = None
        self._compiled: dict = {}
        self.num_compilations = 0
        self.last_compile_seconds = self.compile_seconds = 0.0
        self.stats: dict = {}

    def _kv_layout(self):
        """(the pool's PartitionSpec, a page's bytes per device): kv heads split over `tensor` when they can."""
        sizes = dict(zip(self.mesh.axis_names, self.mesh.devices.shape))
        cfg, K = self.cfg, self.cfg.num_kv_heads
        spec = sharding.logical_to_spec(
            ("batch", None, None, "kv_heads", None), (self.num_shards, 1, 1, 2 * K, 1), sizes, where="KV pool"
        )
        tensor = sizes.get("tensor", 1) if spec[3] is not None else 1
        if tensor > 1 and K % tensor:
            raise ValueError(f"rollout engine: {K} kv heads do not split over tensor={tensor}")
        return spec, pg.page_bytes(cfg.num_layers, K, cfg.head_dim, self.page_size, self.dtype.itemsize, tensor)

    def _pool_pages(self) -> int:
        """Pages per batch shard: config.num_pages, or memory_fraction of what a device has left."""
        c = self.config
        num_pages = pg.pool_pages(
            self.page_bytes,
            num_pages=c.num_pages,
            memory_fraction=c.memory_fraction,
            free_bytes=0 if c.num_pages else device_free_bytes(),
        )
        if num_pages < 2:
            raise ValueError(
                f"rollout engine: a pool of {num_pages} pages ({self.page_bytes} bytes each per device) "
                f"holds no sequence; raise num_pages or memory_fraction"
            )
        return num_pages

    # ---- rows in and out ----------------------------------------------------------------------------
    def to_global(self, local: np.ndarray):
        return to_global(self.mesh, local)

    def local_rows(self, x) -> np.ndarray:
        return local_rows(self.mesh, x)

    def _prompt_offset(self, num_prompts: int) -> int:
        """How many prompts the hosts before this one hold."""
        if jax.process_count() == 1:
            return 0
        counts = np.asarray(multihost_utils.process_allgather(np.asarray([num_prompts], np.int64))).reshape(-1)
        return int(counts[: jax.process_index()].sum())

    def _agree(self, values: Sequence[int]) -> list[int]:
        """The largest of each value over the hosts: every host runs the same programs in the same order."""
        if jax.process_count() == 1:
            return [int(v) for v in values]
        allv = multihost_utils.process_allgather(np.asarray(values, np.int64))
        return [int(v) for v in np.asarray(allv).reshape(jax.process_count(), -1).max(0)]

    # ---- weights laid out for decoding --------------------------------------------------------------
    def decode_abstract(self, params):
        """ShapeDtypeStructs of the weights in the decode layout and dtype (params concrete or abstract)."""

        def one(x, sh):
            dtype = self.weights_dtype if self.weights_dtype and jnp.issubdtype(x.dtype, jnp.floating) else x.dtype
            return jax.ShapeDtypeStruct(x.shape, dtype, sharding=sh)

        return jax.tree_util.tree_map(one, params, self.decode_shardings)

    def _reshard_jitted(self, params):
        """(jitted function, abstract arguments) laying the trainer's weights (maybe abstract) out for decoding."""
        target = self.decode_abstract(params)
        cast = lambda p: jax.tree_util.tree_map(lambda x, t: x.astype(t.dtype), p, target)
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), params
        )
        return jax.jit(cast, out_shardings=self.decode_shardings), (abstract,)

    def _reshard_program(self, params):
        if ("reshard",) not in self._compiled:
            jitted, args = self._reshard_jitted(params)
            self._compiled[("reshard",)] = self._compile("the weights' reshard for decoding", jitted, args)
        return self._compiled[("reshard",)]

    def decode_params(self, params):
        """The weights in the decode layout: resharded (and cast to weights_dtype) on the devices, or as they
        are when they already are."""
        target = self.decode_abstract(params)
        same = all(
            x.dtype == t.dtype and x.sharding.is_equivalent_to(t.sharding, x.ndim)
            for x, t in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(target))
        )
        return params if same else self._reshard_program(params)(params)

    # ---- programs -----------------------------------------------------------------------------------
    def _pool_sharding(self):
        return jax.sharding.NamedSharding(self.mesh, self.kv_spec)

    def _pool_shape(self):
        return (self.num_shards, self.num_pages, self.page_size, 2 * self.cfg.num_kv_heads, self.cfg.head_dim)

    def _compile(self, what: str, jitted, args):
        t0 = time.perf_counter()
        with sharding.activate(self.mesh):
            compiled = jitted.lower(*args).compile()
        seconds = time.perf_counter() - t0
        log.info("rollout engine: compiled %s in %.1fs", what, seconds)
        self.num_compilations += 1
        self.last_compile_seconds += seconds
        self.compile_seconds += seconds
        return compiled

    def _alloc_pool(self):
        shape, layers = self._pool_shape(), self.cfg.num_layers
        make = jax.jit(
            lambda: tuple(jnp.zeros(shape, self.dtype) for _ in range(layers)),
            out_shardings=(self._pool_sharding(),) * layers,
        )
        return self._compile("the KV pool", make, ())()

    def _jitted(self, kind: str, params_abstract, sp: SamplingParams, J: int, S: int = 0, bursts: int = 1, shape=0):
        """(jitted function, abstract arguments) of the prefill or decode program for block-table width J
        (prefill: `shape` the chunk's tokens and PackedChunk, by default the configured chunk, any layout; decode:
        over S slots per shard (num_slots), `bursts` bursts a program, over a snapshot of `shape` pages if > 0)."""
        rep = sharding.replicated(self.mesh)
        pool_sh = (self._pool_sharding(),) * self.cfg.num_layers
        pool_abs = tuple(jax.ShapeDtypeStruct(self._pool_shape(), self.dtype, sharding=sh) for sh in pool_sh)
        G, S, n = self.num_shards, S or self.num_slots, sp.n
        C, layout = shape if kind == "prefill" and shape else (self.chunk, paged_attention.PackedChunk())
        batch = lambda ndim: sharding.batch_sharding(self.mesh, ndim)
        arr = lambda dtype, *shape: jax.ShapeDtypeStruct((G, *shape), dtype, sharding=batch(1 + len(shape)))
        i32 = lambda *shape: arr(jnp.int32, *shape)
        if kind == "prefill":
            fn = programs.prefill_program(self.graphdef, sp, self.page_size, layout)
            P = self.prefill_seqs
            args = (i32(C), i32(P), i32(P), i32(P, J), i32(P), i32(P), i32(P, n - 1))
            outs = (pool_sh,) + (batch(3),) * 3
        else:
            fn = programs.decode_program(self.graphdef, sp, self.page_size, self.burst * bursts, shape)
            args = (i32(S), i32(S), i32(S), i32(S), arr(jnp.bool_, S), i32(S), i32(S), i32(S, J))
            outs = (pool_sh,) + (batch(3),) * 4
        jitted = jax.jit(
            fn,
            in_shardings=(None, pool_sh, rep) + tuple(a.sharding for a in args),
            out_shardings=outs,
            donate_argnums=(1,),
        )
        base_key = jax.ShapeDtypeStruct((), jax.eval_shape(jax.random.key, 0).dtype, sharding=rep)
        return jitted, (params_abstract, pool_abs, base_key, *args)

    def _program(self, kind: str, params_abstract, sp: SamplingParams, J: int, S: int = 0, bursts: int = 1, shape=0):
        """The compiled prefill or decode program for a block-table width J (a power of two), the chunk's
        (tokens, PackedChunk) (prefill) or S slots per shard, bursts per program and snapshot pages (decode; `_jitted`),
        and the sampling parameters (not the seed: it is an argument)."""
        S = (S or self.num_slots) if kind == "decode" else 0
        key = (kind, J, S, bursts, shape, sp.temperature, sp.top_k, sp.top_p, sp.n, sp.stop_token_ids)
        if key not in self._compiled:
            jitted, args = self._jitted(kind, params_abstract, sp, J, S, bursts, shape)
            what = f"{kind} for {J} pages per sequence" + (f", {S} slots" if S else "")
            what += f", {bursts} bursts" if bursts > 1 else ""
            what += f", a snapshot of {shape} pages" if kind == "decode" and shape else ""
            what += f", chunk of {shape[0]}: {shape[1]}" if kind == "prefill" and shape else ""
            self._compiled[key] = self._compile(what, jitted, args)
        return self._compiled[key]

    def programs(self, params, sp: SamplingParams, pages_per_seq: int, rows: int = 0) -> dict:
        """{"reshard", "prefill", "decode"}: (jitted function, abstract arguments) of each program for a
        block-table width and a call of `rows` rows (0: every slot), for a planner to compile and cost
        (params: the trainer's, maybe abstract)."""
        J = next_pow2(pages_per_seq, 1)
        target = self.decode_abstract(params)
        return {
            "reshard": self._reshard_jitted(params),
            "prefill": self._jitted("prefill", target, sp, J),
            "decode": self._jitted("decode", target, sp, J, self.slots_for(rows)),
        }

    def slots_for(self, rows: int) -> int:
        """Slots per shard a call of `rows` rows (over all hosts) decodes over: num_slots, or as many (a power
        of two) as a shard's share needs."""
        return min(self.num_slots, next_pow2(pg.cdiv(rows, self.num_shards), 1)) if rows else self.num_slots

    def compile(self, params, sp: SamplingParams, pages_per_seq: int):
        """Compiles (or finds) the prefill and decode programs for a block-table width, without running them;
        params may be abstract (ShapeDtypeStructs with the trainer's shardings), so a planner can compile for
        a TPU topology from a CPU host (under `jax.default_device(<a topology device>)`)."""
        J = next_pow2(pages_per_seq, 1)
        target = self.decode_abstract(params)
        return self._program("prefill", target, sp, J), self._program("decode", target, sp, J)

    def with_burst(self, burst: int) -> "Engine":
        """This engine with another decode burst (its own programs and pool; for a planner's costing)."""
        other = copy.copy(self)
        other.burst, other._compiled, other.pool = burst, {}, None
        other.config = dataclasses.replace(self.config, decode_burst=burst)
        return other

    # ---- generation ---------------------------------------------------------------------------------
    def generate(
        self,
        params,
        prompts: Sequence[Sequence[int]],
        sp: SamplingParams,
        key=None,
        max_new_tokens: Sequence[int] | None = None,
        progress: bool = False,
    ) -> Rollout:
        """Rows are this host's prompts x sp.n in order (a prompt's samples adjacent), as global
        batch-sharded arrays. `max_new_tokens`, one per row, caps each row (at most sp.max_new_tokens, the
        rollout's T). `progress`: a bar of generated tokens on stderr."""
        if len(prompts) == 0:
            self.last_compile_seconds = 0.0
            return self.rollout_of([], {}, sp)
        call = self._run_call(params, prompts, sp, key, max_new_tokens, progress, None, 0)
        return self.rollout_of(prompts, call.finished_rows(), sp)

    def generate_groups(
        self,
        params,
        prompts: Sequence[Sequence[int]],
        sp: SamplingParams,
        key=None,
        *,
        target_groups: int,
        started: dict[int, list[sched_lib.RowState]] | None = None,
        max_new_tokens: Sequence[int] | None = None,
        progress: bool = False,
    ) -> calls.Groups:
        """Partial rollouts' call: generates until this host (and every other) has `target_groups` prompts
        whose n rows all ended, then stops every other row where it is. `started`: prompt -> its rows' states
        from a previous call (they continue by recompute, as after a preemption). Returns the host-side
        `calls.Groups`: which prompts completed, in order, and every begun prompt's row states."""
        if not 0 < target_groups <= len(prompts):
            raise ValueError(f"target_groups={target_groups}: expected 1..{len(prompts)} (the call's prompts)")
        call = self._run_call(params, prompts, sp, key, max_new_tokens, progress, started or {}, target_groups)
        return call.groups()

    def _run_call(self, params, prompts, sp, key, max_new_tokens, progress, started, target_groups) -> calls.Call:
        """Runs a call to its end: every row ended, or (target_groups > 0) every host has that many complete
        prompts. Fills self.stats."""
        self.last_compile_seconds = 0.0
        max_new_R = sched_lib.row_budgets([len(p) for p in prompts], sp.n, sp.max_new_tokens, max_new_tokens)
        call = self._start_call(params, prompts, sp, key, max_new_R, progress, started)
        t0 = time.perf_counter()
        while self._agree([not call.ended(target_groups)])[0]:
            # prefill first: every slot that would decode empty is filled before the next burst (a burst
            # costs the same with its slots full; the scheduler starts no prefill without a slot for it)
            chunks = self._prefill_round(call)
            decoding = self._decode_round(call)
            if not chunks and not decoding and self._agree([not call.done()])[0]:
                raise RuntimeError("rollout engine stalled: nothing to prefill or decode (a scheduler bug)")
        call.bar.close()
        self.stats = calls.call_stats(
            call, call.finished_rows(), time.perf_counter() - t0, self, resharded=call.weights is not params
        )
        return call

    def rollout_of(self, prompts, rows: dict, sp: SamplingParams) -> Rollout:
        """This host's rows ({prompt x n + sample: an object with tokens, q_logp, p_logp, stopped}) as a
        `Rollout` of global arrays (a call's result, or partial rollouts' chosen groups)."""
        # one prompt width on every host (the rows become one global array)
        bucket = self._agree([next_pow2(max((len(p) for p in prompts), default=1), self.min_prompt_bucket)])[0]
        T = sp.max_new_tokens
        return assemble_rollout(self.mesh, prompts, rows, sp.n, T, pad_id=self.pad_id, min_prompt_bucket=bucket)

    def _start_call(self, params, prompts, sp: SamplingParams, key, max_new_R, progress: bool, started) -> calls.Call:
        """Admits a call: checks it fits, picks its block-table width and slots (agreed over the hosts), gives
        each of this host's shards its prompts and a scheduler, and lays the weights and the pool out."""
        n, lens = sp.n, [len(p) for p in prompts]
        pg.check_fits(lens, max_new_R, n, pg.PagePool(self.num_pages, self.page_size))
        longest = max(lens[r // n] + m for r, m in enumerate(max_new_R))
        J = self._agree([next_pow2(pg.cdiv(longest, self.page_size), 1)])[0]
        started = started or {}
        left_R = list(max_new_R)  # the work left: a begun row has made some of its tokens
        for i, states in started.items():
            for j, st in enumerate(states):
                left_R[i * n + j] = 0 if st.finished else st.max_new - len(st.tokens)
        ids = sched_lib.assign_shards(lens, left_R, n, self.local_shards)  # ids[g]: this host's prompts on shard g
        # slots per shard: num_slots, or as many (a power of two) as the fullest shard's rows need
        S = min(self.num_slots, self._agree([next_pow2(max(len(i) for i in ids) * n, 1)])[0])
        scheds = [
            sched_lib.Scheduler(
                pg.PagePool(self.num_pages, self.page_size),
                [prompts[i] for i in ids_g],
                n,
                [max_new_R[i * n + j] for i in ids_g for j in range(n)],
                num_slots=S,
                chunk=self.chunk,
                burst=self.burst,
                pages_per_seq=J,
                stop_ids=sp.stop_token_ids,
                started={k: started[i] for k, i in enumerate(ids_g) if i in started},
            )
            for ids_g in ids
        ]
        weights = self.decode_params(params)
        if self.pool is None:
            self.pool = self._alloc_pool()
        # draws are keyed by the prompt's index in the global batch (the hosts' prompts in process order), so
        # the tokens do not depend on the number of processes
        offset = self._prompt_offset(len(prompts))
        return calls.Call(
            weights=weights,
            target=self.decode_abstract(weights),
            sp=sp,
            J=J,
            S=S,
            base_key=jax.random.key(sp.seed) if key is None else key,
            ids=[[offset + i for i in ids_g] for ids_g in ids],
            offset=offset,
            scheds=scheds,
            bar=tqdm(total=sum(max_new_R), unit="tok", desc="rollout", file=sys.stderr, disable=not progress),
        )

    def _prefill_round(self, call: calls.Call) -> int:
        """Prefill chunks (each shard's next pieces of up to prefill_seqs sequences, packed) until no shard
        starts another; returns how many ran."""
        chunks = 0
        while True:
            jobs = [s.next_prefills(self.prefill_seqs) for s in call.scheds]
            more, longest, first, tokens = self._agree(calls.prefill_sizes(jobs))
            if not more:
                return chunks
            C = calls.prefill_chunk(tokens, self.chunk)
            layout = paged_attention.packed_chunk(longest, first > 0, C, first)
            if self.attention_impl != "xla":  # the kernel takes any chunk: one program a size
                layout = paged_attention.PackedChunk()
            firsts = self._run_prefill(call, jobs, C, layout)
            for g, jobs_g in enumerate(jobs):
                for p, job in enumerate(jobs_g):
                    if job.last:
                        call.scheds[g].finish_prefill(job, *(x[g, p] for x in firsts))
                        call.bar.update(0 if job.row is not None else call.sp.n)
            chunks += 1
            call.counts["prefill_chunks"] += 1

    def _decode_round(self, call: calls.Call) -> bool:
        """Decode bursts over every shard's slots, if any shard has a row seated: as many back to back as every
        shard can run with no word from the host (`Scheduler.steady_bursts`, agreed over the hosts), read once
        at the end; returns whether any ran."""
        bursts = -self._agree([-min(s.steady_bursts() for s in call.scheds)])[0]
        djobs = [s.next_decode(bursts) for s in call.scheds]
        if not self._agree([any(d is not None for d in djobs)])[0]:
            return False
        # the call's block-table width J: decode attention costs each row its own pages
        valid = self._run_decode(call, djobs, bursts)
        call.counts["decode_steps"] += self.burst * bursts
        call.counts["decode_rounds"] += 1
        call.counts["slot_steps"] += int(valid)
        call.bar.update(int(valid))
        return True

    def _run_prefill(self, call: calls.Call, jobs, C: int, layout: paged_attention.PackedChunk):
        """One packed prefill chunk of C tokens per shard: jobs[g] are shard g's pieces, in the order they fill
        its chunk (`layout` covers every shard's)."""
        G, P = self.local_shards, self.prefill_seqs
        arrays = calls.prefill_arrays(call, jobs, G, C, P, self.page_size, self.pad_id)
        program = self._program("prefill", call.target, call.sp, call.J, shape=(C, layout))
        self.pool, *firsts = program(call.weights, self.pool, call.base_key, *(self.to_global(x) for x in arrays))
        return [self.local_rows(x) for x in firsts]

    def _run_decode(self, call: calls.Call, djobs, bursts: int = 1) -> int:
        """`bursts` bursts over every shard's slots, back to back (a shard with no job runs inactive slots), one a
        program or, over a snapshot on XLA, a power of two a program (`calls.bursts_per_program`): each program
        after the first feeds on the last tokens of the one before, on the devices, and the host reads all of
        them at the end. Returns the tokens made."""
        S, J = call.S, call.J
        names = calls.DECODE_INPUTS
        arrays, pages = calls.decode_arrays(call, djobs, self.local_shards)
        glob = self.to_global
        fixed = {k: glob(arrays[k]) for k in ("active_S", "prompt_S", "sample_S")}
        pages_dev, tokens_dev, outs_all = glob(pages), glob(arrays["tokens_S"]), []
        done = 0
        while done < bursts:
            moved = {name: arrays[name] + done * self.burst for name in ("pos_S", "steps_S")}
            run, snapshot = 1, 0  # one burst a program, over the pool (the TPU kernel reads it in place)
            if self.attention_impl == "xla" and calls.bursts_per_program(bursts - done, self.burst) > 1:
                pages = calls.snapshot_pages(moved["pos_S"], arrays["active_S"], self.page_size, J)
                pages, sparse = self._agree([pages, pages == 0])  # a host's sparse slots: no snapshot anywhere
                run, snapshot = (1, 0) if sparse else (calls.bursts_per_program(bursts - done, self.burst), pages)
            program = self._program("decode", call.target, call.sp, J, S, run, shape=snapshot)
            budget = glob(np.maximum(arrays["budget_S"] - done * self.burst, 0))
            inputs = dict(fixed, tokens_S=tokens_dev, budget_S=budget, **{n: glob(x) for n, x in moved.items()})
            self.pool, *outs = program(call.weights, self.pool, call.base_key, *(inputs[n] for n in names), pages_dev)
            outs_all.append(outs)
            done += run
            if done < bursts:
                tokens_dev = self._last_tokens(outs[0])
        tokens, valid, q_lp, p_lp = (
            np.concatenate([self.local_rows(o[i]) for o in outs_all], axis=1) for i in range(4)
        )  # [G, bursts x burst, S]
        calls.track_peak(call, int(valid.sum()))
        for g, job in enumerate(djobs):
            if job is not None:
                call.scheds[g].finish_decode(job, tokens[g], valid[g], q_lp[g], p_lp[g])
        return int(valid.sum())

    def _last_tokens(self, tokens_GxKxS):
        """The last step's tokens of a burst's output, on the devices, laid out as a decode program's input."""
        if "last_tokens" not in self._compiled:
            out = sharding.batch_sharding(self.mesh, 2)
            self._compiled["last_tokens"] = jax.jit(lambda t: t[:, -1, :], out_shardings=out)
        return self._compiled["last_tokens"](tokens_GxKxS)
