"""rlvr-plan: every stage of the tiny config compiles for a small TPU topology from this CPU host, the
report carries the documented fields with numbers a compile produced, a stage that cannot fit is named
with its bytes, and bad input is refused before anything compiles. Needs libtpu (scripts/setup.sh puts
it in .venv/libtpu); without it these tests are skipped with a loud reason."""

import json
import os
import subprocess
import sys

import pytest

from rlvr_jax import config_args
from rlvr_jax.plan import chips, cli, planner
from rlvr_jax.plan.compile import collective_bytes
from rlvr_jax.plan.report import table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _have_libtpu() -> bool:
    chips.find_libtpu()
    try:
        import libtpu  # noqa: F401  # local: probing the optional dependency is the point
    except ImportError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _have_libtpu(),
    reason="LOUD SKIP: libtpu is not installed (pip install -e '.[plan]' or bash scripts/setup.sh), so "
    "rlvr-plan cannot compile for a TPU topology here",
)


def _tiny(**overrides):
    config = config_args.load_config_file(os.path.join(REPO, "configs", "grpo.py")).get_config("multi,tiny")
    config.sft.batch_size = 8  # whole rows per chip on a 4-chip slice
    for dotted, value in overrides.items():
        node = config
        *path, last = dotted.split(".")
        for key in path:
            node = node[key]
        node[last] = value
    return config


def test_tiny_config_plans_on_v5e_from_the_command_line(tmp_path):
    out = tmp_path / "plan.json"
    cmd = [
        sys.executable,
        "-m",
        "rlvr_jax.plan",
        "--config=configs/grpo.py:multi,tiny",
        "--topology=v5e:2x2",
        "--config.sft.batch_size=8",
        f"--json={out}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| rollout/decode (" in res.stdout and "device-hours" in res.stdout
    report = json.loads(out.read_text())
    assert report["topology"] == "v5e:2x2" and report["chips"] == 4
    assert report["hbm_bytes_per_chip"] == chips.CHIPS["v5e"].hbm_bytes
    names = [s["name"] for s in report["stages"]]
    for part in ("rollout", "logprob", "update", "sft", "merge"):
        assert any(part in n for n in names), (part, names)
    config = _tiny(**{"sft.batch_size": 8})
    rows = config.rollout.prompts_per_step * config.rollout.samples_per_prompt
    P, N = config.data.max_prompt_tokens, config.rollout.max_new_tokens
    by = {(s["name"].split(" (")[0] if s["name"].startswith("rollout") else s["name"]): s for s in report["stages"]}
    shards = 4  # v5e:2x2 with mesh fsdp=-1: each chip a batch shard with its own pool
    ro = config.rollout
    assert by["rollout/prefill"]["tokens"] == shards * ro.prefill_chunk
    slots = min(ro.num_slots, rows // shards)  # a shard decodes over the slots its 32 rows need
    assert by["rollout/decode"]["tokens"] == shards * slots * ro.decode_burst
    # a prompt is prefilled once for its samples; decode bursts cover every row's mean response
    assert by["rollout/prefill"]["runs_per_step"] == pytest.approx(
        ro.prompts_per_step * P / (shards * ro.prefill_chunk)
    )
    # rows decoding at once per shard: the fewest of its slots, its rows, and what its pool holds
    busy = min(slots, rows / shards, ro.num_pages * ro.page_size / (P + N))
    assert by["rollout/decode"]["runs_per_step"] == pytest.approx(rows * N / (shards * busy * ro.decode_burst))
    assert "rows" not in by["rollout/reshard weights for decoding"]["name"]
    assert by["update (one micro-batch)"]["tokens"] == config.grpo.micro_batch_size * (P + N)
    for s in report["stages"]:
        b = s["bytes_per_chip"]
        assert set(b) == {"params", "optimizer", "kv", "temp", "total"}
        assert s["fits"] and 0 < b["total"] < report["hbm_bytes_per_chip"], s
        assert b["total"] >= b["params"] > 0
        assert s["compile_s"] > 0
    upd = by["update (one micro-batch)"]
    params_b = upd["bytes_per_chip"]["params"]
    assert 2 * params_b <= upd["bytes_per_chip"]["optimizer"] <= 2 * params_b + 64  # AdamW: two moments + counts
    assert upd["flops_per_chip"] > 0 and upd["bytes_accessed_per_chip"] > 0 and upd["roofline_s"] > 0
    assert upd["collective_bytes_per_chip"] > 0  # fsdp-sharded weights are gathered
    kv = by["rollout/decode"]["bytes_per_chip"]["kv"]
    assert kv == ro.num_pages * ro.page_size * 2 * ro_kv_bytes_per_token(report) > 0
    # the decode layout holds the weights whole on each chip (mesh fsdp=4): the reshard gathers them
    assert by["rollout/reshard weights for decoding"]["collective_bytes_per_chip"] > 0
    assert by["rollout/decode"]["bytes_per_chip"]["params"] > 3 * upd["bytes_per_chip"]["params"]
    assert report["projected_device_hours"] > 0


def ro_kv_bytes_per_token(report) -> int:
    """Bytes of one token's keys (or values) over every layer in the tiny preset's pool (float32)."""
    from rlvr_jax.model import build  # noqa: PLC0415  # local: only these tests

    cfg = build.model_config("tiny", {}, vocab_size=256, param_dtype="float32", remat=False)
    return cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4


def test_a_stage_that_cannot_fit_is_named_with_its_bytes():
    config = _tiny(**{"rollout.num_pages": 1 << 20})  # 2^20 pages of 16 tokens: ~32 GiB per chip of 15.75
    report = planner.plan(config, "v5e:2x2", only=("rollout",))
    decode = next(s for s in report["stages"] if s["name"].startswith("rollout/decode"))
    assert not decode["fits"] and decode["bytes_per_chip"]["total"] > report["hbm_bytes_per_chip"]
    assert decode["bytes_per_chip"]["kv"] > report["hbm_bytes_per_chip"]
    b = decode["bytes_per_chip"]
    assert set(b) == {"params", "optimizer", "kv", "temp", "total"}
    assert b["total"] == b["temp"] + b["params"] + b["optimizer"] + b["kv"]
    text = table(report)
    assert "rollout/decode (" in text and "does not fit" in text and "rollout.num_pages" in text


def test_bad_input_is_refused_before_compiling(capsys):
    assert cli.main(["--config=configs/grpo.py:multi,tiny", "--topology=v9x:2x2"]) == 2
    err = capsys.readouterr().err
    assert "unknown topology 'v9x:2x2'" in err and "v5p" in err and "v5e" in err
    with pytest.raises(chips.PlanError, match="not a multiple of data\\*fsdp"):
        planner.plan(_tiny(**{"sft.batch_size": 10}), "v5e:2x2")
    with pytest.raises(chips.PlanError, match="unknown stage group"):
        planner.plan(_tiny(), "v5e:2x2", only=("rollout", "train"))


def test_collective_bytes_read_from_hlo_text():
    hlo = (
        "  %all-gather.1 = f32[4096,1024]{1,0} all-gather(%p), dimensions={0}\n"
        "  %ar = (bf16[8,128]{1,0}, f32[2]{0}) all-reduce-start(%a, %b), to_apply=%add\n"
        "  %ard = (bf16[8,128]{1,0}, f32[2]{0}) all-reduce-done(%ar)\n"
        "  %ags = (f32[256,64]{1,0}, f32[1024,64]{1,0}) all-gather-start(%q), dimensions={0}\n"
        "  %fusion = f32[4096,1024]{1,0} fusion(%all-gather.1), kind=kLoop\n"
    )
    assert collective_bytes(hlo) == 4096 * 1024 * 4 + (8 * 128 * 2 + 2 * 4) + 1024 * 64 * 4


def test_experiment_compiles_every_stage_before_running_on_a_tpu():
    """study.experiment.check_fit on TPU devices (a topology's, standing in for a real slice): a stage that
    cannot fit stops the experiment before any stage runs; check_fit=False skips the check."""
    from rlvr_jax.study import experiment  # noqa: PLC0415  # local: only this test needs the top floor

    config = config_args.load_config_file(os.path.join(REPO, "configs", "mix_vs_merge.py")).get_config("tiny")
    config.base.sft.batch_size = 8
    # a KV pool of 2^20 pages of 16 tokens per chip (~32 GiB of 15.75); the training stages stay small
    config.base.rollout.num_pages = 1 << 20
    devices = chips.topology_devices("v5e:2x2")
    with pytest.raises(experiment.ExperimentError, match=r"rollout/decode \(.*does not fit"):
        experiment.check_fit(config, devices)
    config.check_fit = False
    experiment.check_fit(config, devices)  # skipped: returns without compiling


def test_attention_on_a_tpu_mesh_is_the_splash_kernel():
    """Traced on a TPU topology's mesh, "auto" attention compiles jax's Pallas splash kernel (a TPU custom
    call, one per layer in the logprob pass), at both compute dtypes (bf16 q/k/v); "blocked" compiles none."""
    import dataclasses  # noqa: PLC0415  # local: only this test

    from rlvr_jax import sharding  # noqa: PLC0415
    from rlvr_jax.model import build  # noqa: PLC0415
    from rlvr_jax.plan.stages import model_parts  # noqa: PLC0415
    from rlvr_jax.rl import update  # noqa: PLC0415

    mesh = sharding.make_mesh(sharding.MeshShape(1, -1, 1), devices=chips.topology_devices("v5e:2x2"))
    counts = {}
    for impl, dtype in (("auto", "float32"), ("auto", "bfloat16"), ("blocked", "float32")):
        cfg = build.model_config("tiny", {}, vocab_size=256, param_dtype="float32", remat=False, compute_dtype=dtype)
        cfg = dataclasses.replace(cfg, attention_impl=impl)
        graphdef, params, _ = model_parts(cfg, mesh)
        fn = update.make_logprob_fn(graphdef, mesh, 1.0)
        with sharding.activate(mesh):
            text = fn.fn.lower(params, update.update_batch_spec(mesh, 8, 32, 96)).compile().as_text()
        counts[impl, dtype] = text.count('custom_call_target="tpu_custom_call"')
    assert counts["auto", "float32"] >= cfg.num_layers and counts["blocked", "float32"] == 0, counts
    assert counts["auto", "bfloat16"] >= cfg.num_layers, counts


def test_scanned_stages_report_the_costs_of_every_layer():
    """XLA's cost analysis counts a scanned layer once; the plan's FLOPs of a scanned update equal the
    unrolled model's (extrapolated from 1- and 2-layer compiles), while its memory comes from the scan."""
    reports = {}
    for scan in (False, True):
        config = _tiny(**{"model.scan_layers": scan})
        reports[scan] = {s["name"]: s for s in planner.plan(config, "v5e:2x2", only=("training",))["stages"]}
    for name in ("update (one micro-batch)", "logprob"):
        unrolled, scanned = reports[False][name], reports[True][name]
        assert scanned["flops_per_chip"] == pytest.approx(unrolled["flops_per_chip"], rel=0.05), name
        assert scanned["roofline_s"] == pytest.approx(unrolled["roofline_s"], rel=0.1), name


@pytest.mark.parametrize(
    "overrides,passes",
    [
        ({}, 0),  # the study: one update per rollout, no KL, no teachers
        ({"grpo.updates_per_rollout": 2}, 1),
        ({"grpo.kl_coef": 0.1}, 1),
        ({"opd.teachers": "math=a,code=b,science=c,if=d"}, 5),  # four teachers and the trainer-side student
        ({"opd.teachers": "math=a,code=b", "opd.student_logp": "sampler"}, 2),
        ({"opd.teachers": "math=a", "grpo.updates_per_rollout": 2, "grpo.kl_coef": 0.1}, 3),  # student = old pass
    ],
)
def test_the_plan_counts_every_teacher_forced_pass_a_step_runs(overrides, passes):
    from rlvr_jax.plan import stages

    assert stages.logprob_passes(_tiny(**overrides)) == passes
