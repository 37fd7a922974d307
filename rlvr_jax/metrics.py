"""Metrics out: TensorBoard (tensorboardX) and a JSONL file on process 0, plus a console line; the workdir may
be local or gs:// (tensorboardX writes event files to Cloud Storage itself)."""

from __future__ import annotations

import json
import math
from typing import Mapping

import jax
import numpy as np

from rlvr_jax import storage


class MetricsWriter:
    def __init__(self, workdir: str, name: str = "train"):
        self.enabled = jax.process_index() == 0
        self.workdir = workdir
        self.path = storage.join(workdir, f"metrics_{name}.jsonl")
        self._tb = None
        if self.enabled:
            storage.makedirs(workdir)
            from tensorboardX import SummaryWriter  # local: only process 0 writes TensorBoard

            self._tb = SummaryWriter(storage.join(workdir, "tensorboard", name))

    def hparams(self, flat_config: Mapping[str, object]) -> None:
        if not self.enabled:
            return
        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat_config.items()}
        self._tb.add_text("config", "\n".join(f"    {k} = {v}" for k, v in sorted(clean.items())), 0)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        scalars = {k: float(np.asarray(v)) for k, v in metrics.items()}
        for k, v in scalars.items():
            if math.isfinite(v):
                self._tb.add_scalar(k, v, step)
        storage.append_text(self.path, json.dumps({"step": step, **scalars}, sort_keys=True) + "\n")
        self._tb.flush()  # on Cloud Storage, events reach the bucket at a flush: lose at most one step

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]


def flatten_config(cfg, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if hasattr(v, "items"):
            out.update(flatten_config(v, key + "."))
        else:
            out[key] = v
    return out
