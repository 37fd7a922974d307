"""Model shapes of the supported public checkpoints, and per-device memory estimates on any mesh."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from rlvr_jax import sharding
from rlvr_jax.model.decoder import ModelConfig, abstract_model

_QWEN3 = dict(
    family="qwen3", vocab_size=151936, head_dim=128, rope_theta=1_000_000.0, qk_norm=True, max_position_embeddings=40960
)

PRESETS: dict[str, ModelConfig] = {
    "qwen3-0.6b": ModelConfig(
        **_QWEN3,
        hidden_size=1024,
        intermediate_size=3072,
        num_layers=28,
        num_heads=16,
        num_kv_heads=8,
        tie_embeddings=True,
    ),
    "qwen3-4b": ModelConfig(
        **_QWEN3,
        hidden_size=2560,
        intermediate_size=9728,
        num_layers=36,
        num_heads=32,
        num_kv_heads=8,
        tie_embeddings=True,
    ),
    "qwen3-8b": ModelConfig(
        **_QWEN3,
        hidden_size=4096,
        intermediate_size=12288,
        num_layers=36,
        num_heads=32,
        num_kv_heads=8,
        tie_embeddings=False,
    ),
    "llama-3.1-8b": ModelConfig(
        family="llama",
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        rope_theta=500_000.0,
        rope_llama3_scaling=(8.0, 1.0, 4.0, 8192),
        rms_norm_eps=1e-5,
        max_position_embeddings=131072,
    ),
    "qwen2.5-7b": ModelConfig(
        family="qwen2",
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_layers=28,
        num_heads=28,
        num_kv_heads=4,
        head_dim=128,
        rope_theta=1_000_000.0,
        qkv_bias=True,
        max_position_embeddings=32768,
    ),
    # The 50M Qwen3-style shape used by the benchmarks (python -m benchmarks.bench).
    "bench-50m": ModelConfig(
        family="qwen3",
        vocab_size=32768,
        hidden_size=512,
        intermediate_size=1536,
        num_layers=8,
        num_heads=8,
        num_kv_heads=4,
        head_dim=64,
        qk_norm=True,
        tie_embeddings=True,
        rope_theta=1_000_000.0,
        max_position_embeddings=4096,
    ),
}


def memory_report(cfg: ModelConfig, mesh_axis_sizes: dict[str, int], param_dtype: str = "bfloat16") -> dict:
    """Bytes per device of params (in `param_dtype`) and of AdamW's two fp32 moments, for a mesh of any
    size given as axis sizes (no devices needed)."""
    _, abstract_state = nnx.split(abstract_model(cfg))
    axes = sharding.logical_axes_tree(abstract_state)
    abstract = nnx.to_pure_dict(abstract_state)
    params = sharding.bytes_per_device(
        abstract,
        axes,
        mesh_axis_sizes,
        dtype=np.dtype(param_dtype) if param_dtype != "bfloat16" else jax.numpy.bfloat16,
    )
    moment = sharding.bytes_per_device(abstract, axes, mesh_axis_sizes, dtype=np.float32)
    return {
        "params_bytes_per_device": params,
        "adam_bytes_per_device": 2 * moment,
        "num_devices": int(np.prod(list(mesh_axis_sizes.values()))),
    }
