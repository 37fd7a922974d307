"""plan(): every stage group of a config compiled for a topology's devices (or a real slice's), and the report
as a JSON-able dict: the mesh, the shapes, each stage's bytes and costs per chip, the projected device-hours."""

from __future__ import annotations

import dataclasses
import math

import jax

from rlvr_jax import sharding
from rlvr_jax.plan import schedule
from rlvr_jax.plan.chips import Chip, PlanError, chip_of_topology, topology_devices
from rlvr_jax.plan.stages import (
    merge_stage,
    model_config_of,
    model_parts,
    shape_problems,
    shapes_of,
    trainer_state_bytes,
)
from rlvr_jax.plan.stages_rollout import engine_shape, rollout_stages
from rlvr_jax.plan.stages_train import training_stages
from rlvr_jax.rollout.settings import engine_config

STAGE_GROUPS = ("rollout", "training", "merge")

# The study's reported cost (REFERENCE.md): four single-domain RL runs, and the multi-task run.
STUDY_GPU_HOURS = {"four single-domain runs": 6524.8, "multi-task run": 2166.4}


def _check_groups(only) -> None:
    unknown = set(only) - set(STAGE_GROUPS)
    if unknown:
        raise PlanError(f"unknown stage group(s) {sorted(unknown)}; known: {', '.join(STAGE_GROUPS)}")


def plan(config, topology: str, *, mean_response_len: int = 0, only=STAGE_GROUPS, progress=None) -> dict:
    """Compile every stage of `config` for `topology` (or the groups named in `only`: rollout = prefill
    and decode, training = logprob pass, update and SFT step, merge); the report as a JSON-able dict."""
    _check_groups(only)
    return plan_for(
        config,
        topology_devices(topology),
        chip_of_topology(topology),
        topology,
        mean_response_len=mean_response_len,
        only=only,
        progress=progress,
    )


def plan_for(config, devices, chip: Chip, topology: str, *, mean_response_len=0, only=STAGE_GROUPS, progress=None):
    """plan() on given devices: a topology's from libtpu, or the real ones of the slice this runs on."""
    _check_groups(only)
    mesh = sharding.make_mesh(sharding.MeshShape.of(config.mesh), devices=devices)
    s = shapes_of(config, mean_response_len)
    problems = shape_problems(s, mesh)
    if problems:
        raise PlanError("the config does not divide over the mesh:\n  " + "\n  ".join(problems))
    tail = schedule.tail_settings(config, mean_response_len) if "rollout" in only else None
    cfg = model_config_of(config)
    graphdef, params, param_shardings = model_parts(cfg, mesh)
    trainer = trainer_state_bytes(config, params, param_shardings, mesh) if "rollout" in only else (0, 0)
    groups = {
        "rollout": lambda: rollout_stages(
            cfg, graphdef, params, mesh, s, engine_config(config.rollout), chip, trainer, tail and tail.rows(s)
        ),
        "training": lambda: training_stages(config, cfg, mesh, s, chip),
        "merge": lambda: [merge_stage(params, mesh, chip)],
    }
    stages = []
    for group in STAGE_GROUPS:
        if group not in only:
            continue
        for report in groups[group]():
            stages.append(report)
            if progress:
                progress(report)
    step_s = sum(r.roofline_s * r.runs_per_step for r in stages)
    chips = len(devices)
    shape = engine_shape(cfg, graphdef, mesh, engine_config(config.rollout), chip, sum(trainer)) if tail else None
    return {
        "topology": topology,
        "chips": chips,
        "chip": dataclasses.asdict(chip),
        "hbm_bytes_per_chip": chip.hbm_bytes,
        "mesh": dict(mesh.shape),
        "model": {
            "preset": config.model.preset,
            "params": int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))),
        },
        "shapes": dataclasses.asdict(s),
        "roofline_step_s": step_s,
        "projected_device_hours": step_s * s.steps * chips / 3600,
        "study_gpu_hours": STUDY_GPU_HOURS,
        "stages": [dataclasses.asdict(r) for r in stages],
        **({"tail_aware_rollout": _tail_aware(tail, shape, s, stages, step_s, chips)} if tail else {}),
    }


def _tail_aware(tail: schedule.TailSettings, shape, s, stages, step_s: float, chips: int) -> dict:
    """The simulated schedule's rollout time, occupancy and device-hours for both modes, beside the roofline
    at the mean (the lower bound: every slot full until the mean response)."""
    kinds = {"reshard": "rollout/reshard", "prefill": "rollout/prefill", "decode": "rollout/decode ("}
    seconds = {k: next(r.roofline_s for r in stages if r.name.startswith(v)) for k, v in kinds.items()}
    partial = [r.roofline_s for r in stages if r.name.startswith("rollout/decode, partial")]
    seconds["decode_partial"] = partial[0] if partial else seconds["decode"]  # the same program when as many slots
    rollout_mean_s = sum(r.roofline_s * r.runs_per_step for r in stages if r.name.startswith("rollout/"))
    modes = schedule.project(tail, shape, s, seconds, step_s - rollout_mean_s, chips)
    return {
        "lengths": {"kind": tail.lengths, "mean": tail.mean, "cap": tail.cap, "file": tail.lengths_file},
        "simulated_steps": tail.steps,
        "warmup_steps": tail.warmup,
        "engine": dataclasses.asdict(shape),
        "program_s": seconds,
        "run_mode": "partial" if tail.run_partial else "synchronous",
        "lower_bound": {"rollout_s": rollout_mean_s, "step_s": step_s, "device_hours": step_s * s.steps * chips / 3600},
        **modes,
    }
