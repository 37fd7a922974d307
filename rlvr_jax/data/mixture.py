"""Domain mixtures on grain: one source per domain, pooled or weighted, reshuffled every epoch,
sharded per host, batched; the position is one integer, so resuming is exact on any host count.
"""

from __future__ import annotations

import hashlib
import json
from typing import Mapping, Sequence

import grain

from rlvr_jax.data.prompts import build_prompts

STATE_VERSION = 1


class PromptMixture:
    """Iterator of per-host prompt batches (lists of items) over per-domain sources.

    weights=None pools all domains and shuffles them together each epoch (the study's mix:
    shares follow sizes, every prompt once per epoch). Explicit weights repeat each domain
    forever, reshuffled per domain epoch, interleaved in the weights' proportions (grain's
    deterministic mix). Host p of P takes the p-th contiguous block of B/P elements of global
    batch s (elements [s*B, (s+1)*B)), so concatenating the hosts' batches in process order gives
    the single-host batch, row for row: a multi-host run sees exactly the rows of a one-host run,
    and the state (batches taken) restores onto any process count with the same global batch size. Batches come by random access, not a prefetching
    iterator, so the state is just that integer.
    """

    def __init__(
        self,
        sources: Mapping[str, Sequence],
        *,
        batch_size: int,
        seed: int = 0,
        weights: Mapping[str, float] | None = None,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} out of range for {process_count} processes")
        if batch_size < 1 or batch_size % process_count:
            raise ValueError(
                f"global batch_size {batch_size} must be a positive multiple of process_count {process_count}"
            )
        domains = sorted(d for d, items in sources.items() if len(items))
        if weights is not None:
            unknown = sorted(set(weights) - set(sources))
            if unknown:
                raise ValueError(f"weights name domains without a source: {unknown}")
            if any(w < 0 for w in weights.values()):
                raise ValueError(f"weights must be >= 0: {dict(weights)}")
            empty = sorted(d for d, w in weights.items() if w > 0 and not len(sources[d]))
            if empty:
                raise ValueError(f"domains {empty} have weight > 0 but no prompts")
            domains = [d for d in domains if weights.get(d, 0) > 0]
        if not domains:
            raise ValueError("no prompts to mix")
        self.domains = domains
        self.sizes = {d: len(sources[d]) for d in domains}
        total = sum(weights[d] for d in domains) if weights else sum(self.sizes.values())
        self.shares = {d: (weights[d] if weights else self.sizes[d]) / total for d in domains}
        self.batch_size, self.seed = batch_size, seed
        self.process_index, self.process_count = process_index, process_count
        self._fingerprint = self._make_fingerprint(sources, weights)

        per_domain = [grain.MapDataset.source(list(sources[d])) for d in domains]
        if weights is None:
            stream = grain.MapDataset.concatenate(per_domain).shuffle(seed=_grain_seed(seed, "pool")).repeat()
        else:
            stream = grain.MapDataset.mix(
                [ds.shuffle(seed=_grain_seed(seed, d)).repeat() for d, ds in zip(domains, per_domain)],
                [weights[d] for d in domains],
            )
        # Items are plain dicts of varying length: a batch is a list, not a stacked array.
        per_host = batch_size // process_count
        lo = process_index * per_host
        self._batches = stream.batch(batch_size, batch_fn=list).map(lambda b: b[lo : lo + per_host])
        self._step = 0

    def _make_fingerprint(self, sources, weights) -> str:
        # What decides the global stream; restoring into a different one is an error.
        desc = {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "weights": dict(weights) if weights else None,
            "sizes": self.sizes,
            "first_last": {d: [_key(sources[d][0]), _key(sources[d][-1])] for d in self.domains},
        }
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]

    def __iter__(self):
        return self

    def __next__(self) -> list:
        batch = self._batches[self._step]
        self._step += 1
        return batch

    @property
    def step(self) -> int:
        """Global batches taken so far."""
        return self._step

    def epochs(self) -> dict[str, float]:
        """Passes over each domain's prompts so far (all equal in the proportional mix)."""
        return {d: self._step * self.batch_size * self.shares[d] / self.sizes[d] for d in self.domains}

    def get_state(self) -> dict:
        """JSON-able position for the trainer's checkpoint."""
        return {
            "version": STATE_VERSION,
            "step": self._step,
            "batch_size": self.batch_size,
            "fingerprint": self._fingerprint,
        }

    def set_state(self, state: Mapping) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data iterator state version {state.get('version')!r}, expected {STATE_VERSION}")
        if state["batch_size"] != self.batch_size:
            raise ValueError(
                f"checkpoint was taken with global batch_size {state['batch_size']}, this mixture has {self.batch_size}"
            )
        if state["fingerprint"] != self._fingerprint:
            raise ValueError(
                "checkpoint's data mixture differs from this one (sources, sizes, weights "
                "or seed changed): refusing to resume at a position in another stream"
            )
        self._step = int(state["step"])


def _grain_seed(seed: int, name: str) -> int:
    # grain reshuffles epoch e with seed + e, so seeds 0 and 1 would share all but one epoch:
    # hash the user seed so nearby seeds (and domains) get unrelated streams.
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:4], "big")


def _key(item) -> str:
    record = item.get("record", item) if isinstance(item, dict) else item
    return str(record.get("id")) if isinstance(record, dict) else repr(record)[:200]


def build_mixture(
    records,
    tokenizer,
    prompt_config,
    *,
    batch_size: int,
    seed: int = 0,
    weights: Mapping[str, float] | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> tuple[PromptMixture, dict[str, int]]:
    """Records -> prompts (template, length limit) -> mixture; also the kept/dropped counts."""

    by_domain, counts = build_prompts(records, tokenizer, prompt_config)
    mixture = PromptMixture(
        by_domain,
        batch_size=batch_size,
        seed=seed,
        weights=weights,
        process_index=process_index,
        process_count=process_count,
    )
    return mixture, counts
