"""Rewards for rollouts: `score(record, response)` routes a sample to its domain's verifier
(math, code, science, if; dispatch.py); `VerifierPool` (pool.py) runs the same front in worker
processes with deadlines. `Score` and `VerifierConfig` (base.py) are the types every verifier shares."""

from rlvr_jax.verifiers.base import DOMAINS, Score, VerifierConfig
from rlvr_jax.verifiers.dispatch import score
from rlvr_jax.verifiers.pool import VerifierPool

__all__ = ["DOMAINS", "Score", "VerifierConfig", "VerifierPool", "score"]
