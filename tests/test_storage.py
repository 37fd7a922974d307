"""storage: the same calls on a local directory and on a local Cloud Storage emulator (gs://); rlvr-convert
round-trips a model through gs://. (rlvr-train and rlvr-experiment with a gs:// workdir, resumed after a
dead worker and a preemption: tests/test_pod_rehearsal.py.)"""

import os
import uuid

import numpy as np
import pytest
from safetensors.numpy import load_file

from rlvr_jax import storage
from rlvr_jax.model import convert
from tests.hf_fixtures import save_hf_model


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    return f"{request.getfixturevalue('gcs')}/{uuid.uuid4().hex[:8]}"


def test_files_round_trip(root):
    storage.makedirs(root)
    storage.write_json(storage.join(root, "a", "x.json"), {"k": [1, 2]})
    assert storage.read_json(storage.join(root, "a", "x.json")) == {"k": [1, 2]}
    storage.append_text(storage.join(root, "log.jsonl"), "one\n")
    storage.append_text(storage.join(root, "log.jsonl"), "two\n")
    assert storage.read_text(storage.join(root, "log.jsonl")) == "one\ntwo\n"
    assert storage.isdir(storage.join(root, "a")) and storage.isfile(storage.join(root, "a", "x.json"))
    assert not storage.exists(storage.join(root, "missing"))
    assert storage.listdir(root) == ["a", "log.jsonl"]
    storage.copy_tree(storage.join(root, "a"), storage.join(root, "b"))
    assert storage.read_json(storage.join(root, "b", "x.json")) == {"k": [1, 2]}
    storage.rmtree(storage.join(root, "b"))
    assert not storage.exists(storage.join(root, "b"))


def test_local_copy_and_staged_dir(root, tmp_path, monkeypatch):
    monkeypatch.setenv("RLVR_CACHE", str(tmp_path / "cache"))
    with storage.staged_dir(storage.join(root, "model")) as local:
        with open(os.path.join(local, "w.bin"), "wb") as f:
            f.write(b"\x00\x01")
        os.makedirs(os.path.join(local, "sub"))
        with open(os.path.join(local, "sub", "t.txt"), "w") as f:
            f.write("t")
    assert storage.read_bytes(storage.join(root, "model", "w.bin")) == b"\x00\x01"
    copy = storage.local_copy(storage.join(root, "model"))
    assert os.path.isfile(os.path.join(copy, "sub", "t.txt"))
    assert storage.local_copy(storage.join(root, "model")) == copy  # cached
    assert storage.is_remote(root) == (copy != storage.join(root, "model"))


def test_remote_append_by_open_is_refused(gcs):
    with pytest.raises(ValueError, match="append_text"):
        storage.open(f"{gcs}/x.txt", "a")


def test_convert_round_trips_through_gs(gcs, tmp_path):
    save_hf_model("qwen3", tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer_config.json").write_text("{}")
    base = f"{gcs}/convert-{uuid.uuid4().hex[:8]}"
    storage.copy_tree(str(tmp_path / "hf"), f"{base}/hf")
    assert convert.main(["--from", f"{base}/hf", "--to", f"{base}/orbax", "--format", "orbax"]) == 0
    assert storage.isfile(f"{base}/orbax/tokenizer/tokenizer_config.json")
    assert convert.main(["--from", f"{base}/orbax", "--to", f"{base}/back", "--format", "hf"]) == 0
    storage.copy_tree(f"{base}/back", str(tmp_path / "back"))
    a, b = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_local_copy_by_two_processes_at_once_ends_whole(gcs, tmp_path, monkeypatch):
    """Processes of one host that ask for the same remote directory at once both get one whole copy."""
    import concurrent.futures

    monkeypatch.setenv("RLVR_CACHE", str(tmp_path / "cache"))
    base = f"{gcs}/race-{uuid.uuid4().hex[:8]}"
    for i in range(20):
        storage.write_text(f"{base}/model/f{i}.txt", str(i))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        copies = list(pool.map(lambda _: storage.local_copy(f"{base}/model"), range(4)))
    assert len(set(copies)) == 1
    assert sorted(os.listdir(copies[0])) == sorted(f"f{i}.txt" for i in range(20))
    assert [d for d in os.listdir(tmp_path / "cache" / "remote") if d.startswith("download-")] == []
