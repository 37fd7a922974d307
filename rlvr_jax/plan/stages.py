"""What the planner compiles, from a run config: the shapes of a run's stages (`Shapes`), the model and the
trainer's state as sharded abstract arrays, and the merge stage. The rollout's and the training's stages are
in stages_rollout.py and stages_train.py."""

from __future__ import annotations

import dataclasses
import math

import jax

from rlvr_jax import sharding
from rlvr_jax.merging.methods import task_arithmetic_program
from rlvr_jax.model import build
from rlvr_jax.model.decoder import ModelConfig, model_shardings
from rlvr_jax.plan.chips import Chip
from rlvr_jax.plan.compile import compile_stage, spec_bytes
from rlvr_jax.rl import loop as rl_loop


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
    logprob_passes: int  # full-batch teacher-forced passes per step: old policy / MT-OPD student, reference, teachers


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
        logprob_passes=logprob_passes(config),
    )


def logprob_passes(config) -> int:
    """Teacher-forced passes over the whole batch a step runs besides the update (rl/loop.py
    build_update_batch): one for the old policy or MT-OPD's trainer-side student (shared), one for the
    reference model, one per MT-OPD teacher."""
    g, teachers = config.grpo, [t for t in config.opd.teachers.split(",") if t]
    student = bool(teachers) and config.opd.student_logp == "trainer"
    return int(g.updates_per_rollout > 1 or student) + int(g.kl_coef > 0) + len(teachers)


def shape_problems(s: Shapes, mesh) -> list[str]:
    """What of the run's batches does not divide over the mesh's batch shards (empty: all does)."""
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


def model_config_of(config) -> ModelConfig:
    """The model a run config trains (its preset with the set overrides), run as the config says."""
    m = config.model
    vocab = None if m.preset != "tiny" else build.load_tokenizer("builtin").vocab_size
    return build.preset_config(m, vocab_size=vocab)


def abstract(shape, dtype, sh):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sh)


def batch_spec(mesh, shape, dtype):
    """A [batch, ...] array with its rows over the mesh's batch axes."""
    return abstract(shape, dtype, sharding.batch_sharding(mesh, len(shape)))


def model_parts(cfg: ModelConfig, mesh):
    """(graphdef, params as sharded ShapeDtypeStructs, their shardings) of the trainer's layout."""
    graphdef, params, shardings = model_shardings(cfg, mesh)
    return graphdef, jax.tree_util.tree_map(lambda a, s: abstract(a.shape, a.dtype, s), params, shardings), shardings


def optimizer_parts(config, params, param_shardings, mesh):
    """(the run's optimizer, its state as sharded ShapeDtypeStructs, their shardings) for abstract params."""
    optimizer = rl_loop.run_optimizer(config)
    abstract_opt = jax.eval_shape(optimizer.init, params)
    opt_shardings = sharding.like_params_shardings(abstract_opt, param_shardings, mesh)
    opt = jax.tree_util.tree_map(lambda a, sh: abstract(a.shape, a.dtype, sh), abstract_opt, opt_shardings)
    return optimizer, opt, opt_shardings


def trainer_state_bytes(config, params, param_shardings, mesh) -> tuple[int, int]:
    """(params, optimizer state) bytes per chip of the trainer's layout."""
    _, opt, _ = optimizer_parts(config, params, param_shardings, mesh)
    return spec_bytes(params), spec_bytes(opt)


def merge_stage(params, mesh, chip: Chip, num_experts: int = 4):
    """Task arithmetic's per-tensor kernel on the largest tensor, with the anchor and the experts resident."""
    leaves = jax.tree_util.tree_leaves(params)
    largest = max(leaves, key=lambda x: math.prod(x.shape))
    resident = (1 + num_experts) * spec_bytes(params)
    fn, args = task_arithmetic_program(largest, num_experts, mesh)
    report = compile_stage(
        f"merge (task arithmetic, {num_experts} experts)",
        fn,
        args,
        chip=chip,
        mesh=mesh,
        tokens=0,
        parts={"params": resident, "optimizer": 0, "kv": 0},
    )
    # The kernel's arguments are tensors of the resident trees: count the trees, the kernel's temporaries
    # and its output (the merged tree grows while the inputs stay).
    own = spec_bytes(args[:2])
    report.bytes_per_chip["total"] = int(resident + report.bytes_per_chip["total"] - own)
    report.fits = report.bytes_per_chip["total"] <= chip.hbm_bytes
    return report
