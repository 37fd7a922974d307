"""The rollout's stages: the paged engine's programs (the weights' reshard, a prefill round, a decode burst)
compiled beside the trainer's state, their costs with the paged attention kernel's added from the shapes,
and how often one RL step runs each."""

from __future__ import annotations

import concurrent.futures
import time
from typing import NamedTuple

import jax

from rlvr_jax.model.decoder import ModelConfig, model_shardings
from rlvr_jax.plan.chips import Chip, GiB
from rlvr_jax.plan.compile import compile_stage, costs_on, roofline, set_costs, spec_bytes
from rlvr_jax.plan.stages import Shapes
from rlvr_jax.rollout import pages as pg
from rlvr_jax.rollout import simulate
from rlvr_jax.rollout.engine import Engine
from rlvr_jax.rollout.sampling import SamplingParams
from rlvr_jax.rollout.settings import EngineConfig


class _Stage(NamedTuple):
    name: str
    kind: str  # the engine's program: reshard, prefill or decode
    tokens: int
    parts: dict  # bytes per chip: params, optimizer, kv
    runs: float  # per RL step
    held: int  # bytes per chip resident beside the program, not among its arguments


def rollout_engine(cfg, graphdef, mesh, engine: EngineConfig, chip: Chip, resident: int) -> Engine:
    """The paged engine the config names; a pool of num_pages=0 takes memory_fraction of the HBM a chip has
    left beside the trainer's state (`resident`) and the decode weights."""
    make = lambda pages: Engine(graphdef, cfg, mesh, engine, num_pages=pages)
    eng = make(max(2, engine.num_pages))
    if engine.num_pages:
        return eng
    _, abstract, _ = model_shardings(cfg, mesh)
    weights = spec_bytes(eng.decode_abstract(abstract))
    left = chip.hbm_bytes - resident - weights
    return make(max(2, int(engine.memory_fraction * left // eng.page_bytes)))


def engine_shape(cfg, graphdef, mesh, engine: EngineConfig, chip: Chip, resident: int) -> simulate.EngineShape:
    """What the engine's schedule depends on (slots, pool, programs' sizes, batch shards, hosts) at the config's
    shapes: the engine `rollout_engine` builds, on hosts as the mesh's devices' processes."""
    eng = rollout_engine(cfg, graphdef, mesh, engine, chip, resident)
    return simulate.EngineShape.of_engine(eng, hosts=len({d.process_index for d in mesh.devices.flat}))


def attention_kernel_costs(cfg: ModelConfig, eng: Engine, queries: float, keys_per_query: float, reads: float):
    """(FLOPs, bytes) per chip of the paged attention the compiled costs miss (a Pallas kernel is opaque to
    XLA's cost analysis): scores and values over `keys_per_query` keys for each of `queries` query tokens,
    and `reads` key positions of keys and values read from the pool."""
    sizes = dict(zip(eng.mesh.axis_names, eng.mesh.devices.shape))
    heads = cfg.num_heads / (sizes.get("tensor", 1) if eng.kv_spec[3] is not None else 1)
    flops = 4 * cfg.num_layers * heads * cfg.head_dim * queries * keys_per_query
    return flops, reads * eng.page_bytes / eng.page_size


def rollout_stages(
    cfg, graphdef, params, mesh, s: Shapes, engine: EngineConfig, chip: Chip, trainer: tuple[int, int], partial_rows=0
):
    """The paged engine's programs: the weights' reshard to the decode layout (once per rollout), a prefill
    round (one chunk per batch shard) and a burst of decode steps over every slot, the pool donated; the
    trainer's state (`trainer`: its params and optimizer bytes per chip) stays on the chips meanwhile.
    Costs: a decode burst's scan body counts once in XLA's analysis, so they come from a one-step
    program's compile x burst; the attention kernel's are added from the shapes (attention_kernel_costs).
    Per step: each prompt prefilled once; decode at the rows that fit the slots and the pool at once
    (`busy` per shard), each holding its prompt and half its mean response on average. `partial_rows`: the
    rows partial rollouts keep in flight; when they fill more slots per shard, their decode burst compiles as
    a stage of its own ("decode_partial", 0 runs in the synchronous step: the tail-aware projection prices it)."""
    train_params, opt = trainer
    eng = rollout_engine(cfg, graphdef, mesh, engine, chip, train_params + opt)
    sp = SamplingParams(temperature=s.temperature, max_new_tokens=s.response_len, n=s.samples)
    pages = pg.cdiv(s.prompt_len + s.response_len, s.page_size)
    programs = eng.programs(params, sp, pages, rows=s.rows)
    one_step = {"decode": eng.with_burst(1).programs(params, sp, pages, rows=s.rows)["decode"]}
    busy = _busy(eng, s, s.rows)
    stages = _stages(eng, s, programs, trainer, busy)
    kernel = _kernel_costs(cfg, eng, s, busy)
    if partial_rows and eng.slots_for(partial_rows) != eng.slots_for(s.rows):
        programs["decode_partial"] = eng.programs(params, sp, pages, rows=partial_rows)["decode"]
        one_step["decode_partial"] = eng.with_burst(1).programs(params, sp, pages, rows=partial_rows)["decode"]
        stages += (_partial_decode_stage(eng, stages[-1], partial_rows),)
        kernel["decode_partial"] = _kernel_costs(cfg, eng, s, _busy(eng, s, partial_rows))["decode"]
    note = _pool_note(eng, s, spec_bytes(programs["prefill"][1][1]), busy)
    device = mesh.devices.flat[0]
    with (
        jax.default_device(device),  # the kernels' lowering reads the default device
        concurrent.futures.ThreadPoolExecutor(max_workers=1) as costs_thread,
    ):
        for stage in stages:
            t0 = time.perf_counter()
            pending = None
            if stage.kind in one_step:  # jax's default device is per thread: name it there too
                pending = costs_thread.submit(costs_on, device, *one_step[stage.kind], mesh)
            fn, args = programs[stage.kind]
            report = compile_stage(
                stage.name,
                fn,
                args,
                chip=chip,
                mesh=mesh,
                tokens=stage.tokens,
                parts=stage.parts,
                runs_per_step=stage.runs,
                resident=stage.held,
            )
            _add_costs(report, chip, eng.burst, pending, kernel.get(stage.kind))
            report.note = note if stage.kind != "reshard" else ""
            report.compile_s = time.perf_counter() - t0
            yield report


def _busy(eng: Engine, s: Shapes, rows: int) -> float:
    """Rows per shard decoding at once: the slots a call of `rows` rows fills, the rows, and what the pool
    holds at the mean response."""
    S, G = eng.slots_for(rows), eng.num_shards
    return max(1.0, min(S, rows / G, eng.num_pages * s.page_size / (s.prompt_len + s.mean_response_len)))


def _partial_decode_stage(eng: Engine, decode: _Stage, rows: int) -> _Stage:
    G, S, K = eng.num_shards, eng.slots_for(rows), eng.burst
    name = f"rollout/decode, partial rollouts ({G} shards x {S} slots x {K} steps)"
    return _Stage(name, "decode_partial", G * S * K, decode.parts, 0.0, decode.held)


def _stages(eng: Engine, s: Shapes, programs: dict, trainer: tuple[int, int], busy: float) -> tuple[_Stage, ...]:
    """The reshard, prefill and decode stages: names, tokens, bytes and runs per RL step."""
    train_params, opt = trainer
    G, S, C, K = eng.num_shards, eng.slots_for(s.rows), eng.chunk, eng.burst
    weights = spec_bytes(programs["prefill"][1][0])
    pool = spec_bytes(programs["prefill"][1][1])
    parts = {"params": train_params + weights, "optimizer": opt, "kv": pool}
    return (
        _Stage("rollout/reshard weights for decoding", "reshard", 0, dict(parts, params=train_params, kv=0), 1.0, opt),
        _Stage(
            f"rollout/prefill ({G} shards x {C} tokens)",
            "prefill",
            G * C,
            parts,
            s.prompts * s.prompt_len / (G * C),
            train_params + opt,
        ),
        _Stage(
            f"rollout/decode ({G} shards x {S} slots x {K} steps)",
            "decode",
            G * S * K,
            parts,
            s.rows * s.mean_response_len / (G * busy * K),
            train_params + opt,
        ),
    )


def _pool_note(eng: Engine, s: Shapes, pool: int, busy: float) -> str:
    return (
        f"{eng.num_pages:,} pages of {s.page_size} tokens per batch shard "
        f"({eng.num_pages * s.page_size:,} tokens, {pool / GiB:.1f} GiB per chip); "
        f"decode at {busy:.0f} rows per shard at once (slots, rows and pool at a mean response of "
        f"{s.mean_response_len:,})"
    )


def _kernel_costs(cfg: ModelConfig, eng: Engine, s: Shapes, busy: float) -> dict:
    """{program: (FLOPs, bytes)} of its paged attention: a prefill chunk attends to half a prompt on average;
    a decode burst's rows each hold their prompt and half their mean response."""
    P, C, K = s.prompt_len, eng.chunk, eng.burst
    live = busy * (P + s.mean_response_len / 2)  # key positions the seated rows of a shard hold, on average
    return {
        "prefill": attention_kernel_costs(cfg, eng, C, P / 2, P / 2 * pg.cdiv(C, 32)),
        "decode": attention_kernel_costs(cfg, eng, K * busy, live / busy, K * live),
    }


def _add_costs(report, chip: Chip, burst: int, pending, kernel) -> None:
    """A decode burst's costs from the one-step compile (`pending`) x burst, and the attention kernel's."""
    if pending is not None and report.error:  # the one-step costing cannot fit either: no costs
        concurrent.futures.wait([pending])
    elif pending is not None:
        set_costs(report, chip, *(burst * x for x in pending.result()))
    if kernel is not None and not report.error:
        report.flops_per_chip += kernel[0]
        report.bytes_accessed_per_chip += kernel[1]
        report.roofline_s = roofline(
            chip, report.flops_per_chip, report.bytes_accessed_per_chip, report.collective_bytes_per_chip
        )
