"""Model parameters in and out of files: our Orbax checkpoints (with the model config in their
metadata) or Hugging Face directories, placed on a mesh by the sharding rules; used by convert,
merge, eval and every loader of a policy."""

from __future__ import annotations

import dataclasses

import jax

from rlvr_jax import checkpoint, storage
from rlvr_jax.model import hf
from rlvr_jax.model.decoder import ModelConfig, model_shardings


def model_config_to_json(cfg: ModelConfig) -> dict:
    return dataclasses.asdict(cfg)


def model_config_from_json(d: dict) -> ModelConfig:
    d = dict(d)
    if d.get("rope_llama3_scaling") is not None:
        d["rope_llama3_scaling"] = tuple(d["rope_llama3_scaling"])
    return ModelConfig(**d)


def is_hf_dir(path: str) -> bool:
    return storage.isfile(storage.join(path, "config.json")) and (
        storage.isfile(storage.join(path, "model.safetensors"))
        or storage.isfile(storage.join(path, "model.safetensors.index.json"))
    )


def load_params_any(path: str, mesh, *, param_dtype: str | None = None, progress=None):
    """(ModelConfig, graphdef, params) from a Hugging Face directory or one of our Orbax checkpoints,
    placed on `mesh` by the sharding rules."""
    if is_hf_dir(path):
        return hf.load(path, mesh, param_dtype=param_dtype or "float32", progress=progress)
    if not storage.isdir(path):
        raise FileNotFoundError(f"{path}: no such checkpoint directory")
    root, step = checkpoint.orbax_root_and_step(path)
    ckpt = checkpoint.Checkpointer(root, async_save=False)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise FileNotFoundError(
                f"{path}: neither a Hugging Face directory (config.json + safetensors) "
                f"nor an Orbax checkpoint directory"
            )
        meta = ckpt.read_meta(step if step is not None else steps[-1])
        cfg = model_config_from_json(meta["model_config"])
        stored_dtype = cfg.param_dtype
        graphdef, abstract, shardings = model_shardings(cfg, mesh)
        _, out, _ = ckpt.restore({"params": checkpoint.abstract_with_shardings(abstract, shardings)}, step)
        params = out["params"]
    finally:
        ckpt.close()
    if param_dtype and param_dtype != stored_dtype:
        cfg = dataclasses.replace(cfg, param_dtype=param_dtype)
        graphdef, _, _ = model_shardings(cfg, mesh)
        params = jax.tree_util.tree_map(lambda x: x.astype(param_dtype), params)
    return cfg, graphdef, params


def save_params_any(
    params,
    cfg: ModelConfig,
    out_dir: str,
    fmt: str,
    *,
    source_dir: str | None = None,
    dtype: str | None = None,
    extra_meta: dict | None = None,
    progress=None,
) -> None:
    """Write params as our Orbax checkpoint (step 0) or as a Hugging Face directory."""
    if fmt == "hf":
        hf.save(params, cfg, out_dir, dtype=dtype, source_dir=source_dir, progress=progress)
        return
    if fmt != "orbax":
        raise ValueError(f"unknown format {fmt!r}: expected 'orbax' or 'hf'")
    if dtype and dtype != cfg.param_dtype:
        params = jax.tree_util.tree_map(lambda x: x.astype(dtype), params)
        cfg = dataclasses.replace(cfg, param_dtype=dtype)
    ckpt = checkpoint.Checkpointer(out_dir, async_save=False)
    try:
        meta = {"model_config": model_config_to_json(cfg), **(extra_meta or {})}
        ckpt.save(0, {"params": params}, meta, force=True)
    finally:
        ckpt.close()
    if source_dir:
        copy_tokenizer(source_dir, out_dir)


def copy_tokenizer(source: str, out_dir: str) -> None:
    """Keep the tokenizer beside an Orbax checkpoint (in `tokenizer/`) so it can be exported later."""
    src = checkpoint.tokenizer_dir_of(source)
    if src is None or jax.process_index() != 0:
        return
    dst = storage.join(out_dir, "tokenizer")
    storage.makedirs(dst)
    # config.json too: transformers picks the tokenizer class from the model type when the tokenizer files
    # do not name one (a qwen2 config splits digits one by one), so the copy must keep it to encode alike
    for fname in hf.TOKENIZER_FILES + ("config.json",):
        if storage.isfile(storage.join(src, fname)):
            storage.copy_file(storage.join(src, fname), storage.join(dst, fname))
