"""The tail-aware rollout projection: the engine's schedule simulated (rollout/simulate.py) at the config's
shapes over a response-length distribution, synchronous and with partial rollouts, priced with the compiled
programs' roofline seconds (a prefill chunk, a decode burst, the weights' reshard); the roofline at the mean
response (every slot full until the mean) stays beside it as the lower bound."""

from __future__ import annotations

import dataclasses
import math

from rlvr_jax.plan.chips import PlanError
from rlvr_jax.rollout import lengths as lengths_lib
from rlvr_jax.rollout import simulate

MODES = ("synchronous", "partial")


@dataclasses.dataclass(frozen=True)
class TailSettings:
    """The length distribution and the simulation's size, destructured from a config's `plan` and `rollout`."""

    lengths: str  # "geometric" or "histogram"
    mean: float  # geometric: mean response tokens before the cap
    cap: int  # the longest response (the rollout's max_new_tokens)
    lengths_file: str  # histogram: {"edges", "counts"} JSON, e.g. a run's lengths_histogram.json
    steps: int  # simulated steps averaged per mode
    warmup: int  # partial rollouts: steps simulated first (the carried set fills)
    seed: int
    run_partial: bool  # the mode the run uses (rollout.partial)
    oversample: float
    max_staleness: int

    def rows(self, shapes) -> int:
        """Rows partial rollouts keep in flight: ceil(oversample x prompts) x samples."""
        return math.ceil(self.oversample * shapes.prompts) * shapes.samples

    def draw(self):
        if self.lengths == "geometric":
            return lengths_lib.geometric(self.mean, self.cap, self.seed)
        if self.lengths == "histogram":
            if not self.lengths_file:
                raise PlanError("plan.lengths='histogram' needs plan.lengths_file (a lengths_histogram.json)")
            return lengths_lib.from_histogram(lengths_lib.read_histogram(self.lengths_file), self.cap, self.seed)
        raise PlanError(f"plan.lengths={self.lengths!r}: expected 'geometric' or 'histogram'")


def tail_settings(config, mean_response_len: int) -> TailSettings:
    """The config's tail settings; fields a config predates take their defaults here, at the boundary."""
    p, ro = config.plan, config.rollout
    mean = p.get("length_mean", 0) or mean_response_len or p.get("mean_response_tokens", 0) or ro.max_new_tokens
    s = TailSettings(
        lengths=p.get("lengths", "geometric"),
        mean=float(mean),
        cap=int(p.get("length_cap", 0) or ro.max_new_tokens),
        lengths_file=p.get("lengths_file", ""),
        steps=int(p.get("sim_steps", 2)),
        warmup=int(p.get("sim_warmup", 2)),
        seed=int(p.get("sim_seed", 0)),
        run_partial=bool(ro.get("partial", False)),
        oversample=float(ro.get("partial_oversample", 2.0)),
        max_staleness=int(ro.get("max_staleness", 2)),
    )
    if s.steps < 1 or s.warmup < 0 or not 1 <= s.cap <= ro.max_new_tokens:
        raise PlanError(
            f"plan.sim_steps={s.steps} (>= 1), plan.sim_warmup={s.warmup} (>= 0), plan.length_cap={s.cap} "
            f"(1..rollout.max_new_tokens={ro.max_new_tokens})"
        )
    return s


def project(s: TailSettings, shape: simulate.EngineShape, shapes, seconds: dict, other_step_s: float, chips: int):
    """{mode: rollout seconds per step, occupancy, device-hours, ...} from the simulated schedule; `seconds`:
    roofline seconds of one prefill chunk, one decode burst (decode_partial: partial rollouts' burst over the
    slots their in-flight rows fill) and the reshard; `other_step_s`: the rest of a
    step (logprob passes, update) at its roofline."""
    P, n, N = shapes.prompt_len, shapes.samples, shapes.prompts
    runs = {
        "synchronous": lambda: simulate.summary(simulate.synchronous_steps(shape, P, n, N, s.draw(), s.steps)),
        "partial": lambda: simulate.summary(
            simulate.partial_steps(shape, P, n, N, s.draw(), s.warmup + s.steps, s.oversample, s.max_staleness),
            warmup=s.warmup,
        ),
    }
    out = {}
    for mode in MODES:
        m = runs[mode]()
        decode = seconds["decode_partial" if mode == "partial" else "decode"]
        rollout_s = (
            seconds["reshard"]
            + m["prefill_chunks"] * seconds["prefill"]
            + m["decode_steps"] / shape.decode_burst * decode
        )
        step_s = other_step_s + rollout_s
        out[mode] = dict(
            rollout_s=rollout_s,
            step_s=step_s,
            device_hours=step_s * shapes.steps * chips / 3600,
            slot_occupancy=m["slot_occupancy"],
            useful_tokens_per_s=m["useful_tokens"] / rollout_s if rollout_s > 0 else 0.0,
            **{k: m[k] for k in ("decode_steps", "decode_rounds", "prefill_chunks", "preemptions", "useful_tokens")},
            **({k: m[k] for k in ("carried_groups", "dropped_rows")} if mode == "partial" else {}),
        )
    out["partial"].update(oversample=s.oversample, max_staleness=s.max_staleness)
    return out
