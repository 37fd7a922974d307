"""A baseline, not part of the trainer: the static rollout engine the paged one (rlvr_jax/rollout/engine.py)
replaced, kept only as the benchmarks' peer ("the static engine the paged one replaced"): benchmarks/rollout.py
and benchmarks/generation.py time it beside the paged engine. Nothing in rlvr_jax/ imports it.

A verbatim copy of `Sampler`, `_generate_program` and `kv_cache_bytes_per_device` from
rlvr_jax/rollout/sampling.py as of commit eea5403: one jitted program per (rows, prompt bucket, sampling
parameters) runs prefill and a `lax.while_loop` decode over a preallocated [B, P + T] KV cache, so every
row of a batch holds max_new_tokens cache slots and the batch decodes until its longest row is done.
The pieces the paged engine shares (SamplingParams, Rollout, sample_step, ...) are imported from
rlvr_jax.rollout.sampling.

Shapes (docs/CONTRACTS.md "Shape legend"): B rows (prompts x n), P prompt bucket, T completion slots
(max new tokens), S = P + T cache slots, V vocab.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlvr_jax import sharding
from rlvr_jax.model.decoder import KV_CACHE_LOGICAL_AXES, KVCache, ModelConfig, left_padded_positions
from rlvr_jax.rollout.sampling import (
    Rollout,
    SamplingParams,
    batch_multiple,
    device_memory_bytes,
    local_rows,
    next_pow2,
    sample_step,
    to_global,
)

log = logging.getLogger(__name__)


def _generate_program(graphdef, cfg: ModelConfig, sp: SamplingParams, cache_dtype):
    """The traced function: prefill + decode loop. Shapes come from its arguments."""
    stop_ids = jnp.asarray(sp.stop_token_ids or (-1,), jnp.int32)
    T = sp.max_new_tokens

    def program(params, prompt_tokens_BxP, prompt_valid_BxP, key):
        model = nnx.merge(graphdef, params)
        B, P = prompt_tokens_BxP.shape
        S = P + T
        cache = KVCache.zeros(cfg, B, S, cache_dtype)
        cache = KVCache(
            *(tuple(sharding.constrain(c, axes) for c in part) for part, axes in zip(cache, KV_CACHE_LOGICAL_AXES))
        )
        cache_valid = jnp.zeros((B, S), bool).at[:, :P].set(prompt_valid_BxP)
        positions = left_padded_positions(prompt_valid_BxP)
        logits, cache = model(prompt_tokens_BxP, positions, prompt_valid_BxP, cache, 0, cache_valid, logits_from=P - 1)
        prompt_len_B = prompt_valid_BxP.sum(-1).astype(jnp.int32)

        init = dict(
            step=jnp.int32(0),
            cache=cache,
            cache_valid=cache_valid,
            logits=logits[:, -1],
            key=key,
            tokens=jnp.zeros((B, T), jnp.int32),
            q_logp=jnp.zeros((B, T), jnp.float32),
            p_logp=jnp.zeros((B, T), jnp.float32),
            valid=jnp.zeros((B, T), bool),
            done=jnp.zeros((B,), bool),
            stopped=jnp.zeros((B,), bool),
        )

        def cond(c):
            return (c["step"] < T) & ~jnp.all(c["done"])

        def body(c):
            step = c["step"]
            key, sub = jax.random.split(c["key"])
            token, q_lp, p_lp = sample_step(sub, c["logits"], sp.temperature, sp.top_k, sp.top_p)
            live = ~c["done"]
            token = jnp.where(live, token, 0)
            hit_stop = live & jnp.any(token[:, None] == stop_ids[None, :], axis=-1)
            c = dict(
                c,
                key=key,
                tokens=c["tokens"].at[:, step].set(token),
                q_logp=c["q_logp"].at[:, step].set(jnp.where(live, q_lp, 0.0)),
                p_logp=c["p_logp"].at[:, step].set(jnp.where(live, p_lp, 0.0)),
                valid=c["valid"].at[:, step].set(live),
                stopped=c["stopped"] | hit_stop,
                done=c["done"] | hit_stop,
            )
            slot = P + step
            cache_valid = c["cache_valid"].at[:, slot].set(live)
            logits, cache = model(
                token[:, None], (prompt_len_B + step)[:, None], live[:, None], c["cache"], slot, cache_valid
            )
            return dict(c, step=step + 1, cache=cache, cache_valid=cache_valid, logits=logits[:, 0])

        out = jax.lax.while_loop(cond, body, init)
        lengths = out["valid"].sum(-1).astype(jnp.int32)
        return out["tokens"], out["valid"], out["q_logp"], out["p_logp"], lengths, out["stopped"]

    return program


def kv_cache_bytes_per_device(cfg: ModelConfig, batch: int, slots: int, itemsize: int, mesh) -> int:
    sizes = dict(zip(mesh.axis_names, mesh.devices.shape))
    # Keys and values have the same size and sharded axes (only their order differs).
    spec = sharding.logical_to_spec(KV_CACHE_LOGICAL_AXES.v, (batch, cfg.num_kv_heads, slots, cfg.head_dim), sizes)
    shards = 1
    for s in spec:
        if s is not None:
            shards *= math.prod(sizes[a] for a in ((s,) if isinstance(s, str) else s))
    total = 2 * cfg.num_layers * batch * slots * cfg.num_kv_heads * cfg.head_dim * itemsize
    return total // shards


class Sampler:
    """Generates from a sharded model. Keeps one compiled program per (rows, prompt bucket, sampling
    parameters) and counts compilations, so a training run can check it compiles a bounded number."""

    def __init__(
        self,
        graphdef,
        cfg: ModelConfig,
        mesh,
        *,
        cache_dtype: str = "float32",
        pad_id: int = 0,
        min_prompt_bucket: int = 16,
        memory_fraction: float = 0.9,
        max_rows: int = 0,
    ):
        self.graphdef, self.cfg, self.mesh = graphdef, cfg, mesh
        self.cache_dtype = jnp.dtype(cache_dtype)
        self.pad_id = pad_id
        self.min_prompt_bucket = min_prompt_bucket
        self.memory_fraction = memory_fraction
        self.max_rows = max_rows  # rows one program holds (0 = all); more rows run in chunks of whole prompts
        self._compiled: dict = {}
        self.num_compilations = 0
        self.last_compile_seconds = 0.0

    def _batch_multiple(self) -> int:
        return batch_multiple(self.mesh)

    def to_global(self, local: np.ndarray):
        return to_global(self.mesh, local)

    def local_rows(self, x) -> np.ndarray:
        return local_rows(self.mesh, x)

    def prepare(self, prompts: Sequence[Sequence[int]], n: int, pad_prompts_to: int = 0):
        """Left-pad prompts (each repeated n times) into bucketed host arrays; with `pad_prompts_to`, the
        batch holds that many prompts' rows (the extra rows repeat the last prompt and are dropped after)."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        rows = len(prompts) * n
        B = max(rows, pad_prompts_to * n)
        B = -(-B // self._batch_multiple()) * self._batch_multiple()
        if jax.process_count() > 1 and B != rows:
            raise ValueError(
                f"multi-host generation needs this host's {rows} rows to be a multiple of its "
                f"{self._batch_multiple()} batch shards"
            )
        P = next_pow2(max(len(p) for p in prompts), self.min_prompt_bucket)
        tokens = np.full((B, P), self.pad_id, np.int32)
        valid = np.zeros((B, P), bool)
        index = np.zeros((B,), np.int32)
        for r in range(B):
            i = min(r // n, len(prompts) - 1)  # padding rows repeat the last prompt, and are dropped after
            p = prompts[i]
            tokens[r, P - len(p) :] = p
            valid[r, P - len(p) :] = True
            index[r] = i
        return tokens, valid, index, rows

    def _program(self, params, sp: SamplingParams, B: int, P: int):
        key = (B, P, dataclasses.replace(sp, seed=0))
        if key not in self._compiled:
            slots = P + sp.max_new_tokens
            need = kv_cache_bytes_per_device(self.cfg, B, slots, self.cache_dtype.itemsize, self.mesh)
            have = device_memory_bytes()
            log.info("KV cache: %.1f MiB per device for %d rows x %d slots", need / 2**20, B, slots)
            if need > self.memory_fraction * have:
                raise MemoryError(
                    f"KV cache needs {need / 2**30:.2f} GiB per device for {B} rows x {slots} slots, "
                    f"but only {have / 2**30:.2f} GiB are available; lower the batch, max_new_tokens "
                    f"or the prompt length, or use a larger mesh"
                )
            fn = _generate_program(self.graphdef, self.cfg, sp, self.cache_dtype)
            batch_2d = sharding.batch_sharding(self.mesh, 2)
            t0 = time.perf_counter()
            with sharding.activate(self.mesh):
                jitted = jax.jit(fn, in_shardings=(None, batch_2d, batch_2d, sharding.replicated(self.mesh)))
                self._compiled[key] = jitted.lower(
                    params,
                    jax.ShapeDtypeStruct((B, P), jnp.int32),
                    jax.ShapeDtypeStruct((B, P), jnp.bool_),
                    jax.random.key(0),
                ).compile()
            self.last_compile_seconds = time.perf_counter() - t0
            self.num_compilations += 1
        else:
            self.last_compile_seconds = 0.0
        return self._compiled[key]

    def generate(self, params, prompts: Sequence[Sequence[int]], sp: SamplingParams, key=None) -> Rollout:
        key = jax.random.key(sp.seed) if key is None else key
        per_chunk = self.max_rows // sp.n if self.max_rows else len(prompts)
        if self.max_rows and per_chunk < 1:
            raise ValueError(f"rollout.rows_per_chunk={self.max_rows} holds no prompt's {sp.n} samples")
        if len(prompts) <= per_chunk:
            return self._generate(params, prompts, sp, key)
        # Chunks of whole prompts (a group's samples stay together); the last is padded to the same shape
        # by prepare(), so one program serves them all. Each chunk draws from its own key.
        parts = [
            self._generate(params, prompts[i : i + per_chunk], sp, jax.random.fold_in(key, i // per_chunk))
            for i in range(0, len(prompts), per_chunk)
        ]
        index = np.concatenate([p.prompt_index + i * per_chunk for i, p in enumerate(parts)])
        return Rollout(*(jnp.concatenate(xs, axis=0) for xs in zip(*(p[:-1] for p in parts))), index)

    def _generate(self, params, prompts: Sequence[Sequence[int]], sp: SamplingParams, key) -> Rollout:
        tokens, valid, index, rows = self.prepare(prompts, sp.n, pad_prompts_to=self.max_rows // sp.n)
        B, P = tokens.shape
        program = self._program(params, sp, B * jax.process_count(), P)
        tok_d, val_d = self.to_global(tokens), self.to_global(valid)
        out = (tok_d, val_d) + tuple(program(params, tok_d, val_d, key))
        if B != rows:  # drop the rows that only padded the batch to the mesh or the chunk (single-host only)
            out = tuple(x[:rows] for x in out)
        return Rollout(*out, index[:rows])
