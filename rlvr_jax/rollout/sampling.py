"""The rollout engine: one jitted program per shape bucket runs prefill and a `lax.while_loop` decode
over a preallocated, sharded KV cache, and returns a `Rollout` with per-token logprobs.

Which logprobs: `Rollout.logprobs` is log q(token), q = the distribution actually sampled from
(softmax(logits / temperature), restricted to top-k / top-p and renormalised). `policy_logprobs` is
log softmax(logits / temperature) without truncation: what `completion_logprobs` recomputes
teacher-forced in the trainer (same temperature), so the two agree when nothing is truncated.
Greedy decoding (temperature 0) reports the raw temperature-1 log-probabilities in both.

Shapes (docs/CONTRACTS.md "Shape legend"): B rows (prompts x n), P prompt bucket, T completion slots
(max new tokens), S = P + T cache slots, V vocab.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import psutil
from flax import nnx
from jax.experimental import multihost_utils

from rlvr_jax import sharding
from rlvr_jax.model import chunked_logprobs
from rlvr_jax.model.decoder import KV_CACHE_LOGICAL_AXES, KVCache, ModelConfig, left_padded_positions

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 64
    n: int = 1  # samples per prompt
    stop_token_ids: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.max_new_tokens < 1 or self.n < 1:
            raise ValueError(f"invalid sampling parameters: {self}")


class Rollout(NamedTuple):
    prompt_tokens: jax.Array  # [B, P] int32, left-padded
    prompt_valid: jax.Array  # [B, P] bool
    completion_tokens: jax.Array  # [B, T] int32, pad after the stop token
    completion_valid: jax.Array  # [B, T] bool, true up to and including the stop token
    logprobs: jax.Array  # [B, T] float32, log q(token) of the sampling distribution
    policy_logprobs: jax.Array  # [B, T] float32, log softmax(logits / temperature)(token)
    lengths: jax.Array  # [B] int32 completion lengths
    stopped: jax.Array  # [B] bool: finished by a stop token (else by length)
    prompt_index: np.ndarray  # [B_host] int32: which of this host's prompts each of its rows samples


def next_pow2(n: int, minimum: int = 8) -> int:
    return max(minimum, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


def filter_logits(logits_BxV, temperature: float, top_k: int, top_p: float):
    """Temperature-scaled logits with everything outside top-k / top-p set to -inf."""
    scaled = logits_BxV.astype(jnp.float32) / temperature
    if top_k:
        kth = jax.lax.top_k(scaled, top_k)[0][..., -1:]
        scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    if top_p < 1.0:
        sorted_desc = -jnp.sort(-scaled, axis=-1)
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it is < top_p.
        keep_sorted = mass_before < top_p
        threshold = jnp.min(jnp.where(keep_sorted, sorted_desc, jnp.inf), axis=-1, keepdims=True)
        scaled = jnp.where(scaled < threshold, -jnp.inf, scaled)
    return scaled


CDF_BLOCK = 128  # vocabulary entries per block of the two-level inverse CDF in `categorical`


def categorical(key, logits_BxV):
    """One token per row from softmax(logits) (-inf entries never drawn), by a two-level inverse CDF:
    a block of the vocabulary by its mass, then a token inside it. It needs two uniforms per row where
    Gumbel-max needs one per vocabulary entry (that RNG was a third of CPU decode time); fp32 cumsums
    of at most V/128 and 128 terms keep the rounding of the sampled distribution to ~1e-5."""
    B, V = logits_BxV.shape
    blocks = -(-V // CDF_BLOCK)
    weights = jnp.exp(logits_BxV - jnp.max(logits_BxV, axis=-1, keepdims=True))
    weights = jnp.pad(weights, ((0, 0), (0, blocks * CDF_BLOCK - V))).reshape(B, blocks, CDF_BLOCK)
    u = 1.0 - jax.random.uniform(key, (2, B, 1))  # in (0, 1], so a zero-mass entry is never picked
    block_cdf = jnp.cumsum(weights.sum(-1), axis=-1)
    block = jnp.minimum(jnp.sum(block_cdf < u[0] * block_cdf[:, -1:], axis=-1), blocks - 1)
    inner_cdf = jnp.cumsum(jnp.take_along_axis(weights, block[:, None, None], axis=1)[:, 0], axis=-1)
    offset = jnp.minimum(jnp.sum(inner_cdf < u[1] * inner_cdf[:, -1:], axis=-1), CDF_BLOCK - 1)
    return (block * CDF_BLOCK + offset).astype(jnp.int32)


def sample_step(key, logits_BxV, temperature: float, top_k: int, top_p: float):
    """(token, log q(token), log softmax(logits / temperature)(token)) for one decoding step."""
    if temperature == 0.0:
        token = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
        logp = jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1)
        lp = jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]
        return token, lp, lp
    filtered = filter_logits(logits_BxV, temperature, top_k, top_p)
    token = categorical(key, filtered)
    q_logp = jnp.take_along_axis(jax.nn.log_softmax(filtered, axis=-1), token[:, None], axis=-1)[:, 0]
    if not top_k and top_p == 1.0:  # nothing truncated: q is the policy itself
        return token, q_logp, q_logp
    policy = jax.nn.log_softmax(logits_BxV.astype(jnp.float32) / temperature, axis=-1)
    p_logp = jnp.take_along_axis(policy, token[:, None], axis=-1)[:, 0]
    return token, q_logp, p_logp


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


def device_memory_bytes() -> int:
    """Memory a device can hold: the accelerator's limit, or the host's available RAM on CPU."""
    dev = jax.local_devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    return int(psutil.virtual_memory().available // max(1, jax.local_device_count()))


def batch_multiple(mesh) -> int:
    """Rows this host must supply: its share of the data x fsdp batch shards."""
    sizes = dict(zip(mesh.axis_names, mesh.devices.shape))
    shards = sizes.get("data", 1) * sizes.get("fsdp", 1)
    return max(1, shards // jax.process_count())


def to_global(mesh, local: np.ndarray):
    """Host-local rows -> one batch-sharded global array (each host supplies its own rows)."""
    sh = sharding.batch_sharding(mesh, local.ndim)
    if jax.process_count() == 1:
        return jax.device_put(local, sh)
    return jax.make_array_from_process_local_data(sh, local)


def local_rows(mesh, x) -> np.ndarray:
    """This host's rows of a batch-sharded global array, as numpy."""
    if x.is_fully_addressable:
        return np.asarray(x)
    spec = sharding.batch_sharding(mesh, x.ndim).spec
    return np.asarray(multihost_utils.global_array_to_host_local_array(x, mesh, spec))


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


def completion_logprobs(
    graphdef,
    params,
    prompt_tokens_BxP,
    prompt_valid_BxP,
    completion_tokens_BxT,
    completion_valid_BxT,
    temperature: float = 1.0,
    return_entropy: bool = False,
    chunk: int = 1024,
):
    """Teacher-forced log softmax(logits / temperature) of each completion token: the trainer's side of the
    sampler's `policy_logprobs`. Differentiable in `params`. The LM head runs `chunk` positions at a time
    (model/chunked_logprobs.py): no [B, T, V] logits exist, forward or backward."""
    tokens = jnp.concatenate([prompt_tokens_BxP, completion_tokens_BxT], axis=1)
    valid = jnp.concatenate([prompt_valid_BxP, completion_valid_BxT], axis=1)
    positions = left_padded_positions(valid)
    model = nnx.merge(graphdef, params)
    P = prompt_tokens_BxP.shape[1]
    # hidden states of the last prompt position and the completion's (each predicts the next token)
    hidden_BxTxE, _ = model(tokens, positions, valid, logits_from=P - 1, return_hidden=True)
    stats = chunked_logprobs.token_stats(
        hidden_BxTxE[:, :-1],
        model.head_kernel(),
        completion_tokens_BxT,
        temperature=temperature,
        chunk=chunk,
        entropy=return_entropy,
    )
    logp = jnp.where(completion_valid_BxT, stats["logp"], 0.0)
    if not return_entropy:
        return logp
    return logp, jnp.where(completion_valid_BxT, stats["entropy"], 0.0)
