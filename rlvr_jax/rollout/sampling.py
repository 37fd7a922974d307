"""What the rollout engine (engine.py) samples with and returns: sampling parameters, the `Rollout`, one
decoding step's draw (temperature, top-k, top-p), the trainer's teacher-forced logprobs of a completion, the
rows of a batch-sharded array on each host (and a `Rollout` assembled from them), a device's memory.

Which logprobs: `Rollout.logprobs` is log q(token), q = the distribution actually sampled from
(softmax(logits / temperature), restricted to top-k / top-p and renormalised). `policy_logprobs` is
log softmax(logits / temperature) without truncation: what `completion_logprobs` recomputes
teacher-forced in the trainer (same temperature), so the two agree when nothing is truncated.
Greedy decoding (temperature 0) reports the raw temperature-1 log-probabilities in both.

Shapes (docs/CONTRACTS.md "Shape legend"): B rows (prompts x n), P prompt bucket, T completion slots
(max new tokens), V vocab.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import psutil
from flax import nnx
from jax.experimental import multihost_utils

from rlvr_jax import sharding
from rlvr_jax.model import chunked_logprobs
from rlvr_jax.model.decoder import left_padded_positions


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


def device_memory_bytes() -> int:
    """Memory a device can hold: the accelerator's limit, or the host's available RAM on CPU."""
    dev = jax.local_devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    return int(psutil.virtual_memory().available // max(1, jax.local_device_count()))


def device_free_bytes() -> int:
    """Memory a device has left: its limit less what is in use (the weights, the optimizer state, ...), or
    the host's available RAM per device on CPU."""
    dev = jax.local_devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return device_memory_bytes()


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


def host_block(n_prompts: int, samples: int, local_shards: int) -> tuple[int, int]:
    """(start, size) of this host's block of a chunk of `n_prompts` prompts: contiguous blocks of one size
    for every host (multi-host generation needs equal rows, a multiple of the host's batch shards), so a
    prompt's position in the chunk is its global index and the draws match a single-host run's."""
    P = jax.process_count()
    if P == 1:
        return 0, n_prompts  # one host: the engine pads the rows to its shards itself
    size = -(-n_prompts // P)
    while size * samples % local_shards:
        size += 1
    return jax.process_index() * size, size


def gather_rows(local_BxK: np.ndarray) -> np.ndarray:
    """Every host's rows of a small per-prompt array, in host order (the hosts' blocks, concatenated)."""
    if jax.process_count() == 1:
        return local_BxK
    return np.asarray(multihost_utils.process_allgather(local_BxK)).reshape(-1, *local_BxK.shape[1:])


def assemble_rollout(mesh, prompts, rows: dict, n: int, T: int, *, pad_id: int, min_prompt_bucket: int) -> Rollout:
    """The host's rows ({row: an object with tokens, q_logp, p_logp, stopped}; rows = prompts x n) as a
    `Rollout` of global batch-sharded arrays: padded to the host's batch shards with empty rows, dropped
    again on one host; prompts left-padded to a power of two of at least `min_prompt_bucket`."""
    shards = batch_multiple(mesh)
    B = len(prompts) * n
    Bp = -(-B // shards) * shards if B else 0
    if jax.process_count() > 1 and Bp != B:
        raise ValueError(
            f"multi-host generation needs this host's {B} rows to be a multiple of its {shards} batch shards"
        )
    P = next_pow2(max((len(p) for p in prompts), default=1), min_prompt_bucket)
    prompt_tokens = np.full((Bp, P), pad_id, np.int32)
    prompt_valid = np.zeros((Bp, P), bool)
    tokens = np.zeros((Bp, T), np.int32)
    valid = np.zeros((Bp, T), bool)
    q_logp = np.zeros((Bp, T), np.float32)
    p_logp = np.zeros((Bp, T), np.float32)
    stopped = np.zeros(Bp, bool)
    for b in range(Bp):
        p = prompts[min(b, B - 1) // n]
        prompt_tokens[b, P - len(p) :] = p
        prompt_valid[b, P - len(p) :] = True
        row = rows.get(b)
        if row is None:
            continue
        m = len(row.tokens)
        tokens[b, :m], valid[b, :m] = row.tokens, True
        q_logp[b, :m], p_logp[b, :m] = row.q_logp, row.p_logp
        stopped[b] = row.stopped
    lengths = valid.sum(-1).astype(np.int32)
    index = np.repeat(np.arange(len(prompts), dtype=np.int32), n)
    arrays = (prompt_tokens, prompt_valid, tokens, valid, q_logp, p_logp, lengths, stopped)
    if not B:
        return Rollout(*(jnp.asarray(x) for x in arrays), index)
    out = tuple(to_global(mesh, x) for x in arrays)
    if Bp != B:
        out = tuple(x[:B] for x in out)
    return Rollout(*out, index)


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
