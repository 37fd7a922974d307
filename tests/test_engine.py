"""The paged rollout engine: greedy parity with transformers on ragged prompts whose rows end at different
steps (slots are refilled mid-run), the same tokens on one or two batch shards, sampler logprobs equal the trainer's
teacher-forced ones, the same seed gives the same tokens with 4 and 64 slots and through preemptions, a
bounded number of compiled programs, and bad input refused before anything compiles."""

import jax
import numpy as np
import pytest
import torch

from rlvr_jax import sharding
from rlvr_jax.model import hf
from rlvr_jax.model.decoder import ModelConfig, model_shardings
from rlvr_jax.plan.chips import PlanError, topology_devices
from rlvr_jax.rollout import calls, engine, sampling
from tests.hf_fixtures import FAMILIES, ragged_batch, save_hf_model

LENGTHS = (9, 5, 12, 3, 7)
T = 24


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
    kw = dict(dict(num_slots=3, page_size=4, num_pages=96, prefill_chunk=8, decode_burst=4), **kw)
    return engine.Engine(graphdef, cfg, mesh, **kw)


def _cut(tokens, stop, limit):
    """A row as the engine should end it: at its first stop token (kept) or its own limit."""
    out = []
    for t in tokens[:limit]:
        out.append(int(t))
        if t == stop:
            break
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_matches_transformers_with_rows_ending_at_different_steps(family, tmp_path, mesh):
    model = save_hf_model(family, tmp_path, seed=1)
    ids, mask, _ = ragged_batch(model.config.vocab_size, LENGTHS, seed=2)
    with torch.no_grad():
        want = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=T,
            min_new_tokens=T,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )[:, ids.shape[1] :].numpy()
    loaded = hf.load(str(tmp_path), mesh)
    prompts = [ids[i, ids.shape[1] - n :].tolist() for i, n in enumerate(LENGTHS)]
    stop = int(want[1, 6])  # some rows stop early on it, the others run to their own limits
    limits = [T, 5, 17, T, 11]
    sp = sampling.SamplingParams(temperature=0.0, max_new_tokens=T, stop_token_ids=(stop,))
    eng = _engine(loaded, mesh, num_slots=2)
    out = eng.generate(loaded[2], prompts, sp, max_new_tokens=limits)
    got, valid = np.asarray(out.completion_tokens), np.asarray(out.completion_valid)
    for r in range(len(prompts)):
        row = _cut(want[r], stop, limits[r])
        assert got[r, : valid[r].sum()].tolist() == row, r
        assert bool(out.stopped[r]) == (row[-1] == stop and (len(row) < limits[r] or want[r, len(row) - 1] == stop))
    assert len({int(n) for n in valid.sum(-1)}) > 2, "rows should end at different steps"


@pytest.fixture(scope="module")
def qwen3_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3_sharded")
    save_hf_model("qwen3", path, seed=3)
    return str(path)


def test_per_row_limits_and_batch_shards_change_no_token(qwen3, qwen3_path, mesh):
    """Greedy rows capped at their own limits are the uncapped rows cut there (slots refilled as rows end),
    and sampling on two batch shards (fsdp=2 x tensor=2: each shard its own pool, the FSDP weights
    resharded for decoding) gives the tokens of one shard: a draw depends on (seed, prompt, sample, position)."""
    _, _, params = qwen3
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16, 17], [18], [19, 20, 21, 22, 23], [24, 25]]
    greedy = sampling.SamplingParams(temperature=0.0, max_new_tokens=T, n=2)
    ref = _engine(qwen3, mesh, num_slots=64).generate(params, prompts, greedy)
    limits = [T, 3, 9, T, 1, 14, 20, 6, T, 2]
    eng = _engine(qwen3, mesh)
    out = eng.generate(params, prompts, greedy, max_new_tokens=limits)
    want = np.asarray(ref.completion_tokens)
    for r, m in enumerate(limits):
        assert np.asarray(out.completion_tokens)[r, :m].tolist() == want[r, :m].tolist(), r
        assert np.asarray(out.lengths)[r] == m and not np.asarray(out.completion_tokens)[r, m:].any()
    np.testing.assert_allclose(
        np.where(np.asarray(out.completion_valid), np.asarray(ref.logprobs), 0.0), np.asarray(out.logprobs), atol=1e-5
    )
    np.testing.assert_array_equal(np.asarray(out.prompt_tokens), np.asarray(ref.prompt_tokens))
    np.testing.assert_array_equal(out.prompt_index, ref.prompt_index)
    assert eng.stats["decode_steps"] < sum(limits), "slots should decode rows side by side"

    sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=T, n=3, stop_token_ids=(3,), seed=5)
    one = _engine(qwen3, mesh).generate(params, prompts, sp)
    mesh4 = sharding.make_mesh(sharding.MeshShape(1, 2, 2), devices=jax.devices()[:4])
    cfg4, graphdef4, params4 = hf.load(qwen3_path, mesh4)
    two = engine.Engine(graphdef4, cfg4, mesh4, num_slots=3, page_size=4, num_pages=96, prefill_chunk=8, decode_burst=4)
    got = two.generate(params4, prompts, sp)
    assert two.stats["batch_shards"] == 2 and two.stats["resharded_weights"]
    np.testing.assert_array_equal(np.asarray(got.completion_tokens), np.asarray(one.completion_tokens))
    np.testing.assert_array_equal(np.asarray(got.completion_valid), np.asarray(one.completion_valid))
    np.testing.assert_allclose(np.asarray(got.logprobs), np.asarray(one.logprobs), atol=1e-5)


def test_sampler_logprobs_equal_teacher_forced(qwen3, mesh):
    cfg, graphdef, params = qwen3
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14], [15, 16, 17, 18, 19, 20, 21, 22, 23]]
    sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=T, n=4, stop_token_ids=(3, 4), seed=7)
    r = _engine(qwen3, mesh, num_slots=5).generate(params, prompts, sp)
    assert r.completion_tokens.shape == (16, T)
    assert np.any(np.asarray(r.stopped)) and not np.all(np.asarray(r.stopped))
    tf = jax.jit(lambda p, *a: sampling.completion_logprobs(graphdef, p, *a))(
        params, r.prompt_tokens, r.prompt_valid, r.completion_tokens, r.completion_valid
    )
    valid = np.asarray(r.completion_valid)
    np.testing.assert_allclose(np.asarray(tf)[valid], np.asarray(r.logprobs)[valid], atol=1e-4)
    np.testing.assert_allclose(np.asarray(r.policy_logprobs), np.asarray(r.logprobs), atol=1e-6)
    for row, tokens in zip(valid, np.asarray(r.completion_tokens)):
        n = row.sum()
        assert row[:n].all() and not row[n:].any()
        if n < T:
            assert tokens[n - 1] in (3, 4)
    assert list(r.prompt_index) == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    # the samples of a prompt differ (their draws have their own keys) though they share its prefill
    assert len({tuple(t) for t in np.asarray(r.completion_tokens)[:4]}) > 1


def test_same_seed_same_tokens_with_4_or_64_slots_and_through_preemption(qwen3, mesh):
    _, _, params = qwen3
    prompts = [[5 + i, 6, 7 + 2 * i][: 1 + i % 3] + [9] * (i % 4) for i in range(8)]
    sp = sampling.SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=T, n=3, stop_token_ids=(3,), seed=11)
    few = _engine(qwen3, mesh, num_slots=4)
    many = _engine(qwen3, mesh, num_slots=64)
    tight = _engine(qwen3, mesh, num_slots=8, num_pages=12)  # 11 pages of 4: about two sequences at once
    a, b, c = (e.generate(params, prompts, sp) for e in (few, many, tight))
    assert tight.stats["preemptions"] > 0
    assert tight.stats["peak_pages"] <= 11
    for other in (b, c):
        np.testing.assert_array_equal(np.asarray(a.completion_tokens), np.asarray(other.completion_tokens))
        np.testing.assert_array_equal(np.asarray(a.completion_valid), np.asarray(other.completion_valid))
        np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(other.logprobs), atol=1e-5)
    assert few.stats["slot_occupancy"] > many.stats["slot_occupancy"]


def test_compiles_a_bounded_number_of_programs(qwen3, mesh):
    """The pool once; per block-table bucket of a call (powers of two pages) a prefill per chunk layout (on
    XLA: whether its first piece continues a sequence, and its pieces' reach in powers of two blocks), and a
    decode per number of slots a call fills (powers of two up to num_slots), per bursts in one program and
    per snapshot width (powers of two): a run's programs are bounded by the buckets, not by its calls."""
    _, _, params = qwen3
    eng = _engine(qwen3, mesh, decode_burst=2)
    calls = [(9, 12), (15, 10), (16, 24, 11), (20,)]  # + 8 new tokens: 5 to 8 pages, the 8-page bucket
    for seed, lengths in enumerate(calls):
        eng.generate(params, [[1] * n for n in lengths], sampling.SamplingParams(max_new_tokens=8, n=2, seed=seed))
    first = eng.num_compilations
    # the pool; prefill(8) with and without a continuing first piece (chunks of 8 < the prompts; no reach
    # blocks in a chunk of 8); decode(8) per slot count (calls of 2 to 6 rows: 2 or 3 slots): one burst over
    # the pool, and 4 or 2 bursts (7 tokens left after prefill, no stop token) over a snapshot of 4 or 8
    # pages (prompts of up to 16 or 24 tokens)
    assert first <= 1 + 2 + 2 * (1 + 2 * 2)
    for seed, lengths in enumerate(calls):
        eng.generate(params, [[2] * n for n in lengths], sampling.SamplingParams(max_new_tokens=8, n=2, seed=9 + seed))
    assert eng.num_compilations == first
    eng.generate(params, [[1] * 30], sampling.SamplingParams(max_new_tokens=8, n=2))  # 38 tokens: 16 pages
    # prefill(16) without and with a continuing first piece, decode(16) with a snapshot of 8 pages (30 tokens)
    assert eng.num_compilations == first + 3


def test_empty_prompt_list_returns_an_empty_rollout_without_compiling(qwen3, mesh):
    eng = _engine(qwen3, mesh)
    r = eng.generate(qwen3[2], [], sampling.SamplingParams(max_new_tokens=8))
    assert r.completion_tokens.shape == (0, 8) and r.prompt_tokens.shape[0] == 0 and len(r.prompt_index) == 0
    assert eng.num_compilations == 0 and eng.pool is None


def test_bad_sizes_are_refused_before_compiling(qwen3, mesh):
    cfg, graphdef, params = qwen3
    eng = _engine(qwen3, mesh, num_pages=9)  # 8 usable pages of 4 tokens
    with pytest.raises(ValueError, match=r"prompt 1 \(30 tokens, up to 8 new, 1 samples\) needs 10 pages .* holds 8"):
        eng.generate(params, [[1, 2], [3] * 30], sampling.SamplingParams(max_new_tokens=8))
    with pytest.raises(ValueError, match="one value in"):
        eng.generate(params, [[1, 2]], sampling.SamplingParams(max_new_tokens=8), max_new_tokens=[9])
    with pytest.raises(ValueError, match="at least one token"):
        eng.generate(params, [[1, 2], []], sampling.SamplingParams(max_new_tokens=8))
    assert eng.num_compilations == 0
    with pytest.raises(ValueError, match="num_slots=0 must be >= 1"):
        engine.Engine(graphdef, cfg, mesh, num_slots=0, num_pages=9)
    with pytest.raises(ValueError, match="a pool of 1 pages"):
        engine.Engine(graphdef, cfg, mesh, num_pages=1)


def test_prefill_and_decode_compile_for_a_tpu_topology():
    """On TPU devices the engine's programs run jax's Pallas kernel (compiled here for v5e:2x2 from this CPU
    host, weights FSDP x tensor sharded, the pool's kv heads over `tensor`). Needs libtpu; skipped loudly."""
    try:
        devices = topology_devices("v5e:2x2")
    except PlanError as e:
        pytest.skip(f"LOUD SKIP: cannot compile for a TPU topology here (libtpu missing?): {e}")
    cfg = ModelConfig(
        family="qwen3",
        vocab_size=512,
        hidden_size=256,
        intermediate_size=512,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=128,
        qk_norm=True,
        tie_embeddings=True,
        param_dtype="bfloat16",
    )
    topo = sharding.make_mesh(sharding.MeshShape(1, 2, 2), devices=devices)
    graphdef, abstract, shardings = model_shardings(cfg, topo)
    params = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    eng = engine.Engine(graphdef, cfg, topo, num_slots=8, page_size=16, num_pages=64, prefill_chunk=32)
    with jax.default_device(devices[0]):
        programs = eng.compile(params, sampling.SamplingParams(max_new_tokens=64, n=2), pages_per_seq=8)
    for program in programs:
        assert "tpu_custom_call" in program.as_text()
    assert eng.num_compilations == 2 and eng.pool is None


def test_packed_prefill_equals_one_sequence_prefill_token_for_token(qwen3, mesh):
    """Prompts packed several to a prefill chunk (long ones continued across chunks, partial last pages copied
    per sample) sample exactly the tokens of one prompt per chunk, in fewer chunks."""
    _, _, params = qwen3
    prompts = [[5 + i, 6, 7 + 2 * i, 4, 8][: 1 + i % 5] + [9] * (3 * (i % 4)) for i in range(9)]  # 1 to 14 tokens
    sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=T, n=3, stop_token_ids=(3,), seed=5)
    one = _engine(qwen3, mesh, num_slots=32, num_pages=400, prefill_seqs=1)
    packed = _engine(qwen3, mesh, num_slots=32, num_pages=400, prefill_seqs=8)
    tight = _engine(qwen3, mesh, num_slots=32, num_pages=96, prefill_seqs=8)  # recomputes packed too
    a, b, c = (e.generate(params, prompts, sp) for e in (one, packed, tight))
    for other in (b, c):
        np.testing.assert_array_equal(np.asarray(a.completion_tokens), np.asarray(other.completion_tokens))
        np.testing.assert_array_equal(np.asarray(a.completion_valid), np.asarray(other.completion_valid))
        np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(other.logprobs), atol=1e-5)
    assert one.stats["preemptions"] == packed.stats["preemptions"] == 0 and tight.stats["preemptions"] > 0
    # 63 prompt tokens: 8 chunks of 8 packed; one prompt (or 8 tokens of one) per chunk otherwise: 12
    assert packed.stats["prefill_chunks"] == 8 and one.stats["prefill_chunks"] == 12, (packed.stats, one.stats)


def test_fixed_length_bursts_run_back_to_back_without_changing_a_token(qwen3, mesh, monkeypatch):
    """With no stop token no row can end early: the engine runs bursts back to back until the first row's
    budget ends and reads them once (in programs whose attention reads a snapshot of the pool); the tokens
    are those of reading every burst."""
    _, _, params = qwen3
    prompts = [[5, 6, 7, 8], [8, 9, 10], [4] * 6]
    sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=T, n=2, seed=2)
    chained = _engine(qwen3, mesh, num_slots=6)
    a = chained.generate(params, prompts, sp, max_new_tokens=[T] * 4 + [T // 2] * 2)
    # each round's 3 bursts: a program of 2 over a snapshot (of 2 pages: 6 tokens; then 4: 15), then 1
    assert sorted(key[4] for key in chained._compiled if key[0] == "decode" and key[3] > 1) == [2, 4]
    monkeypatch.setattr(engine.sched_lib.Scheduler, "steady_bursts", lambda self: 1)
    stepwise = _engine(qwen3, mesh, num_slots=6)
    b = stepwise.generate(params, prompts, sp, max_new_tokens=[T] * 4 + [T // 2] * 2)
    np.testing.assert_array_equal(np.asarray(a.completion_tokens), np.asarray(b.completion_tokens))
    np.testing.assert_array_equal(np.asarray(a.completion_valid), np.asarray(b.completion_valid))
    np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-6)
    assert b.lengths.tolist() == [T] * 4 + [T // 2] * 2
    # T = 24 in bursts of 4: 6 reads one by one; back to back, one up to the short rows' end and one after
    assert stepwise.stats["decode_rounds"] == 6 and chained.stats["decode_rounds"] == 2, (chained.stats, stepwise.stats)


def test_snapshot_programs_back_to_back_change_no_token(qwen3, mesh, monkeypatch):
    """Decode programs of 2 bursts, 3 in a row, each over a snapshot holding what the ones before it wrote
    to the pool at their end (snapshots of 2, 4 and 6 pages), sample exactly the tokens of one burst per
    program over the paged pool."""
    _, _, params = qwen3
    prompts = [[5, 6, 7, 8], [8, 9, 10], [4] * 6]  # rows that fill their slots and half their snapshots
    sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=T, n=2, seed=3)
    monkeypatch.setattr(engine.calls, "MAX_PROGRAM_STEPS", 8)
    snapshots = _engine(qwen3, mesh, num_slots=6)
    a = snapshots.generate(params, prompts, sp)
    assert sorted(key[4] for key in snapshots._compiled if key[0] == "decode") == [2, 4, 6]
    monkeypatch.setattr(engine.calls, "MAX_PROGRAM_STEPS", 4)  # one burst per program: no snapshot
    paged = _engine(qwen3, mesh, num_slots=6)
    b = paged.generate(params, prompts, sp)
    assert [key[4] for key in paged._compiled if key[0] == "decode"] == [0]
    np.testing.assert_array_equal(np.asarray(a.completion_tokens), np.asarray(b.completion_tokens))
    np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-6)
    assert a.lengths.tolist() == [T] * 6


def test_windowed_prefill_attention_changes_no_token(qwen3, mesh, monkeypatch):
    """Chunks of 16 tokens in query blocks of 4, each scoring only the keys its pieces can reach (short pieces:
    4 or 8 back), sample exactly the tokens of whole-chunk attention."""
    _, _, params = qwen3
    prompts = [[5 + i, 6, 7 + 2 * i, 4, 8][: 1 + i % 5] + [9] * (3 * (i % 4)) for i in range(9)]  # 1 to 14 tokens
    sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=8, n=2, stop_token_ids=(3,), seed=5)
    whole = _engine(qwen3, mesh, num_slots=32, num_pages=400, prefill_chunk=16)
    a = whole.generate(params, prompts, sp)
    monkeypatch.setattr(engine.paged_attention, "PREFILL_BLOCK", 4)
    windowed = _engine(qwen3, mesh, num_slots=32, num_pages=400, prefill_chunk=16)
    b = windowed.generate(params, prompts, sp)
    np.testing.assert_array_equal(np.asarray(a.completion_tokens), np.asarray(b.completion_tokens))
    np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-5)
    reaches = {key[4][1].reach for key in windowed._compiled if key[0] == "prefill"}
    assert {key[4][1].reach for key in whole._compiled if key[0] == "prefill"} == {None}
    assert reaches & {4, 8}, windowed._compiled.keys()


def test_a_round_with_little_to_prefill_runs_a_smaller_chunk(qwen3, mesh, monkeypatch):
    """A prefill round whose pieces fill less than the configured chunk runs the smallest power of two from
    calls.MIN_PREFILL_CHUNK that holds them (a freed slot's one prompt does not pay a whole chunk), sampling
    exactly the tokens of an engine whose chunk is that size; a longer prompt still gets the whole chunk."""
    _, _, params = qwen3
    monkeypatch.setattr(calls, "MIN_PREFILL_CHUNK", 16)
    assert [calls.prefill_chunk(t, 64) for t in (1, 16, 17, 33, 64)] == [16, 16, 32, 64, 64]
    assert calls.prefill_chunk(5, 8) == 8  # never more than the configured chunk
    prompts = [[5, 6, 7, 4], [8, 9, 4], [9] * 30]
    sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=6, n=2, seed=3)
    wide = _engine(qwen3, mesh, num_slots=8, num_pages=100, prefill_chunk=64)
    a = wide.generate(params, prompts[:2], sp)
    assert {key[4][0] for key in wide._compiled if key[0] == "prefill"} == {16}
    narrow = _engine(qwen3, mesh, num_slots=8, num_pages=100, prefill_chunk=16)
    b = narrow.generate(params, prompts[:2], sp)
    np.testing.assert_array_equal(np.asarray(a.completion_tokens), np.asarray(b.completion_tokens))
    np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-5)
    wide.generate(params, prompts, sp)  # 37 prompt tokens: a chunk of 64
    assert {key[4][0] for key in wide._compiled if key[0] == "prefill"} == {16, 64}


def test_snapshot_pages_cover_the_seated_rows_and_refuse_sparse_slots():
    """A snapshot covers every seated row's written positions in a quarter octave of pages (at most the table
    width); none when the seated rows fill less than half of it (a long tail's last rows beside empty slots)."""
    full = np.array([[64, 60, 64, 33]])
    assert engine.calls.snapshot_pages(full, np.ones_like(full, bool), 16, 16) == 4  # 221 of 4 x 64 positions
    tail = np.array([[64, 60, 0, 0]])
    assert engine.calls.snapshot_pages(tail, tail > 0, 16, 16) == 0  # 124 of 256: under half
    assert engine.calls.snapshot_pages(np.array([[200]]), np.array([[True]]), 16, 8) == 8
    five = np.array([[80, 70, 66, 75]])  # 5 pages hold them: 5, not the power of two 8
    assert engine.calls.snapshot_pages(five, np.ones_like(five, bool), 16, 16) == 5
    nine = np.array([[144, 140, 130, 129]])  # 9 pages: 10
    assert engine.calls.snapshot_pages(nine, np.ones_like(nine, bool), 16, 16) == 10
    assert [engine.calls.quarter_octave(n) for n in (1, 4, 7, 9, 11, 17, 33, 64, 65)] == [
        1,
        4,
        7,
        10,
        12,
        20,
        40,
        64,
        80,
    ]
