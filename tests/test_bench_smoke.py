"""benchmarks/bench.py plumbing on a toy shape: rows complete and finite (speed is never asserted here)."""

import dataclasses
import math

import jax
from flax import nnx

from benchmarks import bench
from benchmarks import generation as bench_generation
from benchmarks import train as bench_train
from rlvr_jax.model.decoder import Decoder, ModelConfig

TOY = ModelConfig(
    family="qwen3",
    vocab_size=96,
    hidden_size=64,
    intermediate_size=112,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    qk_norm=True,
    tie_embeddings=True,
)


def test_generation_section_rows_are_finite():
    machine = bench.measure_machine(quick=True)
    assert machine["mem_bandwidth_gb_s"] > 0 and machine["matmul_gflop_s"] > 0
    setup = bench_generation.Setup(TOY, batches=(2,), prompt_len=8, new_tokens=4, repeats=1)
    rows = [bench.finish(r, "generation", machine) for r in bench_generation.measure(setup)]
    assert [r["figure"] for r in rows] == [
        "generate, batch 2",
        "generate, batch 2, vs static engine",
        "decode matmuls alone, batch 2",
        "compile, batch 2",
    ]
    gen, static, ceiling, compile_row = rows
    assert static["ours"] == gen["ours"] and static["floor"] == gen["floor"]
    for row in (gen, static, ceiling):
        for key in ("ours", "peer", "ratio", "floor", "floor_fraction"):
            assert math.isfinite(row[key]) and row[key] > 0, key
    assert ceiling["peer"] == gen["peer"] and ceiling["floor"] == gen["floor"]
    assert gen["unit"] == "tok/s" and gen["floor_bound"] in ("memory", "compute")
    assert compile_row["unit"] == "s" and compile_row["ours"] > 0 and compile_row["ratio"] is None
    table = bench.markdown(rows, machine)
    assert "| generation | generate, batch 2 |" in table


def test_rows_of_other_sections_get_one_ratio_meaning():
    machine = {"mem_bandwidth_gb_s": 10.0, "matmul_gflop_s": 100.0}
    wall = bench.finish(
        {"name": "merge/x/wall", "ours": 2.0, "peer": 6.0, "ratio": 0.333, "unit": "s"}, "merge", machine
    )
    assert wall["figure"] == "merge/x/wall" and math.isclose(wall["ratio"], 3.0)
    assert wall["section_ratio"] == 0.333
    rate = bench.finish({"figure": "r", "ours": 5.0, "peer": 2.5, "unit": "GB/s", "floor_bytes": 1e9}, "m", machine)
    assert math.isclose(rate["ratio"], 2.0) and math.isclose(rate["floor"], 10.0)
    assert math.isclose(rate["floor_fraction"], 0.5) and "section_ratio" not in rate


def test_decode_matmul_kernels_are_every_weight_matrix_once():
    """The ceiling row multiplies by every projection and the output head, each once."""
    for tie in (True, False):
        cfg = dataclasses.replace(TOY, tie_embeddings=tie)
        _, params = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)))
        params = nnx.to_pure_dict(params)
        mats = bench_generation.decode_matmul_kernels(params, cfg)
        assert len(mats) == 7 * cfg.num_layers + 1
        assert mats[-1][0].shape[mats[-1][1]] == cfg.hidden_size  # the head contracts the hidden axis
        matrices = [x for x in jax.tree_util.tree_leaves(params) if x.ndim >= 2]
        lookup_only = 0 if tie else params["embed"]["embedding"].size  # an untied embedding is not multiplied
        assert sum(w.size for w, _ in mats) == sum(x.size for x in matrices) - lookup_only


def test_train_memory_row_grows_linearly_and_beats_dense():
    (row,) = bench_train._memory_rows(quick=True)
    assert 0 < row["ours"] < row["peer"], row
    assert row["growth_from_half"] < 2.3, row  # doubling T doubles the temporaries, not x4
