"""The rollout engine: greedy parity with transformers, logprob consistency with the trainer's
teacher-forced pass, sampling distributions, compile counting and the KV memory guard."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rlvr_jax import sharding
from rlvr_jax.model import hf
from rlvr_jax.rollout import sampling
from tests.hf_fixtures import FAMILIES, ragged_batch, save_hf_model

LENGTHS = (9, 5, 12, 3)


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh(sharding.MeshShape(2, 2, 2))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_matches_transformers_generate(family, tmp_path, mesh):
    model = save_hf_model(family, tmp_path, seed=1)
    ids, mask, _ = ragged_batch(model.config.vocab_size, LENGTHS, seed=2)
    with torch.no_grad():
        want = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=32,
            min_new_tokens=32,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )[:, ids.shape[1] :].numpy()
    cfg, graphdef, params = hf.load(str(tmp_path), mesh)
    prompts = [ids[i, ids.shape[1] - n :].tolist() for i, n in enumerate(LENGTHS)]
    sampler = sampling.Sampler(graphdef, cfg, mesh)
    out = sampler.generate(params, prompts, sampling.SamplingParams(temperature=0.0, max_new_tokens=32))
    np.testing.assert_array_equal(np.asarray(out.completion_tokens), want)
    assert np.all(np.asarray(out.lengths) == 32) and not np.any(np.asarray(out.stopped))


def test_sampler_logprobs_equal_teacher_forced(tmp_path, mesh):
    save_hf_model("qwen3", tmp_path, seed=3)
    cfg, graphdef, params = hf.load(str(tmp_path), mesh)
    sampler = sampling.Sampler(graphdef, cfg, mesh)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14]]
    sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=24, n=4, stop_token_ids=(3, 4), seed=7)
    r = sampler.generate(params, prompts, sp)
    assert r.completion_tokens.shape == (12, 24)
    assert np.any(np.asarray(r.stopped)), "seeded run expected to hit a stop token somewhere"
    tf = jax.jit(lambda p, *a: sampling.completion_logprobs(graphdef, p, *a))(
        params, r.prompt_tokens, r.prompt_valid, r.completion_tokens, r.completion_valid
    )
    valid = np.asarray(r.completion_valid)
    np.testing.assert_allclose(np.asarray(tf)[valid], np.asarray(r.logprobs)[valid], atol=1e-4)
    np.testing.assert_allclose(np.asarray(r.policy_logprobs), np.asarray(r.logprobs), atol=1e-6)
    # stop tokens end rows: nothing valid after the first stop token, lengths count it
    for row, tokens in zip(valid, np.asarray(r.completion_tokens)):
        n = row.sum()
        assert row[:n].all() and not row[n:].any()
        if n < 24:
            assert tokens[n - 1] in (3, 4)
    assert list(np.asarray(r.prompt_index)) == [0] * 4 + [1] * 4 + [2] * 4


def test_compilations_are_bucketed(tmp_path, mesh):
    save_hf_model("qwen2", tmp_path)
    cfg, graphdef, params = hf.load(str(tmp_path), mesh)
    sampler = sampling.Sampler(graphdef, cfg, mesh, min_prompt_bucket=16)
    sp = sampling.SamplingParams(max_new_tokens=4, n=2)
    for seed, lengths in enumerate([(3, 7), (15, 2), (1, 16), (9, 9)]):  # all in the 16 bucket
        sampler.generate(params, [[1] * n for n in lengths], dataclasses.replace(sp, seed=seed))
    assert sampler.num_compilations == 1
    sampler.generate(params, [[1] * 17, [2]], sp)  # next bucket: 32
    assert sampler.num_compilations == 2


def test_kv_cache_guard_refuses_clearly(tmp_path, mesh):
    save_hf_model("qwen3", tmp_path)
    cfg, graphdef, params = hf.load(str(tmp_path), mesh)
    sampler = sampling.Sampler(graphdef, cfg, mesh, memory_fraction=1e-9)
    with pytest.raises(MemoryError, match="KV cache needs .* per device"):
        sampler.generate(params, [[1, 2]], sampling.SamplingParams(max_new_tokens=8))


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


def test_rows_in_chunks_of_whole_prompts_decode_as_one_batch(tmp_path, mesh):
    """rollout.rows_per_chunk: 5 prompts x 2 samples in chunks of 8 rows (4 prompts; the last chunk is
    padded) give the greedy tokens of one batch, in the same row order, from one compiled program."""
    save_hf_model("qwen3", tmp_path, seed=4)
    cfg, graphdef, params = hf.load(str(tmp_path), mesh)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14], [15, 16], [17, 18, 19, 20]]
    sp = sampling.SamplingParams(temperature=0.0, max_new_tokens=12, n=2)
    whole = sampling.Sampler(graphdef, cfg, mesh, min_prompt_bucket=8).generate(params, prompts, sp)
    chunked_sampler = sampling.Sampler(graphdef, cfg, mesh, min_prompt_bucket=8, max_rows=8)
    chunked = chunked_sampler.generate(params, prompts, sp)
    assert chunked.completion_tokens.shape == whole.completion_tokens.shape == (10, 12)
    np.testing.assert_array_equal(np.asarray(chunked.completion_tokens), np.asarray(whole.completion_tokens))
    np.testing.assert_array_equal(chunked.prompt_index, whole.prompt_index)
    np.testing.assert_array_equal(np.asarray(chunked.prompt_tokens), np.asarray(whole.prompt_tokens))
    assert chunked_sampler.num_compilations == 1
    with pytest.raises(ValueError, match="rows_per_chunk"):
        sampling.Sampler(graphdef, cfg, mesh, max_rows=1).generate(params, prompts, sp)
