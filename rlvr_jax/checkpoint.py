"""Orbax checkpoints: one directory per step holding params, optimizer state, step + RNG, and JSON
metadata (model config, data-iterator state, resolved run config, the before-RL evaluation); restorable
into any mesh. What a training step saves is built here (step_arrays, step_meta) and restored here
(abstract_step_arrays)."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from rlvr_jax import storage

log = logging.getLogger(__name__)

ARRAY_ITEMS = ("params", "opt_state", "train")  # "train" = {"step": int32[], "rng": uint32[2]}


def abstract_with_shardings(abstract_tree, shardings_tree):
    return jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings_tree
    )


def step_arrays(params, opt_state, step: int, key) -> dict[str, Any]:
    """The array items (ARRAY_ITEMS) a training step saves: params, optimizer state, step and RNG key."""
    return {
        "params": params,
        "opt_state": opt_state,
        # host numpy values: identical on every process, so they need no sharding
        "train": {"step": np.asarray(step, np.int32), "rng": np.asarray(jax.random.key_data(key), np.uint32)},
    }


def abstract_step_arrays(params, opt_state, param_shardings, opt_shardings) -> dict[str, Any]:
    """What `Checkpointer.restore` restores step_arrays into: the live trees' shapes on their shardings."""
    return {
        "params": abstract_with_shardings(jax.eval_shape(lambda: params), param_shardings),
        "opt_state": abstract_with_shardings(jax.eval_shape(lambda: opt_state), opt_shardings),
        "train": {"step": np.zeros((), np.int32), "rng": np.zeros((2,), np.uint32)},
    }


def step_meta(*, data_state: dict, config, model_config: dict, eval_before: dict | None) -> dict:
    """The JSON item `meta` a training step saves: the data iterator's state, the resolved run config (a
    ConfigDict), the model config (params_io.model_config_to_json) and the before-RL evaluation."""
    return {
        "data_state": data_state,
        "config": json.loads(config.to_json_best_effort()),
        "model_config": model_config,
        # with its per-item results: a resumed run still pairs them with the after-RL evaluation
        "eval_before": eval_before,
    }


class Checkpointer:
    """CheckpointManager wrapper: async saves every `save_every` steps, keeps the last `keep` and step 0, and
    restores the newest readable step (a damaged latest step is skipped with a warning)."""

    def __init__(self, directory: str, *, save_every: int = 1, keep: int = 3, async_save: bool = True):
        self.directory = storage.resolve(directory)  # local or gs://

        # Step 0 (the starting point, e.g. the SFT anchor) is kept besides the latest `keep`.
        keep_policy = cm.AnyPreservationPolicy([cm.LatestN(keep), cm.CustomSteps([0])])
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=save_every,
            preservation_policy=keep_policy,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, arrays: dict[str, Any], meta: dict, *, force: bool = False) -> bool:
        args = {name: ocp.args.StandardSave(tree) for name, tree in arrays.items()}
        args["meta"] = ocp.args.JsonSave(meta)
        return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

    def will_save(self, step: int) -> bool:
        """Whether `save(step, ...)` without force saves (every `save_every` steps)."""
        return bool(self.manager.should_save(step))

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
                log.warning(
                    "checkpoint step %s in %s is unreadable (%s: %s); trying an older one",
                    s,
                    self.directory,
                    type(e).__name__,
                    str(e).splitlines()[0][:200],
                )
                errors.append(f"step {s}: {type(e).__name__}: {e}")
        raise RuntimeError(f"{self.directory}: no readable checkpoint:\n" + "\n".join(errors))

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def orbax_root_and_step(path: str) -> tuple[str, int | None]:
    """Accept a manager directory (newest step) or one step directory inside it."""
    path = storage.resolve(path)
    base = os.path.basename(path)
    if base.isdigit() and storage.isdir(storage.join(path, "meta")):
        return os.path.dirname(path), int(base)
    return path, None


def tokenizer_dir_of(path: str) -> str | None:
    """Where the tokenizer files of a checkpoint (HF directory or ours) live, if anywhere."""
    root, _ = orbax_root_and_step(path)
    for d in (path, storage.join(root, "tokenizer")):
        if any(
            storage.isfile(storage.join(d, f)) for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
        ):
            return d
    return None
