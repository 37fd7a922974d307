"""Hugging Face checkpoints in and out: strict config.json parsing, safetensors read slice by slice
straight into the target shardings, and export of a directory `transformers` and vLLM load.

Reading goes through `safetensors.safe_open(...).get_slice`, so each device reads only its shard;
writing gathers one tensor at a time and flushes a file whenever the shard size limit is reached.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.experimental import multihost_utils
from safetensors import safe_open
from safetensors.numpy import save_file

from rlvr_jax.model.decoder import ModelConfig, model_shardings

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}
_ARCH_OF_FAMILY = {v: k for k, v in ARCHITECTURES.items()}

# Keys that do not change the forward pass or that we do not use. Anything not read below and not
# listed here is an error, so an unknown option can never be silently dropped.
IGNORED_KEYS = frozenset(
    {
        "transformers_version",
        "torch_dtype",
        "dtype",
        "initializer_range",
        "use_cache",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "output_hidden_states",
        "output_attentions",
        "return_dict",
        "chunk_size_feed_forward",
        "is_encoder_decoder",
        "id2label",
        "label2id",
        "problem_type",
        "_name_or_path",
        "attention_dropout",
        "max_window_layers",
        "sliding_window",
        "pretraining_tp",
        "tokenizer_class",
        "architectures",
        "model_type",
        "bos_token",
        "eos_token",
        "_attn_implementation_autoset",
        "max_position_embeddings",
        "unsloth_fixed",
    }
)

# key -> allowed values; a config that sets anything else is refused by name.
_REQUIRED_VALUES = {
    "hidden_act": {"silu"},
    "use_sliding_window": {False},
    "mlp_bias": {False},
    "attention_dropout": None,  # any value: dropout is not used in RL training or inference
}


class HFFormatError(ValueError):
    """A Hugging Face directory we cannot read faithfully."""


def _rope_fields(raw: dict, where: str) -> tuple[float, tuple | None]:
    rope = raw.get("rope_parameters")
    if rope is None:
        rope = dict(raw.get("rope_scaling") or {})
        rope.setdefault("rope_theta", raw.get("rope_theta", 10000.0))
        rope.setdefault("rope_type", rope.pop("type", "default") if "type" in rope else "default")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    theta = float(rope.get("rope_theta", raw.get("rope_theta", 10000.0)))
    if rope_type == "default":
        return theta, None
    if rope_type == "llama3":
        try:
            return theta, (
                float(rope["factor"]),
                float(rope["low_freq_factor"]),
                float(rope["high_freq_factor"]),
                int(rope["original_max_position_embeddings"]),
            )
        except KeyError as e:
            raise HFFormatError(f"{where}: rope scaling 'llama3' lacks {e.args[0]!r}") from None
    raise HFFormatError(f"{where}: unsupported rope type {rope_type!r} (supported: default, llama3)")


def parse_config(raw: dict, where: str = "config.json", param_dtype: str = "float32") -> ModelConfig:
    """Strictly turn a Hugging Face config dict into a ModelConfig."""
    archs = raw.get("architectures") or []
    family = None
    if archs:
        if len(archs) != 1 or archs[0] not in ARCHITECTURES:
            raise HFFormatError(f"{where}: unsupported architecture {archs} (supported: {sorted(ARCHITECTURES)})")
        family = ARCHITECTURES[archs[0]]
    model_type = raw.get("model_type")
    if model_type not in ("llama", "qwen2", "qwen3"):
        raise HFFormatError(f"{where}: unsupported model_type {model_type!r} (supported: llama, qwen2, qwen3)")
    if family is not None and family != model_type:
        raise HFFormatError(f"{where}: architectures {archs} disagree with model_type {model_type!r}")
    family = model_type
    for key, allowed in _REQUIRED_VALUES.items():
        if key in raw and allowed is not None and raw[key] not in allowed:
            raise HFFormatError(
                f"{where}: unsupported value {key}={raw[key]!r} (supported: {sorted(allowed, key=str)})"
            )
    layer_types = raw.get("layer_types")
    if layer_types and any(t != "full_attention" for t in layer_types):
        raise HFFormatError(f"{where}: unsupported layer_types {sorted(set(layer_types))} (only full_attention)")
    attention_bias = bool(raw.get("attention_bias", False))
    if family == "qwen2":
        qkv_bias = True  # Qwen2 always carries q/k/v biases; the key is absent from its configs
    else:
        qkv_bias = attention_bias
    heads = int(raw["num_attention_heads"])
    theta, llama3 = _rope_fields(raw, where)
    known = (
        IGNORED_KEYS
        | set(_REQUIRED_VALUES)
        | {
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "rms_norm_eps",
            "tie_word_embeddings",
            "rope_theta",
            "rope_scaling",
            "rope_parameters",
            "attention_bias",
            "layer_types",
        }
    )
    unknown = sorted(set(raw) - known)
    if unknown:
        raise HFFormatError(
            f"{where}: unsupported config keys {unknown}; if they do not change the model, "
            f"add them to rlvr_jax.model.hf.IGNORED_KEYS"
        )
    try:
        return ModelConfig(
            family=family,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=int(raw["hidden_size"]),
            intermediate_size=int(raw["intermediate_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or int(raw["hidden_size"]) // heads),
            rope_theta=theta,
            rope_llama3_scaling=llama3,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            qk_norm=family == "qwen3",
            max_position_embeddings=int(raw.get("max_position_embeddings", 32768)),
            param_dtype=param_dtype,
        )
    except KeyError as e:
        raise HFFormatError(f"{where}: required key {e.args[0]!r} is missing") from None


def config_to_hf(cfg: ModelConfig, dtype: str) -> dict:
    """The config.json of an exported checkpoint (both the v5 `rope_parameters` and legacy rope keys,
    which older transformers and vLLM read)."""
    rope_parameters = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    rope_scaling = None
    if cfg.rope_llama3_scaling is not None:
        factor, low, high, original = cfg.rope_llama3_scaling
        rope_scaling = {
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low,
            "high_freq_factor": high,
            "original_max_position_embeddings": original,
        }
        rope_parameters = {**rope_scaling, "rope_theta": cfg.rope_theta}
    out = {
        "architectures": [_ARCH_OF_FAMILY[cfg.family]],
        "model_type": cfg.family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling,
        "rope_parameters": rope_parameters,
        "torch_dtype": dtype,
        "use_cache": True,
    }
    if cfg.family != "qwen2":
        out["attention_bias"] = cfg.qkv_bias
    if cfg.family == "llama":
        out["mlp_bias"] = False
    else:
        out["use_sliding_window"] = False
    return out


# ---- tensor name mapping ----------------------------------------------------------------------
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


# ---- reading ----------------------------------------------------------------------------------


def read_config(ckpt_dir: str, param_dtype: str = "float32") -> ModelConfig:
    path = os.path.join(ckpt_dir, "config.json")
    if not os.path.isfile(path):
        raise HFFormatError(f"{path}: missing (not a Hugging Face checkpoint directory?)")
    try:
        with open(path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise HFFormatError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    return parse_config(raw, where=path, param_dtype=param_dtype)


def weight_files(ckpt_dir: str) -> dict[str, str]:
    """tensor name -> safetensors file, from the index or the single file."""
    index = os.path.join(ckpt_dir, "model.safetensors.index.json")
    single = os.path.join(ckpt_dir, "model.safetensors")
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise HFFormatError(f"{index}: no 'weight_map' object")
        for fname in sorted(set(weight_map.values())):
            if not os.path.isfile(os.path.join(ckpt_dir, fname)):
                raise HFFormatError(f"{os.path.join(ckpt_dir, fname)}: shard listed in {index} is missing")
        return {k: os.path.join(ckpt_dir, v) for k, v in weight_map.items()}
    if os.path.isfile(single):
        _check_complete(single)
        with _open(single) as f:
            return {k: single for k in f.keys()}
    raise HFFormatError(f"{ckpt_dir}: no model.safetensors or model.safetensors.index.json")


def _open(path: str):
    try:
        return safe_open(path, framework="numpy")
    except Exception as e:  # the library reports truncation as a generic header/IO error
        raise HFFormatError(f"{path}: cannot read safetensors file ({e}); is it truncated or corrupt?") from None


def _check_complete(path: str) -> None:
    """safetensors checks the header, not that the data section is all there; we check the size."""
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
    except (ValueError, UnicodeDecodeError):
        raise HFFormatError(f"{path}: truncated or corrupt: cannot parse its safetensors header") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if size < 8 + header_len + end:
        raise HFFormatError(f"{path}: truncated: {size} bytes on disk, header needs {8 + header_len + end}")


BENIGN_EXTRA_TENSORS = re.compile(r".*rotary_emb\.inv_freq$")


def load_params(ckpt_dir: str, cfg: ModelConfig, shardings, progress: Callable[[str], None] | None = None):
    """Read every tensor straight into its NamedSharding; returns a params pure dict."""
    files = weight_files(ckpt_dir)
    handles = {}
    for path in sorted(set(files.values())):
        _check_complete(path)
        handles[path] = _open(path)
    mapping = tensor_map(cfg)
    expected = {name for name, _, _ in mapping}
    extra = sorted(
        k
        for k in files
        if k not in expected
        and not BENIGN_EXTRA_TENSORS.match(k)
        and not (cfg.tie_embeddings and k == "lm_head.weight")
    )
    if extra:
        raise HFFormatError(f"{ckpt_dir}: unexpected tensors {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    dtype = jnp.dtype(cfg.param_dtype)
    params: dict = {}
    for name, path, layout in mapping:
        if name not in files:
            raise HFFormatError(f"{ckpt_dir}: tensor {name!r} is missing")
        sharding = _get(shardings, path)
        our_shape = tuple(sharding.shape) if hasattr(sharding, "shape") else None
        handle = handles[files[name]]
        tensor = handle.get_slice(name)
        got = tuple(tensor.get_shape())
        want_hf = hf_shape(layout, our_shape)
        if got != want_hf:
            raise HFFormatError(f"{files[name]}: tensor {name!r} has shape {list(got)}, expected {list(want_hf)}")

        def cb(idx, tensor=tensor, layout=layout, our_shape=our_shape):
            return np.asarray(read_slice(lambda s: tensor[s], layout, our_shape, idx)).astype(dtype)

        _set(params, path, jax.make_array_from_callback(our_shape, sharding.sharding, cb))
        if progress:
            progress(name)
    return params


class _Sharded:
    """A NamedSharding with the global shape it applies to."""

    def __init__(self, sharding, shape):
        self.sharding, self.shape = sharding, shape


def sharded_specs(abstract_params, shardings):
    return jax.tree_util.tree_map(lambda a, s: _Sharded(s, a.shape), abstract_params, shardings)


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _set(tree, path, value):
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


# ---- writing ----------------------------------------------------------------------------------
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "generation_config.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
)


def _to_host(x) -> np.ndarray:
    if not x.is_fully_addressable:
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def save(
    params,
    cfg: ModelConfig,
    out_dir: str,
    *,
    dtype: str | None = None,
    source_dir: str | None = None,
    max_shard_bytes: int = 2 * 1024**3,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Write config.json, safetensors shards (+ index when more than one) and tokenizer files.
    Gathers one tensor at a time; only process 0 writes. Returns the files written."""
    dtype = dtype or cfg.param_dtype
    np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}[dtype]
    is_writer = jax.process_index() == 0
    if is_writer:
        os.makedirs(out_dir, exist_ok=True)
    shard_names: list[list[str]] = []
    current: dict[str, np.ndarray] = {}

    def flush():
        if current and is_writer:
            save_file(current, os.path.join(out_dir, f"_shard_{len(shard_names):05d}.tmp"), metadata={"format": "pt"})
        shard_names.append(list(current))
        current.clear()

    for name, path, layout in tensor_map(cfg):
        arr = np.ascontiguousarray(to_hf_array(layout, _to_host(_get(params, path))).astype(np_dtype))
        if current and sum(a.nbytes for a in current.values()) + arr.nbytes > max_shard_bytes:
            flush()
        current[name] = arr
        if progress:
            progress(name)
    flush()
    if not is_writer:
        return []
    n = len(shard_names)
    written, weight_map = [], {}
    for i, names in enumerate(shard_names):
        final = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        os.replace(os.path.join(out_dir, f"_shard_{i:05d}.tmp"), os.path.join(out_dir, final))
        written.append(final)
        weight_map.update({k: final for k in names})
    if n > 1:
        total = sum(os.path.getsize(os.path.join(out_dir, f)) for f in written)
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        written.append("model.safetensors.index.json")
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config_to_hf(cfg, dtype), f, indent=2)
    written.append("config.json")
    if source_dir:
        for fname in TOKENIZER_FILES:
            src = os.path.join(source_dir, fname)
            if os.path.isfile(src):
                shutil.copyfile(src, os.path.join(out_dir, fname))
                written.append(fname)
    return written


def load(ckpt_dir: str, mesh, *, param_dtype: str = "float32", progress: Callable[[str], None] | None = None):
    """(ModelConfig, graphdef, params) with every tensor placed by the sharding rules on `mesh`."""
    cfg = read_config(ckpt_dir, param_dtype)
    graphdef, abstract, shardings = model_shardings(cfg, mesh)
    params = load_params(ckpt_dir, cfg, sharded_specs(abstract, shardings), progress)
    return cfg, graphdef, params
