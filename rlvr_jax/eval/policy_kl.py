"""Policy neighbourhood (REFERENCE.md "Analyses"): KL(expert || other) on one domain's prompts, with
completions sampled from the expert and teacher-forced through both models; per sequence and per token.

The estimate is the Monte-Carlo one on the expert's own samples: per token log p_expert(y_t) -
log p_other(y_t); summed over a completion it is an unbiased estimate of the sequence-level KL.
Shapes (docs/CONTRACTS.md "Shape legend"): B rows (prompts x samples), P prompt bucket, T completion slots.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np

from rlvr_jax.rollout.engine import Engine
from rlvr_jax.rollout.sampling import SamplingParams, gather_rows, host_block


def kl_stats(expert_logp_BxT, other_logp_BxT, valid_BxT) -> dict:
    """Per-sequence (mean over sequences of the summed token KL) and per-token (total / tokens) KL."""
    valid = np.asarray(valid_BxT, bool)
    diff = np.where(valid, np.asarray(expert_logp_BxT, np.float64) - np.asarray(other_logp_BxT, np.float64), 0.0)
    per_seq_B = diff.sum(1)
    n_tokens = int(valid.sum())
    n = len(per_seq_B)
    return {
        "per_sequence": float(per_seq_B.mean()) if n else float("nan"),
        "per_sequence_stderr": float(per_seq_B.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
        "per_token": float(diff.sum() / n_tokens) if n_tokens else float("nan"),
        "n_sequences": n,
        "n_tokens": n_tokens,
    }


def _pad_rows(x, multiple: int, fill):
    x = np.asarray(x)
    extra = -len(x) % multiple
    if not extra:
        return x
    return np.concatenate([x, np.full((extra,) + x.shape[1:], fill, x.dtype)])


def policy_kl(
    engine: Engine,
    logprob_fn,
    expert_params,
    others: Mapping[str, object],
    prompts: Sequence[Sequence[int]],
    sp: SamplingParams,
    *,
    batch_prompts: int = 64,
) -> dict:
    """{name: kl_stats} of KL(expert || others[name]) on `prompts` (token ids), sampled with `sp` from
    the expert. `logprob_fn(params, batch)` is rl_step.make_logprob_fn at sp's temperature."""
    shards = engine.local_shards  # this host's rows must split over its batch shards
    parts = {name: [] for name in others}
    for start in range(0, len(prompts), batch_prompts):
        chunk = prompts[start : start + batch_prompts]
        mine, size = host_block(len(chunk), sp.n, shards)  # many hosts: each samples its block of the chunk
        block = [chunk[min(i, len(chunk) - 1)] for i in range(mine, mine + size)]
        key = jax.random.fold_in(jax.random.key(sp.seed), start)
        ro = engine.generate(expert_params, block, sp, key=key)
        real_B = mine + np.asarray(ro.prompt_index) < len(chunk)  # the block's filler copies are dropped
        valid = engine.local_rows(ro.completion_valid) & real_B[:, None]
        rows = len(valid)
        # Padding rows are all-invalid: they add nothing to either sum.
        batch = {
            "prompt_tokens": _pad_rows(engine.local_rows(ro.prompt_tokens), shards, 0),
            "prompt_valid": _pad_rows(engine.local_rows(ro.prompt_valid), shards, True),
            "completion_tokens": _pad_rows(engine.local_rows(ro.completion_tokens), shards, 0),
            "loss_mask": _pad_rows(valid, shards, False),
        }
        batch = {k: engine.to_global(v) for k, v in batch.items()}
        expert_logp = gather_rows(engine.local_rows(logprob_fn(expert_params, batch))[:rows])
        real, valid = gather_rows(real_B), gather_rows(valid)
        for name, params in others.items():
            other_logp = gather_rows(engine.local_rows(logprob_fn(params, batch))[:rows])
            parts[name].append((expert_logp[real], other_logp[real], valid[real]))
    return {
        name: kl_stats(
            np.concatenate([p[0] for p in ps]), np.concatenate([p[1] for p in ps]), np.concatenate([p[2] for p in ps])
        )
        for name, ps in parts.items()
    }
