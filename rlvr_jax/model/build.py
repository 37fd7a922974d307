"""The policy every entry point builds: its tokenizer, its model config (a preset with overrides) and its
parameters (a random init in their shardings, or a checkpoint). Plain arguments; callers destructure configs."""

from __future__ import annotations

import dataclasses
import logging

from flax import nnx

from rlvr_jax import checkpoint, sharding
from rlvr_jax.model import params_io
from rlvr_jax.model.decoder import Decoder, ModelConfig, model_shardings
from rlvr_jax.model.presets import PRESETS
from rlvr_jax.model.tokenizer import builtin_tokenizer
from rlvr_jax.model.tokenizer import load_tokenizer as load_tokenizer_dir

log = logging.getLogger(__name__)


def load_tokenizer(path: str, fallback_checkpoint: str = ""):
    if path == "builtin":
        return builtin_tokenizer()
    if not path and fallback_checkpoint:
        path = checkpoint.tokenizer_dir_of(fallback_checkpoint) or ""
    if not path:
        raise ValueError(
            "no tokenizer: set config.tokenizer (a directory, or 'builtin'), or use a checkpoint "
            "that carries its tokenizer files"
        )
    return load_tokenizer_dir(path)


def model_config(
    preset: str,
    overrides: dict,
    *,
    vocab_size: int | None,
    param_dtype: str,
    remat: bool,
    remat_policy: str = "full",
    scan_layers: bool = False,
    compute_dtype: str = "float32",
) -> ModelConfig:
    """A preset by name (see presets.PRESETS) with field overrides; 'tiny' builds a small Qwen3-style
    model sized to the tokenizer. remat, remat_policy, scan_layers and compute_dtype say how to run it,
    not what it is."""
    if preset == "tiny":
        base = ModelConfig(
            family="qwen3",
            vocab_size=vocab_size or 1536,
            hidden_size=128,
            intermediate_size=384,
            num_layers=4,
            num_heads=4,
            num_kv_heads=2,
            head_dim=32,
            qk_norm=True,
            tie_embeddings=True,
            rope_theta=10000.0,
            max_position_embeddings=1024,
        )
    elif preset in PRESETS:
        base = PRESETS[preset]
    else:
        raise ValueError(f"unknown model preset {preset!r}; known: tiny, {', '.join(sorted(PRESETS))}")
    run = dict(remat=remat, remat_policy=remat_policy, scan_layers=scan_layers, compute_dtype=compute_dtype)
    return dataclasses.replace(base, param_dtype=param_dtype, **run, **overrides)


def init_model(cfg: ModelConfig, mesh, seed: int):
    """(graphdef, params, shardings), created directly in their shardings."""
    return sharding.create_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(seed)), mesh)


def load_model(
    path: str,
    mesh,
    param_dtype: str,
    remat: bool,
    remat_policy: str = "full",
    scan_layers: bool = False,
    compute_dtype: str = "float32",
):
    """A checkpoint's model, run as asked (remat, its policy, scanned layers, compute dtype) whatever the run
    that saved it did."""
    cfg, graphdef, params = params_io.load_params_any(path, mesh, param_dtype=param_dtype)
    run = dict(remat=remat, remat_policy=remat_policy, scan_layers=scan_layers, compute_dtype=compute_dtype)
    cfg = dataclasses.replace(cfg, **run)
    graphdef, _, shardings = model_shardings(cfg, mesh)
    return cfg, graphdef, params, shardings


def preset_config(model_config_dict, *, vocab_size: int | None) -> ModelConfig:
    """The ModelConfig of a run config's `model` block for a random init: its preset with the set
    `overrides`, run as the block says (dtypes, remat, scanned layers). The planner sizes the same model."""
    m = model_config_dict
    return model_config(
        m.preset,
        {k: v for k, v in m.overrides.items() if v is not None},
        vocab_size=vocab_size,
        param_dtype=m.param_dtype,
        remat=m.remat,
        remat_policy=m.remat_policy,
        scan_layers=m.scan_layers,
        compute_dtype=m.compute_dtype,
    )


def build_model(model_config_dict, mesh, *, vocab_size: int, seed: int):
    """(cfg, graphdef, params, shardings) from a run config's `model` block: its checkpoint, or a random
    init of its preset with the set `overrides`."""
    m = model_config_dict
    if m.checkpoint:
        return load_model(m.checkpoint, mesh, m.param_dtype, m.remat, m.remat_policy, m.scan_layers, m.compute_dtype)
    cfg = preset_config(m, vocab_size=vocab_size)
    graphdef, params, shardings = init_model(cfg, mesh, seed)
    return cfg, graphdef, params, shardings
