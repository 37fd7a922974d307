"""Orbax checkpointer: restore into shardings, keep policy, and fallback past a damaged latest step."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax import sharding
from rlvr_jax.checkpoint import Checkpointer, abstract_with_shardings


def _tree(mesh, value):
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp", None))
    return {"w": jax.device_put(jnp.full((8, 4), value, jnp.float32), sh)}, {"w": sh}


def test_restore_falls_back_past_a_truncated_latest_step(tmp_path, caplog):
    mesh = sharding.make_mesh(sharding.MeshShape(1, -1, 1))
    ckpt = Checkpointer(str(tmp_path), save_every=1, keep=2)
    for step in range(1, 4):
        tree, shardings = _tree(mesh, float(step))
        ckpt.save(step, {"params": tree}, {"step": step})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3]
    # Damage step 3: truncate every data file of its params item.
    for root, _, files in os.walk(tmp_path / "3" / "params"):
        for f in files:
            path = os.path.join(root, f)
            with open(path, "r+b") as fh:
                fh.truncate(max(0, os.path.getsize(path) // 3))
    abstract = {"params": abstract_with_shardings(jax.eval_shape(lambda: tree), shardings)}
    with caplog.at_level(logging.WARNING):
        step, out, meta = ckpt.restore(abstract)
    ckpt.close()
    assert step == 2 and meta == {"step": 2}
    np.testing.assert_array_equal(np.asarray(out["params"]["w"]), np.full((8, 4), 2.0))
    assert out["params"]["w"].sharding == shardings["w"]
    assert any("step 3" in r.message and "unreadable" in r.message for r in caplog.records)


def test_step_zero_is_kept(tmp_path):
    ckpt = Checkpointer(str(tmp_path), save_every=1, keep=1, async_save=False)
    for step in range(4):
        ckpt.save(step, {"params": {"w": np.full((2,), step, np.float32)}}, {})
    ckpt.close()
    assert sorted(int(p) for p in os.listdir(tmp_path) if p.isdigit()) == [0, 3]
