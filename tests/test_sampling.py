"""The sampling distribution of one decoding step (temperature, top-k, top-p) and its reported logprobs.
The engine that calls it (greedy parity with transformers, logprobs equal to the trainer's teacher-forced
ones, compile counts, pools too small refused) is tested in test_engine.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.rollout import sampling

# ---- the sampling distribution itself, on a fixed logits vector ------------------------------
LOGITS = jnp.log(jnp.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04]))


def _draws(temperature, top_k, top_p, n=40000):
    keys = jax.random.split(jax.random.key(0), n)
    batch = jnp.broadcast_to(LOGITS, (n, LOGITS.shape[0]))
    tok, q_lp, _ = jax.jit(
        lambda k: jax.vmap(lambda kk, logits: sampling.sample_step(kk, logits[None], temperature, top_k, top_p))(
            k, batch
        )
    )(keys)
    return np.asarray(tok)[:, 0], np.asarray(q_lp)[:, 0]


def _expected(temperature, keep):
    p = np.exp(np.asarray(LOGITS, np.float64) / temperature)
    p = np.where(keep, p, 0.0)
    return p / p.sum()


@pytest.mark.parametrize(
    "temperature,top_k,top_p,keep",
    [
        (1.0, 0, 1.0, [1, 1, 1, 1, 1, 1]),
        (0.5, 0, 1.0, [1, 1, 1, 1, 1, 1]),
        (2.0, 0, 1.0, [1, 1, 1, 1, 1, 1]),
        (1.0, 3, 1.0, [1, 1, 1, 0, 0, 0]),
        (1.0, 0, 0.7, [1, 1, 1, 0, 0, 0]),  # 0.4 + 0.25 = 0.65 < 0.7 -> third token needed
        (1.0, 0, 0.65, [1, 1, 0, 0, 0, 0]),  # mass before token 3 is 0.65, not < 0.65
        (1.0, 2, 0.9, [1, 1, 0, 0, 0, 0]),
    ],
)
def test_sampling_distribution(temperature, top_k, top_p, keep):
    keep = np.asarray(keep, bool)
    want = _expected(temperature, keep)
    tok, q_lp = _draws(temperature, top_k, top_p)
    counts = np.bincount(tok, minlength=6)
    assert set(np.nonzero(counts)[0]) <= set(np.nonzero(keep)[0]), "sampled outside the support"
    # chi-square against the expected distribution over the support (dof <= 5; 30 is far in the tail)
    support = keep
    expected = want[support] * len(tok)
    chi2 = float(((counts[support] - expected) ** 2 / expected).sum())
    assert chi2 < 30, (counts, expected)
    np.testing.assert_allclose(np.exp(q_lp), want[tok], rtol=1e-5)
