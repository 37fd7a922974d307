"""The training's stages: the logprob pass, one update micro-batch and the SFT step, compiled in the trainer's
layout; with scanned layers their costs come from unrolled 1- and 2-layer compiles, extrapolated to depth."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time

import jax.numpy as jnp

from rlvr_jax.model.decoder import ModelConfig
from rlvr_jax.plan.chips import Chip
from rlvr_jax.plan.compile import compile_stage, costs, set_costs, spec_bytes
from rlvr_jax.plan.stages import Shapes, batch_spec, model_parts, optimizer_parts
from rlvr_jax.rl import loop as rl_loop
from rlvr_jax.rl import update as rl_update
from rlvr_jax.rl.sft import make_sft_step


def training_programs(config, cfg: ModelConfig, mesh, s: Shapes) -> list[dict]:
    """The logprob pass, one update micro-batch and the SFT step of `cfg`: jitted function, abstract
    arguments, and what the report needs to know of each."""
    graphdef, params, param_shardings = model_parts(cfg, mesh)
    optimizer, opt, opt_shardings = optimizer_parts(config, params, param_shardings, mesh)
    param_bytes, opt_bytes = spec_bytes(params), spec_bytes(opt)
    B, P, T = s.micro_rows, s.prompt_len, s.response_len
    g = config.grpo
    optional = rl_update.optional_update_arrays(
        updates_per_rollout=g.updates_per_rollout, kl_coef=g.kl_coef, kl_in_reward=g.kl_in_reward
    )
    batch = rl_update.update_batch_spec(mesh, B, P, T)  # what the logprob passes read
    update_batch = rl_update.update_batch_spec(mesh, B, P, T, optional)  # with what the loss needs besides
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
    sft_batch = tuple(batch_spec(mesh, (R, L), dt) for dt in (jnp.int32, jnp.int32, jnp.int32, jnp.bool_))
    return [
        dict(
            name="logprob",
            fn=rl_update.make_logprob_fn(graphdef, mesh, s.temperature).fn,
            args=(params, batch),
            tokens=B * (P + T),
            parts={"params": param_bytes, "optimizer": 0, "kv": 0},
            runs_per_step=s.logprob_passes * s.rows / B,
        ),
        dict(
            name="update (one micro-batch)",
            fn=update.fn,
            args=(params, opt, update_batch),
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
            pending = [costs_thread.submit(costs, p[i]["fn"], p[i]["args"], mesh) for p in small]
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
                set_costs(report, chip, *(c1 + (cfg.num_layers - 1) * (c2 - c1) for c1, c2 in zip(one, two)))
            concurrent.futures.wait(pending)  # a failed stage's cost compiles finish before the next stage's
            report.compile_s = time.perf_counter() - t0
            yield report
