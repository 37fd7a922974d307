"""Domain mixtures on grain: one source per domain, pooled, weighted or adaptively weighted (adaptive.py's
bandit), reshuffled every epoch, sharded per host, batched; the position is integers (one, or one per domain
and the bandit's state), so resuming is exact on any host count.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections import Counter
from typing import Mapping, Sequence

import grain
import numpy as np

from rlvr_jax.data.adaptive import SIGNAL_UNIT, AdaptiveSettings, DomainBandit
from rlvr_jax.data.prompts import build_prompts

STATE_VERSION = 1
MIXINGS = ("fixed", "adaptive")


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

    adaptive = False  # the weights never change (AdaptiveMixture's do)

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
        _check_batch(batch_size, process_index, process_count)
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

        # Each item travels with its domain's index (for the batch's shares), dropped when served.
        per_domain = [
            grain.MapDataset.source(list(sources[d])).map(functools.partial(_tag, i)) for i, d in enumerate(domains)
        ]
        if weights is None:
            stream = grain.MapDataset.concatenate(per_domain).shuffle(seed=_grain_seed(seed, "pool")).repeat()
        else:
            stream = grain.MapDataset.mix(
                [ds.shuffle(seed=_grain_seed(seed, d)).repeat() for d, ds in zip(domains, per_domain)],
                [weights[d] for d in domains],
            )
        # Items are plain dicts of varying length: a batch is a list, not a stacked array.
        self._batches = stream.batch(batch_size, batch_fn=list)
        self._step = 0
        self._served = Counter()

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
        tagged = self._batches[self._step]
        self._step += 1
        self._served.update(self.domains[i] for i, _ in tagged)
        return _host_block(tagged, self.process_index, self.process_count)

    def take_shares(self) -> dict[str, float]:
        """Each domain's share of the global prompts served since the last call (then forgotten)."""
        return _take_shares(self._served, self.domains)

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


class AdaptiveMixture:
    """PromptMixture's interface with weights that follow adaptive.py's bandit. Each domain's prompts are one
    grain stream, reshuffled every domain epoch and repeated; a global batch takes the next counts[d] items
    of each domain's stream (counts from the bandit's weights), in an order permuted by (seed, batch
    number). Every host computes the same global batch and takes its block of it, as PromptMixture does.
    `observe` feeds a step's global per-domain signal to the bandit; the state (batches taken, each
    domain's stream position, the bandit's state) is JSON and restores exactly."""

    adaptive = True

    def __init__(
        self,
        sources: Mapping[str, Sequence],
        *,
        batch_size: int,
        settings: AdaptiveSettings,
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
    ):
        _check_batch(batch_size, process_index, process_count)
        self.domains = sorted(d for d, items in sources.items() if len(items))
        if not self.domains:
            raise ValueError("no prompts to mix")
        self.sizes = {d: len(sources[d]) for d in self.domains}
        self.batch_size, self.seed, self.settings = batch_size, seed, settings
        self.signal = settings.signal
        self.process_index, self.process_count = process_index, process_count
        self.bandit = DomainBandit(settings, self.domains)
        self._streams = {
            d: grain.MapDataset.source(list(sources[d])).shuffle(seed=_grain_seed(seed, d)).repeat()
            for d in self.domains
        }
        self._positions = {d: 0 for d in self.domains}
        self._step = 0
        self._served = Counter()
        desc = {
            "mixing": "adaptive",
            "settings": dataclasses.asdict(settings),
            "seed": seed,
            "batch_size": batch_size,
            "sizes": self.sizes,
            "first_last": {d: [_key(sources[d][0]), _key(sources[d][-1])] for d in self.domains},
        }
        self._fingerprint = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]

    def __iter__(self):
        return self

    def __next__(self) -> list:
        counts_D = self.bandit.apportion(self.batch_size)
        tagged = []
        for d, n in zip(self.domains, counts_D):
            pos = self._positions[d]
            tagged += [(d, self._streams[d][pos + k]) for k in range(int(n))]
            self._positions[d] = pos + int(n)
        order = np.random.default_rng([_grain_seed(self.seed, "order"), self._step]).permutation(len(tagged))
        tagged = [tagged[i] for i in order]
        self._step += 1
        self._served.update(d for d, _ in tagged)
        return _host_block(tagged, self.process_index, self.process_count)

    @property
    def step(self) -> int:
        """Global batches taken so far."""
        return self._step

    def weights(self) -> dict[str, float]:
        """The weights the next batch is drawn with."""
        return {d: float(w) for d, w in zip(self.domains, self.bandit.weights_D)}

    def epochs(self) -> dict[str, float]:
        """Passes over each domain's prompts so far."""
        return {d: self._positions[d] / self.sizes[d] for d in self.domains}

    def take_shares(self) -> dict[str, float]:
        """Each domain's share of the global prompts served since the last call (then forgotten)."""
        return _take_shares(self._served, self.domains)

    def observe(self, units_D, groups_D) -> dict[str, float]:
        """A step's global signal sums (adaptive.SIGNAL_UNITs) and group counts per domain (in `domains` order,
        adaptive.domain_totals summed over hosts) update the weights. Returns the step's
        mixing/signal/<domain> (domains with groups this step) and the next batch's mixing/weight/<domain>."""
        self.bandit.observe(units_D, groups_D)
        out = {
            f"mixing/signal/{d}": float(u * SIGNAL_UNIT / n)
            for d, u, n in zip(self.domains, units_D, groups_D)
            if n > 0
        }
        out.update({f"mixing/weight/{d}": w for d, w in self.weights().items()})
        return out

    def get_state(self) -> dict:
        """JSON-able state for the trainer's checkpoint."""
        return {
            "version": STATE_VERSION,
            "mixing": "adaptive",
            "step": self._step,
            "positions": dict(self._positions),
            "bandit": self.bandit.get_state(),
            "batch_size": self.batch_size,
            "fingerprint": self._fingerprint,
        }

    def set_state(self, state: Mapping) -> None:
        if state.get("version") != STATE_VERSION or state.get("mixing") != "adaptive":
            raise ValueError(
                f"data iterator state (version {state.get('version')!r}, mixing {state.get('mixing', 'fixed')!r}) "
                f"is not an adaptive mixture's of version {STATE_VERSION}: data.mixing changed since the checkpoint?"
            )
        if state["fingerprint"] != self._fingerprint:
            raise ValueError(
                "checkpoint's adaptive mixture differs from this one (sources, sizes, settings, batch size or "
                "seed changed): refusing to resume at a position in another stream"
            )
        self._step = int(state["step"])
        self._positions = {d: int(state["positions"][d]) for d in self.domains}
        self.bandit.set_state(state["bandit"])


def make_mixture(
    sources: Mapping[str, Sequence],
    *,
    mixing: str,
    batch_size: int,
    seed: int = 0,
    weights: Mapping[str, float] | None = None,
    adaptive: AdaptiveSettings | None = None,
    process_index: int = 0,
    process_count: int = 1,
):
    """The mixture `mixing` names (MIXINGS): PromptMixture ("fixed": `weights`, or pooled when None) or
    AdaptiveMixture ("adaptive": `adaptive`'s settings, or their defaults when None)."""
    if mixing not in MIXINGS:
        raise ValueError(f"mixing={mixing!r}: choose one of {MIXINGS}")
    where = dict(batch_size=batch_size, seed=seed, process_index=process_index, process_count=process_count)
    if mixing == "fixed":
        return PromptMixture(sources, weights=weights, **where)
    if weights:
        raise ValueError(f"adaptive mixing chooses the weights itself; fixed weights {dict(weights)} were also given")
    return AdaptiveMixture(sources, settings=adaptive or AdaptiveSettings(), **where)


def _check_batch(batch_size: int, process_index: int, process_count: int) -> None:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} out of range for {process_count} processes")
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(f"global batch_size {batch_size} must be a positive multiple of process_count {process_count}")


def _tag(index: int, item):
    return index, item


def _host_block(tagged: list, process_index: int, process_count: int) -> list:
    """This host's contiguous block of a global batch of (domain, item) pairs, items only."""
    per_host = len(tagged) // process_count
    lo = process_index * per_host
    return [item for _, item in tagged[lo : lo + per_host]]


def _take_shares(served: Counter, domains) -> dict[str, float]:
    total = sum(served.values())
    shares = {d: served[d] / total for d in domains} if total else {}
    served.clear()
    return shares


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
