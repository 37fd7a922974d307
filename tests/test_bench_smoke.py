"""tools/bench.py plumbing on a toy shape: rows complete and finite (speed is never asserted here)."""
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))

import bench  # noqa: E402
import bench_generation  # noqa: E402
from rlvr_jax.model import ModelConfig  # noqa: E402

TOY = ModelConfig(family="qwen3", vocab_size=96, hidden_size=64, intermediate_size=112, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=16, qk_norm=True, tie_embeddings=True)


def test_generation_section_rows_are_finite():
  machine = bench.measure_machine(quick=True)
  assert machine["mem_bandwidth_gb_s"] > 0 and machine["matmul_gflop_s"] > 0
  setup = bench_generation.Setup(TOY, batches=(2,), prompt_len=8, new_tokens=4, repeats=1)
  rows = [bench.finish(r, "generation", machine) for r in bench_generation.measure(setup)]
  assert [r["figure"] for r in rows] == ["generate, batch 2", "compile, batch 2"]
  gen, compile_row = rows
  for key in ("ours", "peer", "ratio", "floor", "floor_fraction"):
    assert math.isfinite(gen[key]) and gen[key] > 0, key
  assert gen["unit"] == "tok/s" and gen["floor_bound"] in ("memory", "compute")
  assert compile_row["unit"] == "s" and compile_row["ours"] > 0 and compile_row["ratio"] is None
  table = bench.markdown(rows, machine)
  assert "| generation | generate, batch 2 |" in table


def test_rows_of_other_sections_get_one_ratio_meaning():
  machine = {"mem_bandwidth_gb_s": 10.0, "matmul_gflop_s": 100.0}
  wall = bench.finish({"name": "merge/x/wall", "ours": 2.0, "peer": 6.0, "ratio": 0.333, "unit": "s"}, "merge",
                      machine)
  assert wall["figure"] == "merge/x/wall" and math.isclose(wall["ratio"], 3.0)
  assert wall["section_ratio"] == 0.333
  rate = bench.finish({"figure": "r", "ours": 5.0, "peer": 2.5, "unit": "GB/s", "floor_bytes": 1e9}, "m", machine)
  assert math.isclose(rate["ratio"], 2.0) and math.isclose(rate["floor"], 10.0)
  assert math.isclose(rate["floor_fraction"], 0.5) and "section_ratio" not in rate
