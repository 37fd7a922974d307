"""Partial rollouts (rollout/partial.py, Engine.generate_groups): a step stops once enough groups are
complete; carried rows keep their tokens and the sampling policy's log-probabilities and continue under the
next weights; the importance weight of a carried token uses the log-probability of the policy that sampled
it; the staleness bound drops rows; the carried state round-trips through JSON and resumes exactly."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import sharding
from rlvr_jax.model import hf
from rlvr_jax.rl import grpo
from rlvr_jax.rollout import engine, partial, sampling
from tests.hf_fixtures import save_hf_model

T = 24
N = 2  # groups trained per step
n = 2  # samples per prompt


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh(sharding.MeshShape(1, 1, 2), devices=jax.devices()[:2])


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory, mesh):
    path = tmp_path_factory.mktemp("qwen3")
    save_hf_model("qwen3", path, seed=3)
    return hf.load(str(path), mesh)


def _engine(loaded, mesh, **kw):
    cfg, graphdef, _ = loaded
    kw = dict(dict(num_slots=4, page_size=4, num_pages=96, prefill_chunk=8, decode_burst=2), **kw)
    return engine.Engine(graphdef, cfg, mesh, **kw)


class Draws:
    """Batches of N prompt items; each row's budget from a long-tailed draw (a few rows run to T)."""

    def __init__(self, seed=0):
        self.rng, self.count = np.random.default_rng(seed), 0

    def __call__(self):
        out = []
        for _ in range(N):
            budgets = [int(b) for b in np.clip(self.rng.geometric(0.25, n), 1, T)]
            if self.count % 3 == 0:
                budgets[-1] = T
            ids = [int(t) for t in self.rng.integers(5, 60, 1 + self.count % 4)]
            out.append({"prompt_ids": ids, "record": {"id": f"p{self.count}"}, "max_new_R": budgets})
            self.count += 1
        return out


SP = sampling.SamplingParams(temperature=1.0, max_new_tokens=T, n=n, seed=5)


def _driver(loaded, mesh, oversample=3.0, max_staleness=2):
    settings = partial.PartialSettings(groups_per_step=N, oversample=oversample, max_staleness=max_staleness)
    return partial.PartialRollouts(_engine(loaded, mesh), SP, settings)


def _rows(out):
    local = lambda x: np.asarray(x)
    return local(out.rollout.completion_tokens), local(out.rollout.completion_valid), local(out.rollout.policy_logprobs)


def test_a_step_trains_complete_groups_and_carries_the_rest_with_their_tokens(qwen3, mesh):
    _, _, params = qwen3
    drv, draws = _driver(qwen3, mesh), Draws()
    out1 = drv.step(params, draws, jax.random.key(1), step=1)
    assert len(out1.items) == N and out1.rollout.completion_tokens.shape == (N * n, T)
    tokens, valid, _ = _rows(out1)
    budgets = [b for it in out1.items for b in it["max_new_R"]]
    assert valid.sum(-1).tolist() == budgets  # complete: every trained row made its whole budget
    begun = [g for g in drv.carried if g.rows is not None]
    assert begun, "some rows should be stopped mid-way and carried"
    assert any(not st.finished for g in begun for st in g.rows)
    before = {g.item["record"]["id"]: [list(st.tokens) for st in g.rows] for g in begun}
    logps = {g.item["record"]["id"]: [list(st.p_logp) for st in g.rows] for g in begun}
    out2 = drv.step(params, draws, jax.random.key(2), step=2)
    seen = 0
    for groups in ([g for g in drv.carried if g.rows is not None], None):
        if groups is None:  # the trained groups of step 2, from its rollout
            t2, v2, lp2 = _rows(out2)
            groups = [
                (
                    it["record"]["id"],
                    [t2[k * n + j, : v2[k * n + j].sum()] for j in range(n)],
                    [lp2[k * n + j, : v2[k * n + j].sum()] for j in range(n)],
                )
                for k, it in enumerate(out2.items)
            ]
        else:
            groups = [
                (g.item["record"]["id"], [st.tokens for st in g.rows], [st.p_logp for st in g.rows]) for g in groups
            ]
        for gid, rows, lps in groups:
            if gid not in before:
                continue
            for j in range(n):
                old = before[gid][j]
                assert list(rows[j][: len(old)]) == old  # carried tokens kept, then continued
                np.testing.assert_allclose(np.asarray(lps[j][: len(old)]), logps[gid][j], rtol=0, atol=0)
                seen += 1
    assert seen > 0


def test_carried_tokens_keep_the_sampling_policys_logprob_and_tis_uses_it(qwen3, mesh):
    cfg, graphdef, params = qwen3
    params_b = jax.tree_util.tree_map(lambda x: x * 1.3 if x.ndim == 2 else x, params)
    drv, draws = _driver(qwen3, mesh, oversample=4.0), Draws(seed=1)
    drv.step(params, draws, jax.random.key(1), step=1)
    out = None
    for step in range(2, 6):  # until a group sampled under both weights trains
        out = drv.step(params_b, draws, jax.random.key(step), step=step)
        if (out.staleness_BxT > 0).any() and (
            (out.staleness_BxT == 0) & np.asarray(out.rollout.completion_valid)
        ).any():
            break
    st = out.staleness_BxT
    r = out.rollout
    valid = np.asarray(r.completion_valid)
    tf = jax.jit(lambda p, *a: sampling.completion_logprobs(graphdef, p, *a))
    args = (r.prompt_tokens, r.prompt_valid, r.completion_tokens, r.completion_valid)
    logp_a, logp_b = np.asarray(tf(params, *args)), np.asarray(tf(params_b, *args))
    sampler = np.asarray(r.policy_logprobs)
    old = valid & (st == step - 1)  # sampled under params (step 1), trained under params_b
    new = valid & (st == 0)
    assert old.any() and new.any()
    np.testing.assert_allclose(sampler[old], logp_a[old], atol=2e-4)
    np.testing.assert_allclose(sampler[new], logp_b[new], atol=2e-4)
    assert np.abs(logp_a[old] - logp_b[old]).max() > 1e-2  # the policy did change
    w = np.asarray(grpo.tis_weights(jnp.asarray(logp_b), jnp.asarray(sampler), jnp.asarray(valid), cap=2.0))
    np.testing.assert_allclose(w[old], np.minimum(np.exp(logp_b[old] - logp_a[old]), 2.0), rtol=1e-3)


@pytest.mark.parametrize("max_staleness", [0, 1])
def test_the_staleness_bound_drops_rows_and_is_never_exceeded(qwen3, mesh, max_staleness):
    _, _, params = qwen3
    drv, draws = _driver(qwen3, mesh, oversample=3.0, max_staleness=max_staleness), Draws(seed=2)
    dropped = 0
    for step in range(1, 6):
        out = drv.step(params, draws, jax.random.key(step), step=step)
        valid = np.asarray(out.rollout.completion_valid)
        assert out.staleness_BxT[valid].max() <= max_staleness
        assert out.metrics["staleness/max"] <= max_staleness
        dropped += out.metrics["partial/dropped_rows"]
        for g in drv.carried:
            if g.versions is not None:
                assert step + 1 - min(v[0] for v in g.versions) <= max_staleness
        if max_staleness == 0:
            assert all(g.rows is None for g in drv.carried)
    assert dropped > 0


def test_the_carried_state_resumes_exactly(qwen3, mesh, tmp_path):
    _, _, params = qwen3
    a, draws_a = _driver(qwen3, mesh), Draws(seed=3)
    for step in (1, 2):
        a.step(params, draws_a, jax.random.key(step), step=step)
    path = str(tmp_path / "carried.npz")
    partial.save_state(path, a.get_state())
    state = partial.load_state(path)
    assert json.dumps(state, sort_keys=True) == json.dumps(a.get_state(), sort_keys=True)
    b = _driver(qwen3, mesh)
    b.set_state(state)
    draws_b = Draws(seed=3)
    draws_b.rng, draws_b.count = np.random.default_rng(3), 0
    for _ in range(draws_a.count // N):
        draws_b()
    assert draws_b.count == draws_a.count
    for step in (3, 4):
        oa = a.step(params, draws_a, jax.random.key(step), step=step)
        ob = b.step(params, draws_b, jax.random.key(step), step=step)
        for x, y in zip(_rows(oa), _rows(ob)):
            np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(oa.staleness_BxT, ob.staleness_BxT)
        assert oa.metrics == ob.metrics
    assert json.dumps(a.get_state()) == json.dumps(b.get_state())


def test_bad_settings_and_a_mismatched_state_are_refused(qwen3, mesh):
    with pytest.raises(ValueError, match="oversample"):
        partial.PartialSettings(groups_per_step=2, oversample=0.5, max_staleness=1)
    drv = _driver(qwen3, mesh)
    state = drv.get_state()
    state["settings"]["groups_per_step"] = 7
    with pytest.raises(ValueError, match="7 groups per step"):
        drv.set_state(state)
