"""Stages in lanes (rlvr_jax/study/lanes.py): stages whose deps have finished run at once, each in a child
process pinned to its share of the cores; a stage that starts alone gets every core; a resumable stage left
alone on part of them is stopped and resumed on all of them; finished stages are skipped and those whose deps
ran again are redone, as in the in-process runner; a splittable stage runs in parts side by side, then
whole; the report's elapsed time counts overlapping stages once; a failing stage stops the others and names
itself. The
children here are small Python programs whose stages tick a counter; the last test runs a real stage of
the study in its own process (stage_process.py), stops it with SIGTERM and resumes it."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

from rlvr_jax import storage
from rlvr_jax.study import lanes, report, runner, stage_process, stages
from tests.test_experiment import short_config

CORES = sorted(os.sched_getaffinity(0))
pytestmark = pytest.mark.skipif(len(CORES) < 2, reason="lanes need two cores")

# A child: pins itself, then runs one stage whose body ticks (0.1 s each) up to its spec's count, keeping
# the count in its directory (its saved progress), or fails. Outputs: its cores and start/end times.
CHILD = r"""
import json, os, sys, time, signal
cores, specs_path, workdir, name = sys.argv[1:]
os.sched_setaffinity(0, [int(c) for c in cores.split(",")])
signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))  # stage_process.INTERRUPTED_EXIT
from rlvr_jax.study import runner
spec = json.load(open(specs_path))[name]
scratch = os.path.join(os.path.dirname(specs_path), "scratch", name)  # local, whatever the workdir
os.makedirs(scratch, exist_ok=True)
def body(d):
    t0 = time.time()
    if spec.get("fail"):
        raise RuntimeError("boom in " + name)
    if spec.get("pieces"):  # a split stage: its share of the pieces not done yet, each kept as it goes
        i, n = runner.stage_part()
        for k in range(spec["pieces"])[i::n]:
            path = os.path.join(scratch, f"piece{k}")
            if not os.path.exists(path):
                time.sleep(0.2)
                open(path, "w").write(str(len(os.sched_getaffinity(0))))
        return {"pieces": sorted(f for f in os.listdir(scratch) if f.startswith("piece"))}
    path = os.path.join(scratch, "ticks")
    done = int(open(path).read()) if os.path.exists(path) else 0
    for i in range(done, spec["ticks"]):
        time.sleep(0.1)
        open(path, "w").write(str(i + 1))
    return {"cores": sorted(os.sched_getaffinity(0)), "t0": t0, "t1": time.time()}
stage = runner.Stage(name, name, body, resumable=spec.get("resumable", False))
if os.environ.get(runner.PART_ENV):
    runner.run_part(stage, os.path.join(workdir, name))
else:
    runner.run_stage(stage, os.path.join(workdir, name))
"""


def fake_stages(tmp_path, specs: dict, wd: str = ""):
    """Stages of these specs (ticks, deps, resumable, fail) and a spawn running them as CHILD processes, in
    `wd` (default: a local directory)."""
    path = tmp_path / "specs.json"
    path.write_text(json.dumps(specs))
    wd = wd or str(tmp_path / "wd")
    storage.makedirs(wd)

    def spawn(name, cores, log, part=""):
        env = {k: v for k, v in os.environ.items() if k != runner.PART_ENV} | ({runner.PART_ENV: part} if part else {})
        with open(log, "ab") as out:
            args = [sys.executable, "-c", CHILD, ",".join(map(str, cores)), str(path), wd, name]
            return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)

    stages = [
        runner.Stage(
            n,
            f"stage {n}",
            None,
            resumable=s.get("resumable", bool(s.get("pieces"))),
            deps=tuple(s.get("deps", ())),
            splits=bool(s.get("pieces")),
        )
        for n, s in specs.items()
    ]
    return stages, wd, spawn


def outputs(wd, name):
    return json.load(open(os.path.join(wd, name, "DONE.json")))


def test_ready_stages_run_side_by_side_on_their_cores_and_deps_wait(tmp_path, capsys):
    specs = {"a": {"ticks": 10}, "b": {"ticks": 10}, "c": {"ticks": 1, "deps": ["a", "b"]}}
    stages, wd, spawn = fake_stages(tmp_path, specs)
    lanes.run_in_lanes(stages, wd, lanes=2, spawn=spawn, poll_s=0.05)
    a, b, c = (outputs(wd, n)["outputs"] for n in "abc")
    assert len(a["cores"]) == len(b["cores"]) == len(CORES) // 2 and not set(a["cores"]) & set(b["cores"])
    err = capsys.readouterr().err
    assert err.index("b: runs on core") < err.index(": finished in")  # both started before either ended
    assert c["t0"] >= max(a["t1"], b["t1"]) and c["cores"] == CORES  # after its deps, alone: every core
    assert outputs(wd, "a")["attempts"][0]["cpu_cores"] == len(CORES) // 2
    assert os.path.getsize(os.path.join(wd, "a", "log.txt")) >= 0

    # A rerun skips them all; one redone stage redoes the stage that reads it, and only that one.
    lanes.run_in_lanes(stages, wd, lanes=2, spawn=spawn, poll_s=0.05)
    assert len(re.findall("done before, skipped", capsys.readouterr().err)) == 3
    os.remove(os.path.join(wd, "a", "DONE.json"))
    lanes.run_in_lanes(stages, wd, lanes=2, spawn=spawn, poll_s=0.05)
    err = capsys.readouterr().err
    assert re.findall(r"\] (\w): done before, skipped", err) == ["b"]
    assert "(redone: a ran again)" in err and outputs(wd, "c")["outputs"]["t0"] > c["t1"]


def test_a_resumable_stage_left_alone_resumes_on_every_core(tmp_path, capsys):
    # short's body outlasts a child's start-up: long is in its body when it is stopped
    specs = {"long": {"ticks": 60, "resumable": True}, "short": {"ticks": 15}}
    stages, wd, spawn = fake_stages(tmp_path, specs)
    lanes.run_in_lanes(stages, wd, lanes=2, spawn=spawn, poll_s=0.05)
    done = outputs(wd, "long")
    assert [a["cpu_cores"] for a in done["attempts"]] == [len(CORES) // 2, len(CORES)]
    assert done["outputs"]["cores"] == CORES
    assert open(os.path.join(tmp_path, "scratch", "long", "ticks")).read() == "60"  # no tick lost or repeated
    assert done["wall_s"] == pytest.approx(sum(a["wall_s"] for a in done["attempts"]))
    err = capsys.readouterr().err
    assert "long: alone on core" in err and "long: resumes on cores" in err


def test_a_split_stage_runs_its_parts_side_by_side_then_finishes_whole(tmp_path, capsys):
    specs = {"train": {"ticks": 2}, "eval": {"pieces": 6, "deps": ["train"]}}
    stages, wd, spawn = fake_stages(tmp_path, specs)
    lanes.run_in_lanes(stages, wd, lanes=2, spawn=spawn, poll_s=0.05)
    done = outputs(wd, "eval")
    assert done["outputs"]["pieces"] == [f"piece{k}" for k in range(6)]
    # two parts on a core each (every piece done by one of them, once), then the whole stage on every core
    assert [a["cpu_cores"] for a in done["attempts"]] == [1, 1, len(CORES)]
    assert {open(os.path.join(tmp_path, "scratch", "eval", f"piece{k}")).read() for k in range(6)} == {"1"}
    assert done["attempts"][2]["started_at"] >= max(a["ended_at"] for a in done["attempts"][:2])
    err = capsys.readouterr().err
    assert err.index("eval (part 2 of 2): runs on core") < err.index(": done in")  # side by side
    assert os.path.exists(os.path.join(wd, "eval", "log_part2of2.txt"))


def test_a_remote_workdir_keeps_each_childs_log_in_its_stage(tmp_path, gcs):
    specs = {"rl_x": {"ticks": 1}, "ev_y": {"pieces": 2, "deps": ["rl_x"]}}
    wd = f"{gcs}/lanes-{uuid.uuid4().hex[:8]}"
    stages, wd, spawn = fake_stages(tmp_path, specs, wd)
    lanes.run_in_lanes(stages, wd, lanes=2, spawn=spawn, poll_s=0.05)
    assert runner.stage_done(wd, "rl_x") and runner.stage_done(wd, "ev_y")
    for log in ("rl_x/log.txt", "ev_y/log_part1of2.txt", "ev_y/log_part2of2.txt", "ev_y/log.txt"):
        assert storage.exists(storage.join(wd, log)), log


def test_the_elapsed_time_counts_overlapping_stages_once():
    stages = {"a": {"spans": [[0.0, 10.0]]}, "b": {"spans": [[5.0, 20.0]]}, "c": {"spans": [[30.0, 31.0]]}}
    assert report.elapsed_s(stages) == pytest.approx(21.0)
    assert report.elapsed_s({"a": {"spans": [[0.0, 4.0]]}, "b": {"spans": [[1.0, 2.0]]}}) == pytest.approx(4.0)
    # a stage resumed a day later: the day between its attempts is not elapsed time of the study
    assert report.elapsed_s({"a": {"spans": [[0.0, 5.0], [86400.0, 86403.0]]}}) == pytest.approx(8.0)


def test_a_failing_stage_stops_the_others_and_names_itself(tmp_path):
    specs = {"slow": {"ticks": 100}, "bad": {"fail": True}}
    stages, wd, spawn = fake_stages(tmp_path, specs)
    with pytest.raises(lanes.LaneError, match=r"(?s)stage bad failed \(exit status 1\).*boom in bad"):
        lanes.run_in_lanes(stages, wd, lanes=2, spawn=spawn, poll_s=0.05)
    assert not os.path.exists(os.path.join(wd, "slow", "DONE.json"))
    assert int(open(os.path.join(tmp_path, "scratch", "slow", "ticks")).read()) < 100  # stopped, not waited for


def test_stages_that_can_never_start_are_an_error(tmp_path):
    stages, wd, spawn = fake_stages(tmp_path, {"a": {"ticks": 1, "deps": ["b"]}, "b": {"ticks": 1, "deps": ["a"]}})
    with pytest.raises(lanes.LaneError, match="no stage can start: a, b"):
        lanes.run_in_lanes(stages, wd, lanes=2, spawn=spawn, poll_s=0.05)


@pytest.mark.slow
def test_a_study_stage_runs_in_its_own_process_and_resumes_after_sigterm(tmp_path):
    """stage_process.py with the real study: the SFT anchor on one core, then a GRPO expert stopped by SIGTERM
    (exit INTERRUPTED_EXIT, not marked done, its step saved) that a second process finishes."""
    config, wd = short_config(), str(tmp_path / "wd")
    config.single_steps = 20  # SIGTERM lands well before the last step
    config.base.train.checkpoint_every = 1
    plan = {st.name: st for st in stages.plan(config, wd)}
    with stage_process.stage_processes(config, wd) as spawn:

        def start(name, cores):
            d = runner.prepare_stage_dir(wd, plan[name], [], name)
            return spawn(name, cores, os.path.join(d, "log.txt"))

        assert start("sft", CORES[:1]).wait() == 0
        sft = outputs(wd, "sft")
        assert sft["outputs"]["anchor"] and [a["cpu_cores"] for a in sft["attempts"]] == [1]

        child = start("rl_math", CORES[:1])
        metrics = os.path.join(wd, "rl_math", "metrics_train.jsonl")
        while child.poll() is None and not (os.path.exists(metrics) and open(metrics).read().count("\n") >= 1):
            time.sleep(0.2)
        child.send_signal(signal.SIGTERM)
        assert child.wait() == stage_process.INTERRUPTED_EXIT, open(os.path.join(wd, "rl_math", "log.txt")).read()[
            -3000:
        ]
        assert not os.path.exists(os.path.join(wd, "rl_math", "DONE.json"))
        saved = [int(s) for s in os.listdir(os.path.join(wd, "rl_math", "checkpoints")) if s.isdigit()]
        assert saved and max(saved) < 20

        assert spawn("rl_math", CORES, os.path.join(wd, "rl_math", "log.txt")).wait() == 0
        done = outputs(wd, "rl_math")
        assert done["outputs"]["last_step"] == 20 and len(done["attempts"]) == 2
        assert "resumed from step" in open(os.path.join(wd, "rl_math", "log.txt")).read()
