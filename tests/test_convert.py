"""rlvr-convert: HF -> Orbax -> HF keeps every tensor; bad inputs exit 2 with a named file."""

import numpy as np
from safetensors.numpy import load_file

from rlvr_jax.model import convert
from tests.hf_fixtures import save_hf_model


def test_hf_orbax_hf_round_trip(tmp_path):
    save_hf_model("qwen2", tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer_config.json").write_text("{}")
    assert convert.main(["--from", str(tmp_path / "hf"), "--to", str(tmp_path / "orbax"), "--format", "orbax"]) == 0
    assert (tmp_path / "orbax" / "tokenizer" / "tokenizer_config.json").exists()
    assert convert.main(["--from", str(tmp_path / "orbax"), "--to", str(tmp_path / "back"), "--format", "hf"]) == 0
    a = load_file(tmp_path / "hf" / "model.safetensors")
    b = load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert (tmp_path / "back" / "tokenizer_config.json").exists()


def test_bf16_output(tmp_path):
    save_hf_model("qwen3", tmp_path / "hf")
    assert (
        convert.main(
            ["--from", str(tmp_path / "hf"), "--to", str(tmp_path / "o"), "--format", "hf", "--dtype", "bfloat16"]
        )
        == 0
    )
    t = load_file(tmp_path / "o" / "model.safetensors")
    assert str(t["model.norm.weight"].dtype) == "bfloat16"


def test_missing_source_is_a_clear_error(tmp_path, capsys):
    assert convert.main(["--from", str(tmp_path / "nope"), "--to", str(tmp_path / "o"), "--format", "hf"]) == 2
    assert "nope: no such checkpoint directory" in capsys.readouterr().err
