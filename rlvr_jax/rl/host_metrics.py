"""A GRPO step's metrics on the host: statistics of this host's rows (rewards, lengths, verifier outcomes),
how the rollout used the engine, and their combination across processes into the global step's values
(metric names: docs/CONTRACTS.md). Device metrics come from the update (update.py)."""

from __future__ import annotations

from collections import defaultdict

import jax
import numpy as np
from jax.experimental import multihost_utils

from rlvr_jax import storage
from rlvr_jax.data import adaptive
from rlvr_jax.rollout import lengths as lengths_lib
from rlvr_jax.verifiers import DOMAINS


def host_metrics(*, records, rewards, scores, lengths, stopped, keep):
    """Reward and length statistics of every sampled row; kept_frac of the rows the update uses."""
    out = {
        "reward/mean": float(rewards.mean()),
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "truncated_frac": float((~stopped).mean()),
        "kept_frac": float(keep.mean()),
        "verifier/timeouts": float(sum(s.reason == "timeout" for s in scores)),
        "verifier/errors": float(sum(s.reason == "error" for s in scores)),
        # rows scored 0 ungraded because they hit max_new_tokens (verifier.truncated_zero); of truncated_frac
        "verifier/truncated": float(sum(s.reason == "truncated" for s in scores)),
    }
    by_domain = defaultdict(list)
    for r, x in zip(records, rewards):
        by_domain[r["domain"]].append(x)
    for dom, xs in by_domain.items():
        out[f"reward/{dom}/mean"] = float(np.mean(xs))
        out[f"accuracy/{dom}"] = float(np.mean(np.asarray(xs) >= 1.0))
    return out


def across_hosts(host: dict) -> dict:
    """Combine per-host metrics: counts add up, maxima take the max, the rest average (hosts hold
    equal row counts, so the average of host means is the global mean)."""
    if jax.process_count() == 1:
        return host

    # Hosts may hold different domains this step: gather over one fixed key list, NaN where absent.
    per_domain = (
        [f"reward/{d}/mean" for d in DOMAINS]
        + [f"accuracy/{d}" for d in DOMAINS]
        + [
            f"verifier/{d}/{k}"
            for d in DOMAINS + ("other",)
            for k in ("scored", "timeouts", "errors", "restarts", "latency_mean_s", "latency_max_s")
        ]
    )
    keys = sorted(
        set(k for k in host if not k.startswith(("reward/", "accuracy/", "verifier/")))
        | set(per_domain)
        | {
            "reward/mean",
            "verifier/scored",
            "verifier/timeouts",
            "verifier/errors",
            "verifier/truncated",
            "verifier/restarts",
            "verifier/deduplicated",
        }
    )
    local = np.asarray([host.get(k, np.nan) for k in keys], np.float64)
    values = np.asarray(multihost_utils.process_allgather(local))
    out = {}
    for i, k in enumerate(keys):
        col = values[:, i]
        if np.all(np.isnan(col)):
            continue
        if k.startswith(("verifier/", "prompts/", "partial/")) and "latency" not in k:
            out[k] = float(np.nansum(col))
        elif "max" in k:
            out[k] = float(np.nanmax(col))
        else:
            out[k] = float(np.nanmean(col))
    return out


def sum_across_hosts(counts) -> np.ndarray:
    """The elementwise sum of a same-shaped integer array over all processes, exact and identical on every
    host whatever the host count (the adaptive mixture's per-domain totals: every host, on any number of
    hosts, must compute the same weights from them). int32 on the wire: jax runs without 64-bit types."""
    counts = np.asarray(counts, np.int64)
    if np.abs(counts).max(initial=0) >= 2**31:
        raise OverflowError(f"counts beyond int32 cannot be summed across hosts: max {np.abs(counts).max()}")
    if jax.process_count() == 1:
        return counts
    return np.asarray(multihost_utils.process_allgather(counts.astype(np.int32)), np.int64).sum(0)


def rollout_metrics(engine) -> dict:
    """How the step's generation used the engine (this host's): programs compiled so far in the run (a
    bounded number), decode slots busy, the KV pool's peak use, sequences preempted for lack of pages."""
    st = engine.stats
    return {
        "rollout/compilations": engine.num_compilations,
        "rollout/slot_occupancy": st["slot_occupancy"],
        "rollout/peak_pages_frac": st["peak_pages"] / max(1, st["pool_pages"]),
        "rollout/preemptions": st["preemptions"],
    }


def step_host_metrics(c, s, sc, ub, step: int, extra=None) -> dict:
    """A GRPO step's host metrics (c: loop.Components, s: loop.StepSettings, sc: loop.Scored, ub:
    loop.UpdateBatch; `extra`: partial rollouts'), combined across processes, with the mixture's."""
    host = host_metrics(
        records=sc.records,
        rewards=sc.rewards_B,
        scores=sc.scores,
        lengths=sc.lengths_B,
        stopped=sc.stopped_B,
        keep=ub.keep_B,
    )
    host["groups/informative_frac"] = float(ub.informative_N.mean())
    host.update({f"prompts/{k.split('/', 1)[1]}": v for k, v in c.prompt_counts.items()} if step == 1 else {})
    host.update(c.pool.counters(reset=True))
    host.update(extra or {})
    host = across_hosts(host)
    host["lr"] = s.lr_at(step - 1)
    host.update(rollout_metrics(c.engine))
    host.update(mixing_metrics(c, s, sc, ub))
    return host


def mixing_metrics(c, s, sc, ub) -> dict:
    """mixing/share/<domain>: each domain's share of the step's prompts (global). Adaptive mixing also feeds
    the step's global per-domain signal (of every sampled group, all draws) to the mixture, which moves the
    weights of the next batches: mixing/signal/<domain> and mixing/weight/<domain>. Call it before the
    step's checkpoint, whose data state then holds the moved weights."""
    out = {f"mixing/share/{d}": v for d, v in c.mixture.take_shares().items()}
    if not c.mixture.adaptive:
        return out
    signal_N = adaptive.group_signals(ub.rewards_B.reshape(-1, s.group_size))[c.mixture.signal]
    domains_N = [rec["domain"] for rec in sc.records[:: s.group_size]]
    totals_2xD = np.stack(adaptive.domain_totals(domains_N, signal_N, c.mixture.domains))
    units_D, groups_D = sum_across_hosts(totals_2xD)
    out.update(c.mixture.observe(units_D, groups_D))
    return out


def record_lengths(workdir: str, lengths_B, cap: int) -> None:
    """Adds the step's response lengths (every host's rows) to the run's `lengths_histogram.json`, which
    rlvr-plan reads as a length distribution (plan.lengths = "histogram"). Process 0 writes it."""
    counts = sum_across_hosts(lengths_lib.histogram_of(lengths_B, cap)["counts"])
    if jax.process_index() != 0:
        return
    path = storage.join(workdir, lengths_lib.HISTOGRAM_FILE)
    h = lengths_lib.read_histogram(path) if storage.exists(path) else None
    step = {"edges": lengths_lib.histogram_of([], cap)["edges"], "counts": [int(x) for x in counts]}
    if h is not None and h["edges"] == step["edges"]:
        step["counts"] = [a + b for a, b in zip(h["counts"], step["counts"])]
    storage.write_json(path, step, indent=None)
