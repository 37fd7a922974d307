"""The rollout engine's sizing, typed (`EngineConfig`), and the one way to read it from a config's `rollout`
section (`engine_config`); the trainer, rlvr-eval, rlvr-generate, the planner and the benchmarks all size an
engine through it (the CLIs' flags carry the same field names)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """How big the engine's KV pool and its programs are; `Engine(graphdef, cfg, mesh, EngineConfig(...))`."""

    num_slots: int = 64  # rows decoded side by side per batch shard: the decode program's batch
    page_size: int = 16  # tokens per KV page: the granularity of the pool and of prefix sharing
    num_pages: int = 0  # pages per batch shard's pool; 0 = memory_fraction of what a device has left
    memory_fraction: float = 0.5  # of the memory a device has left (weights loaded), when num_pages is 0
    prefill_chunk: int = 512  # most prompt tokens a prefill call takes (a round with less: a smaller power of 2)
    prefill_seqs: int = 8  # sequences whose pieces one prefill call packs into its chunk (ragged)
    decode_burst: int = 8  # decode steps per program call; the host refills slots between bursts
    cache_dtype: str | None = None  # the KV pool's dtype; None = the model's param dtype
    weights_dtype: str | None = None  # the weights' dtype while sampling; None = as trained

    def __post_init__(self):
        for name in ("num_slots", "page_size", "prefill_chunk", "prefill_seqs", "decode_burst"):
            if getattr(self, name) < 1:
                raise ValueError(f"rollout engine: {name}={getattr(self, name)} must be >= 1")


def engine_config(rollout) -> EngineConfig:
    """The engine a config's `rollout` section describes (configs/grpo.py), or the parsed flags of
    rlvr-generate / rlvr-eval, which carry the same names; a "" or None dtype means the default."""
    return EngineConfig(
        num_slots=rollout.num_slots,
        page_size=rollout.page_size,
        num_pages=rollout.num_pages,
        memory_fraction=rollout.memory_fraction,
        prefill_chunk=rollout.prefill_chunk,
        prefill_seqs=rollout.prefill_seqs,
        decode_burst=rollout.decode_burst,
        cache_dtype=rollout.cache_dtype or None,
        weights_dtype=rollout.weights_dtype or None,
    )
