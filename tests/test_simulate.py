"""The rollout schedule simulator (rollout/simulate.py) replays the real scheduler: its counts equal what the
engine measured on the same prompts and per-row budgets (one and two batch shards, with preemptions), step by
step for partial rollouts too (trained groups, useful tokens, dropped rows); partial rollouts fill the slots
better than synchronous ones on a long-tailed draw and never train a group staler than the bound; length
distributions and histogram files."""

import json
import os

import jax
import numpy as np
import pytest

from rlvr_jax import config_args, sharding
from rlvr_jax.model import hf
from rlvr_jax.rollout import engine, lengths, partial, sampling, simulate
from tests.hf_fixtures import save_hf_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = 24
SIZES = dict(num_slots=4, page_size=4, num_pages=16, prefill_chunk=8, prefill_seqs=2, decode_burst=2)


@pytest.fixture(scope="module")
def qwen3_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3_sim")
    save_hf_model("qwen3", path, seed=3)
    return str(path)


def _engine(path, shards: int):
    mesh = sharding.make_mesh(sharding.MeshShape(1, shards, 2), devices=jax.devices()[: 2 * shards])
    cfg, graphdef, params = hf.load(path, mesh)
    return engine.Engine(graphdef, cfg, mesh, **SIZES), params


@pytest.mark.parametrize("shards", [1, 2])
def test_replayed_counts_equal_the_engines(qwen3_path, shards):
    eng, params = _engine(qwen3_path, shards)
    rng = np.random.default_rng(shards)
    prompts = [[int(t) for t in rng.integers(5, 60, L)] for L in (3, 9, 5, 1, 12, 7, 4)]
    n = 2
    budgets = [int(b) for b in np.clip(rng.geometric(0.2, len(prompts) * n), 1, T)]
    budgets[3] = budgets[8] = budgets[11] = T
    sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=T, n=n, seed=1)
    out = eng.generate(params, prompts, sp, max_new_tokens=budgets)
    assert np.asarray(out.lengths).tolist() == budgets
    got = simulate.replay_counts(eng, [len(p) for p in prompts], n, budgets)
    for k in ("decode_steps", "decode_rounds", "prefill_chunks", "preemptions"):
        assert got[k] == eng.stats[k], (k, got, eng.stats)
    assert got["slot_occupancy"] == pytest.approx(eng.stats["slot_occupancy"], abs=1e-12)
    assert eng.stats["batch_shards"] == shards and (shards == 2 or eng.stats["preemptions"] > 0)


def test_partial_steps_equal_the_engines_partial_rollouts(qwen3_path):
    """PartialRollouts on the real engine and partial_steps draw the same budgets in the same order: each
    step's engine counts, trained groups, useful tokens and dropped rows agree."""
    eng, params = _engine(qwen3_path, 1)
    n, N, L, steps = 2, 3, 5, 5
    settings = partial.PartialSettings(groups_per_step=N, oversample=2.0, max_staleness=1)
    sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=T, n=n, seed=2)
    real = partial.PartialRollouts(eng, sp, settings)
    draw_real = lengths.geometric(6, T, seed=4)
    count = [0]

    def draw():
        count[0] += 1
        return [{"prompt_ids": [7 + count[0]] * L, "max_new_R": draw_real(n).tolist()} for _ in range(N)]

    measured = []
    for step in range(steps):
        out = real.step(params, draw, jax.random.key(step), step)
        useful = int(np.asarray(out.rollout.lengths).sum())
        measured.append((dict(eng.stats), len(out.items), useful, out.metrics["partial/dropped_rows"]))
    shape = simulate.EngineShape.of_engine(eng)
    sim = simulate.partial_steps(shape, L, n, N, lengths.geometric(6, T, seed=4), steps, 2.0, 1)
    for (stats, trained, useful, dropped), s in zip(measured, sim):
        assert (s.counts.decode_steps, s.counts.prefill_chunks) == (stats["decode_steps"], stats["prefill_chunks"])
        assert s.counts.occupancy == pytest.approx(stats["slot_occupancy"], abs=1e-12)
        assert (s.trained_groups, s.useful_tokens, s.dropped_rows) == (trained, useful, dropped)
    assert any(s.carried_groups for s in sim)


SHAPE = simulate.EngineShape(
    shards=2, hosts=1, num_slots=8, page_size=8, num_pages=400, prefill_chunk=64, prefill_seqs=4, decode_burst=4
)


def test_partial_fills_slots_better_than_synchronous_on_a_long_tail():
    draw = lambda: lengths.geometric(40, 400, seed=0)  # noqa: E731
    sync = simulate.summary(simulate.synchronous_steps(SHAPE, 16, 4, 8, draw(), 6))
    part = simulate.partial_steps(SHAPE, 16, 4, 8, draw(), 8, 2.0, 2)
    p = simulate.summary(part, warmup=2)
    assert p["slot_occupancy"] > 1.3 * sync["slot_occupancy"], (p, sync)
    assert p["decode_steps"] < sync["decode_steps"]
    assert all(s.trained_groups == 8 for s in part)
    assert p["useful_tokens"] > 0.5 * sync["useful_tokens"]


def test_staleness_bound_drops_groups_and_holds():
    for bound in (0, 1):
        steps = simulate.partial_steps(SHAPE, 16, 4, 8, lengths.geometric(40, 400, seed=1), 8, 2.0, bound)
        assert max(s.max_lag for s in steps) <= bound
        assert sum(s.dropped_rows for s in steps) > 0 and all(s.dropped_rows % 4 == 0 for s in steps)
    loose = simulate.partial_steps(SHAPE, 16, 4, 8, lengths.geometric(40, 400, seed=1), 8, 2.0, 100)
    assert sum(s.dropped_rows for s in loose) == 0 and max(s.max_lag for s in loose) > 1


def test_length_distributions_and_histogram_files(tmp_path):
    x = lengths.geometric(100, 300, seed=0)(20000)
    assert x.min() >= 1 and x.max() == 300 and 85 < x.mean() < 100  # the cap pulls the mean under 100
    h = lengths.histogram_of(x, 300, bins=30)
    assert sum(h["counts"]) == 20000 and h["edges"][0] == 1 and h["edges"][-1] == 301
    path = tmp_path / "h.json"
    path.write_text(json.dumps(h))
    back = lengths.read_histogram(str(path))
    y = lengths.from_histogram(back, 300, seed=1)(20000)
    assert abs(y.mean() - x.mean()) < 5 and abs(lengths.mean_of(back) - x.mean()) < 5 and y.max() <= 300
    path.write_text(json.dumps({"edges": [1, 5], "counts": [1, 2]}))
    with pytest.raises(ValueError, match="K\\+1 edges"):
        lengths.read_histogram(str(path))


def test_add_to_histogram_accumulates_steps():
    h = lengths.add_to_histogram(None, [1, 2, 64], 64, bins=8)
    h = lengths.add_to_histogram(h, [64, 64], 64, bins=8)
    assert h["counts"][0] == 2 and h["counts"][-1] == 3 and sum(h["counts"]) == 5
    with pytest.raises(ValueError, match="another cap"):
        lengths.add_to_histogram(h, [5], 128, bins=8)


def test_plan_reports_tail_aware_rollout_for_both_modes():
    """rlvr-plan's JSON (the tiny preset's rollout group on v5e:2x2) carries the simulated schedule of both
    modes priced with the compiled programs' seconds, and the text report its table."""
    from rlvr_jax.plan import chips, planner  # noqa: PLC0415  # local: needs libtpu, probed here
    from rlvr_jax.plan.report import table  # noqa: PLC0415

    chips.find_libtpu()
    pytest.importorskip("libtpu", reason="LOUD SKIP: libtpu is not installed, rlvr-plan cannot compile for a TPU")
    config = config_args.load_config_file(os.path.join(REPO, "configs", "grpo.py")).get_config("multi,tiny")
    config.sft.batch_size = 8
    report = planner.plan(config, "v5e:2x2", only=("rollout",))
    t = report["tail_aware_rollout"]
    assert t["engine"]["shards"] == 4 and t["engine"]["hosts"] == 1 and t["run_mode"] == "synchronous"
    p = t["program_s"]
    # partial rollouts keep twice the rows in flight: their decode burst over more slots compiles as its own
    # stage (no runs in the synchronous step's roofline) and prices their decode steps
    names = [s["name"] for s in report["stages"]]
    assert any(n.startswith("rollout/decode, partial rollouts") for n in names), names
    assert p["decode_partial"] > p["decode"]
    for mode in ("synchronous", "partial"):
        m = t[mode]
        burst = p["decode_partial" if mode == "partial" else "decode"]
        want = p["reshard"] + m["prefill_chunks"] * p["prefill"] + m["decode_steps"] / 8 * burst
        assert m["rollout_s"] == pytest.approx(want) and m["rollout_s"] > 0
        assert m["device_hours"] == pytest.approx(m["step_s"] * config.train.steps * 4 / 3600)
        assert 0 < m["slot_occupancy"] <= 1 and m["useful_tokens"] > 0
    assert t["partial"]["decode_steps"] < t["synchronous"]["decode_steps"]
    assert t["lower_bound"]["device_hours"] == pytest.approx(report["projected_device_hours"])
    assert "Tail-aware rollout" in table(report) and "| partial (x2" in table(report)
