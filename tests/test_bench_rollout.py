"""benchmarks/rollout.py on its quick shape: the row contract (the three figures, ratios computable, the KV
ratio at least 1) and the workload's budgets; speed is never asserted here."""

import math

import numpy as np

from benchmarks import bench, partial_rollout
from benchmarks import rollout as bench_rollout

MACHINE = {"mem_bandwidth_gb_s": 10.0, "matmul_gflop_s": 100.0}


def test_budgets_are_long_tailed_clipped_and_fixed():
    b = bench_rollout.draw_budgets(512, 1024, seed=0)
    assert b.min() >= 1 and b.max() <= 1024 and (b == bench_rollout.draw_budgets(512, 1024, seed=0)).all()
    assert 120 < b.mean() < 220 and np.median(b) < b.mean()  # mean about 1024/6, a long right tail


def test_static_kv_ratio_counts_rows_within_budget():
    # one batch of 2 rows, prompts of 4 (bucket 4), budgets 1 and 3: cache 2 x (4 + 3) = 14 slots; live at
    # step 1: 5 + 5, at step 3: 7 (the first row is done)
    assert math.isclose(bench_rollout.static_kv_ratio([1, 3], 2, 2, 4, 4), 14 / 10)


def test_rollout_section_rows():
    rows = [bench.finish(r, "rollout", MACHINE) for r in bench_rollout.run(quick=True)]
    assert [r["figure"] for r in rows] == [
        bench_rollout.FIG_STATIC,
        bench_rollout.FIG_HF,
        bench_rollout.FIG_KV,
        bench_rollout.FIG_SIM,
        partial_rollout.FIG_PARTIAL,
    ]
    static, hf, kv, sim, part = rows
    for row in (static, hf):
        assert row["unit"] == "tok/s"
        for key in ("ours", "peer", "ratio", "floor", "floor_fraction"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["figure"], key)
    assert static["ours"] == hf["ours"]  # one run of ours, two peers
    assert kv["unit"] == "x" and not bench.higher_is_better(kv)
    assert kv["ours"] >= 1.0 and kv["peer"] >= 1.0 and kv["probe_ratio"] >= 1.0
    assert math.isfinite(kv["ratio"]) and kv["ratio"] > 0 and 0 < kv["floor_fraction"] <= 1
    # the simulator replays the engine's own schedule: the same decode steps, exactly, on this workload
    assert sim["ours"] == 1.0 and "measured (engine.stats)" in sim["note"]
    assert "partial vs synchronous" in part["figure"] and part["unit"] == "tok/s"
    assert math.isfinite(part["ratio"]) and part["ratio"] > 0
    assert part["occupancy"]["partial"] > part["occupancy"]["synchronous"]
    assert "| rollout | rollout KV allocated / live tokens at peak |" in bench.markdown(
        rows, dict(MACHINE, cpu_count=2, load_avg_1m=0.0)
    )
