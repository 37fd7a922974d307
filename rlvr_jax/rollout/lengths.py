"""Response-length distributions for simulating a rollout's schedule (rollout/simulate.py, rlvr-plan):
geometric with a mean and a cap, or a histogram (JSON {"edges": [...], "counts": [...]}) such as the one a
training run writes of its rows' lengths (`histogram_of`, saved as `lengths_histogram.json`)."""

from __future__ import annotations

import json
from typing import Callable, Sequence

import numpy as np

from rlvr_jax import storage

HISTOGRAM_FILE = "lengths_histogram.json"


def geometric(mean: float, cap: int, seed: int = 0) -> Callable[[int], np.ndarray]:
    """k lengths at a time: geometric with `mean` before clipping to [1, cap] (the rollout bench's draw)."""
    if mean < 1 or cap < 1:
        raise ValueError(f"geometric lengths: mean={mean} and cap={cap} must be >= 1")
    rng = np.random.default_rng(seed)
    return lambda k: np.clip(rng.geometric(min(1.0, 1.0 / mean), k), 1, cap).astype(np.int64)


def histogram_of(lengths: Sequence[int], cap: int, bins: int = 64) -> dict:
    """{"edges", "counts"} of response lengths over [1, cap + 1): `bins` equal bins (the last ends past cap)."""
    edges = np.linspace(1, cap + 1, min(bins, cap) + 1).round().astype(np.int64)
    counts, _ = np.histogram(np.asarray(lengths), bins=edges)
    return {"edges": [int(e) for e in edges], "counts": [int(c) for c in counts]}


def add_to_histogram(h: dict | None, lengths: Sequence[int], cap: int, bins: int = 64) -> dict:
    """A running histogram (None: a new one) with these lengths added: what a trainer writes to
    `lengths_histogram.json` after each step, from the step's rows."""
    new = histogram_of(lengths, cap, bins)
    if h is None:
        return new
    if h["edges"] != new["edges"]:
        raise ValueError("add_to_histogram: the histogram was made with another cap or number of bins")
    return {"edges": new["edges"], "counts": [a + b for a, b in zip(h["counts"], new["counts"])]}


def read_histogram(path: str) -> dict:
    """A histogram file, checked: edges increasing integers >= 1, one count (>= 0, not all 0) per bin."""
    try:
        h = json.loads(storage.read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from e
    h = h if isinstance(h, dict) else {}
    edges, counts = h.get("edges"), h.get("counts")
    if not isinstance(edges, list) or not isinstance(counts, list) or len(edges) != len(counts) + 1 or not counts:
        raise ValueError(f'{path}: expected {{"edges": [e0, .., eK], "counts": [c1, .., cK]}} (K+1 edges, K counts)')
    e, c = np.asarray(edges, np.float64), np.asarray(counts, np.float64)
    if e[0] < 1 or (np.diff(e) <= 0).any() or (c < 0).any() or c.sum() == 0:
        raise ValueError(f"{path}: edges must start >= 1 and increase, counts be >= 0 and not all 0")
    return {"edges": edges, "counts": counts}


def from_histogram(h: dict, cap: int, seed: int = 0) -> Callable[[int], np.ndarray]:
    """k lengths at a time from a histogram: a bin by its count, then uniform within [lo, hi), capped."""
    rng = np.random.default_rng(seed)
    e, c = np.asarray(h["edges"], np.int64), np.asarray(h["counts"], np.float64)

    def draw(k: int) -> np.ndarray:
        b = rng.choice(len(c), size=k, p=c / c.sum())
        x = rng.integers(e[b], np.maximum(e[b + 1], e[b] + 1))
        return np.clip(x, 1, cap).astype(np.int64)

    return draw


def mean_of(h: dict) -> float:
    """The histogram's mean length (bin midpoints)."""
    e, c = np.asarray(h["edges"], np.float64), np.asarray(h["counts"], np.float64)
    return float(((e[:-1] + e[1:] - 1) / 2 * c).sum() / c.sum())
