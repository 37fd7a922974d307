"""A row of the rollout section (benchmarks/rollout.py runs it after its own): partial rollouts vs
synchronous steps.

Partial vs synchronous: 8 consecutive RL steps of the long-tailed workload (benchmarks/rollout.py's: each
row's budget geometric with mean max_new / 6, clipped to [1, max_new], fresh per step), the same engine
(model, slots, pool, programs) and the same weights (a rollout bench: no update between steps). A step wants
`prompts` groups of n rows, and the engine has a slot for each of a step's rows. Synchronous: one call over
`prompts` fresh prompts, to the last row. Partial (rollout/partial.py): ceil(oversample x prompts) prompts in
flight, the step ends when `prompts` groups are complete, the rest carried (recomputed next step), groups
older than max_staleness dropped. Useful tokens = tokens of the groups a step returns, over all 8 steps, per
wall second (compilation excluded: every block-table width the steps can use is compiled first and checked not
to compile while timed). The two modes' steps run interleaved, each timed alone.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time

import jax
import numpy as np

from benchmarks.generation import save_random_hf_model
from rlvr_jax import sharding
from rlvr_jax.model import hf
from rlvr_jax.rollout import engine as engine_lib
from rlvr_jax.rollout import pages as pg
from rlvr_jax.rollout import partial as partial_lib
from rlvr_jax.rollout import sampling
from rlvr_jax.rollout.settings import EngineConfig

FIG_PARTIAL = "rollout, long-tailed RL steps, partial vs synchronous"
TARGETS = {FIG_PARTIAL: ">= 1.3x synchronous"}


@dataclasses.dataclass(frozen=True)
class PartialSetup:
    prompts: int  # groups per step
    n: int
    prompt_len: int
    max_new: int
    num_slots: int
    page_size: int
    steps: int = 8
    oversample: float = 2.0
    max_staleness: int = 2
    seed: int = 0


# the slots hold a whole step's rows, as in the study's presets (tiny: 128 slots for 16 x 8 rows; math on
# v5p:4x4x4: 64 shards x 32 slots for 128 x 16 rows), so a synchronous step decodes its rows at once and
# waits for the longest
FULL = PartialSetup(prompts=8, n=8, prompt_len=64, max_new=1024, num_slots=64, page_size=16)
QUICK = PartialSetup(prompts=4, n=4, prompt_len=16, max_new=32, num_slots=16, page_size=8, steps=3)


class Draws:
    """Step after step, batches of `prompts` items of random prompts with long-tailed per-row budgets."""

    def __init__(self, s: PartialSetup, vocab: int):
        self.s, self.vocab = s, vocab
        self.rng = np.random.default_rng(s.seed + 1)

    def __call__(self) -> list[dict]:
        s = self.s
        budgets = np.clip(self.rng.geometric(6.0 / s.max_new, (s.prompts, s.n)), 1, s.max_new)
        prompts = self.rng.integers(1, self.vocab, (s.prompts, s.prompt_len))
        return [{"prompt_ids": p.tolist(), "max_new_R": b.tolist()} for p, b in zip(prompts, budgets)]


def _engine(graphdef, cfg, mesh, s: PartialSetup):
    """An engine whose pool holds num_slots whole rows beside the oversampled set's recomputes."""
    per_row = pg.cdiv(s.prompt_len + s.max_new, s.page_size)
    sizes = EngineConfig(
        num_slots=s.num_slots,
        page_size=s.page_size,
        num_pages=s.num_slots * per_row + 1,
        cache_dtype="float32",
    )
    return engine_lib.Engine(graphdef, cfg, mesh, sizes)


def _compile_all(eng, params, sp, s: PartialSetup) -> None:
    """Every block-table width a call of this workload can pick: a power of two pages, from a row of one new
    token to the longest row."""
    J = sampling.next_pow2(pg.cdiv(s.prompt_len + 1, s.page_size), 1)
    while J < 2 * pg.cdiv(s.prompt_len + s.max_new, s.page_size):
        eng.compile(params, sp, J)
        J *= 2


def _timed_steps(eng, params, sp, s: PartialSetup, vocab: int):
    """The 8 steps of both modes, interleaved (synchronous step k, then partial step k), so a change of the
    machine's load touches both. Returns {mode: (seconds, useful tokens, engine stats per step)} and the
    partial steps' metrics. A step's seconds exclude the engine's compiling in it (a fresh draw can need a
    program no earlier step did: a prefill chunk's layout, a run of bursts over a wider snapshot)."""
    draws = {"synchronous": Draws(s, vocab), "partial": Draws(s, vocab)}
    drv = partial_lib.PartialRollouts(eng, sp, partial_lib.PartialSettings(s.prompts, s.oversample, s.max_staleness))
    out = {mode: [0.0, 0, []] for mode in draws}
    metrics = []
    for step in range(s.steps):
        t0, c0 = time.perf_counter(), eng.compile_seconds
        items = draws["synchronous"]()
        budgets = [b for it in items for b in it["max_new_R"]]
        r = eng.generate(
            params, [it["prompt_ids"] for it in items], sp, key=jax.random.key(step), max_new_tokens=budgets
        )
        useful = int(np.asarray(jax.block_until_ready(r.lengths)).sum())
        _add(out["synchronous"], time.perf_counter() - t0 - (eng.compile_seconds - c0), useful, eng.stats)
        t0, c0 = time.perf_counter(), eng.compile_seconds
        p = drv.step(params, draws["partial"], jax.random.key(step), step + 1)
        useful = int(np.asarray(jax.block_until_ready(p.rollout.lengths)).sum())
        _add(out["partial"], time.perf_counter() - t0 - (eng.compile_seconds - c0), useful, eng.stats)
        metrics.append(p.metrics)
    return out, metrics


def _add(acc: list, seconds: float, useful: int, stats: dict) -> None:
    acc[0] += seconds
    acc[1] += useful
    acc[2].append(dict(stats))


def measure(graphdef, cfg, mesh, params, s: PartialSetup, vocab: int) -> list[dict]:
    """The partial-vs-synchronous row (both timed on one engine, after compiling every width)."""
    eng = _engine(graphdef, cfg, mesh, s)
    sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=s.max_new, n=s.n, seed=s.seed)
    _compile_all(eng, params, sp, s)
    warm = Draws(dataclasses.replace(s, seed=s.seed + 100), vocab)()  # allocates the pool, untimed
    eng.generate(
        params, [it["prompt_ids"] for it in warm], sp, max_new_tokens=[b for it in warm for b in it["max_new_R"]]
    )
    compiles, compile_s = eng.num_compilations, eng.compile_seconds
    modes, part_metrics = _timed_steps(eng, params, sp, s, vocab)
    sync_s, sync_useful, sync_stats = modes["synchronous"]
    part_s, part_useful, part_stats = modes["partial"]
    late = f"{eng.num_compilations - compiles} programs ({eng.compile_seconds - compile_s:.1f} s)"

    occupancy = lambda st: (
        sum(x["slot_occupancy"] * x["decode_steps"] for x in st)
        / max(  # noqa: E731
            1, sum(x["decode_steps"] for x in st)
        )
    )
    total = lambda st, k: sum(x[k] for x in st)  # noqa: E731
    shape = (
        f"{s.steps} steps x {s.prompts} groups of {s.n}, {s.prompt_len}-token prompts, budgets geometric mean "
        f"{s.max_new}/6 clipped to [1, {s.max_new}] drawn fresh per step; {s.num_slots} slots, pages of "
        f"{s.page_size}, one engine and compiled programs for both; compiling excluded ({late} compiled in the "
        "timed steps)"
    )
    dropped = sum(m["partial/dropped_rows"] for m in part_metrics)
    rows = [
        dict(
            figure=FIG_PARTIAL,
            unit="tok/s",
            ours=part_useful / part_s,
            peer=sync_useful / sync_s,
            note=f"{shape}; partial: oversample {s.oversample}, max staleness {s.max_staleness}, occupancy "
            f"{occupancy(part_stats):.2f}, {total(part_stats, 'decode_steps')} decode steps, "
            f"{total(part_stats, 'prefill_chunks')} prefill chunks, {part_useful:,} useful tokens in {part_s:.1f} s, "
            f"{dropped} rows dropped as stale; synchronous: occupancy {occupancy(sync_stats):.2f}, "
            f"{total(sync_stats, 'decode_steps')} decode steps, {total(sync_stats, 'prefill_chunks')} prefill "
            f"chunks, {sync_useful:,} useful tokens in {sync_s:.1f} s; target {TARGETS[FIG_PARTIAL]}",
            occupancy={"partial": occupancy(part_stats), "synchronous": occupancy(sync_stats)},
            samples={"ours_s": [part_s], "peer_s": [sync_s]},
        )
    ]
    return rows


def run(cfg, quick: bool) -> list[dict]:
    """The row on random weights of `cfg` (the rollout section's model)."""
    s = QUICK if quick else FULL
    with tempfile.TemporaryDirectory() as directory:
        save_random_hf_model(cfg, directory, s.seed)
        mesh = sharding.make_mesh(sharding.MeshShape(1, 1, 1), devices=jax.devices()[:1])
        _, graphdef, params = hf.load(directory, mesh)
    return measure(graphdef, cfg, mesh, params, s, cfg.vocab_size)
