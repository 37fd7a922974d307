"""Logits parity with transformers, HF round trip, mesh invariance, and clear errors on bad files."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from rlvr_jax import sharding
from rlvr_jax.model import decoder as M
from rlvr_jax.model import hf
from tests.hf_fixtures import FAMILIES, hf_logits, ragged_batch, save_hf_model


def _ours_logits(graphdef, params, ids, mask, mesh):
    with sharding.activate(mesh):
        f = jax.jit(lambda p, t, v: M.forward(graphdef, p, t, v))
        return np.asarray(f(params, jnp.asarray(ids.numpy(), jnp.int32), jnp.asarray(mask.numpy(), bool)))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_parity_and_round_trip(family, tmp_path):
    src, out = tmp_path / "hf", tmp_path / "export"
    hf_model = save_hf_model(family, src)
    ids, mask, pos = ragged_batch(hf_model.config.vocab_size)
    want = hf_logits(hf_model, ids, mask, pos)
    mesh = sharding.make_mesh(sharding.MeshShape(2, 2, 2))
    cfg, graphdef, params = hf.load(str(src), mesh)
    assert cfg.family == family
    got = _ours_logits(graphdef, params, ids, mask, mesh)
    valid = mask.numpy().astype(bool)
    np.testing.assert_allclose(got[valid], want[valid], atol=1e-4, rtol=0)

    hf.save(params, cfg, str(out), max_shard_bytes=40_000)  # small limit: forces several shards + index
    assert (out / "model.safetensors.index.json").exists()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").float().eval()
    np.testing.assert_array_equal(hf_logits(reloaded, ids, mask, pos)[valid], want[valid])


def test_mesh_invariance_and_placement(tmp_path):
    save_hf_model("qwen3", tmp_path)
    ids, mask, _ = ragged_batch(96)
    mesh8 = sharding.make_mesh(sharding.MeshShape(2, 2, 2))
    mesh1 = sharding.make_mesh(sharding.MeshShape(1, 1, 1), devices=jax.devices()[:1])
    _, g8, p8 = hf.load(str(tmp_path), mesh8)
    _, g1, p1 = hf.load(str(tmp_path), mesh1)
    np.testing.assert_allclose(
        _ours_logits(g8, p8, ids, mask, mesh8), _ours_logits(g1, p1, ids, mask, mesh1), atol=1e-5, rtol=0
    )
    q = p8["layers"][0]["attn"]["q_proj"]["kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    assert q.addressable_shards[0].data.shape == (32, 2, 16)  # [64/fsdp2, 4 heads/tensor2, 16]
    emb = p8["embed"]["embedding"]
    assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")


def test_rules_collision_is_an_error():
    with pytest.raises(ValueError, match="both map to mesh axis 'tensor'"):
        sharding.logical_to_spec(("heads", "mlp"), (4, 4), {"data": 1, "fsdp": 1, "tensor": 2})


def test_full_size_param_counts_and_memory():
    from rlvr_jax.model.presets import PRESETS

    assert M.count_params(PRESETS["qwen3-4b"]) == 4_022_468_096
    assert M.count_params(PRESETS["qwen3-0.6b"]) == 596_049_920
    assert M.count_params(PRESETS["qwen3-8b"]) == 8_190_735_360
    assert M.count_params(PRESETS["llama-3.1-8b"]) == 8_030_261_248
    assert M.count_params(PRESETS["qwen2.5-7b"]) == 7_615_616_512
    from rlvr_jax.model.presets import memory_report

    report = memory_report(PRESETS["qwen3-4b"], {"data": 1, "fsdp": 16, "tensor": 4}, param_dtype="bfloat16")
    # 4.02e9 params in bf16 over 64 devices ~ 126 MB/device; AdamW moments in fp32 twice that x2.
    assert 120e6 < report["params_bytes_per_device"] < 135e6
    assert 480e6 < report["adam_bytes_per_device"] < 540e6


# ---- bad input --------------------------------------------------------------------------------
def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def _mesh1():
    return sharding.make_mesh(sharding.MeshShape(1, 1, 1), devices=jax.devices()[:1])


def test_wrong_architecture(tmp_path):
    save_hf_model("qwen3", tmp_path)
    _edit_config(tmp_path, architectures=["MistralForCausalLM"], model_type="mistral")
    with pytest.raises(hf.HFFormatError, match=r"config.json: unsupported architecture \['MistralForCausalLM'\]"):
        hf.load(str(tmp_path), _mesh1())


def test_unsupported_value_and_unknown_key(tmp_path):
    save_hf_model("qwen3", tmp_path)
    _edit_config(tmp_path, hidden_act="gelu")
    with pytest.raises(hf.HFFormatError, match="hidden_act='gelu'"):
        hf.load(str(tmp_path), _mesh1())
    _edit_config(tmp_path, hidden_act="silu", quantization_config={"bits": 4})
    with pytest.raises(hf.HFFormatError, match="quantization_config"):
        hf.load(str(tmp_path), _mesh1())


def test_missing_shard(tmp_path):
    save_hf_model("llama", tmp_path / "src")
    hf_cfg, graphdef, params = hf.load(str(tmp_path / "src"), _mesh1())
    hf.save(params, hf_cfg, str(tmp_path / "sharded"), max_shard_bytes=40_000)
    victim = sorted((tmp_path / "sharded").glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(hf.HFFormatError, match=f"{victim.name}: shard listed in .* is missing"):
        hf.load(str(tmp_path / "sharded"), _mesh1())


def test_wrong_shape(tmp_path):
    from safetensors.numpy import load_file, save_file

    save_hf_model("qwen3", tmp_path)
    f = tmp_path / "model.safetensors"
    tensors = load_file(f)
    tensors["model.layers.1.mlp.up_proj.weight"] = tensors["model.layers.1.mlp.up_proj.weight"][:-1]
    save_file(tensors, f, metadata={"format": "pt"})
    with pytest.raises(
        hf.HFFormatError,
        match=r"'model.layers.1.mlp.up_proj.weight' has shape \[111, 64\], "
        r"expected \[112, 64\]",
    ):
        hf.load(str(tmp_path), _mesh1())


def test_missing_tensor(tmp_path):
    from safetensors.numpy import load_file, save_file

    save_hf_model("qwen2", tmp_path)
    f = tmp_path / "model.safetensors"
    tensors = load_file(f)
    del tensors["model.layers.0.self_attn.k_proj.bias"]
    save_file(tensors, f, metadata={"format": "pt"})
    with pytest.raises(hf.HFFormatError, match="'model.layers.0.self_attn.k_proj.bias' is missing"):
        hf.load(str(tmp_path), _mesh1())


def test_truncated_file(tmp_path):
    save_hf_model("qwen3", tmp_path)
    f = tmp_path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    with pytest.raises(hf.HFFormatError, match="model.safetensors: truncated"):
        hf.load(str(tmp_path), _mesh1())
