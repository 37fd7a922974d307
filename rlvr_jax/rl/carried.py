"""Partial rollouts' rows carried between steps (rollout/partial.py), saved beside each checkpoint: one
.npz per process (each host carries its own rows), `<checkpoints>/carried/step_<k>.process_<i>.npz`, written
before the step's checkpoint is dispatched, so a readable checkpoint always has its carried rows; files of
steps the checkpointer no longer keeps are removed."""

from __future__ import annotations

import jax

from rlvr_jax import storage
from rlvr_jax.rollout import partial as partial_lib


def carried_path(ckpt_dir: str, step: int, process: int | None = None) -> str:
    """A process's carried rows as of checkpoint step `step` (this process's by default)."""
    process = jax.process_index() if process is None else process
    return storage.join(ckpt_dir, "carried", f"step_{step}.process_{process}.npz")


def restore(partial, ckpt, start: int) -> None:
    """Partial rollouts (a PartialRollouts, or None: nothing to do) resume with the rows they carried at
    checkpoint step `start` (none at step 0)."""
    if partial is None or start == 0:
        return
    path = carried_path(ckpt.directory, start)
    if not storage.exists(path):
        raise FileNotFoundError(
            f"{path}: the rows partial rollouts carried at checkpoint step {start} are missing; the run cannot "
            f"resume exactly (was rollout.partial off when that step was saved?)"
        )
    partial.set_state(partial_lib.load_state(path))


def save(partial, ckpt, step: int, *, force: bool) -> None:
    """Before step `step`'s checkpoint: this process's carried rows, when the checkpoint will be saved."""
    if partial is None or not (force or ckpt.will_save(step)):
        return
    partial_lib.save_state(carried_path(ckpt.directory, step), partial.get_state())
    kept = {carried_path(ckpt.directory, k) for k in (*ckpt.all_steps(), step)}
    mine = f".process_{jax.process_index()}.npz"
    for name in storage.listdir(storage.join(ckpt.directory, "carried")):
        path = storage.join(ckpt.directory, "carried", name)
        if name.endswith(mine) and path not in kept:
            storage.remove(path)
