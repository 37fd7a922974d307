"""Adaptive domain weights (pure numpy): a discounted-UCB bandit over domains scored by learnability, the
per-group signals it learns from, and the apportioning of a batch's prompts to domains.

Why this form. DUMP (arXiv 2504.09710) schedules multi-domain RL with a UCB bandit whose reward per domain is
the mean absolute advantage of its recent rollouts; SEC (arXiv 2505.14970) picks curriculum categories with a
bandit whose reward is the absolute advantage too, and samples categories through a Boltzmann (softmax)
distribution. Both rewards are zero exactly where GRPO has no gradient (a group whose rewards are all equal),
so we offer the mean |advantage| (`abs_adv`) and its simplest form, the fraction of a domain's groups whose
rewards are not all equal (`informative`: the groups GRPO learns from; the default, since it needs no
normalisation and reads directly as "share of useful prompts"). What a domain still has to teach drifts as the
policy learns, so the estimate is discounted (D-UCB: discounted sums over discounted counts, the same
discount on both, so a domain not sampled in a step keeps its estimate while its exploration bonus grows as
its discounted count fades). Weights are floor + (1 - D * floor) * softmax((estimate + bonus) / temperature):
SEC's Boltzmann choice, with a floor so no domain starves. Before any observation every domain holds the
same optimistic estimate (1, the signals' upper bound): the first batch is uniform. A batch's domain counts
come from the weights by deficit rounding (each unit to the domain furthest below its running target, ties
to the first): deterministic, so every host computes the same counts without an rng, the counts sum to the
batch, and the carried deficits keep every domain's long-run share at its weight (a floor of 1/B is honoured
over steps even when it is less than one prompt per batch).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

SIGNALS = ("informative", "abs_adv")
PRIOR = 1.0  # every domain's estimate before it is observed: the signals' upper bound (optimism)
STD_EPS = 1e-6
# A group's signal is counted in these units: integer totals add up exactly in any order, so one host or
# many reach the same totals, the same weights and the same batches.
SIGNAL_UNIT = 2.0**-16


@dataclasses.dataclass(frozen=True)
class AdaptiveSettings:
    """The bandit's settings (configs/grpo.py `data.adaptive`, destructured by rl/train.py)."""

    signal: str = "informative"  # SIGNALS: what a group tells about its domain's learnability
    temperature: float = 0.2  # softmax temperature over the domains' scores (signal units, in [0, 1])
    discount: float = 0.9  # per step, the weight of older observations (1 = never forget)
    explore: float = 0.1  # UCB bonus coefficient (0 = none)
    floor: float = 0.05  # minimum weight of each domain

    def problems(self, num_domains: int) -> list[str]:
        """What is wrong with these settings for `num_domains` domains (config names in the messages)."""
        out = []
        if self.signal not in SIGNALS:
            out.append(f"data.adaptive.signal={self.signal!r}: choose one of {SIGNALS}")
        if not self.temperature > 0:
            out.append(f"data.adaptive.temperature={self.temperature}: must be > 0")
        if not 0 < self.discount <= 1:
            out.append(f"data.adaptive.discount={self.discount}: must be in (0, 1]")
        if not self.explore >= 0:
            out.append(f"data.adaptive.explore={self.explore}: must be >= 0")
        if not 0 <= self.floor or num_domains * self.floor > 1 + 1e-12:
            out.append(
                f"data.adaptive.floor={self.floor}: must be >= 0 with domains x floor <= 1; "
                f"{num_domains} domains x {self.floor} = {num_domains * self.floor:g}"
            )
        return out


def group_signals(rewards_NxG) -> dict[str, np.ndarray]:
    """[N] float64 per group, for each of SIGNALS: 1.0 where the group's rewards are not all equal, and the
    mean |GRPO advantage| (reward minus the group mean over the group's std, ddof 0; 0 for an all-equal group),
    whatever the trainer's advantage estimator, so the temperature means the same under every estimator."""
    r_NxG = np.asarray(rewards_NxG, np.float64)
    mixed_N = r_NxG.max(-1) != r_NxG.min(-1)
    centred_NxG = r_NxG - r_NxG.mean(-1, keepdims=True)
    abs_adv_N = np.abs(centred_NxG).mean(-1) / (r_NxG.std(-1) + STD_EPS)
    return {"informative": mixed_N.astype(np.float64), "abs_adv": np.where(mixed_N, abs_adv_N, 0.0)}


def domain_totals(domains_N: Sequence[str], signal_N, domains: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(signal sums in SIGNAL_UNITs [D], group counts [D]), both int64, over `domains` (in that order) of the
    groups labelled `domains_N` with per-group signals `signal_N`."""
    index = {d: i for i, d in enumerate(domains)}
    units_N = np.rint(np.asarray(signal_N, np.float64) / SIGNAL_UNIT).astype(np.int64)
    units_D, groups_D = np.zeros(len(domains), np.int64), np.zeros(len(domains), np.int64)
    for dom, u in zip(domains_N, units_N):
        units_D[index[dom]] += u
        groups_D[index[dom]] += 1
    return units_D, groups_D


class DomainBandit:
    """The bandit's state over a fixed, ordered list of domains: discounted signal sums and group counts, the
    rounding deficits carried between batches, and the weights of the next batch."""

    def __init__(self, settings: AdaptiveSettings, domains: Sequence[str]):
        problems = settings.problems(len(domains))
        if problems:
            raise ValueError("invalid adaptive mixing settings:\n  " + "\n  ".join(problems))
        self.settings, self.domains = settings, tuple(domains)
        self.sums_D = np.zeros(len(domains))
        self.counts_D = np.zeros(len(domains))
        self.carry_D = np.zeros(len(domains))
        self.weights_D = self._weights()

    def estimates(self) -> np.ndarray:
        """[D] discounted mean signal per domain (PRIOR where nothing was observed yet)."""
        seen = self.counts_D > 0
        return np.where(seen, self.sums_D / np.where(seen, self.counts_D, 1.0), PRIOR)

    def _weights(self) -> np.ndarray:
        s = self.settings
        bonus_D = s.explore * np.sqrt(np.log1p(self.counts_D.sum()) / (1.0 + self.counts_D))
        z_D = (self.estimates() + bonus_D) / s.temperature
        p_D = np.exp(z_D - z_D.max())
        return s.floor + (1.0 - len(self.domains) * s.floor) * p_D / p_D.sum()

    def observe(self, units_D, groups_D) -> None:
        """One step's signal sums (in SIGNAL_UNITs) and group counts per domain (global: every host passes
        the same)."""
        g = self.settings.discount
        self.sums_D = g * self.sums_D + np.asarray(units_D, np.float64) * SIGNAL_UNIT
        self.counts_D = g * self.counts_D + np.asarray(groups_D, np.float64)
        self.weights_D = self._weights()

    def apportion(self, batch_size: int) -> np.ndarray:
        """[D] int prompts per domain of the next batch (they sum to batch_size), by deficit rounding."""
        target_D = self.weights_D * batch_size + self.carry_D
        counts_D = np.zeros(len(self.domains), np.int64)
        for _ in range(batch_size):
            counts_D[np.argmax(target_D - counts_D)] += 1
        self.carry_D = target_D - counts_D
        return counts_D

    def get_state(self) -> dict:
        """JSON-able state (floats round-trip exactly through JSON)."""
        lists = {k: [float(x) for x in getattr(self, f"{k}_D")] for k in ("sums", "counts", "carry", "weights")}
        return {"domains": list(self.domains), **lists}

    def set_state(self, state: Mapping) -> None:
        if list(state["domains"]) != list(self.domains):
            raise ValueError(
                f"bandit state is over domains {state['domains']}, this mixture's are {list(self.domains)}"
            )
        for k in ("sums", "counts", "carry", "weights"):
            setattr(self, f"{k}_D", np.asarray(state[k], np.float64))
