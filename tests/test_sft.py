"""SFT packing: every example lands once, with its own positions and loss mask, and a packed row
gives each example exactly the logits it gets alone."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs import grpo as grpo_configs
from rlvr_jax.data import loading
from rlvr_jax.data.prompts import sft_example
from rlvr_jax.model import build
from rlvr_jax.model import decoder as M
from rlvr_jax.rl.sft import pack_examples


def test_pack_examples_places_every_example_once():
    c = grpo_configs.get_config("multi,tiny")
    tok = build.load_tokenizer("builtin", "")
    records = loading.load_records("builtin-sft", "train", ("math", "code", "science", "if"), 0)[:300]
    pc = loading.prompt_config(c.data)
    packed = pack_examples(records, tok, pc, 128, seed=3)
    seen = []
    for j in range(len(packed["tokens"])):
        segs = packed["segments"][j]
        n = int((segs > 0).sum())
        assert (segs[:n] > 0).all() and np.all(np.diff(segs[:n]) >= 0)  # examples first, padding after
        for k in range(1, segs.max() + 1):
            at = segs == k
            ids = packed["tokens"][j, at].tolist()
            np.testing.assert_array_equal(packed["positions"][j, at], np.arange(len(ids)))
            seen.append((tuple(ids), tuple(packed["loss_mask"][j, at].astype(int))))
    want = []
    for r in records:
        prompt, target = sft_example(r, tok, pc)
        if len(prompt) + len(target) <= 128:
            want.append((tuple(prompt + target), tuple([0] * len(prompt) + [1] * len(target))))
    assert sorted(seen) == sorted(want)
    assert len(packed["tokens"]) < 0.75 * len(want)  # short examples share rows


def test_packed_row_gives_each_example_its_own_logits():
    cfg = M.ModelConfig(
        family="qwen3",
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        qk_norm=True,
        tie_embeddings=True,
    )
    graphdef, params = nnx.split(M.Decoder(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    a, b = rng.integers(1, 64, 7), rng.integers(1, 64, 5)
    tokens = np.zeros((1, 16), np.int32)
    tokens[0, :7], tokens[0, 7:12] = a, b
    segments = np.zeros((1, 16), np.int32)
    segments[0, :7], segments[0, 7:12] = 1, 2
    positions = np.zeros((1, 16), np.int32)
    positions[0, :7], positions[0, 7:12] = np.arange(7), np.arange(5)
    model = nnx.merge(graphdef, params)
    packed, _ = model(
        jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments > 0), segments_BxT=jnp.asarray(segments)
    )
    for ids, span in ((a, slice(0, 7)), (b, slice(7, 12))):
        alone = M.forward(graphdef, params, jnp.asarray(ids[None]), jnp.ones((1, len(ids)), bool))
        np.testing.assert_allclose(packed[0, span], alone[0], atol=1e-5)
