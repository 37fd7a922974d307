"""Orbax checkpoints: one directory per step holding params, optimizer state, step + RNG, and JSON
metadata (model config, data-iterator state, resolved run config); restorable into any mesh.

Also the format-agnostic `load_params_any` / `save_params_any` used by convert, merge and eval.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from rlvr_jax import hf, sharding
from rlvr_jax.model import ModelConfig

log = logging.getLogger(__name__)

ARRAY_ITEMS = ("params", "opt_state", "train")  # "train" = {"step": int32[], "rng": uint32[2]}


def model_config_to_json(cfg: ModelConfig) -> dict:
  return dataclasses.asdict(cfg)


def model_config_from_json(d: dict) -> ModelConfig:
  d = dict(d)
  if d.get("rope_llama3_scaling") is not None:
    d["rope_llama3_scaling"] = tuple(d["rope_llama3_scaling"])
  return ModelConfig(**d)


def abstract_with_shardings(abstract_tree, shardings_tree):
  return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                abstract_tree, shardings_tree)


class Checkpointer:
  """CheckpointManager wrapper: async saves every `save_every` steps, keeps the last `keep` and step 0, and
  restores the newest readable step (a damaged latest step is skipped with a warning)."""

  def __init__(self, directory: str, *, save_every: int = 1, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    from orbax.checkpoint import checkpoint_managers as cm
    # Step 0 (the starting point, e.g. the SFT anchor) is kept besides the latest `keep`.
    keep_policy = cm.AnyPreservationPolicy([cm.LatestN(keep), cm.CustomSteps([0])])
    options = ocp.CheckpointManagerOptions(save_interval_steps=save_every, preservation_policy=keep_policy,
                                           enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, arrays: dict[str, Any], meta: dict, *, force: bool = False) -> bool:
    args = {name: ocp.args.StandardSave(tree) for name, tree in arrays.items()}
    args["meta"] = ocp.args.JsonSave(meta)
    return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def read_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, abstract: dict[str, Any], step: int | None = None) -> tuple[int, dict[str, Any], dict]:
    """Restore the named array items into the shardings carried by `abstract` (ShapeDtypeStructs).
    Without `step`, tries the newest step first and falls back to older ones if it is unreadable."""
    candidates = [step] if step is not None else list(reversed(self.all_steps()))
    if not candidates:
      raise FileNotFoundError(f"{self.directory}: no checkpoints")
    errors = []
    for s in candidates:
      try:
        args = {name: ocp.args.StandardRestore(tree) for name, tree in abstract.items()}
        args["meta"] = ocp.args.JsonRestore()
        out = self.manager.restore(s, args=ocp.args.Composite(**args))
        return s, {k: out[k] for k in abstract}, out["meta"]
      except Exception as e:  # noqa: BLE001 - any unreadable step is skipped, and reported
        log.warning("checkpoint step %s in %s is unreadable (%s: %s); trying an older one",
                    s, self.directory, type(e).__name__, str(e).splitlines()[0][:200])
        errors.append(f"step {s}: {type(e).__name__}: {e}")
    raise RuntimeError(f"{self.directory}: no readable checkpoint:\n" + "\n".join(errors))

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def is_hf_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "config.json")) and (
      os.path.isfile(os.path.join(path, "model.safetensors"))
      or os.path.isfile(os.path.join(path, "model.safetensors.index.json")))


def _orbax_root_and_step(path: str) -> tuple[str, int | None]:
  """Accept a manager directory (newest step) or one step directory inside it."""
  base = os.path.basename(os.path.normpath(path))
  if base.isdigit() and os.path.isdir(os.path.join(path, "meta")):
    return os.path.dirname(os.path.normpath(path)), int(base)
  return path, None


def load_params_any(path: str, mesh, *, param_dtype: str | None = None, progress=None):
  """(ModelConfig, graphdef, params) from a Hugging Face directory or one of our Orbax checkpoints,
  placed on `mesh` by the sharding rules."""
  if is_hf_dir(path):
    return hf.load(path, mesh, param_dtype=param_dtype or "float32", progress=progress)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: no such checkpoint directory")
  root, step = _orbax_root_and_step(path)
  ckpt = Checkpointer(root, async_save=False)
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise FileNotFoundError(f"{path}: neither a Hugging Face directory (config.json + safetensors) "
                              f"nor an Orbax checkpoint directory")
    meta = ckpt.read_meta(step if step is not None else steps[-1])
    cfg = model_config_from_json(meta["model_config"])
    stored_dtype = cfg.param_dtype
    graphdef, abstract, shardings = sharding.model_shardings(cfg, mesh)
    _, out, _ = ckpt.restore({"params": abstract_with_shardings(abstract, shardings)}, step)
    params = out["params"]
  finally:
    ckpt.close()
  if param_dtype and param_dtype != stored_dtype:
    cfg = dataclasses.replace(cfg, param_dtype=param_dtype)
    graphdef, _, _ = sharding.model_shardings(cfg, mesh)
    params = jax.tree_util.tree_map(lambda x: x.astype(param_dtype), params)
  return cfg, graphdef, params


def save_params_any(params, cfg: ModelConfig, out_dir: str, fmt: str, *, source_dir: str | None = None,
                    dtype: str | None = None, extra_meta: dict | None = None, progress=None) -> None:
  """Write params as our Orbax checkpoint (step 0) or as a Hugging Face directory."""
  if fmt == "hf":
    hf.save(params, cfg, out_dir, dtype=dtype, source_dir=source_dir, progress=progress)
    return
  if fmt != "orbax":
    raise ValueError(f"unknown format {fmt!r}: expected 'orbax' or 'hf'")
  if dtype and dtype != cfg.param_dtype:
    params = jax.tree_util.tree_map(lambda x: x.astype(dtype), params)
    cfg = dataclasses.replace(cfg, param_dtype=dtype)
  ckpt = Checkpointer(out_dir, async_save=False)
  try:
    meta = {"model_config": model_config_to_json(cfg), **(extra_meta or {})}
    ckpt.save(0, {"params": params}, meta, force=True)
  finally:
    ckpt.close()
  if source_dir:
    copy_tokenizer(source_dir, out_dir)


def copy_tokenizer(source: str, out_dir: str) -> None:
  """Keep the tokenizer beside an Orbax checkpoint (in `tokenizer/`) so it can be exported later."""
  import shutil
  src = tokenizer_dir_of(source)
  if src is None or jax.process_index() != 0:
    return
  dst = os.path.join(out_dir, "tokenizer")
  os.makedirs(dst, exist_ok=True)
  for fname in hf.TOKENIZER_FILES:
    if os.path.isfile(os.path.join(src, fname)):
      shutil.copyfile(os.path.join(src, fname), os.path.join(dst, fname))


def tokenizer_dir_of(path: str) -> str | None:
  """Where the tokenizer files of a checkpoint (HF directory or ours) live, if anywhere."""
  root, _ = _orbax_root_and_step(path)
  for d in (path, os.path.join(root, "tokenizer")):
    if any(os.path.isfile(os.path.join(d, f)) for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
      return d
  return None
