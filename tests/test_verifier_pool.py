"""VerifierPool: order, parity with in-process scoring, async futures, deadlines, crash recovery,
counters, clean shutdown, IF routing."""

import importlib.util
import os
import pathlib
import signal
import time

import psutil
import pytest

from rlvr_jax.verifiers import Score, VerifierConfig, score
from rlvr_jax.verifiers.base import verifier_config
from rlvr_jax.verifiers.pool import VerifierPool, pool_from_config

SLOW = r"\boxed{10^{10^{10^{10}}}}"  # hangs inside C big-int code: only a kill stops it
CFG = VerifierConfig(math_timeout_s=60)


def _math(gold):
    return {"domain": "math", "ground_truth": {"answers": [gold]}}


def _sci(gold):
    return {"domain": "science", "ground_truth": {"answer": gold, "choices": list("ABCD")}}


def _mixed(n):
    recs, resps = [], []
    for i in range(n):
        if i % 2:
            recs.append(_math(str(i)))
            resps.append(rf"\boxed{{{i if i % 3 else i + 1}}}")
        else:
            recs.append(_sci("ABCD"[i % 4]))
            resps.append(f"Answer: {'ABCD'[(i // 2) % 4]}")
    return recs, resps


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(2, deadline_s=2.0, config=CFG) as p:
        yield p


def test_order_and_parity_with_in_process(pool):
    recs, resps = _mixed(40)
    got = pool.submit(recs, resps).result(timeout=60)
    want = [score(r, x, config=CFG) for r, x in zip(recs, resps)]
    assert [(s.reward, s.reason) for s in got] == [(s.reward, s.reason) for s in want]
    assert 0 < sum(s.reward for s in got) < len(got)


def test_submit_is_async_and_batches_are_independent(pool):
    slow = pool.submit([_math("1")], [SLOW])
    assert not slow.done()  # returned before scoring
    quick = pool.submit([_math("3")], [r"\boxed{3}"])
    assert quick.result(timeout=10)[0].reward == 1.0  # served by the other worker meanwhile
    assert slow.result(timeout=20)[0].reason == "timeout"


def test_timeout_hits_only_the_stuck_sample(pool):
    pool.counters(reset=True)
    recs, resps = _mixed(10)
    recs.insert(3, _math("1"))
    resps.insert(3, SLOW)
    t0 = time.monotonic()
    got = pool.submit(recs, resps).result(timeout=60)
    assert time.monotonic() - t0 < 15
    assert got[3] == Score(0.0, "timeout", got[3].details) and "2.0 s" in got[3].details["error"]
    rest = [s for i, s in enumerate(got) if i != 3]
    want = [score(r, x, config=CFG) for i, (r, x) in enumerate(zip(recs, resps)) if i != 3]
    assert [s.reward for s in rest] == [s.reward for s in want]
    c = pool.counters()
    assert c["verifier/math/timeouts"] == 1 and c["verifier/math/restarts"] == 1
    assert c["verifier/timeouts"] == 1 and c["verifier/errors"] == 0
    assert c["verifier/scored"] == 11 and c["verifier/math/latency_max_s"] >= 2.0
    assert c["verifier/science/latency_mean_s"] < 1.0
    assert pool.counters(reset=True)["verifier/scored"] == 11 and pool.counters()["verifier/scored"] == 0


def test_killed_worker_is_replaced():
    # Its own pool with a long deadline: the kill must land while the slow item is in flight, and on
    # a loaded 2-core machine the shared pool's 2 s deadline could fire first (a "timeout", not this).
    with VerifierPool(2, deadline_s=30.0, config=CFG) as pool:
        fut = pool.submit([_math("1"), _math("2")], [SLOW, r"\boxed{2}"])
        # Kill the worker that holds the slow item (the other one may finish, or not have started).
        deadline = time.monotonic() + 30
        while (
            not (victims := [w for w in pool._workers if any(it.response == SLOW for it in w.inflight)])
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        assert victims
        os.kill(victims[0].proc.pid, signal.SIGKILL)
        got = fut.result(timeout=60)
        assert got[0].reason == "error" and "worker died" in got[0].details["error"]
        assert got[1].reward == 1.0
        assert pool.submit([_math("5")], [r"\boxed{5}"]).result(timeout=30)[0].reward == 1.0


def test_empty_and_mismatched(pool):
    assert pool.submit([], []).result(timeout=1) == []
    with pytest.raises(ValueError):
        pool.submit([_math("1")], [])


def test_unknown_domain_is_an_error_not_a_crash(pool):
    got = pool.submit([{"domain": "poetry", "ground_truth": {}}, _math("1")], ["x", r"\boxed{1}"]).result(timeout=30)
    assert got[0].reason == "error" and got[1].reward == 1.0


def test_close_stops_workers_and_fails_pending():
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    p = VerifierPool(1, deadline_s=30.0, config=CFG)
    fut = p.submit([_math("1")], [SLOW])
    time.sleep(0.3)
    p.close()
    with pytest.raises(RuntimeError):
        fut.result(timeout=10)
    with pytest.raises(RuntimeError):
        p.submit([_math("1")], ["x"])
    time.sleep(0.2)
    assert {q.pid for q in me.children(recursive=True)} - before == set()


def test_if_domain_routes_to_registry(pool):
    pytest.importorskip("rlvr_jax.instructions.registry")
    rec = {
        "domain": "if",
        "ground_truth": {
            "instruction_ids": ["punctuation:no_comma"],
            "kwargs": [{}],
            "prompt": "Write without commas.",
        },
    }
    got = pool.submit([rec, rec], ["hello world", "hello, world"]).result(timeout=30)
    assert [s.reward for s in got] == [1.0, 0.0]
    assert got[1].details["failed"] == ["punctuation:no_comma"] and got[1].details["fraction"] == 0.0


def test_repeated_responses_of_one_record_are_scored_once(pool):
    right, wrong = _math("7"), _math("8")
    recs = [right, right, right, wrong, wrong, right]
    resps = [r"\boxed{7}", r"\boxed{7}", r"\boxed{6}", r"\boxed{7}", r"\boxed{7}", r"\boxed{7}"]
    pool.counters(reset=True)
    got = pool.submit(recs, resps).result(timeout=60)
    assert [s.reward for s in got] == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    c = pool.counters(reset=True)
    assert c["verifier/scored"] == 3 and c["verifier/deduplicated"] == 3
    # equal content in distinct record objects is not assumed to be the same item
    assert pool.submit([_math("7"), _math("7")], [r"\boxed{7}"] * 2).result(timeout=60)[1].reward == 1.0
    assert pool.counters(reset=True)["verifier/scored"] == 2


def test_workers_start_without_runtime_warnings(monkeypatch):
    # Workers inherit the environment: with warnings as errors, a worker whose entry point re-runs a
    # module the package already imported (runpy's RuntimeWarning) dies, and the pool cannot score.
    monkeypatch.setenv("PYTHONWARNINGS", "error::RuntimeWarning")
    with VerifierPool(1, deadline_s=10.0, config=CFG) as p:
        got = p.submit([_math("3")], [r"\boxed{3}"]).result(timeout=60)
    assert got[0].reward == 1.0


def _grpo_verifier_section(arg):
    spec = importlib.util.spec_from_file_location("grpo_config", pathlib.Path(__file__).parents[1] / "configs/grpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg).verifier


def test_the_study_preset_resolves_to_the_study_reward_rules():
    c = verifier_config(_grpo_verifier_section("math"), thinking=True)
    assert (c.code_max_tests, c.truncated_zero, c.math_form, c.science_form) == (20, True, "study", "study")
    assert c.thinking and not c.allow_unsandboxed
    tiny = verifier_config(_grpo_verifier_section("multi,tiny"), thinking=False)
    assert (tiny.truncated_zero, tiny.math_form, tiny.science_form) == (False, "lenient", "lenient")


def test_truncated_rows_score_0_in_the_pool_without_reaching_a_worker():
    section = _grpo_verifier_section("math")
    section.workers = 1
    recs = [_math("5"), _sci("B"), _math("5"), _sci("B")]
    resps = ["Answer: \\boxed{5}", "Answer: B", "Answer: \\boxed{5}", "Answer: B"]
    cut = [False, True, True, False]
    with pool_from_config(section, thinking=False) as p:
        got = p.submit(recs, resps, truncated=cut).result(timeout=60)
        assert [(s.reward, s.reason) for s in got] == [(1.0, "ok"), (0.0, "truncated"), (0.0, "truncated"), (1.0, "ok")]
        assert p.counters()["verifier/scored"] == 2  # the cut rows were never graded
        assert [s.reward for s in p.submit(recs, resps).result(timeout=60)] == [1.0] * 4  # no flags: none cut
        with pytest.raises(ValueError, match="truncated flags"):
            p.submit(recs, resps, truncated=cut[:2])
    section.truncated_zero = False  # the alternative: graded like any other response
    with pool_from_config(section, thinking=False) as p:
        assert [s.reward for s in p.submit(recs, resps, truncated=cut).result(timeout=60)] == [1.0] * 4
