"""What every entry point builds first: distributed init, the mesh, the tokenizer, the model (random
or from a checkpoint) and the records. Takes plain arguments; configs are destructured by callers."""
from __future__ import annotations

import dataclasses
import logging
import os

import jax
from flax import nnx

from rlvr_jax import checkpoint, sharding
from rlvr_jax.model import Decoder, ModelConfig
from rlvr_jax.presets import PRESETS

log = logging.getLogger(__name__)


def maybe_initialize_distributed(enabled: str = "auto", coordinator: str = "", num_processes: int = 0,
                                 process_id: int = -1) -> None:
  """`jax.distributed.initialize` when asked, or when the environment names a coordinator
  (TPU pod slices are detected by JAX itself)."""
  env = any(k in os.environ for k in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "TPU_WORKER_ID"))
  if enabled == "off" or (enabled == "auto" and not env and not coordinator):
    return
  kwargs = {}
  if coordinator:
    kwargs = dict(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
  if jax.config.jax_platforms in (None, "", "cpu") and coordinator:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes talk over gloo
  jax.distributed.initialize(**kwargs)
  log.info("jax.distributed: process %d of %d, %d global devices", jax.process_index(), jax.process_count(),
           jax.device_count())


def load_tokenizer(path: str, fallback_checkpoint: str = ""):
  from rlvr_jax.tokenizer import builtin_tokenizer, load_tokenizer as _load
  if path == "builtin":
    return builtin_tokenizer()
  if not path and fallback_checkpoint:
    path = checkpoint.tokenizer_dir_of(fallback_checkpoint) or ""
  if not path:
    raise ValueError("no tokenizer: set config.tokenizer (a directory, or 'builtin'), or use a checkpoint "
                     "that carries its tokenizer files")
  return _load(path)


def model_config(preset: str, overrides: dict, *, vocab_size: int | None, param_dtype: str,
                 remat: bool) -> ModelConfig:
  """A preset by name (see presets.PRESETS) with field overrides; 'tiny' builds a small Qwen3-style
  model sized to the tokenizer."""
  if preset == "tiny":
    base = ModelConfig(family="qwen3", vocab_size=vocab_size or 1536, hidden_size=128, intermediate_size=384,
                       num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32, qk_norm=True, tie_embeddings=True,
                       rope_theta=10000.0, max_position_embeddings=1024)
  elif preset in PRESETS:
    base = PRESETS[preset]
  else:
    raise ValueError(f"unknown model preset {preset!r}; known: tiny, {', '.join(sorted(PRESETS))}")
  return dataclasses.replace(base, param_dtype=param_dtype, remat=remat, **overrides)


def init_model(cfg: ModelConfig, mesh, seed: int):
  """(graphdef, params, shardings), created directly in their shardings."""
  return sharding.create_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(seed)), mesh)


def load_model(path: str, mesh, param_dtype: str, remat: bool):
  cfg, graphdef, params = checkpoint.load_params_any(path, mesh, param_dtype=param_dtype)
  if remat != cfg.remat:
    cfg = dataclasses.replace(cfg, remat=remat)
  graphdef, _, shardings = sharding.model_shardings(cfg, mesh)
  return cfg, graphdef, params, shardings


def build_model(model_config_dict, mesh, *, vocab_size: int, seed: int):
  """(cfg, graphdef, params, shardings) from a run config's `model` block: its checkpoint, or a random
  init of its preset with the set `overrides`."""
  m = model_config_dict
  if m.checkpoint:
    return load_model(m.checkpoint, mesh, m.param_dtype, m.remat)
  overrides = {k: v for k, v in m.overrides.items() if v is not None}
  cfg = model_config(m.preset, overrides, vocab_size=vocab_size, param_dtype=m.param_dtype, remat=m.remat)
  graphdef, params, shardings = init_model(cfg, mesh, seed)
  return cfg, graphdef, params, shardings


def prompt_config(data_config_dict):
  """The PromptConfig of a run config's `data` block."""
  from rlvr_jax.data.prompts import PromptConfig
  d = data_config_dict
  return PromptConfig(thinking=d.thinking, system_prompt=d.system_prompt, domain_prefixes=d.domain_prefixes,
                      max_prompt_tokens=d.max_prompt_tokens)


def load_records(spec: str, split: str, domains: tuple[str, ...], builtin_size: int = 0,
                 builtin_up_to: bool = False) -> list[dict]:
  """'builtin' for the shipped generators (`builtin_size` records per domain, 0 = their default
  sizes; with `builtin_up_to`, all there are when a domain holds fewer); 'builtin-sft' for built-in
  warm-start records disjoint from the RL ones ('builtin' train records, `builtin_size` of them);
  else a comma-separated list of JSONL/parquet files."""
  from rlvr_jax.data import synthetic
  if spec == "builtin":
    return [r for d in domains for r in synthetic.builtin_records(d, split, builtin_size or None, up_to=builtin_up_to)]
  if spec == "builtin-sft":
    return [r for d in domains for r in synthetic.sft_records(d, train_size=builtin_size or None)]
  from rlvr_jax.data.records import load_records as _load
  records = _load([p for p in spec.split(",") if p])
  return [r for r in records if r["domain"] in domains]
