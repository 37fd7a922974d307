"""Built-in tasks: deterministic generators for the four domains, sized for a tiny model, with
train/eval splits disjoint by prompt and a short reference response per record (thinking format).
This module draws the records and splits them; each domain's module generates its tasks.
"""

from __future__ import annotations

import copy
import hashlib
import random

from rlvr_jax.data.synthetic import code, instruction, math, science

DOMAINS = ("math", "code", "science", "if")
SPLITS = ("train", "eval")
# Train sizes follow the study's domain shares (math 28%, science 25%, code 25%, IF 22%), so a
# proportional-to-size mixture of the built-ins reproduces the study's pooled shuffle.
SIZES = {
    "train": {"math": 1400, "code": 1250, "science": 1250, "if": 1100},
    "eval": {"math": 200, "code": 200, "science": 200, "if": 200},
    # Warm-start records after the RL ones in the train stream (`sft_records`); code's train prompt
    # space holds about 2,290 distinct prompts. Science gets few: its ~100 questions each seen ~40 times
    # (1,250 records) gave an anchor at Avg@8 0.98 on held-out science and RL nothing to learn; with 150
    # it is at 0.32 (pass@8 0.91) and 150 science GRPO steps reach 0.57 (docs/MEASUREMENTS.md).
    "sft": {"math": 1400, "code": 1000, "science": 150, "if": 1100},
}
EVAL_FRACTION = 0.1  # share of the prompt space hashed into the held-out split
MAX_MISSES = 20_000  # consecutive duplicate/other-split draws that mean the space is exhausted
SEED = 1234


def split_of(prompt: str) -> str:
    """Held-out iff the prompt's hash falls in the first EVAL_FRACTION of the range: the same
    text can never land in both splits."""
    h = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
    return "eval" if h < EVAL_FRACTION * 2**64 else "train"


GENERATORS = {"math": math.generate, "code": code.generate, "science": science.generate, "if": instruction.generate}


def sft_records(domain: str, n: int | None = None, *, train_size: int | None = None, seed: int = SEED) -> list[dict]:
    """Warm-start records that no RL run sees: the `n` (default: as many as the RL set) train-split
    records that follow the first `train_size` (default SIZES), which are the RL training records.
    An anchor fitted on the RL prompts themselves has memorised their answers, and RL on them then
    has nothing left to teach (the study's SFT data is likewise separate from its RL data)."""
    offset = SIZES["train"][domain] if train_size is None else train_size
    n = SIZES["sft"][domain] if n is None else n
    records = builtin_records(domain, "train", offset + n, seed=seed)[offset:]
    for i, r in enumerate(records):
        r["id"] = f"builtin-{domain}-sft-{i:05d}"
        r["metadata"]["split"] = "sft"
    return records


def builtin_records(
    domain: str, split: str, n: int | None = None, *, seed: int = SEED, up_to: bool = False
) -> list[dict]:
    """The first `n` (default SIZES) records of one domain and split, in a fixed order. With
    `up_to`, fewer when the split holds fewer distinct prompts (held-out code has about 230);
    without it that is an error."""
    if domain not in GENERATORS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    n = SIZES[split][domain] if n is None else n
    # Records are prefix-stable in n, so the longest run so far serves every smaller n (IF
    # references run the registry's checks, worth caching); callers get their own copies.
    key = (domain, split, seed)
    if len(_CACHE.get(key, ())) < n and key not in _EXHAUSTED:
        _CACHE[key] = _generate(domain, split, n, seed)
        if len(_CACHE[key]) < n:
            _EXHAUSTED.add(key)
    if len(_CACHE[key]) < n and not up_to:
        raise ValueError(
            f"built-in {domain}/{split}: the generator ran out of distinct prompts "
            f"after {len(_CACHE[key])} (asked for {n})"
        )
    return copy.deepcopy(list(_CACHE[key][:n]))


_CACHE: dict[tuple, tuple[dict, ...]] = {}
_EXHAUSTED: set[tuple] = set()  # keys whose cached records are every distinct prompt of the split


def _generate(domain: str, split: str, n: int, seed: int) -> tuple[dict, ...]:
    # One stream per domain, shared by both splits, so a prompt's split never depends on n.
    rng = random.Random(f"{seed}/{domain}")
    out, seen = [], set()
    misses = 0
    while len(out) < n:
        item = GENERATORS[domain](rng)
        prompt = item["prompt"]
        if prompt in seen or split_of(prompt) != split:
            misses += 1
            # Consecutive misses only pile up once the split's prompt space is nearly exhausted.
            if misses > MAX_MISSES:
                break
            continue
        misses = 0
        seen.add(prompt)
        out.append(
            {
                "id": f"builtin-{domain}-{split}-{len(out):05d}",
                "domain": domain,
                "messages": [{"role": "user", "content": prompt}],
                "ground_truth": gt() if callable(gt := item["ground_truth"]) else gt,
                "source": "builtin",
                "metadata": {
                    "split": split,
                    "task": item["task"],
                    "reference": ref() if callable(ref := item["reference"]) else ref,
                },
            }
        )
    return tuple(out)


def all_builtin(split: str, domains=DOMAINS) -> list[dict]:
    return [r for d in domains for r in builtin_records(d, split)]
