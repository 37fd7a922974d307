"""Paged attention: the XLA implementation equals jax's reference on random mixed prefill + decode batches,
on the arguments the engine itself passes in a rollout (which also pass jax's checks of the kernel's inputs)
and dense causal attention over scattered pages; the TPU kernel path compiles for a small TPU topology from
this CPU host (needs libtpu; skipped loudly without it)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas.ops.tpu import ragged_paged_attention as tpu_rpa

from rlvr_jax import sharding
from rlvr_jax.model import attention
from rlvr_jax.plan.chips import PlanError, topology_devices
from rlvr_jax.rollout import paged_attention

H, K, D, PAGE = 4, 2, 16, 4  # query heads, kv heads, head dim, page size


def _batch(rng, q_lens, kv_lens, *, pages_per_seq=6, num_pages=64, pad_seqs=2, pad_tokens=3):
    """Random queries and a pool whose pages are handed to sequences in shuffled order."""
    n = len(q_lens)
    B = n + pad_seqs
    T = sum(q_lens) + pad_tokens
    q = rng.standard_normal((T, H, D)).astype(np.float32)
    kv = rng.standard_normal((num_pages, PAGE, 2 * K, D)).astype(np.float32)
    pages = rng.permutation(num_pages)[: B * pages_per_seq].reshape(B, pages_per_seq).astype(np.int32)
    kv_lens_B = np.zeros(B, np.int32)
    kv_lens_B[:n] = kv_lens
    cu = np.zeros(B + 1, np.int32)
    cu[1 : n + 1] = np.cumsum(q_lens)
    cu[n + 1 :] = cu[n]
    return q, kv, kv_lens_B, pages, cu, np.array([n], np.int32)


def test_xla_equals_jax_reference_on_mixed_prefill_and_decode():
    rng = np.random.default_rng(0)
    # decode rows (1 query), prefill chunks that start a sequence or continue one, lengths across page edges
    q_lens = [1, 5, 1, 8, 3, 1, 1]
    kv_lens = [9, 5, 24, 8, 11, 1, 17]
    args = _batch(rng, q_lens, kv_lens)
    scale = 1 / math.sqrt(D)
    n_tok = sum(q_lens)
    want = tpu_rpa.ref_ragged_paged_attention(*map(jnp.asarray, args), sm_scale=scale)
    got = jax.jit(lambda *a: paged_attention.ragged_paged_attention(*a, sm_scale=scale, impl="xla"))(*args)
    np.testing.assert_allclose(np.asarray(got)[:n_tok], np.asarray(want), atol=2e-6)
    assert not np.asarray(got)[n_tok:].any(), "tokens past the last sequence come back as zeros"
    # a tight per-sequence bound gives the same numbers
    tight = paged_attention.ragged_paged_attention(*args, sm_scale=scale, impl="xla", max_q_len=max(q_lens))
    np.testing.assert_allclose(np.asarray(tight), np.asarray(got), atol=1e-6)


@pytest.mark.parametrize("first_start", [0, 7])
def test_packed_prefill_chunk_equals_reference(first_start):
    """A packed prefill chunk (the first piece maybe continuing its sequence, every other starting at 0):
    the block-diagonal XLA path equals jax's reference; tokens past the pieces come back zero."""
    rng = np.random.default_rng(4)
    q_lens = [5, 3, 1, 6]
    kv_lens = [first_start + 5, 3, 1, 6]
    args = _batch(rng, q_lens, kv_lens, pad_seqs=2, pad_tokens=4)
    want = tpu_rpa.ref_ragged_paged_attention(*map(jnp.asarray, args), sm_scale=0.3)
    packed = lambda *a: paged_attention.ragged_paged_attention(*a, sm_scale=0.3, impl="xla", packed=True)
    got = np.asarray(jax.jit(packed)(*args))
    np.testing.assert_allclose(got[: sum(q_lens)], np.asarray(want), atol=2e-6)
    assert not got[sum(q_lens) :].any()
    # a past_queries bound on a chunk that is not cut into blocks (19 tokens) keeps the one block's past
    bounded = paged_attention.PackedChunk(None, past=first_start > 0, past_queries=8)
    got = np.asarray(paged_attention.ragged_paged_attention(*args, sm_scale=0.3, impl="xla", packed=bounded))
    np.testing.assert_allclose(got[: sum(q_lens)], np.asarray(want), atol=2e-6)


@pytest.mark.parametrize("first_start", [0, 7])
def test_packed_prefill_in_query_blocks_equals_reference(monkeypatch, first_start):
    """Query blocks of 4, each scoring the keys from `reach` before it (pieces of up to 5 tokens: a reach of
    4 is the least that covers them, `packed_chunk` rounds 8 to 8), equal jax's reference; a reach too short
    for the pieces does not (the window is real)."""
    monkeypatch.setattr(paged_attention, "PREFILL_BLOCK", 4)
    rng = np.random.default_rng(5)
    q_lens = [5, 3, 1, 5, 2]
    kv_lens = [first_start + 5, 3, 1, 5, 2]
    args = _batch(rng, q_lens, kv_lens, pad_seqs=2, pad_tokens=8)  # 24 tokens: 6 blocks
    want = np.asarray(tpu_rpa.ref_ragged_paged_attention(*map(jnp.asarray, args), sm_scale=0.3))
    attend = lambda layout: np.asarray(
        jax.jit(lambda *a: paged_attention.ragged_paged_attention(*a, sm_scale=0.3, impl="xla", packed=layout))(*args)
    )
    chosen = paged_attention.packed_chunk(max(q_lens), first_start > 0, 24)
    assert chosen == paged_attention.PackedChunk(reach=4, past=first_start > 0)
    for reach in (4, 8):
        got = attend(paged_attention.PackedChunk(reach, past=first_start > 0))
        np.testing.assert_allclose(got[: sum(q_lens)], want, atol=2e-6)
        assert not got[sum(q_lens) :].any()
    short = attend(paged_attention.PackedChunk(0, past=first_start > 0))  # a block sees only itself
    assert np.abs(short[: sum(q_lens)] - want).max() > 1e-3
    if not first_start:
        return
    # only the blocks that hold the continued first piece (5 tokens: 2 blocks, 8 queries) score its past,
    # with the reach bucketed or spanning the chunk; a bound that leaves out its fifth token does not equal
    assert paged_attention.packed_chunk(max(q_lens), True, 24, q_lens[0]) == paged_attention.PackedChunk(4, True, 8)
    for reach in (4, None):
        got = attend(paged_attention.PackedChunk(reach, past=True, past_queries=8))
        np.testing.assert_allclose(got[: sum(q_lens)], want, atol=2e-6)
        assert not got[sum(q_lens) :].any()
    cut = attend(paged_attention.PackedChunk(4, past=True, past_queries=4))
    assert np.abs(cut[4] - want[4]).max() > 1e-3 and np.allclose(cut[:4], want[:4], atol=2e-6)


def test_packed_chunk_rounds_the_reach_to_powers_of_two_blocks():
    b = paged_attention.PREFILL_BLOCK
    pick = lambda longest, chunk=8 * b: paged_attention.packed_chunk(longest, False, chunk).reach
    assert [pick(n) for n in (1, 2, b, b + 1, b + 2, 2 * b + 1, 3 * b + 1, 4 * b + 1)] == [
        0,
        b,
        b,
        b,
        2 * b,
        2 * b,
        4 * b,
        4 * b,
    ]
    assert pick(5 * b) is None  # 8 blocks back: the whole chunk
    assert pick(b, chunk=2 * b) is None and pick(b, chunk=3 * b) == b
    assert paged_attention.packed_chunk(b, True, 3 * b) == paged_attention.PackedChunk(b, True)
    past = lambda piece: paged_attention.packed_chunk(8 * b, True, 8 * b, piece).past_queries
    assert [past(n) for n in (1, b, b + 1, 3 * b, 5 * b)] == [b, b, 2 * b, 4 * b, None]  # 8 blocks: the chunk


@pytest.mark.parametrize("pad_seqs,pad_tokens", [(0, 0), (2, 3)])
def test_decode_batch_with_bound_one_equals_reference(pad_seqs, pad_tokens):
    """max_q_len=1 takes the decode path (a running softmax over the pages in use); padding sequences and
    tokens come back zero."""
    rng = np.random.default_rng(1)
    kv_lens = [3, 24, 13, 1, 20]
    args = _batch(rng, [1] * 5, kv_lens, pad_seqs=pad_seqs, pad_tokens=pad_tokens)
    want = tpu_rpa.ref_ragged_paged_attention(*map(jnp.asarray, args), sm_scale=0.3)
    got = paged_attention.ragged_paged_attention(*args, sm_scale=0.3, impl="xla", max_q_len=1)
    np.testing.assert_allclose(np.asarray(got)[:5], np.asarray(want)[:5], atol=2e-6)
    assert not np.asarray(got)[5:].any()


@pytest.mark.parametrize("keys_per_round", [PAGE, 3 * PAGE])
def test_decode_in_rounds_of_few_pages_equals_reference(monkeypatch, keys_per_round):
    """Rounds of 1 or 3 pages: a sequence's pages split across rounds (and rounds across sequences) still
    fold into the same softmax; a long sequence beside short ones and a full block table included."""
    monkeypatch.setattr(paged_attention, "KEYS_PER_ROUND", keys_per_round)
    rng = np.random.default_rng(3)
    kv_lens = [24, 1, 2, 5, 23, 4]  # 6 pages x 4 = 24 positions: the first row fills its table
    args = _batch(rng, [1] * 6, kv_lens, pad_seqs=1, pad_tokens=2)
    want = tpu_rpa.ref_ragged_paged_attention(*map(jnp.asarray, args), sm_scale=0.3)
    got = jax.jit(lambda *a: paged_attention.ragged_paged_attention(*a, sm_scale=0.3, impl="xla", max_q_len=1))(*args)
    np.testing.assert_allclose(np.asarray(got)[:6], np.asarray(want)[:6], atol=2e-6)
    assert not np.asarray(got)[6:].any()


def test_decode_reads_only_the_pages_in_use():
    """A decode step reads each sequence's own pages, not the block table's width: NaN in every table page
    past a sequence's length (what a long sequence beside it made the earlier page-by-page loop read) leaves
    the outputs equal to the reference on a clean pool."""
    rng = np.random.default_rng(4)
    kv_lens = [24, 1, 6, 13]
    q, kv, lens, pages, cu, n = _batch(rng, [1] * 4, kv_lens, pad_seqs=0, pad_tokens=0)
    want = tpu_rpa.ref_ragged_paged_attention(*map(jnp.asarray, (q, kv, lens, pages, cu, n)), sm_scale=0.3)
    poisoned = kv.copy()
    for b, length in enumerate(kv_lens):
        poisoned[pages[b, -(-length // PAGE) :]] = np.nan
    got = paged_attention.ragged_paged_attention(q, poisoned, lens, pages, cu, n, sm_scale=0.3, impl="xla", max_q_len=1)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-6)


def test_prefill_in_chunks_equals_dense_causal_attention():
    """One 13-token sequence over scattered pages, its queries fed in chunks of 5, 5 and 3 (each chunk
    seeing the keys before it), equals dense causal attention over the whole sequence."""
    rng = np.random.default_rng(2)
    L = 13
    q_LxHxD = rng.standard_normal((L, H, D)).astype(np.float32)
    k_LxKxD = rng.standard_normal((L, K, D)).astype(np.float32)
    v_LxKxD = rng.standard_normal((L, K, D)).astype(np.float32)
    page_row = np.array([7, 2, 9, 0], np.int32)  # 4 pages x 4 positions hold 13 tokens
    kv = np.zeros((10, PAGE, 2 * K, D), np.float32)
    for pos in range(L):
        kv[page_row[pos // PAGE], pos % PAGE, 0::2] = k_LxKxD[pos]
        kv[page_row[pos // PAGE], pos % PAGE, 1::2] = v_LxKxD[pos]
    want = attention.dense(
        jnp.asarray(q_LxHxD.reshape(1, L, K, H // K, D)),
        jnp.asarray(k_LxKxD.transpose(1, 0, 2)[None]),
        jnp.asarray(v_LxKxD.transpose(1, 0, 2)[None]),
        jnp.ones((1, L), bool),
    )[0].reshape(L, H, D)
    got = []
    for start, end in [(0, 5), (5, 10), (10, 13)]:
        out = paged_attention.ragged_paged_attention(
            q_LxHxD[start:end],
            kv,
            np.array([end], np.int32),
            page_row[None],
            np.array([0, end - start], np.int32),
            np.array([1], np.int32),
            sm_scale=1 / math.sqrt(D),
            impl="xla",
            max_q_len=5,
        )
        got.append(np.asarray(out))
    np.testing.assert_allclose(np.concatenate(got), np.asarray(want), atol=2e-6)


def test_xla_equals_reference_on_the_engines_own_arguments(monkeypatch):
    """The arguments the engine hands paged attention in a real rollout (prefill chunks that start and continue
    prompts, decode bursts, on two batch shards): per shard, exactly what the TPU kernel would
    receive (its block table, cu_q_lens, kv_lens, interleaved pool and the block sizes the Pallas path picks)
    pass jax's own checks of the kernel's inputs, and the XLA output the engine used equals jax's reference."""
    from rlvr_jax.model import build  # noqa: PLC0415  # local: only this test builds a model
    from rlvr_jax.rollout import engine, programs, sampling  # noqa: PLC0415

    calls = []
    real = programs.sharded_ragged_paged_attention

    def spy(*args, sm_scale, max_q_len, packed=False):
        out = real(*args, sm_scale=sm_scale, max_q_len=max_q_len, packed=packed)
        record = lambda *a: calls.append((sm_scale, max_q_len, [np.asarray(x) for x in a]))
        jax.debug.callback(record, *args, out)
        return out

    monkeypatch.setattr(programs, "sharded_ragged_paged_attention", spy)
    model = dict(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=H, num_kv_heads=K, head_dim=D)
    cfg = build.model_config("tiny", dict(model, vocab_size=64), vocab_size=64, param_dtype="float32", remat=False)
    mesh = sharding.make_mesh(sharding.MeshShape(1, 2, 1), devices=jax.devices()[:2])
    graphdef, params, _ = build.init_model(cfg, mesh, seed=0)
    eng = engine.Engine(graphdef, cfg, mesh, num_slots=4, page_size=PAGE, num_pages=32, prefill_chunk=4, decode_burst=2)
    # shard 0: prefill chunks of 4, 4 and 1 tokens; shard 1: two prompts of 2 packed into one chunk
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [14, 15], [16, 17]]
    eng.generate(params, prompts, sampling.SamplingParams(temperature=1.0, max_new_tokens=3, n=2, seed=1))

    kinds = set()
    for sm_scale, max_q_len, (q, kv, lens, pages, cu, n, out) in calls:
        assert q.shape[0] == 2 and kv.shape[-2] == 2 * K  # two shards; keys and values interleaved
        for g in range(q.shape[0]):
            if n[g, 0] == 0:  # a shard with no prefill chunk this round
                continue
            args = (q[g], kv[g], lens[g], pages[g], cu[g], n[g])
            kv_blk, q_blk = paged_attention.kernel_block_sizes(q.shape[1], PAGE, pages.shape[2])
            tpu_rpa.dynamic_validate_inputs(
                *args, sm_scale=sm_scale, num_kv_pages_per_block=kv_blk, num_queries_per_block=q_blk
            )
            # one compiled program per call: the reference's Python loop reads the (concrete) integer arguments
            ref = lambda q_, kv_, a=args, s=sm_scale: tpu_rpa.ref_ragged_paged_attention(q_, kv_, *a[2:], sm_scale=s)
            want = np.asarray(jax.jit(ref)(q[g], kv[g]))
            tokens = cu[g][n[g, 0]]
            np.testing.assert_allclose(out[g][:tokens], want, atol=2e-6)
            q_lens = np.diff(cu[g])[: n[g, 0]]
            kinds.add("decode" if max_q_len == 1 else "prefill")
            kinds |= {"continued chunk"} if (lens[g][: n[g, 0]] > q_lens).any() and max_q_len > 1 else set()
            kinds |= {"several pages"} if (lens[g][: n[g, 0]] > PAGE).any() else set()
            kinds |= {"packed chunk"} if n[g, 0] > 1 and max_q_len > 1 else set()
    assert kinds == {"decode", "prefill", "continued chunk", "several pages", "packed chunk"}, kinds


def test_unknown_impl_is_refused():
    args = _batch(np.random.default_rng(3), [1], [1])
    with pytest.raises(ValueError, match="paged attention impl 'cuda'"):
        paged_attention.ragged_paged_attention(*args, impl="cuda")


# ---- the TPU kernel path, compiled for a topology from this host ------------------------------------
def _topology_devices():
    try:
        return topology_devices("v5e:2x2")
    except PlanError as e:
        pytest.skip(f"LOUD SKIP: cannot compile for a TPU topology here (libtpu missing?): {e}")


def _abstract(T, H_, K_, D_, A, page, B, J, dtype=jnp.bfloat16):
    return (
        jax.ShapeDtypeStruct((T, H_, D_), dtype),
        jax.ShapeDtypeStruct((A, page, 2 * K_, D_), dtype),
        jax.ShapeDtypeStruct((B,), jnp.int32),
        jax.ShapeDtypeStruct((B, J), jnp.int32),
        jax.ShapeDtypeStruct((B + 1,), jnp.int32),
        jax.ShapeDtypeStruct((1,), jnp.int32),
    )


def test_tpu_kernel_path_compiles_for_a_topology():
    """'auto' picks the Pallas kernel when the traced code targets TPU devices: alone on one chip (under
    jax.default_device), and under shard_map with heads over `tensor` on an active 2x2 mesh."""
    devices = _topology_devices()
    args = _abstract(T=48, H_=8, K_=4, D_=128, A=64, page=16, B=8, J=8)

    def fn(*a):  # a fresh function per compile: jax caches traces by function, blind to the active mesh
        return paged_attention.ragged_paged_attention(*a, sm_scale=0.1)

    one = jax.sharding.Mesh(np.asarray(devices[:1]), ("x",))
    with jax.default_device(devices[0]):
        assert paged_attention.platform() == "tpu"
        rep = jax.sharding.NamedSharding(one, jax.sharding.PartitionSpec())
        compiled = jax.jit(fn, in_shardings=(rep,) * 6).lower(*args).compile()
    assert "tpu_custom_call" in compiled.as_text()

    mesh = sharding.make_mesh(sharding.MeshShape(1, 2, 2), devices=devices)
    with jax.default_device(devices[0]), sharding.activate(mesh):
        rep = sharding.replicated(mesh)
        compiled = jax.jit(lambda *a: fn(*a), in_shardings=(rep,) * 6).lower(*args).compile()
    text = compiled.as_text()
    assert "tpu_custom_call" in text
    # each device holds its half of the heads: the kernel's output is [48, 4, 128] per device
    assert "bf16[48,4,128]" in text
