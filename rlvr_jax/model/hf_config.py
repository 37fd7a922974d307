"""Hugging Face config.json in and out: strict parsing into a ModelConfig (an unknown key or an
unsupported value is an error naming it) and the config.json of an exported checkpoint.
"""

from __future__ import annotations

import json

from rlvr_jax import storage
from rlvr_jax.model.decoder import ModelConfig

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


# Keys parse_config reads; with IGNORED_KEYS and _REQUIRED_VALUES, every key a config may hold.
_READ_KEYS = frozenset(
    {
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


def _family(raw: dict, where: str) -> str:
    """The model family: `model_type`, checked against `architectures` when that is given."""
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
    return model_type


def _check_supported_values(raw: dict, where: str) -> None:
    """Refuse, by name, option values the decoder does not implement (activation, sliding window, ...)."""
    for key, allowed in _REQUIRED_VALUES.items():
        if key in raw and allowed is not None and raw[key] not in allowed:
            raise HFFormatError(
                f"{where}: unsupported value {key}={raw[key]!r} (supported: {sorted(allowed, key=str)})"
            )
    layer_types = raw.get("layer_types")
    if layer_types and any(t != "full_attention" for t in layer_types):
        raise HFFormatError(f"{where}: unsupported layer_types {sorted(set(layer_types))} (only full_attention)")


def _check_known_keys(raw: dict, where: str) -> None:
    """Every key is read, ignored on purpose or checked: an unknown option is never silently dropped."""
    unknown = sorted(set(raw) - (IGNORED_KEYS | set(_REQUIRED_VALUES) | _READ_KEYS))
    if unknown:
        raise HFFormatError(
            f"{where}: unsupported config keys {unknown}; if they do not change the model, "
            f"add them to rlvr_jax.model.hf_config.IGNORED_KEYS"
        )


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
    family = _family(raw, where)
    _check_supported_values(raw, where)
    heads = int(raw["num_attention_heads"])
    theta, llama3 = _rope_fields(raw, where)
    _check_known_keys(raw, where)
    # Qwen2 always carries q/k/v biases; the key is absent from its configs.
    qkv_bias = True if family == "qwen2" else bool(raw.get("attention_bias", False))
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


def read_config(ckpt_dir: str, param_dtype: str = "float32") -> ModelConfig:
    """The ModelConfig of a checkpoint directory's config.json; errors name the file (and line)."""
    path = storage.join(ckpt_dir, "config.json")
    if not storage.isfile(path):
        raise HFFormatError(f"{path}: missing (not a Hugging Face checkpoint directory?)")
    try:
        raw = json.loads(storage.read_text(path))
    except json.JSONDecodeError as e:
        raise HFFormatError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    return parse_config(raw, where=path, param_dtype=param_dtype)
