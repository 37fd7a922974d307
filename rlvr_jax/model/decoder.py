"""The decoder: one Flax NNX model covering Llama 3.x, Qwen2/Qwen2.5 and Qwen3.

Parameters carry logical axis names only (``logical_axes`` metadata); ``sharding.py`` maps them
to the mesh. Shapes (docs/CONTRACTS.md "Shape legend"): B rows, T tokens fed in, S key/cache slots,
E embed, F mlp, H query heads, K kv heads, Q = H / K, D head dim, V vocab, C contracted features.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rlvr_jax import sharding
from rlvr_jax.model import attention

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite, so all-masked rows stay NaN-free


# What a rematerialised layer keeps for its backward pass: nothing (recompute it all), or the results of
# its matmuls without a batch dimension (the projections; attention and elementwise work is recomputed).
REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of one decoder. Field names follow ours; hf_config.py maps Hugging Face keys."""

    family: str  # "llama" | "qwen2" | "qwen3"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    # Llama 3 frequency scaling as a tuple (factor, low_freq_factor, high_freq_factor, original_max_pos);
    # None for plain RoPE. A tuple keeps the config hashable (it is a static jit argument).
    rope_llama3_scaling: tuple[float, float, float, int] | None = None
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2
    qk_norm: bool = False  # Qwen3
    max_position_embeddings: int = 32768
    param_dtype: str = "float32"  # "float32" | "bfloat16": the stored weights (the optimizer's masters)
    # "float32" | "bfloat16": the activations and matmul operands of Decoder.__call__ (each weight cast at its
    # use, its gradient fp32); matmuls accumulate, and softmax, norm statistics and logits run, in fp32 always.
    # The rollout engine computes in its own weights' dtype (rollout.weights_dtype), not this.
    compute_dtype: str = "float32"
    remat: bool = False  # rematerialise each layer in the backward pass
    remat_policy: str = "full"  # with remat, what a layer keeps for the backward pass: REMAT_POLICIES
    # Cache-free passes (update, teacher-forced logprobs, SFT) run the layers as one lax.scan over their
    # stacked weights: one compiled layer whatever the depth. The weights stay stored per layer (HF,
    # Orbax, merging and analyses see the same tree); they are stacked inside the jitted pass.
    scan_layers: bool = False
    # cache-free passes: "auto" (splash on TPU, blocked elsewhere) or one of attention.IMPLEMENTATIONS
    attention_impl: str = "auto"

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        for name in ("param_dtype", "compute_dtype"):
            if getattr(self, name) not in ("float32", "bfloat16"):
                raise ValueError(f"{name}={getattr(self, name)!r}: expected 'float32' or 'bfloat16'")
        if self.attention_impl != "auto" and self.attention_impl not in attention.IMPLEMENTATIONS:
            raise ValueError(
                f"attention_impl={self.attention_impl!r}: expected one of {sorted(attention.IMPLEMENTATIONS)}"
            )
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy={self.remat_policy!r}: expected one of {sorted(REMAT_POLICIES)}")

    @property
    def dtype(self):
        return jnp.dtype(self.param_dtype)


class KVCache(NamedTuple):
    """Per-layer buffers: keys [B, K, D, S], values [B, K, S, D]. Each is laid out so that the
    decode step's product runs along its contiguous axis and streams the cache once: scores
    q . k over D with S minor, outputs p . v over S with D minor. (Keys as [B, K, S, D] made the
    score product 3x slower on CPU; a [B, S, K, D] cache is transposed whole on every step.)"""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]

    @staticmethod
    def zeros(cfg: ModelConfig, batch: int, slots: int, dtype) -> "KVCache":
        k_shape = (batch, cfg.num_kv_heads, cfg.head_dim, slots)
        v_shape = (batch, cfg.num_kv_heads, slots, cfg.head_dim)
        return KVCache(
            tuple(jnp.zeros(k_shape, dtype) for _ in range(cfg.num_layers)),
            tuple(jnp.zeros(v_shape, dtype) for _ in range(cfg.num_layers)),
        )


K_CACHE_LOGICAL_AXES = ("batch", "kv_heads", "head_dim", "cache_len")
V_CACHE_LOGICAL_AXES = ("batch", "kv_heads", "cache_len", "head_dim")
KV_CACHE_LOGICAL_AXES = KVCache(K_CACHE_LOGICAL_AXES, V_CACHE_LOGICAL_AXES)


def _param(rngs: nnx.Rngs | None, init, shape, dtype, axes):
    value = init(rngs.params(), shape, dtype) if rngs is not None else init(None, shape, dtype)
    return nnx.Param(value, logical_axes=axes)


_normal = lambda std: lambda key, shape, dtype: std * jax.random.normal(key, shape, dtype)
_ones = lambda key, shape, dtype: jnp.ones(shape, dtype)
_zeros = lambda key, shape, dtype: jnp.zeros(shape, dtype)


class Proj(nnx.Module):
    """A dense projection contracting the input's last axis into ``out_shape``, optional bias."""

    def __init__(self, in_features, out_shape, axes, *, bias, dtype, rngs, contract_dims=1):
        self.contract_dims = contract_dims
        self.kernel = _param(rngs, _normal(0.02), (*in_features, *out_shape), dtype, axes)
        self.bias = _param(rngs, _zeros, out_shape, dtype, axes[contract_dims:]) if bias else None

    def __call__(self, x):
        kernel = self.kernel[...]
        n = self.contract_dims
        lead, contracted = x.shape[: x.ndim - n], x.shape[x.ndim - n :]
        y = flat_matmul(x.reshape(-1, *contracted), kernel, n)
        y = y.reshape(*lead, *kernel.shape[n:])
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


def flat_matmul(x_BTxC, kernel, contract_dims: int):
    """x @ kernel accumulated in fp32 (an fp32 result), with every token in one leading axis. Batch and length
    are flattened first: the weight gradient of a dot over [B, T, ...] contracts two axes, and XLA:CPU then
    copies its operands to a transposed layout (the GRPO update of the tiny default spent a third of its time
    there); over one axis the backward dot reads them in place (MLP fwd+bwd 217 -> 93 ms).
    A kernel of another dtype than x (fp32 masters, bf16 compute) is cast to x's at use: `_cast_matmul`."""
    if kernel.dtype != x_BTxC.dtype:  # as one [N, C] x [C, O] product (XLA:CPU runs no other bf16 -> f32 dot)
        n = contract_dims
        C = math.prod(kernel.shape[:n])
        y = _cast_matmul(x_BTxC.reshape(x_BTxC.shape[0], C), kernel.reshape(C, -1))
        return y.reshape(x_BTxC.shape[0], *kernel.shape[n:])
    return _dot(x_BTxC, kernel, contract_dims)


def _dot(x_BTxC, kernel, n: int):
    return jax.lax.dot_general(
        x_BTxC, kernel, ((tuple(range(1, 1 + n)), tuple(range(n))), ((), ())), preferred_element_type=jnp.float32
    )


# The matmul of mixed precision, with its gradient written out: both backward products take operands in x's
# dtype (autodiff's would multiply the fp32 output cotangent by them: an fp32 matmul), and the kernel's gradient
# leaves its fp32-accumulating product in fp32, so the sum over the batch (and over the data-parallel shards,
# which the partitioner reduces at that product) is fp32 and never rounded to bf16 on its way to the masters.
@jax.custom_vjp
def _cast_matmul(x_NxC, kernel_CxO):
    return _dot(x_NxC, kernel_CxO.astype(x_NxC.dtype), 1)


def _cast_matmul_fwd(x_NxC, kernel_CxO):
    cast = kernel_CxO.astype(x_NxC.dtype)
    return _dot(x_NxC, cast, 1), (x_NxC, cast, jnp.zeros((0,), kernel_CxO.dtype))


def _cast_matmul_bwd(res, g_NxO):
    x_NxC, cast_CxO, kernel_dtype = res
    g_NxO = g_NxO.astype(x_NxC.dtype)
    dx = jax.lax.dot_general(g_NxO, cast_CxO, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    dk = jax.lax.dot_general(x_NxC, g_NxO, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return dx.astype(x_NxC.dtype), dk.astype(kernel_dtype.dtype)


_cast_matmul.defvjp(_cast_matmul_fwd, _cast_matmul_bwd)


class RMSNorm(nnx.Module):
    def __init__(self, dim, axis_name, *, eps, dtype, rngs):
        self.eps = eps
        self.scale = _param(rngs, _ones, (dim,), dtype, (axis_name,))

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def rope_inverse_frequencies(cfg: ModelConfig) -> jax.Array:
    """Per-pair inverse frequencies [D/2], with Llama 3's long-context scaling when configured."""
    exponents = jnp.arange(0, cfg.head_dim, 2, dtype=jnp.float32) / cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta**exponents)
    if cfg.rope_llama3_scaling is None:
        return inv_freq
    factor, low_ff, high_ff, original_max = cfg.rope_llama3_scaling
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = original_max / low_ff
    high_freq_wavelen = original_max / high_ff
    scaled = jnp.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original_max / wavelen - low_ff) / (high_ff - low_ff)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return jnp.where(is_medium, smoothed, scaled)


class Rope(NamedTuple):
    """cos and sin [B, T, D/2] of each token's rotary angles (one table for every layer)."""

    cos: jax.Array
    sin: jax.Array


def rope_tables(positions_BxT, inv_freq) -> Rope:
    angles = positions_BxT.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
    return Rope(jnp.cos(angles), jnp.sin(angles))


def apply_rope(x_BxTxHxD, rope: Rope):
    """Rotary embedding in the half-split layout Hugging Face checkpoints use (on keys, K heads for H)."""
    cos, sin = rope.cos[:, :, None, :], rope.sin[:, :, None, :]
    x = x_BxTxHxD.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x_BxTxHxD.dtype)


class Embed(nnx.Module):
    def __init__(self, vocab, dim, *, dtype, rngs):
        self.embedding = _param(rngs, _normal(0.02), (vocab, dim), dtype, ("vocab", "embed"))


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs):
        E, H, K, D, dt = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.dtype
        self.cfg = cfg
        self.q_proj = Proj((E,), (H, D), ("embed", "heads", "head_dim"), bias=cfg.qkv_bias, dtype=dt, rngs=rngs)
        self.k_proj = Proj((E,), (K, D), ("embed", "kv_heads", "head_dim"), bias=cfg.qkv_bias, dtype=dt, rngs=rngs)
        self.v_proj = Proj((E,), (K, D), ("embed", "kv_heads", "head_dim"), bias=cfg.qkv_bias, dtype=dt, rngs=rngs)
        self.o_proj = Proj(
            (H, D), (E,), ("heads", "head_dim", "embed"), bias=False, dtype=dt, rngs=rngs, contract_dims=2
        )
        if cfg.qk_norm:
            self.q_norm = RMSNorm(D, "head_dim", eps=cfg.rms_norm_eps, dtype=dt, rngs=rngs)
            self.k_norm = RMSNorm(D, "head_dim", eps=cfg.rms_norm_eps, dtype=dt, rngs=rngs)
        else:
            self.q_norm = self.k_norm = None

    def project(self, x_BxTxE, rope: Rope):
        """Queries [B, T, H, D], keys and values [B, T, K, D] of the tokens, queries and keys rotated by `rope`
        (the paged rollout engine runs its own attention on them)."""
        q = self.q_proj(x_BxTxE)
        k = self.k_proj(x_BxTxE)
        v = self.v_proj(x_BxTxE)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return apply_rope(q, rope), apply_rope(k, rope), v

    def __call__(self, x_BxTxE, positions_BxT, inv_freq, key_valid_BxS, cache_kv, cache_start, segments_BxT=None):
        cfg = self.cfg
        B, T, _ = x_BxTxE.shape
        K, Q, D = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim
        q, k, v = self.project(x_BxTxE, rope_tables(positions_BxT, inv_freq))
        k_BxKxTxD = k.transpose(0, 2, 1, 3)
        v_BxKxTxD = v.transpose(0, 2, 1, 3)
        q_BxTxKxQxD = q.reshape(B, T, K, Q, D)
        if cache_kv is None:  # a cache-free pass: no [T, T] scores (attention.py)
            out = attention.self_attention(
                q_BxTxKxQxD, k_BxKxTxD, v_BxKxTxD, key_valid_BxS, segments_BxT, impl=cfg.attention_impl
            )
            return self.o_proj(out.reshape(B, T, K * Q, D).astype(x_BxTxE.dtype)), None
        cache_k, cache_v = cache_kv
        keys_BxKxDxS = jax.lax.dynamic_update_slice_in_dim(
            cache_k, k_BxKxTxD.transpose(0, 1, 3, 2).astype(cache_k.dtype), cache_start, axis=3
        )
        values_BxKxSxD = jax.lax.dynamic_update_slice_in_dim(
            cache_v, v_BxKxTxD.astype(cache_v.dtype), cache_start, axis=2
        )
        keys_BxKxDxS = sharding.constrain(keys_BxKxDxS, K_CACHE_LOGICAL_AXES)
        values_BxKxSxD = sharding.constrain(values_BxKxSxD, V_CACHE_LOGICAL_AXES)
        new_cache_kv = (keys_BxKxDxS, values_BxKxSxD)
        if T == 1:  # decoding: as a [Q, D] x [D, S] product per (row, kv head); XLA:CPU picks a slow dot with T
            scores = jnp.einsum(
                "bkqd,bkds->bkqs",
                q_BxTxKxQxD[:, 0],
                keys_BxKxDxS.astype(q.dtype),
                preferred_element_type=jnp.float32,
            )[:, :, :, None]
        else:
            scores = jnp.einsum(
                "btkqd,bkds->bkqts", q_BxTxKxQxD, keys_BxKxDxS.astype(q.dtype), preferred_element_type=jnp.float32
            )
        scores = scores / math.sqrt(D)
        S = values_BxKxSxD.shape[2]
        query_slot_T = cache_start + jnp.arange(T)
        causal_TxS = jnp.arange(S)[None, :] <= query_slot_T[:, None]
        mask_BxTxS = causal_TxS[None] & key_valid_BxS[:, None, :]
        scores = jnp.where(mask_BxTxS[:, None, None], scores, _MASK_VALUE)
        probs = jax.nn.softmax(scores, axis=-1)
        if T == 1:  # decoding: a broadcast multiply-reduce streams V once; XLA:CPU's batched dot took 4x longer
            out = jnp.sum(probs[:, :, :, 0, :, None] * values_BxKxSxD[:, :, None].astype(jnp.float32), axis=-2)
            out = out[:, None]  # [B, 1, K, Q, D]
        else:
            out = jnp.einsum(
                "bkqts,bksd->btkqd",
                probs.astype(values_BxKxSxD.dtype),
                values_BxKxSxD,
                preferred_element_type=jnp.float32,
            )
        out_BxTxHxD = out.reshape(B, T, K * Q, D).astype(x_BxTxE.dtype)
        return self.o_proj(out_BxTxHxD), new_cache_kv


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs):
        E, F, dt = cfg.hidden_size, cfg.intermediate_size, cfg.dtype
        self.gate_proj = Proj((E,), (F,), ("embed", "mlp"), bias=False, dtype=dt, rngs=rngs)
        self.up_proj = Proj((E,), (F,), ("embed", "mlp"), bias=False, dtype=dt, rngs=rngs)
        self.down_proj = Proj((F,), (E,), ("mlp", "embed"), bias=False, dtype=dt, rngs=rngs)

    def __call__(self, x):
        hidden = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
        hidden = sharding.constrain(hidden, ("batch", "length", "act_mlp"))
        return self.down_proj(hidden)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs):
        dt, eps = cfg.dtype, cfg.rms_norm_eps
        self.input_norm = RMSNorm(cfg.hidden_size, "embed", eps=eps, dtype=dt, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, "embed", eps=eps, dtype=dt, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x, positions, inv_freq, key_valid, cache_kv, cache_start, segments=None):
        attn_out, new_cache_kv = self.attn(
            self.input_norm(x), positions, inv_freq, key_valid, cache_kv, cache_start, segments
        )
        x = sharding.constrain(x + attn_out, ("batch", "length", "act_embed"))
        x = sharding.constrain(x + self.mlp(self.post_attn_norm(x)), ("batch", "length", "act_embed"))
        return x, new_cache_kv


def _run_block(block, x, positions, inv_freq, key_valid, cache_kv, cache_start, segments):
    return block(x, positions, inv_freq, key_valid, cache_kv, cache_start, segments)


def _remat(fn, cfg):
    return nnx.remat(fn, policy=REMAT_POLICIES[cfg.remat_policy]) if cfg.remat else fn


def _scan_blocks(blocks, hidden, positions, inv_freq, key_valid, segments, cfg):
    """The blocks as one lax.scan over their weights, stacked here with a leading `layers` axis."""
    block_def, _ = nnx.split(blocks[0])
    axes = sharding.logical_axes_tree(nnx.state(blocks[0]))
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[nnx.to_pure_dict(nnx.state(b)) for b in blocks])
    stacked = jax.tree_util.tree_map(
        lambda x, a: sharding.constrain(x, ("layers", *a)), stacked, axes, is_leaf=lambda a: isinstance(a, tuple)
    )

    def body(h, weights):
        block = nnx.merge(block_def, weights)
        h, _ = block(h, positions, inv_freq, key_valid, None, 0, segments)
        return h, None

    hidden, _ = jax.lax.scan(_remat(body, cfg), hidden, stacked)
    return hidden


class Decoder(nnx.Module):
    """Causal LM. ``__call__`` returns fp32 logits [B, T, V] and the updated cache (or None); its hidden states
    are in cfg.compute_dtype (the embedding rows gathered from the stored weights, then cast)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dt = cfg.dtype
        self.embed = Embed(cfg.vocab_size, cfg.hidden_size, dtype=dt, rngs=rngs)
        self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.hidden_size, "embed", eps=cfg.rms_norm_eps, dtype=dt, rngs=rngs)
        if not cfg.tie_embeddings:
            self.lm_head = Proj(
                (cfg.hidden_size,), (cfg.vocab_size,), ("embed", "vocab"), bias=False, dtype=dt, rngs=rngs
            )

    def __call__(
        self,
        tokens_BxT,
        positions_BxT,
        valid_BxT,
        cache: KVCache | None = None,
        cache_start=0,
        cache_valid_BxS=None,
        segments_BxT=None,
        logits_from: int = 0,
        return_hidden: bool = False,
    ):
        """Without a cache, ``valid_BxT`` masks padding keys. With one, the T new tokens are written at
        slots [cache_start, cache_start + T) and ``cache_valid_BxS`` (already including them) masks keys.
        ``logits_from`` returns logits of positions [logits_from, T) only: a prefill needs the last one,
        a trainer scoring completions skips the prompt's (the LM head and its gradient are then paid for
        the completion tokens only).
        ``segments_BxT`` (no cache) packs several sequences per row: attention stays within equal ids.
        ``return_hidden`` returns the final-normed hidden states [B, T, E] instead of logits."""
        if segments_BxT is not None and cache is not None:
            raise ValueError("packed segments are for cache-free forward passes only")
        cfg = self.cfg
        hidden = jnp.take(self.embed.embedding[...], tokens_BxT, axis=0).astype(cfg.compute_dtype)
        hidden = sharding.constrain(hidden, ("batch", "length", "act_embed"))
        inv_freq = rope_inverse_frequencies(cfg)
        key_valid = valid_BxT if cache is None else cache_valid_BxS
        new_k, new_v = [], []
        if cache is None and cfg.scan_layers:
            hidden = _scan_blocks(self.layers, hidden, positions_BxT, inv_freq, key_valid, segments_BxT, cfg)
        else:
            run = _remat(_run_block, cfg)
            for i, block in enumerate(self.layers):
                cache_kv = None if cache is None else (cache.k[i], cache.v[i])
                hidden, new_kv = run(
                    block, hidden, positions_BxT, inv_freq, key_valid, cache_kv, cache_start, segments_BxT
                )
                if new_kv is not None:
                    new_k.append(new_kv[0])
                    new_v.append(new_kv[1])
        if logits_from:
            hidden = hidden[:, logits_from:]
        hidden = self.final_norm(hidden)
        new_cache = None if cache is None else KVCache(tuple(new_k), tuple(new_v))
        if return_hidden:  # the caller applies head_kernel() itself, e.g. chunk by chunk (chunked_logprobs.py)
            return hidden, new_cache
        B, T, E = hidden.shape
        logits = flat_matmul(hidden.reshape(B * T, E), self.head_kernel(), 1).reshape(B, T, -1)
        logits = sharding.constrain(logits, ("batch", "length", "act_vocab"))
        return logits, new_cache

    def head_kernel(self):
        """The LM head as an [E, V] matrix: the tied embedding's transpose, or lm_head's kernel."""
        return self.embed.embedding[...].T if self.cfg.tie_embeddings else self.lm_head.kernel[...]


def token_logprobs(logits_BxTxV, targets_BxT):
    """log p(target) under the raw (temperature-1) policy, in fp32."""
    logits = logits_BxTxV.astype(jnp.float32)
    target_logits = jnp.take_along_axis(logits, targets_BxT[..., None], axis=-1)[..., 0]
    return target_logits - jax.nn.logsumexp(logits, axis=-1)


def token_entropy(logits_BxTxV):
    logp = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def left_padded_positions(valid_BxT):
    """Positions that count only real tokens, so a left-padded row starts at position 0."""
    return jnp.maximum(jnp.cumsum(valid_BxT.astype(jnp.int32), axis=-1) - 1, 0)


def forward(graphdef, params, tokens_BxT, valid_BxT, positions_BxT=None):
    """Functional forward for jitted code: logits [B, T, V] from a params pure dict."""
    if positions_BxT is None:
        positions_BxT = left_padded_positions(valid_BxT)
    model = nnx.merge(graphdef, params)
    logits, _ = model(tokens_BxT, positions_BxT, valid_BxT)
    return logits


def abstract_model(cfg: ModelConfig) -> Decoder:
    """The model with ShapeDtypeStruct leaves: no memory, any size."""
    return nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))


def count_params(cfg: ModelConfig) -> int:
    _, state = nnx.split(abstract_model(cfg))
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(nnx.to_pure_dict(state)))


def model_shardings(cfg, mesh, rules: Mapping[str, Any] = sharding.RULES):
    """(graphdef, abstract params, shardings) of a Decoder config, with no memory allocated."""
    graphdef, abstract_state = nnx.split(abstract_model(cfg))
    axes = sharding.logical_axes_tree(abstract_state)
    abstract = sharding.abstract_pure(abstract_state)
    return graphdef, abstract, sharding.tree_shardings(abstract, axes, mesh, rules)
