"""Rollout section of benchmarks/bench.py: the paged engine (rlvr_jax/rollout/engine.py) on an RL-shaped
workload, many rows whose lengths have a long tail, against the static engine it replaced
(benchmarks/baselines/static_engine.py) and `transformers` generate, all on the same random weights (fp32,
temperature 1, no stop tokens).

Workload: `prompts` x `n` rows of `prompt_len` random tokens. Each row's budget of new tokens is drawn once
(numpy seed `seed`) from a geometric distribution with mean `max_new / 6`, clipped to [1, max_new], and every
engine produces each row's budget:
  - ours: the budgets as per-row `max_new_tokens=`; `num_slots` decode slots on a pool of
    num_slots x pages(P + max_new) pages (+1 scratch), the memory the static engine needs for num_slots rows;
  - static: it has no per-row cap and decodes until every row of its batch is done, so the rows run in order
    (lengths are not known before generating) in batches of the largest number of whole prompts' rows whose
    [B, P + max_new] KV cache fits our pool's bytes, each batch with max_new_tokens = its longest row (a
    program per distinct length, compiled before timing; its cache is sized to that length, not max_new,
    which favours it);
  - transformers: the same batches, each `generate` with min/max_new_tokens = the batch's longest row.
Useful tokens/s = sum of the budgets / wall seconds; tokens a batch generates past a row's budget count for
nothing. Compilation is excluded (ours: a warm-up call of the same workload; static: its programs compiled
first; both checked not to compile while timed).

KV row: ours = pool pages in use at the peak x page bytes / bytes of the distinct tokens whose keys and values
are in the pool at that moment (a prompt's pages shared by its samples count once): from engine.stats
(`peak_pages_all_shards`, `peak_live_tokens`: read after a burst wrote into the pages secured for it, before finished rows free theirs) where
it reports them, else from a probe (`live_token_probe`) that reads the scheduler after each burst wrote (the
note gives the probe's figure too). Peer: the static engine's cache of its largest batch over its live tokens at their peak
(rows within their budgets), computed from the batch layout, not measured.

Rows follow bench.py's contract; throughput floors are bytes and FLOPs per useful token.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time

import jax
import numpy as np

from benchmarks import partial_rollout
from benchmarks.baselines import static_engine
from benchmarks.generation import Peer, save_random_hf_model
from rlvr_jax import sharding
from rlvr_jax.model import hf
from rlvr_jax.model.decoder import ModelConfig, count_params
from rlvr_jax.model.presets import PRESETS
from rlvr_jax.rollout import engine as engine_lib
from rlvr_jax.rollout import pages as pg
from rlvr_jax.rollout import sampling, simulate
from rlvr_jax.rollout import scheduler as sched_lib
from rlvr_jax.rollout.settings import EngineConfig

FIG_STATIC = "rollout, long-tailed lengths, vs static engine"
FIG_HF = "rollout, long-tailed lengths, vs transformers"
FIG_KV = "rollout KV allocated / live tokens at peak"
FIG_SIM = "rollout schedule, simulated / measured decode steps"
TARGETS = {
    FIG_STATIC: ">= 3x the static engine",
    FIG_HF: ">= 5x transformers",
    FIG_KV: "<= 1.3x",
    FIG_SIM: "within 5% (0.95-1.05x)",
}


@dataclasses.dataclass(frozen=True)
class Setup:
    cfg: ModelConfig
    prompts: int
    n: int  # samples per prompt
    prompt_len: int
    max_new: int  # T: every row's cap; budgets are drawn below it
    num_slots: int
    page_size: int
    repeats: int = 1  # timed runs of each engine, interleaved; medians are reported
    seed: int = 0


FULL = Setup(PRESETS["bench-50m"], prompts=64, n=8, prompt_len=64, max_new=1024, num_slots=64, page_size=16)
QUICK = Setup(
    dataclasses.replace(
        PRESETS["bench-50m"],
        num_layers=2,
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=768,
        num_heads=4,
        num_kv_heads=2,
    ),
    prompts=4,
    n=4,
    prompt_len=16,
    max_new=32,
    num_slots=8,
    page_size=8,
)


def draw_budgets(rows: int, max_new: int, seed: int) -> np.ndarray:
    """Each row's new-token budget: geometric with mean max_new / 6, clipped to [1, max_new]."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.geometric(6.0 / max_new, rows), 1, max_new).astype(np.int64)


def work_per_useful_token(cfg: ModelConfig, prompt_len: int, budgets, num_prompts: int, slots: int, itemsize=4):
    """(bytes, FLOPs) a perfect engine with `slots` rows per decode step spends per useful token: one prefill
    of every prompt (its samples share it) reading the parameters once, then the budgets' decode steps packed
    without a gap (sum(b - 1) / slots steps, each reading every parameter once) and each decode step reading
    its row's keys and values so far."""
    params = count_params(cfg)
    b = np.asarray(budgets, np.float64)
    total = b.sum()
    kv_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim
    decode_keys = ((b - 1) * prompt_len + b * (b - 1) / 2).sum()  # keys each decode step reads, summed
    bytes_total = (1 + (b - 1).sum() / slots) * params * itemsize + decode_keys * kv_per_token * itemsize
    attn_per_key = 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim
    prefill_keys = num_prompts * prompt_len * (prompt_len + 1) / 2
    flops_total = 2 * params * (num_prompts * prompt_len + (b - 1).sum()) + attn_per_key * (
        prefill_keys + decode_keys + (b - 1).sum()
    )
    return bytes_total / total, flops_total / total


def _live_tokens(sched, written: dict) -> int:
    """Distinct pool slots holding keys and values: each page counts the most positions any holder wrote
    into it (a prompt's shared pages once), over seated rows (`written`: row id -> positions written), rows
    waiting for a slot, and a prefill in progress."""
    ps = sched.pool.page_size
    holders = [(pages, written.get(id(r), fed) if r is not None else fed) for r, pages, fed in sched.page_holders()]
    filled: dict[int, int] = {}
    for pages, w in holders:
        for j, p in enumerate(pages):
            filled[p] = max(filled.get(p, 0), min(max(w - j * ps, 0), ps))
    return sum(filled.values())


@contextlib.contextmanager
def live_token_probe():
    """While active, each engine call's scheduler appends (pages in use, live tokens) after every decode burst,
    before finished rows release their pages: the moments the pool is at its fullest."""
    snaps: list[tuple[int, int]] = []
    base = sched_lib.Scheduler

    class Probed(base):
        def finish_decode(self, job, tokens_KxS, valid_KxS, *rest):
            valid = np.asarray(valid_KxS)
            written = {id(r): r.fed + int(valid[:, s].sum()) for s, r in enumerate(job.rows) if r is not None}
            snaps.append((self.pool.used, _live_tokens(self, written)))
            return super().finish_decode(job, tokens_KxS, valid_KxS, *rest)

    sched_lib.Scheduler = Probed
    try:
        yield snaps
    finally:
        sched_lib.Scheduler = base


def static_kv_ratio(budgets, n: int, batch_rows: int, prompt_len: int, prompt_bucket: int) -> float:
    """The static engine's cache of its largest batch ([B, bucket + the batch's longest row] slots) over the
    most tokens of that batch live at once: rows within their budgets at step t hold prompt_len + t."""
    worst = None
    for lo in range(0, len(budgets), batch_rows):
        b = np.asarray(budgets[lo : lo + batch_rows])
        allocated = len(b) * (prompt_bucket + int(b.max()))
        t = np.arange(1, int(b.max()) + 1)
        live = ((b[None, :] >= t[:, None]) * (prompt_len + t[:, None])).sum(-1).max()
        if worst is None or allocated > worst[0]:
            worst = (allocated, live)
    return worst[0] / worst[1]


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(setup: Setup) -> list[dict]:
    cfg, N, n, P, T = setup.cfg, setup.prompts, setup.n, setup.prompt_len, setup.max_new
    rng = np.random.default_rng(setup.seed)
    prompts = rng.integers(1, cfg.vocab_size, (N, P)).tolist()
    budgets = draw_budgets(N * n, T, setup.seed)
    useful = int(budgets.sum())
    with tempfile.TemporaryDirectory() as directory:
        save_random_hf_model(cfg, directory, setup.seed)
        mesh = sharding.make_mesh(sharding.MeshShape(1, 1, 1), devices=jax.devices()[:1])
        _, graphdef, params = hf.load(directory, mesh)
        peer = Peer(directory, T)

    # ours: a pool that holds num_slots whole rows (never preempts at this size)
    per_row = pg.cdiv(P + T, setup.page_size)
    sizes = EngineConfig(
        num_slots=setup.num_slots,
        page_size=setup.page_size,
        num_pages=setup.num_slots * per_row + 1,
        cache_dtype="float32",
    )
    eng = engine_lib.Engine(graphdef, cfg, mesh, sizes)
    pool_bytes = (eng.num_pages - 1) * eng.page_bytes
    sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=T, n=n, seed=setup.seed)

    # static: the largest batch of whole prompts whose cache fits the same bytes
    bucket = sampling.next_pow2(P, 16)
    static = static_engine.Sampler(graphdef, cfg, mesh, cache_dtype="float32")
    fits = [
        b
        for b in range(n, N * n + 1, n)
        if static_engine.kv_cache_bytes_per_device(cfg, b, bucket + T, 4, mesh) <= pool_bytes
    ]
    if not fits:
        raise ValueError(f"the pool ({pool_bytes} bytes) holds no prompt's {n} rows in the static engine")
    batch_rows = max(fits)
    batches = [
        (lo // n, min(lo + batch_rows, N * n) // n, int(budgets[lo : lo + batch_rows].max()))
        for lo in range(0, N * n, batch_rows)
    ]  # (first prompt, end prompt, the batch's longest row)

    def run_ours():
        out = eng.generate(params, prompts, sp, max_new_tokens=budgets.tolist())
        lengths = np.asarray(jax.block_until_ready(out.lengths))
        assert (lengths == budgets).all(), "ours: a row did not produce exactly its budget"

    def run_static():
        for i, (a, b, longest) in enumerate(batches):
            spb = dataclasses.replace(sp, max_new_tokens=longest)
            out = static.generate(params, prompts[a:b], spb, key=jax.random.fold_in(jax.random.key(setup.seed), i))
            assert int(np.asarray(jax.block_until_ready(out.lengths)).min()) == longest

    def run_peer():
        for a, b, longest in batches:
            peer.run([p for p in prompts[a:b] for _ in range(n)], longest)

    # warm-up: ours runs the workload once (every program it needs compiles); the static programs compile
    # without running; transformers picks its thread count on the first batch
    warm_s = _timed(run_ours)
    ours_compiles, compile_s = eng.num_compilations, getattr(eng, "last_compile_seconds", None)
    for rows_b, longest in sorted({((b - a) * n, lg) for a, b, lg in batches}):
        static._program(params, dataclasses.replace(sp, max_new_tokens=longest), rows_b * jax.process_count(), bucket)
    static_compiles = static.num_compilations
    a, b, _ = batches[0]
    threads = peer.pick_threads([p for p in prompts[a:b] for _ in range(n)])

    ours_s, static_s, peer_s, snaps = [], [], [], []
    for _ in range(setup.repeats):  # interleaved, so all see the same load
        with live_token_probe() as run_snaps:
            ours_s.append(_timed(run_ours))
        stats = dict(eng.stats)
        snaps = run_snaps
        static_s.append(_timed(run_static))
        peer_s.append(_timed(run_peer))
    assert eng.num_compilations == ours_compiles, "ours compiled while timed"
    assert static.num_compilations == static_compiles, "the static engine compiled while timed"

    med = lambda xs: float(np.median(xs))  # noqa: E731
    floor_bytes, floor_flops = work_per_useful_token(cfg, P, budgets, N, setup.num_slots)
    shape = (
        f"{count_params(cfg) / 1e6:.0f}M params, {N}x{n} rows, {P}-token prompts, budgets geometric mean "
        f"{T}/6 clipped to [1, {T}] (sum {useful:,}, mean {budgets.mean():.0f}, max {budgets.max()})"
    )
    ours_note = (
        f"ours: {setup.num_slots} slots, pages of {setup.page_size}, pool {eng.num_pages - 1} pages "
        f"({pool_bytes / 2**20:.0f} MiB), occupancy {stats.get('slot_occupancy', float('nan')):.2f}, "
        f"{stats.get('preemptions', 0)} preemptions"
    )
    timing = (
        f"useful tokens / wall s, compile excluded (ours' warm-up call {warm_s:.1f} s"
        + (f", {compile_s:.1f} s of it compiling" if compile_s else "")
        + f"); median of {setup.repeats}"
    )
    common = dict(unit="tok/s", ours=useful / med(ours_s), floor_bytes=floor_bytes, floor_flops=floor_flops)
    rows = [
        dict(
            common,
            figure=FIG_STATIC,
            peer=useful / med(static_s),
            note=f"{shape}; {ours_note}; peer: benchmarks/baselines/static_engine.py, {len(batches)} batches of "
            f"{batch_rows} rows (the most whose [B, {bucket}+{T}] cache fits the pool), each decoding its longest row; "
            f"{timing}; target {TARGETS[FIG_STATIC]}",
            samples={"ours_s": ours_s, "peer_s": static_s},
        ),
        dict(
            common,
            figure=FIG_HF,
            peer=useful / med(peer_s),
            note=f"{shape}; peer: transformers generate, torch {threads} thread(s), the static engine's batches "
            f"with min/max_new_tokens = the batch's longest row; target {TARGETS[FIG_HF]}",
            samples={"ours_s": ours_s, "peer_s": peer_s},
        ),
    ]
    # KV: the probe's fullest moment (the most pages in use; of equals, the worst ratio), after the burst wrote
    used, live = max(snaps, key=lambda s: (s[0], s[0] / max(s[1], 1)))
    probe_ratio = used * setup.page_size / live
    mean_ratio = sum(u for u, _ in snaps) * setup.page_size / max(1, sum(lv for _, lv in snaps))
    if stats.get("peak_live_tokens"):  # the engine's own count: at its peak, before the burst writes
        peak = stats.get("peak_pages_all_shards", stats["peak_pages"])
        ours_kv, how = (
            peak * setup.page_size / stats["peak_live_tokens"],
            (
                f"engine.stats: {peak} pages at the peak (read after the burst wrote) over "
                f"{stats['peak_live_tokens']:,} live tokens; the same after that burst wrote (a scheduler probe): "
                f"{probe_ratio:.2f}x ({used} pages, {live:,} tokens)"
            ),
        )
    else:
        ours_kv, how = (
            probe_ratio,
            (
                f"{used} pages at the fullest moment over {live:,} live tokens, counted after the burst wrote by a "
                f"probe of the scheduler (engine.stats lacks them)"
            ),
        )
    rows.append(
        dict(
            figure=FIG_KV,
            unit="x",
            ours=ours_kv,
            peer=static_kv_ratio(budgets, n, batch_rows, P, bucket),
            floor=1.0,
            note=f"pool pages in use x {setup.page_size} tokens / distinct tokens with keys and values in the pool "
            f"(a prompt's shared pages once); {how}; mean over decode bursts {mean_ratio:.2f}x; peer: the static "
            f"engine's largest batch cache over its live tokens (rows within budget) at their peak, computed "
            f"from the batch layout; target {TARGETS[FIG_KV]}",
            probe_ratio=probe_ratio,
            probe_mean_ratio=mean_ratio,
            engine_stats=stats,
        )
    )
    simulated = simulate.replay_counts(eng, [P] * N, n, budgets.tolist())
    rows.append(
        dict(
            figure=FIG_SIM,
            unit="x",
            ours=simulated["decode_steps"] / stats["decode_steps"],
            peer=None,
            floor=None,
            higher_is_better=False,
            note=f"this workload's budgets replayed through rollout/simulate.py (the real scheduler, a fake device; "
            f"what rlvr-plan projects with): {simulated['decode_steps']} decode steps, "
            f"{simulated['prefill_chunks']} prefill chunks, occupancy {simulated['slot_occupancy']:.3f}; measured "
            f"(engine.stats): {stats['decode_steps']}, {stats['prefill_chunks']}, {stats['slot_occupancy']:.3f}; "
            f"target {TARGETS[FIG_SIM]}",
        )
    )
    return rows


def run(quick: bool) -> list[dict]:
    setup = QUICK if quick else FULL
    return measure(setup) + partial_rollout.run(setup.cfg, quick)
