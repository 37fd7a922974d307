"""Compiling one stage and reading its costs per chip: memory from the compile (or from libtpu's
out-of-memory message), FLOPs and bytes from XLA's cost analysis, collective bytes from the HLO text, and the
roofline time they give on a chip."""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Callable

import jax
import jax.numpy as jnp

from rlvr_jax import sharding
from rlvr_jax.plan.chips import Chip

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "bf16": 2,
    "f16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
}


@dataclasses.dataclass
class StageReport:
    name: str
    tokens: int
    fits: bool
    bytes_per_chip: dict
    flops_per_chip: float
    bytes_accessed_per_chip: float
    collective_bytes_per_chip: float
    roofline_s: float
    compile_s: float
    runs_per_step: float = 0.0  # how many times one RL step runs this program (for the projection)
    error: str = ""
    note: str = ""


def spec_bytes(abstract_tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs carrying NamedShardings."""
    total = 0
    for x in jax.tree_util.tree_leaves(abstract_tree):
        shard = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shard) * jnp.dtype(x.dtype).itemsize
    return total


def roofline(chip: Chip, flops: float, accessed: float, collective: float) -> float:
    """Seconds of a program at the chip's peaks: the slowest of compute, HBM and interconnect."""
    return max(flops / chip.peak_flops, accessed / chip.hbm_bandwidth, collective / chip.ici_bandwidth)


def set_costs(report: StageReport, chip: Chip, flops: float, accessed: float, collective: float) -> None:
    """Replace a report's FLOPs, bytes and collective bytes (costed another way than its compile) and its
    roofline time."""
    report.flops_per_chip, report.bytes_accessed_per_chip, report.collective_bytes_per_chip = (
        flops,
        accessed,
        collective,
    )
    report.roofline_s = roofline(chip, flops, accessed, collective)


def collective_bytes(hlo_text: str) -> float:
    """Bytes the collectives of a compiled program produce, per device (one pass of the program: a loop
    body counts once). An asynchronous all-gather / reduce-scatter / collective-permute start names its
    operand buffer beside its result: only the result (the largest buffer) counts."""
    total = 0
    for line in hlo_text.splitlines():
        m = re.search(r"=\s*(\(?[^=]*?\)?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(", line)
        if not m:
            continue
        sizes = [
            _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
            for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", m.group(1))
            if dtype in _DTYPE_BYTES
        ]
        if m.group(3) and m.group(2) != "all-reduce":
            total += max(sizes, default=0)
        else:
            total += sum(sizes)
    return float(total)


def oom_bytes(message: str) -> tuple[float, bool] | None:
    """(bytes, whether they are the program's temporaries only) from libtpu's out-of-memory message."""
    unit = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}
    m = re.search(r"HLO temporaries \(([\d.]+)([KMGTP])\) exceeds available HBM", message)
    if m:
        return float(m.group(1)) * unit[m.group(2)], True
    m = re.search(r"Used ([\d.]+)([KMGTP]) of ([\d.]+)([KMGTP]) hbm", message)
    if m:
        return float(m.group(1)) * unit[m.group(2)], False
    return None


def compile_stage(
    name, fn: Callable, args, *, chip: Chip, mesh, tokens: int, parts: dict, runs_per_step=0.0, resident: int = 0
):
    """Lower and compile `fn(*args)` (args are ShapeDtypeStructs with shardings) and read its costs.
    `resident`: bytes per chip held beside the program and not among its arguments (the trainer's state
    while the rollout runs)."""
    t0 = time.perf_counter()
    try:
        with sharding.activate(mesh):
            compiled = fn.lower(*args).compile()
    except Exception as e:  # an out-of-memory compile names the bytes; anything else is a bug to show
        oom = oom_bytes(str(e))
        if oom is None:
            raise
        return _does_not_fit(name, tokens, parts, runs_per_step, resident, oom, str(e), time.perf_counter() - t0)
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    flops, accessed, coll = _read_costs(compiled)
    total = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
    total += resident
    bytes_per_chip = dict(parts, temp=int(mem.temp_size_in_bytes), total=int(total))
    return StageReport(
        name,
        tokens,
        total <= chip.hbm_bytes,
        bytes_per_chip,
        flops,
        accessed,
        coll,
        roofline(chip, flops, accessed, coll),
        compile_s,
        runs_per_step,
    )


def _does_not_fit(name, tokens, parts, runs_per_step, resident, oom, message, compile_s) -> StageReport:
    """The report of a compile libtpu refused for memory: the bytes its message names, no costs."""
    need, temporaries_only = oom
    held = sum(parts.values())
    temp = int(need) if temporaries_only else max(0, int(need) + resident - held)
    return StageReport(
        name,
        tokens,
        False,
        dict(parts, temp=temp, total=temp + held),
        0.0,
        0.0,
        0.0,
        0.0,
        compile_s,
        runs_per_step,
        message.splitlines()[0][:300],
    )


def _read_costs(compiled) -> tuple[float, float, float]:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)), collective_bytes(compiled.as_text())


def costs(fn, args, mesh) -> tuple[float, float, float]:
    """(FLOPs, bytes accessed, collective bytes) per device of one compile."""
    with sharding.activate(mesh):
        compiled = fn.lower(*args).compile()
    return _read_costs(compiled)


def costs_on(device, fn, args, mesh) -> tuple[float, float, float]:
    """costs() with `device` the default (jax's default device is per thread: a costs thread names it)."""
    with jax.default_device(device):
        return costs(fn, args, mesh)
