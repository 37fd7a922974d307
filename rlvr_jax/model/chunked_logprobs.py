"""Per-token log-probabilities (and entropy, and whether the target is the top token) from final hidden
states and the LM head, a chunk of positions at a time: no [B, T, V] array exists in the forward or the
backward pass (each chunk's logits are recomputed in the backward), so a 32k-token row at a 152k
vocabulary costs one [B, chunk, V] block instead of ~20 GB of fp32 logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlvr_jax import sharding
from rlvr_jax.model.decoder import flat_matmul


def _chunk_stats(hidden_BxCxE, kernel_ExV, targets_BxC, inv_temperature, want_entropy: bool):
    B, C, E = hidden_BxCxE.shape
    logits = flat_matmul(hidden_BxCxE.reshape(B * C, E), kernel_ExV, 1).reshape(B, C, -1).astype(jnp.float32)
    logits = sharding.constrain(logits * inv_temperature, ("batch", "length", "act_vocab"))
    lse_BxC = jax.nn.logsumexp(logits, axis=-1)
    target_BxC = jnp.take_along_axis(logits, targets_BxC[..., None], axis=-1)[..., 0]
    out = {"logp": target_BxC - lse_BxC, "is_top": target_BxC >= jnp.max(logits, axis=-1)}
    if want_entropy:
        probs = jnp.exp(logits - lse_BxC[..., None])
        out["entropy"] = lse_BxC - jnp.sum(probs * logits, axis=-1)
    return out


def token_stats(
    hidden_BxTxE, kernel_ExV, targets_BxT, *, temperature: float = 1.0, chunk: int = 1024, entropy: bool = False
) -> dict:
    """{"logp": log softmax(logits / temperature)[target], "is_top": target has the largest logit,
    "entropy" (when asked): of softmax(logits / temperature)}, each [B, T] fp32 / bool, computed `chunk`
    positions at a time under jax.checkpoint (T need not be a multiple of `chunk`)."""
    B, T, E = hidden_BxTxE.shape
    C = max(1, min(chunk, T))
    n = -(-T // C)
    inv_t = 1.0 / (temperature if temperature > 0 else 1.0)
    if n == 1:  # one chunk: recomputing it in the backward would save nothing
        return _chunk_stats(hidden_BxTxE, kernel_ExV, targets_BxT, inv_t, entropy)
    pad = n * C - T
    hidden = jnp.pad(hidden_BxTxE, ((0, 0), (0, pad), (0, 0))).reshape(B, n, C, E).swapaxes(0, 1)
    targets = jnp.pad(targets_BxT, ((0, 0), (0, pad))).reshape(B, n, C).swapaxes(0, 1)
    stats = jax.checkpoint(lambda h, t, k: _chunk_stats(h, k, t, inv_t, entropy))

    def body(carry, xs):
        return carry, stats(xs[0], xs[1], kernel_ExV)

    _, out = jax.lax.scan(body, None, (hidden, targets))
    return {k: v.swapaxes(0, 1).reshape(B, n * C)[:, :T] for k, v in out.items()}
