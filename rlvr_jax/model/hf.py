"""Hugging Face checkpoints in and out: safetensors read slice by slice straight into the target
shardings, and export of a directory `transformers` and vLLM load (config in hf_config, tensor
names and layouts in hf_tensors).

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

from rlvr_jax import storage
from rlvr_jax.model.decoder import ModelConfig, model_shardings
from rlvr_jax.model.hf_config import HFFormatError, config_to_hf, read_config
from rlvr_jax.model.hf_tensors import hf_shape, read_slice, tensor_map, to_hf_array

# ---- reading ----------------------------------------------------------------------------------


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
    """Write config.json, safetensors shards (+ index when more than one) and tokenizer files into `out_dir`
    (local, or gs://: written locally, then uploaded). Gathers one tensor at a time; only process 0 writes.
    Returns the files written."""
    source_dir = source_dir and storage.local_copy(source_dir)
    with storage.staged_dir(out_dir, upload=jax.process_index() == 0) as local_dir:
        return _save_local(params, cfg, local_dir, dtype, source_dir, max_shard_bytes, progress)


def _save_local(params, cfg: ModelConfig, out_dir: str, dtype, source_dir, max_shard_bytes, progress) -> list[str]:
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
    """(ModelConfig, graphdef, params) with every tensor placed by the sharding rules on `mesh`. A gs://
    directory is copied into the local cache first (safetensors reads by memory-mapping), on every host."""
    ckpt_dir = storage.local_copy(ckpt_dir)
    cfg = read_config(ckpt_dir, param_dtype)
    graphdef, abstract, shardings = model_shardings(cfg, mesh)
    params = load_params(ckpt_dir, cfg, sharded_specs(abstract, shardings), progress)
    return cfg, graphdef, params
