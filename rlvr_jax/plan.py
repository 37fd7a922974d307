"""`rlvr-plan`: compile every stage of a config ahead of time for a TPU topology, from a CPU host (libtpu
from the package index; no TPU), and report per chip: memory against HBM, FLOPs, bytes, collective
bytes, a roofline time, and the projected device-hours of the whole run.

    rlvr-plan --config=configs/grpo.py:math --topology=v5p:4x4x4 [--config.a.b=value ...] [--json=plan.json]
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import re
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
from absl import flags
from ml_collections import config_flags

from rlvr_jax import sharding
from rlvr_jax.merging import methods as merge_methods
from rlvr_jax.merging.tensorwise import jitted
from rlvr_jax.model import build
from rlvr_jax.model.decoder import ModelConfig, model_shardings
from rlvr_jax.rl import loop as rl_loop
from rlvr_jax.rl import update as rl_update
from rlvr_jax.rl.sft import make_sft_step
from rlvr_jax.rollout import pages as pg
from rlvr_jax.rollout.engine import Engine
from rlvr_jax.rollout.sampling import SamplingParams

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """Published peaks of one JAX device of a TPU generation, and the HBM libtpu lets a program use."""

    hbm_bytes: int  # what libtpu reports as available HBM per device (its out-of-memory message)
    peak_flops: float  # dense bf16 FLOP/s
    hbm_bandwidth: float  # bytes/s
    ici_bandwidth: float  # bytes/s of inter-chip interconnect per chip (all links, one direction)
    note: str = ""


# Peaks: Google Cloud TPU documentation, "TPU v5p", "TPU v5e", "TPU v6e" and "TPU v4" system architecture
# pages (bf16 TFLOP/s, HBM GB/s, ICI Gbps per chip). HBM available per device: libtpu 0.0.42.1's
# out-of-memory report when compiling for each topology with jax 0.10.2 (95.74G, 15.75G, 31.25G, 15.25G).
CHIPS = {
    "v5p": Chip(int(95.74 * GiB), 459e12, 2765e9, 4800e9 / 8),
    "v5e": Chip(int(15.75 * GiB), 197e12, 819e9, 1600e9 / 8),
    "v6e": Chip(int(31.25 * GiB), 918e12, 1640e9, 3584e9 / 8),
    # a v4 chip shows as two devices (one per TensorCore): half a chip's peaks per device
    "v4": Chip(int(15.25 * GiB), 275e12 / 2, 1200e9 / 2, 2400e9 / 8 / 2, note="per TensorCore (2 per chip)"),
}

# The study's reported cost (REFERENCE.md): four single-domain RL runs, and the multi-task run.
STUDY_GPU_HOURS = {"four single-domain runs": 6524.8, "multi-task run": 2166.4}

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


class PlanError(ValueError):
    pass


def topology_devices(name: str):
    """The devices of a named TPU slice, e.g. 'v5p:4x4x4' (needs libtpu, no TPU)."""
    gen = name.split(":", 1)[0]
    if gen not in CHIPS or not re.fullmatch(r"[a-z0-9]+:\d+(x\d+){1,2}", name):
        raise PlanError(
            f"unknown topology {name!r}; known generations: {', '.join(sorted(CHIPS))} "
            f"(e.g. v5p:4x4x4, v5p:2x2x1, v5e:2x2, v6e:4x4, v4:2x2x1)"
        )
    _find_libtpu()
    try:
        from jax.experimental import topologies  # local: only the planner uses it, and it needs libtpu

        return topologies.get_topology_desc(platform="tpu", topology_name=name).devices
    except Exception as e:  # libtpu missing or the shape refused: say which
        raise PlanError(
            f"cannot describe TPU topology {name!r}: {type(e).__name__}: {str(e).splitlines()[0]}\n"
            f"(rlvr-plan needs libtpu: pip install -e '.[plan]')"
        ) from e


def _find_libtpu() -> None:
    """libtpu from the `plan` extra, or from `.venv/libtpu` (scripts/setup.sh installs it there, outside
    site-packages, so that ordinary CPU runs do not probe for a TPU)."""
    try:
        import libtpu  # noqa: F401  # local: an optional dependency, probed only here
    except ImportError:
        target = os.path.join(sys.prefix, "libtpu")
        if os.path.isdir(target) and target not in sys.path:
            sys.path.insert(0, target)
    if not (os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio")):  # a CPU host, not a TPU VM
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")  # quiets libtpu's probing of this host
        # compiling only: several planners (or test workers) may load libtpu at once without its lockfile
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


@dataclasses.dataclass(frozen=True)
class Shapes:
    """The shapes a run's stages compile for, destructured from a run config."""

    rows: int  # rollout rows per step: prompts x samples
    prompts: int  # prompts per step (each prefilled once, its samples share its pages)
    samples: int
    prompt_len: int
    response_len: int  # max new tokens
    micro_rows: int  # rows per update micro-batch
    sft_rows: int
    sft_len: int
    steps: int
    mean_response_len: int  # for the projected time
    cache_dtype: str
    weights_dtype: str  # the decode weights' ("" = as trained)
    num_slots: int  # decode slots per batch shard
    page_size: int
    num_pages: int  # per batch shard's pool; 0 = memory_fraction of what a chip has left
    memory_fraction: float
    prefill_chunk: int
    decode_burst: int
    temperature: float
    needs_logprob_pass: bool  # old policy (several updates per rollout), reference or teachers


def shapes_of(config, mean_response_len: int) -> Shapes:
    ro, g = config.rollout, config.grpo
    rows = ro.prompts_per_step * ro.samples_per_prompt
    micro = g.micro_batch_size or rows
    return Shapes(
        rows=rows,
        prompts=ro.prompts_per_step,
        samples=ro.samples_per_prompt,
        prompt_len=config.data.max_prompt_tokens,
        response_len=ro.max_new_tokens,
        micro_rows=micro,
        sft_rows=config.sft.batch_size,
        sft_len=config.sft.max_len,
        steps=config.train.steps,
        mean_response_len=mean_response_len or ro.max_new_tokens,
        cache_dtype=ro.cache_dtype,
        weights_dtype=ro.weights_dtype,
        num_slots=ro.num_slots,
        page_size=ro.page_size,
        num_pages=ro.num_pages,
        memory_fraction=ro.memory_fraction,
        prefill_chunk=ro.prefill_chunk,
        decode_burst=ro.decode_burst,
        temperature=ro.temperature if ro.temperature > 0 else 1.0,
        needs_logprob_pass=g.updates_per_rollout > 1 or g.kl_coef > 0 or bool(config.opd.teachers),
    )


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


def _spec_bytes(abstract_tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs carrying NamedShardings."""
    total = 0
    for x in jax.tree_util.tree_leaves(abstract_tree):
        shard = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shard) * jnp.dtype(x.dtype).itemsize
    return total


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


def _oom_bytes(message: str) -> tuple[float, bool] | None:
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
        msg = str(e)
        oom = _oom_bytes(msg)
        if oom is None:
            raise
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
            time.perf_counter() - t0,
            runs_per_step,
            msg.splitlines()[0][:300],
        )
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    total = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
    total += resident
    flops = float(cost.get("flops", 0.0))
    accessed = float(cost.get("bytes accessed", 0.0))
    coll = collective_bytes(compiled.as_text())
    roofline = max(flops / chip.peak_flops, accessed / chip.hbm_bandwidth, coll / chip.ici_bandwidth)
    bytes_per_chip = dict(parts, temp=int(mem.temp_size_in_bytes), total=int(total))
    return StageReport(
        name, tokens, total <= chip.hbm_bytes, bytes_per_chip, flops, accessed, coll, roofline, compile_s, runs_per_step
    )


def _abstract(shape, dtype, sh):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sh)


def _batch(mesh, shape, dtype):
    return _abstract(shape, dtype, sharding.batch_sharding(mesh, len(shape)))


def _model_parts(cfg: ModelConfig, mesh):
    graphdef, abstract, shardings = model_shardings(cfg, mesh)
    return graphdef, jax.tree_util.tree_map(lambda a, s: _abstract(a.shape, a.dtype, s), abstract, shardings), shardings


def trainer_state_bytes(config, params, param_shardings, mesh) -> tuple[int, int]:
    """(params, optimizer state) bytes per chip of the trainer's layout."""
    optimizer = rl_loop.run_optimizer(config)
    abstract_opt = jax.eval_shape(optimizer.init, params)
    opt_shardings = sharding.like_params_shardings(abstract_opt, param_shardings, mesh)
    opt = jax.tree_util.tree_map(lambda a, sh: _abstract(a.shape, a.dtype, sh), abstract_opt, opt_shardings)
    return _spec_bytes(params), _spec_bytes(opt)


def rollout_engine(cfg, graphdef, mesh, s: Shapes, chip: Chip, resident: int) -> Engine:
    """The paged engine the config names; a pool of num_pages=0 takes memory_fraction of the HBM a chip has
    left beside the trainer's state (`resident`) and the decode weights."""
    make = lambda pages: Engine(
        graphdef,
        cfg,
        mesh,
        num_slots=s.num_slots,
        page_size=s.page_size,
        num_pages=pages,
        prefill_chunk=s.prefill_chunk,
        decode_burst=s.decode_burst,
        cache_dtype=s.cache_dtype,
        weights_dtype=s.weights_dtype or None,
    )
    eng = make(max(2, s.num_pages))
    if s.num_pages:
        return eng
    _, abstract, _ = model_shardings(cfg, mesh)
    weights = _spec_bytes(eng._decode_abstract(abstract))
    left = chip.hbm_bytes - resident - weights
    return make(max(2, int(s.memory_fraction * left // eng.page_bytes)))


def attention_kernel_costs(cfg: ModelConfig, eng: Engine, queries: float, keys_per_query: float, reads: float):
    """(FLOPs, bytes) per chip of the paged attention the compiled costs miss (a Pallas kernel is opaque to
    XLA's cost analysis): scores and values over `keys_per_query` keys for each of `queries` query tokens,
    and `reads` key positions of keys and values read from the pool."""
    sizes = dict(zip(eng.mesh.axis_names, eng.mesh.devices.shape))
    heads = cfg.num_heads / (sizes.get("tensor", 1) if eng.kv_spec[3] is not None else 1)
    flops = 4 * cfg.num_layers * heads * cfg.head_dim * queries * keys_per_query
    return flops, reads * eng.page_bytes / eng.page_size


def rollout_stages(cfg, graphdef, params, mesh, s: Shapes, chip: Chip, trainer: tuple[int, int]):
    """The paged engine's programs: the weights' reshard to the decode layout (once per rollout), a prefill
    round (one chunk per batch shard) and a burst of decode steps over every slot, the pool donated; the
    trainer's state (`trainer`: its params and optimizer bytes per chip) stays on the chips meanwhile.
    Costs: a decode burst's scan body counts once in XLA's analysis, so they come from a one-step
    program's compile x burst; the attention kernel's are added from the shapes (attention_kernel_costs).
    Per step: each prompt prefilled once; decode at the rows that fit the slots and the pool at once
    (`busy` per shard), each holding its prompt and half its mean response on average."""
    train_params, opt = trainer
    eng = rollout_engine(cfg, graphdef, mesh, s, chip, train_params + opt)
    G, S, C, K = eng.num_shards, eng.num_slots, eng.chunk, eng.burst
    P, mean = s.prompt_len, s.mean_response_len
    sp = SamplingParams(temperature=s.temperature, max_new_tokens=s.response_len, n=s.samples)
    pages = pg.cdiv(P + s.response_len, s.page_size)
    programs = eng.programs(params, sp, pages, rows=s.rows)
    S = eng.slots_for(s.rows)
    one_step = eng.with_burst(1).programs(params, sp, pages, rows=s.rows)["decode"]
    weights = _spec_bytes(programs["prefill"][1][0])
    pool = _spec_bytes(programs["prefill"][1][1])
    busy = max(1.0, min(S, s.rows / G, eng.num_pages * s.page_size / (P + mean)))
    log_pool = (
        f"{eng.num_pages:,} pages of {s.page_size} tokens per batch shard "
        f"({eng.num_pages * s.page_size:,} tokens, {pool / GiB:.1f} GiB per chip); "
        f"decode at {busy:.0f} rows per shard at once (slots, rows and pool at a mean response of {mean:,})"
    )
    live = busy * (P + mean / 2)  # key positions the seated rows of a shard hold, on average
    kernel = {
        "prefill": attention_kernel_costs(cfg, eng, C, P / 2, P / 2 * pg.cdiv(C, 32)),
        "decode": attention_kernel_costs(cfg, eng, K * busy, live / busy, K * live),
    }
    rollout_parts = {"params": train_params + weights, "optimizer": opt, "kv": pool}
    stages = (
        (
            "rollout/reshard weights for decoding",
            "reshard",
            0,
            dict(rollout_parts, params=train_params, kv=0),
            1.0,
            opt,
        ),
        (f"rollout/prefill ({G} shards x {C} tokens)", "prefill", G * C, rollout_parts, s.prompts * P / (G * C), 0),
        (f"rollout/decode ({G} shards x {S} slots x {K} steps)", "decode", G * S * K, rollout_parts, 0, 0),
    )
    with (
        jax.default_device(mesh.devices.flat[0]),  # the kernels' lowering reads the default device
        concurrent.futures.ThreadPoolExecutor(max_workers=1) as costs_thread,
    ):
        for name, kind, tokens, parts, runs, held in stages:
            t0 = time.perf_counter()
            fn, args = programs[kind]
            pending = None
            if kind == "decode":  # jax's default device is per thread: name it there too
                pending = costs_thread.submit(_costs_on, mesh.devices.flat[0], *one_step, mesh)
            if kind == "decode":
                runs = s.rows * mean / (G * busy * K)
            if kind != "reshard":
                held = train_params + opt
            report = compile_stage(
                name, fn, args, chip=chip, mesh=mesh, tokens=tokens, parts=parts, runs_per_step=runs, resident=held
            )
            if pending is not None and report.error:  # the one-step costing cannot fit either: no costs
                concurrent.futures.wait([pending])
            elif pending is not None:
                flops, accessed, coll = (K * x for x in pending.result())
                report.flops_per_chip, report.bytes_accessed_per_chip, report.collective_bytes_per_chip = (
                    flops,
                    accessed,
                    coll,
                )
            if kind in kernel and not report.error:
                report.flops_per_chip += kernel[kind][0]
                report.bytes_accessed_per_chip += kernel[kind][1]
                report.roofline_s = max(
                    report.flops_per_chip / chip.peak_flops,
                    report.bytes_accessed_per_chip / chip.hbm_bandwidth,
                    report.collective_bytes_per_chip / chip.ici_bandwidth,
                )
            report.note = log_pool if kind != "reshard" else ""
            report.compile_s = time.perf_counter() - t0
            yield report


def _update_batch(mesh, B, P, T):
    return {
        "prompt_tokens": _batch(mesh, (B, P), jnp.int32),
        "prompt_valid": _batch(mesh, (B, P), jnp.bool_),
        "completion_tokens": _batch(mesh, (B, T), jnp.int32),
        "loss_mask": _batch(mesh, (B, T), jnp.bool_),
        "adv": _batch(mesh, (B, T), jnp.float32),
        "sampler_logp": _batch(mesh, (B, T), jnp.float32),
    }


def training_programs(config, cfg: ModelConfig, mesh, s: Shapes) -> list[dict]:
    """The logprob pass, one update micro-batch and the SFT step of `cfg`: jitted function, abstract
    arguments, and what the report needs to know of each."""
    graphdef, params, param_shardings = _model_parts(cfg, mesh)
    optimizer = rl_loop.run_optimizer(config)
    abstract_opt = jax.eval_shape(optimizer.init, params)
    opt_shardings = sharding.like_params_shardings(abstract_opt, param_shardings, mesh)
    opt = jax.tree_util.tree_map(lambda a, sh: _abstract(a.shape, a.dtype, sh), abstract_opt, opt_shardings)
    param_bytes, opt_bytes = _spec_bytes(params), _spec_bytes(opt)
    B, P, T = s.micro_rows, s.prompt_len, s.response_len
    batch = _update_batch(mesh, B, P, T)
    update = rl_update.make_update_step(
        graphdef,
        optimizer,
        rl_loop.loss_settings(config),
        num_micro=1,
        param_shardings=param_shardings,
        opt_shardings=opt_shardings,
        mesh=mesh,
    )
    R, L = s.sft_rows, s.sft_len
    sft_batch = tuple(_batch(mesh, (R, L), dt) for dt in (jnp.int32, jnp.int32, jnp.int32, jnp.bool_))
    return [
        dict(
            name="logprob",
            fn=rl_update.make_logprob_fn(graphdef, mesh, s.temperature).fn,
            args=(params, batch),
            tokens=B * (P + T),
            parts={"params": param_bytes, "optimizer": 0, "kv": 0},
            runs_per_step=(s.rows / B) if s.needs_logprob_pass else 0.0,
        ),
        dict(
            name="update (one micro-batch)",
            fn=update.fn,
            args=(params, opt, batch),
            tokens=B * (P + T),
            parts={"params": param_bytes, "optimizer": opt_bytes, "kv": 0},
            runs_per_step=s.rows / B,
        ),
        dict(
            name="sft step",
            fn=make_sft_step(graphdef, optimizer, mesh, param_shardings, opt_shardings).fn,
            args=(params, opt, *sft_batch),
            tokens=R * L,
            parts={"params": param_bytes, "optimizer": opt_bytes, "kv": 0},
            runs_per_step=0.0,
        ),
    ]


def _costs_on(device, fn, args, mesh) -> tuple[float, float, float]:
    with jax.default_device(device):
        return _costs(fn, args, mesh)


def _costs(fn, args, mesh) -> tuple[float, float, float]:
    """(FLOPs, bytes accessed, collective bytes) per device of one compile."""
    with sharding.activate(mesh):
        compiled = fn.lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)), collective_bytes(compiled.as_text())


def training_stages(config, cfg: ModelConfig, mesh, s: Shapes, chip: Chip):
    """Memory from compiling `cfg` as it runs. With scanned layers XLA's cost analysis counts the loop body
    once, so FLOPs, bytes and collectives come from unrolled compiles of the same stage at 1 and 2 layers,
    extrapolated linearly to the model's depth (every layer costs the same). Those two compile on a second
    thread while the full program compiles (XLA compiles outside the GIL), so a stage takes the longer of
    the two, not their sum."""
    programs = training_programs(config, cfg, mesh, s)
    small = []
    if cfg.scan_layers:
        small = [
            training_programs(config, dataclasses.replace(cfg, num_layers=n, scan_layers=False), mesh, s)
            for n in (1, 2)
        ]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as costs_thread:
        for i, prog in enumerate(programs):
            t0 = time.perf_counter()
            pending = [costs_thread.submit(_costs, p[i]["fn"], p[i]["args"], mesh) for p in small]
            report = compile_stage(
                prog["name"],
                prog["fn"],
                prog["args"],
                chip=chip,
                mesh=mesh,
                tokens=prog["tokens"],
                parts=prog["parts"],
                runs_per_step=prog["runs_per_step"],
            )
            if pending and not report.error:
                one, two = (f.result() for f in pending)
                flops, accessed, coll = (c1 + (cfg.num_layers - 1) * (c2 - c1) for c1, c2 in zip(one, two))
                report.flops_per_chip, report.bytes_accessed_per_chip, report.collective_bytes_per_chip = (
                    flops,
                    accessed,
                    coll,
                )
                report.roofline_s = max(
                    flops / chip.peak_flops, accessed / chip.hbm_bandwidth, coll / chip.ici_bandwidth
                )
            concurrent.futures.wait(pending)  # a failed stage's cost compiles finish before the next stage's
            report.compile_s = time.perf_counter() - t0
            yield report


def merge_stage(params, mesh, chip: Chip, num_experts: int = 4):
    """Task arithmetic's per-tensor kernel on the largest tensor, with the anchor and the experts resident."""
    leaves = jax.tree_util.tree_leaves(params)
    largest = max(leaves, key=lambda x: math.prod(x.shape))
    resident = (1 + num_experts) * _spec_bytes(params)
    fn = jitted(
        merge_methods._k_linear, (("drop_rate", 0.0), ("out_dtype", jnp.dtype(largest.dtype))), largest.sharding, False
    )
    rep = sharding.replicated(mesh)
    args = (
        largest,
        (largest,) * num_experts,
        _abstract((), jnp.int32, rep),
        _abstract((), jnp.int32, rep),
        _abstract((num_experts,), jnp.float32, rep),
    )
    report = compile_stage(
        "merge (task arithmetic, 4 experts)",
        fn,
        args,
        chip=chip,
        mesh=mesh,
        tokens=0,
        parts={"params": resident, "optimizer": 0, "kv": 0},
    )
    # The kernel's arguments are tensors of the resident trees: count the trees, the kernel's temporaries
    # and its output (the merged tree grows while the inputs stay).
    own = _spec_bytes(args[:2])
    report.bytes_per_chip["total"] = int(resident + report.bytes_per_chip["total"] - own)
    report.fits = report.bytes_per_chip["total"] <= chip.hbm_bytes
    return report


STAGE_GROUPS = ("rollout", "training", "merge")


def plan(config, topology: str, *, mean_response_len: int = 0, only=STAGE_GROUPS, progress=None) -> dict:
    """Compile every stage of `config` for `topology` (or the groups named in `only`: rollout = prefill
    and decode, training = logprob pass, update and SFT step, merge); the report as a JSON-able dict."""
    unknown = set(only) - set(STAGE_GROUPS)
    if unknown:
        raise PlanError(f"unknown stage group(s) {sorted(unknown)}; known: {', '.join(STAGE_GROUPS)}")
    return plan_for(
        config,
        topology_devices(topology),
        CHIPS[topology.split(":")[0]],
        topology,
        mean_response_len=mean_response_len,
        only=only,
        progress=progress,
    )


def chip_of(device_kind: str) -> Chip:
    """The CHIPS entry of a real TPU device (its device_kind, e.g. 'TPU v5' for v5p, 'TPU v5 lite')."""
    kinds = {
        "TPU v5": "v5p",
        "TPU v5p": "v5p",
        "TPU v5 lite": "v5e",
        "TPU v5e": "v5e",
        "TPU v6 lite": "v6e",
        "TPU v6e": "v6e",
        "TPU v4": "v4",
    }
    if device_kind not in kinds:
        raise PlanError(f"no peak figures for device kind {device_kind!r}; known: {sorted(kinds)}")
    return CHIPS[kinds[device_kind]]


def plan_for(config, devices, chip: Chip, topology: str, *, mean_response_len=0, only=STAGE_GROUPS, progress=None):
    """plan() on given devices: a topology's from libtpu, or the real ones of the slice this runs on."""
    unknown = set(only) - set(STAGE_GROUPS)
    if unknown:
        raise PlanError(f"unknown stage group(s) {sorted(unknown)}; known: {', '.join(STAGE_GROUPS)}")
    mesh = sharding.make_mesh(
        sharding.MeshShape(config.mesh.data, config.mesh.fsdp, config.mesh.tensor), devices=devices
    )
    s = shapes_of(config, mean_response_len)
    problems = rl_loop_shape_problems(s, mesh)
    if problems:
        raise PlanError("the config does not divide over the mesh:\n  " + "\n  ".join(problems))
    m = config.model
    overrides = {k: v for k, v in m.overrides.items() if v is not None}
    vocab = None if m.preset != "tiny" else build.load_tokenizer("builtin").vocab_size
    cfg = build.model_config(
        m.preset,
        overrides,
        vocab_size=vocab,
        param_dtype=m.param_dtype,
        remat=m.remat,
        remat_policy=m.remat_policy,
        scan_layers=m.scan_layers,
    )
    graphdef, params, param_shardings = _model_parts(cfg, mesh)
    stages = []
    groups = {
        "rollout": lambda: rollout_stages(
            cfg, graphdef, params, mesh, s, chip, trainer_state_bytes(config, params, param_shardings, mesh)
        ),
        "training": lambda: training_stages(config, cfg, mesh, s, chip),
        "merge": lambda: [merge_stage(params, mesh, chip)],
    }
    for group in STAGE_GROUPS:
        if group not in only:
            continue
        for report in groups[group]():
            stages.append(report)
            if progress:
                progress(report)
    step_s = sum(r.roofline_s * r.runs_per_step for r in stages)
    chips = len(devices)
    return {
        "topology": topology,
        "chips": chips,
        "chip": dataclasses.asdict(chip),
        "hbm_bytes_per_chip": chip.hbm_bytes,
        "mesh": dict(mesh.shape),
        "model": {
            "preset": m.preset,
            "params": int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))),
        },
        "shapes": dataclasses.asdict(s),
        "roofline_step_s": step_s,
        "projected_device_hours": step_s * s.steps * chips / 3600,
        "study_gpu_hours": STUDY_GPU_HOURS,
        "stages": [dataclasses.asdict(r) for r in stages],
    }


def rl_loop_shape_problems(s: Shapes, mesh) -> list[str]:
    sizes = dict(mesh.shape)
    shards = sizes.get("data", 1) * sizes.get("fsdp", 1)
    out = []
    for what, n in (
        ("rollout rows per step", s.rows),
        ("update micro-batch rows", s.micro_rows),
        ("sft rows", s.sft_rows),
    ):
        if n % shards:
            out.append(f"{what} = {n} is not a multiple of data*fsdp = {shards}")
    if s.rows % s.micro_rows:
        out.append(f"grpo.micro_batch_size={s.micro_rows} does not divide the {s.rows} rollout rows")
    return out


def _fmt_bytes(n) -> str:
    """GiB with one decimal, or MiB below a tenth of a GiB (tiny configs)."""
    return f"{n / GiB:.1f}" if n >= 0.1 * GiB or n == 0 else f"{n / 2**20:.1f}M"


def rows_that_fit(r: dict, rows: int, hbm: int, batch_shards: int, headroom: float = 0.15) -> int:
    """Rows per micro-batch that leave `headroom` of HBM free, by scaling this compile's per-row bytes
    (activations grow linearly with rows); a multiple of the batch shards, 0 when not even one row each fits."""
    b = r["bytes_per_chip"]
    fixed = b["params"] + b["optimizer"]
    per_row = max(b["total"] - fixed, 1) / rows
    fit = int(((1 - headroom) * hbm - fixed) // per_row)
    return max(0, fit // batch_shards * batch_shards)


def advice(r: dict, report: dict) -> str:
    hbm, s = report["hbm_bytes_per_chip"], report["shapes"]
    shards = report["mesh"].get("data", 1) * report["mesh"].get("fsdp", 1)
    if r["name"].startswith("rollout"):
        return (
            "a smaller KV pool (rollout.num_pages or rollout.memory_fraction), fewer decode slots or a smaller "
            "rollout.prefill_chunk, bf16 weights and KV (rollout.weights_dtype, rollout.cache_dtype), or "
            "mesh.tensor > 1 (the decode weights split over tensor)"
        )
    if r["name"].startswith(("update", "logprob")):
        fit = rows_that_fit(r, s["micro_rows"], hbm, shards)
        whole = (
            " (grpo.micro_batch_size=0 puts the whole rollout in one micro-batch)"
            if s["micro_rows"] == s["rows"]
            else ""
        )
        if fit:
            return (
                f"grpo.micro_batch_size={fit} would leave 15% of HBM free (scaled from this compile's "
                f"{s['micro_rows']} rows{whole}; check it with --config.grpo.micro_batch_size={fit})"
            )
        return (
            f"not even one row per batch shard fits{whole}: model.remat=True, shorter responses, or more "
            "chips per row (mesh.tensor)"
        )
    if r["name"].startswith("sft"):
        return "a smaller sft.batch_size or sft.max_len, or more chips"
    return "more chips"


def table(report: dict) -> str:
    hbm = report["hbm_bytes_per_chip"]
    lines = [
        f"{report['topology']}: {report['chips']} chips, mesh {report['mesh']}, {_fmt_bytes(hbm)} GiB HBM per chip; "
        f"model {report['model']['preset']} ({report['model']['params'] / 1e9:.2f}B params)",
        "",
        "| stage | tokens | params | opt | KV | temp | total GiB | HBM % | fits | TFLOP | GB accessed | GB collectives "
        "| roofline s | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["stages"]:
        b = r["bytes_per_chip"]
        lines.append(
            f"| {r['name']} | {r['tokens']:,} | {_fmt_bytes(b['params'])} | {_fmt_bytes(b['optimizer'])} | "
            f"{_fmt_bytes(b['kv'])} | {_fmt_bytes(b.get('temp', 0))} | {_fmt_bytes(b['total'])} | "
            f"{100 * b['total'] / hbm:.0f}% | {'yes' if r['fits'] else '**NO**'} | {r['flops_per_chip'] / 1e12:.2f} | "
            f"{r['bytes_accessed_per_chip'] / 1e9:.2f} | {r['collective_bytes_per_chip'] / 1e9:.3f} | "
            f"{r['roofline_s']:.4f} | {r['compile_s']:.1f} |"
        )
    s = report["shapes"]
    lines += [
        "",
        f"Per RL step (roofline, mean response {s['mean_response_len']:,} tokens, {s['rows']:,} rows): "
        f"{report['roofline_step_s']:.1f} s; {s['steps']} steps on {report['chips']} chips: "
        f"**{report['projected_device_hours']:,.1f} device-hours** (a lower bound: peaks, no overlap losses). "
        "The study reported "
        + ", ".join(f"{v:,.1f} GPU-hours ({k})" for k, v in report["study_gpu_hours"].items())
        + ".",
    ]
    notes = dict.fromkeys(r["note"] for r in report["stages"] if r.get("note"))
    lines += [f"- KV pool: {n}." for n in notes]
    for r in report["stages"]:
        if not r["fits"]:
            lines.append(
                f"- {r['name']} does not fit: needs {_fmt_bytes(r['bytes_per_chip']['total'])} GiB of "
                f"{_fmt_bytes(hbm)} per chip. Change: {advice(r, report)}."
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "config file, e.g. configs/grpo.py:math", flag_values=fv, lock_config=True
    )
    flags.DEFINE_string(
        "topology", "", "TPU slice, e.g. v5p:4x4x4 (default: the config's plan.topology)", flag_values=fv
    )
    flags.DEFINE_integer(
        "mean_response_tokens",
        0,
        "mean response length for the projection (default: the config's plan.mean_response_tokens, else the max)",
        flag_values=fv,
    )
    flags.DEFINE_list("only", list(STAGE_GROUPS), "stage groups to compile: rollout, training, merge", flag_values=fv)
    flags.DEFINE_string(
        "json", "", "also write the report as JSON to this file ('-' = stdout only JSON)", flag_values=fv
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip() + "\n\nFlags:\n" + fv.main_module_help())
        return 0
    try:
        fv(["rlvr-plan"] + argv)
    except (flags.Error, ValueError) as e:
        print(f"rlvr-plan: error: {e}", file=sys.stderr)
        return 2
    if fv.config is None:
        print("rlvr-plan: error: --config is required (see --help)", file=sys.stderr)
        return 2
    c = fv.config
    topology = fv.topology or c.plan.topology
    mean = fv.mean_response_tokens or c.plan.mean_response_tokens

    def progress(r: StageReport):
        state = "fits" if r.fits else "DOES NOT FIT"
        print(
            f"[plan] {r.name}: {r.bytes_per_chip['total'] / GiB:.1f} GiB per chip, {state} "
            f"(compiled in {r.compile_s:.1f} s)",
            file=sys.stderr,
            flush=True,
        )

    try:
        report = plan(c, topology, mean_response_len=mean, only=tuple(fv.only), progress=progress)
    except PlanError as e:
        print(f"rlvr-plan: error: {e}", file=sys.stderr)
        return 2
    if fv.json == "-":
        print(json.dumps(report, indent=1))
    else:
        print(table(report))
        if fv.json:
            with open(fv.json, "w") as f:
                json.dump(report, f, indent=1)
    return 0 if all(r["fits"] for r in report["stages"]) else 1


if __name__ == "__main__":
    sys.exit(main())
