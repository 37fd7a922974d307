"""Metrics out: TensorBoard (tensorboardX) and a JSONL file on process 0, plus a console line."""

from __future__ import annotations

import json
import math
import os
from typing import Mapping

import jax
import numpy as np


class MetricsWriter:
    def __init__(self, workdir: str, name: str = "train"):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, f"metrics_{name}.jsonl")
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            from tensorboardX import SummaryWriter  # local: only process 0 writes TensorBoard

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard", name))

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
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **scalars}, sort_keys=True) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def flatten_config(cfg, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if hasattr(v, "items"):
            out.update(flatten_config(v, key + "."))
        else:
            out[key] = v
    return out
