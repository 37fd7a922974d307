"""Hugging Face tensor names and layouts: which HF tensor holds each of our parameters and how its
layout converts, for a whole tensor (export) or the slice one device reads (import).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from rlvr_jax.model.decoder import ModelConfig

# Layouts: HF Linear weights are [out, in]; ours are [in, out] with heads split out.
#  "same": identical; "T": 2-D transpose; "qkv": HF [H*D, E] -> ours [E, H, D];
#  "qkv_bias": HF [H*D] -> ours [H, D]; "o": HF [E, H*D] -> ours [H, D, E].


def tensor_map(cfg: ModelConfig) -> list[tuple[str, tuple, str]]:
    """(hf_name, our path, layout) for every parameter of the model."""
    out = [
        ("model.embed_tokens.weight", ("embed", "embedding"), "same"),
        ("model.norm.weight", ("final_norm", "scale"), "same"),
    ]
    if not cfg.tie_embeddings:
        out.append(("lm_head.weight", ("lm_head", "kernel"), "T"))
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}", ("layers", i)
        out += [
            (f"{hf}.input_layernorm.weight", ours + ("input_norm", "scale"), "same"),
            (f"{hf}.post_attention_layernorm.weight", ours + ("post_attn_norm", "scale"), "same"),
            (f"{hf}.self_attn.o_proj.weight", ours + ("attn", "o_proj", "kernel"), "o"),
            (f"{hf}.mlp.gate_proj.weight", ours + ("mlp", "gate_proj", "kernel"), "T"),
            (f"{hf}.mlp.up_proj.weight", ours + ("mlp", "up_proj", "kernel"), "T"),
            (f"{hf}.mlp.down_proj.weight", ours + ("mlp", "down_proj", "kernel"), "T"),
        ]
        for p in ("q", "k", "v"):
            out.append((f"{hf}.self_attn.{p}_proj.weight", ours + ("attn", f"{p}_proj", "kernel"), "qkv"))
            if cfg.qkv_bias:
                out.append((f"{hf}.self_attn.{p}_proj.bias", ours + ("attn", f"{p}_proj", "bias"), "qkv_bias"))
        if cfg.qk_norm:
            out += [
                (f"{hf}.self_attn.q_norm.weight", ours + ("attn", "q_norm", "scale"), "same"),
                (f"{hf}.self_attn.k_norm.weight", ours + ("attn", "k_norm", "scale"), "same"),
            ]
    return out


def hf_shape(layout: str, ours: tuple[int, ...]) -> tuple[int, ...]:
    if layout == "same":
        return ours
    if layout == "T":
        return (ours[1], ours[0])
    if layout == "qkv":
        return (ours[1] * ours[2], ours[0])
    if layout == "qkv_bias":
        return (ours[0] * ours[1],)
    if layout == "o":
        return (ours[2], ours[0] * ours[1])
    raise ValueError(layout)


def _norm(idx: tuple, shape: tuple) -> list[tuple[int, int]]:
    return [s.indices(n)[:2] for s, n in zip(idx, shape)]


def read_slice(get: Callable[[tuple], np.ndarray], layout: str, our_shape, idx) -> np.ndarray:
    """Read the part of a HF tensor that lands at `idx` (slices in our layout) and convert it."""
    r = _norm(idx, our_shape)
    if layout == "same":
        return get(tuple(slice(a, b) for a, b in r))
    if layout == "T":
        return get((slice(*r[1]), slice(*r[0]))).T
    if layout == "qkv":
        (e0, e1), (h0, h1), (d0, d1) = r
        D = our_shape[2]
        block = get((slice(h0 * D, h1 * D), slice(e0, e1)))  # [nh*D, ne]
        return block.T.reshape(e1 - e0, h1 - h0, D)[:, :, d0:d1]
    if layout == "qkv_bias":
        (h0, h1), (d0, d1) = r
        D = our_shape[1]
        return get((slice(h0 * D, h1 * D),)).reshape(h1 - h0, D)[:, d0:d1]
    if layout == "o":
        (h0, h1), (d0, d1), (e0, e1) = r
        D = our_shape[1]
        block = get((slice(e0, e1), slice(h0 * D, h1 * D)))  # [ne, nh*D]
        return block.T.reshape(h1 - h0, D, e1 - e0)[:, d0:d1, :]
    raise ValueError(layout)


def to_hf_array(layout: str, ours: np.ndarray) -> np.ndarray:
    if layout == "same":
        return ours
    if layout == "T":
        return ours.T
    if layout == "qkv":
        return ours.reshape(ours.shape[0], -1).T
    if layout == "qkv_bias":
        return ours.reshape(-1)
    if layout == "o":
        return ours.reshape(-1, ours.shape[2]).T
    raise ValueError(layout)
