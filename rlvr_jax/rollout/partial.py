"""Partial rollouts: a step asks the engine for `groups_per_step` finished groups from an over-sampled set of
prompts and stops the rest where they are; unfinished rows (with their tokens and the sampling policy's
log-probabilities of them) continue in the next step's call under the new weights, recomputed from their
prompt and tokens as after a preemption (APRIL, arXiv 2509.18521; Kimi k1.5's partial rollouts).

Per host: `PartialRollouts.step` fills the in-flight set with whole prompt batches (`draw()`) until it holds
ceil(oversample x groups_per_step) groups, calls `Engine.generate_groups`, trains the first complete groups
in the call's prompt order (carried groups come first: oldest first) and carries the rest. Every token keeps
the step that sampled it (`versions`); a group whose oldest token would train more than `max_staleness`
policy versions behind is dropped and counted. The carried set is JSON (`get_state` / `set_state`): the
trainer saves it beside each checkpoint, per process.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from typing import Callable

import numpy as np

from rlvr_jax import storage
from rlvr_jax.rollout.sampling import Rollout, SamplingParams
from rlvr_jax.rollout.scheduler import RowState


@dataclasses.dataclass(frozen=True)
class PartialSettings:
    groups_per_step: int  # this host's groups (prompts) that train per step
    oversample: float  # in-flight groups per step = ceil(oversample x groups_per_step)
    max_staleness: int  # the most policy versions a trained token may lag the policy it trains

    def __post_init__(self):
        if self.groups_per_step < 1 or self.oversample < 1.0 or self.max_staleness < 0:
            raise ValueError(
                f"partial rollouts: groups_per_step={self.groups_per_step} (>= 1), oversample={self.oversample} "
                f"(>= 1.0), max_staleness={self.max_staleness} (>= 0)"
            )


@dataclasses.dataclass
class Group:
    """A prompt in flight: its mixture item, and once begun, its n rows' states and per-token versions."""

    item: dict
    rows: list[RowState] | None = None
    versions: list[list[int]] | None = None  # per row, per token: the step whose policy sampled it

    def budgets(self, n: int, T: int) -> list[int]:
        if self.rows is not None:
            return [st.max_new for st in self.rows]
        return [int(b) for b in self.item.get("max_new_R", [T] * n)]


@dataclasses.dataclass
class StepRollout:
    """One step's trained groups: their items and `Rollout` (global arrays), each token's staleness on this
    host ([B, T] int32: policy versions behind, 0 on padding) and the step's partial-rollout metrics."""

    items: list[dict]
    rollout: Rollout
    staleness_BxT: np.ndarray
    metrics: dict


class PartialRollouts:
    """This host's in-flight groups across steps (see the module docstring)."""

    def __init__(self, engine, sampling: SamplingParams, settings: PartialSettings):
        self.engine, self.sp, self.settings = engine, sampling, settings
        self.carried: list[Group] = []

    def step(self, params, draw: Callable[[], list[dict]], key, step: int, progress: bool = False) -> StepRollout:
        """Step `step`'s rollout (`draw()` returns the next batch of this host's prompt items)."""
        s, n, T = self.settings, self.sp.n, self.sp.max_new_tokens
        groups, carried_in = list(self.carried), len(self.carried)
        while len(groups) < math.ceil(s.oversample * s.groups_per_step):
            groups += [Group(item) for item in draw()]
        out = self.engine.generate_groups(
            params,
            [g.item["prompt_ids"] for g in groups],
            self.sp,
            key,
            target_groups=s.groups_per_step,
            started={i: g.rows for i, g in enumerate(groups) if g.rows is not None},
            max_new_tokens=[b for g in groups for b in g.budgets(n, T)],
            progress=progress,
        )
        for i, states in out.states.items():
            _advance(groups[i], states, step)
        chosen = out.complete[: s.groups_per_step]
        rest = [g for i, g in enumerate(groups) if i not in set(chosen)]
        fresh = lambda g: g.versions is None or step + 1 - _oldest(g) <= s.max_staleness
        self.carried, dropped = [g for g in rest if fresh(g)], [g for g in rest if not fresh(g)]
        trained = [groups[i] for i in chosen]
        rollout = self._rollout(trained)
        staleness = _staleness(trained, step, n, T)
        valid = np.asarray(self.engine.local_rows(rollout.completion_valid))
        metrics = {
            "partial/carried_in_groups": carried_in,
            "partial/carried_out_groups": len(self.carried),
            "partial/dropped_rows": len(dropped) * n,
            "partial/dropped_tokens": sum(len(st.tokens) for g in dropped for st in g.rows),
            "staleness/mean": float(staleness[valid].mean()) if valid.any() else 0.0,
            "staleness/max": int(staleness[valid].max()) if valid.any() else 0,
            "staleness/carried_token_frac": float((staleness[valid] > 0).mean()) if valid.any() else 0.0,
        }
        return StepRollout([g.item for g in trained], rollout, staleness, metrics)

    def _rollout(self, trained: list[Group]) -> Rollout:
        n = self.sp.n
        rows = {k * n + j: st for k, g in enumerate(trained) for j, st in enumerate(g.rows)}
        return self.engine.rollout_of([g.item["prompt_ids"] for g in trained], rows, self.sp)

    # ---- checkpoint ----------------------------------------------------------------------------------
    def get_state(self) -> dict:
        return {"carried": [dataclasses.asdict(g) for g in self.carried], "settings": dataclasses.asdict(self.settings)}

    def set_state(self, state: dict) -> None:
        if state["settings"]["groups_per_step"] != self.settings.groups_per_step:
            raise ValueError(
                f"partial rollouts: the carried state holds {state['settings']['groups_per_step']} groups per "
                f"step, this run {self.settings.groups_per_step}"
            )
        self.carried = []
        for g in state["carried"]:
            rows = None if g["rows"] is None else [RowState(**st) for st in g["rows"]]
            self.carried.append(Group(g["item"], rows, g["versions"]))


def _advance(group: Group, states: list[RowState], step: int) -> None:
    """The group's rows after a call: tokens made in it are versioned `step`."""
    old = group.versions or [[] for _ in states]
    group.versions = [v + [step] * (len(st.tokens) - len(v)) for v, st in zip(old, states)]
    group.rows = states


def _oldest(group: Group) -> int:
    return min(v[0] for v in group.versions if v)


def _staleness(trained: list[Group], step: int, n: int, T: int) -> np.ndarray:
    """[B, T] int32: step - the version of each token of the trained rows (0 past a row's end)."""
    out = np.zeros((len(trained) * n, T), np.int32)
    for k, g in enumerate(trained):
        for j, v in enumerate(g.versions):
            out[k * n + j, : len(v)] = step - np.asarray(v, np.int32)
    return out


def save_state(path: str, state: dict) -> None:
    """`PartialRollouts.get_state()` to one .npz (tokens, log-probabilities and versions as flat arrays, the
    rest as JSON), local or gs://."""
    meta, flat = _flatten(state)
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **flat)
    storage.write_bytes(path, buf.getvalue())


def load_state(path: str) -> dict:
    """What `save_state` wrote, as `get_state()` returned it."""
    with np.load(io.BytesIO(storage.read_bytes(path))) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        return _unflatten(meta, {k: z[k] for k in ("tokens", "q_logp", "p_logp", "versions")})


_FLAT = {"tokens": np.int32, "q_logp": np.float32, "p_logp": np.float32, "versions": np.int32}


def _flatten(state: dict):
    meta = {"settings": state["settings"], "carried": []}
    parts = {k: [] for k in _FLAT}
    for g in state["carried"]:
        rows = None
        if g["rows"] is not None:
            rows = []
            for st, v in zip(g["rows"], g["versions"]):
                for k in ("tokens", "q_logp", "p_logp"):
                    parts[k].append(np.asarray(st[k], _FLAT[k]))
                parts["versions"].append(np.asarray(v, np.int32))
                rows.append({k: st[k] for k in ("max_new", "finished", "stopped")} | {"length": len(st["tokens"])})
        meta["carried"].append({"item": g["item"], "rows": rows})
    flat = {k: np.concatenate(v) if v else np.zeros(0, _FLAT[k]) for k, v in parts.items()}
    return meta, flat


def _unflatten(meta: dict, flat: dict) -> dict:
    at, carried = 0, []
    for g in meta["carried"]:
        rows = versions = None
        if g["rows"] is not None:
            rows, versions = [], []
            for r in g["rows"]:
                cut = slice(at, at + r["length"])
                at += r["length"]
                rows.append(
                    {k: flat[k][cut].tolist() for k in ("tokens", "q_logp", "p_logp")}
                    | {k: r[k] for k in ("max_new", "finished", "stopped")}
                )
                versions.append(flat["versions"][cut].tolist())
        carried.append({"item": g["item"], "rows": rows, "versions": versions})
    return {"settings": meta["settings"], "carried": carried}
