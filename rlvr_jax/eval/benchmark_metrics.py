"""The numbers a benchmark reports, from per-item correctness: accuracy (Avg@K), the unbiased pass@k
estimator, IFEval's prompt- and instruction-level strict/loose accuracy, each with its standard error."""

from __future__ import annotations

import math

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_and_stderr(per_item) -> tuple[float, float]:
    """The mean of per-item scores and its standard error sqrt(var / n), var the sample variance (ddof=1,
    as lm-evaluation-harness computes it); 0 for a single item. With K samples an item's score is its own
    mean over the K first, so the error counts items, not samples."""
    x = np.asarray(per_item, np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("no items to average")
    se = math.sqrt(x.var(ddof=1) / x.size) if x.size > 1 else 0.0
    return float(x.mean()), se


def _metric(label: str, per_item) -> dict:
    value, se = mean_and_stderr(per_item)
    return {"label": label, "value": value, "stderr": se, "n": int(np.size(per_item))}


def _correct(items: list[dict]) -> np.ndarray:
    """[items, K] correctness (1.0 / 0.0) of each item's K samples."""
    rows = [it["correct"] for it in items]
    if not rows or len({len(r) for r in rows}) != 1:
        raise ValueError("every item needs the same number (>= 1) of scored samples")
    return np.asarray(rows, np.float64)


def accuracy(items: list[dict]) -> dict:
    """Accuracy; with K samples per item, Avg@K (the mean over an item's samples, then over items)."""
    arr = _correct(items)
    k = arr.shape[1]
    return {"accuracy": _metric("accuracy" if k == 1 else f"accuracy (avg@{k})", arr.mean(1))}


def pass_ks(samples: int) -> list[int]:
    """The k reported for `samples` per problem: 1, evalplus' 10 and 100 where there are that many, and K."""
    return sorted({1, samples} | {k for k in (10, 100) if k <= samples})


def pass_at(items: list[dict]) -> dict:
    """pass@1 (with K samples: c/K per problem, i.e. Avg@K) and, for K > 1, the unbiased pass@k."""
    arr = _correct(items)
    n = arr.shape[1]
    out = {}
    for k in pass_ks(n):
        per_item = [pass_at_k(n, int(c), k) for c in arr.sum(1)]
        label = f"pass@{k}" if k > 1 or n == 1 else f"pass@1 (avg@{n})"
        out[f"pass@{k}"] = _metric(label, per_item)
    return out


# IFEval's four numbers, as the paper and lm-evaluation-harness name them, and the verifier's `details`
# key that holds each per sample (official mode: rlvr_jax.verifiers.instruction).
IF_METRICS = (
    ("prompt_level_strict_acc", "prompt-level strict accuracy", "prompt_strict"),
    ("inst_level_strict_acc", "instruction-level strict accuracy", "inst_strict"),
    ("prompt_level_loose_acc", "prompt-level loose accuracy", "prompt_loose"),
    ("inst_level_loose_acc", "instruction-level loose accuracy", "inst_loose"),
)


def _sample_details(item: dict, key: str) -> list:
    details = item.get("details")
    if not details or any(not isinstance(d, dict) or key not in d for d in details):
        reasons = sorted({str(d.get("error", "")) for d in details or [] if isinstance(d, dict)} - {""})
        raise ValueError(
            f"item {item.get('id')!r}: its scores carry no {key!r} (official IF mode details)"
            + (f"; the verifier said: {reasons[0]}" if reasons else "")
        )
    return [d[key] for d in details]


def instruction_following(items: list[dict]) -> dict:
    """IFEval / IFBench: prompt-level accuracy (every instruction of a prompt followed) over prompts and
    instruction-level accuracy over all instructions pooled (lm-evaluation-harness flattens them the
    same way, so its error counts instructions), each strict and loose. With K samples an item's (or
    an instruction's) score is its mean over the K first."""
    out = {}
    for name, label, key in IF_METRICS:
        if key.startswith("prompt"):
            per_item = [np.mean([float(v) for v in _sample_details(it, key)]) for it in items]
        else:
            per_item = []
            for it in items:
                held = np.asarray([[float(v) for v in s] for s in _sample_details(it, key)], np.float64)
                per_item += list(held.mean(0))  # [K, instructions] -> one score per instruction
        out[name] = _metric(label, per_item)
    return out


METRICS = {"accuracy": accuracy, "pass@k": pass_at, "ifeval": instruction_following}
