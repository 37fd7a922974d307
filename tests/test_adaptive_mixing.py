"""Adaptive domain mixing (data/adaptive.py, data/mixture.py AdaptiveMixture, the trainer option): weights
follow the learnability signal, the floor holds, resume and multi-host sharding are exact, fixed mixing is
what it was, and a real tiny GRPO run logs the mixing/* metrics and resumes to the same step."""

import hashlib
import json
from collections import Counter

import grain
import jax
import numpy as np
import pytest

from rlvr_jax.data import adaptive
from rlvr_jax.data.adaptive import AdaptiveSettings, DomainBandit
from rlvr_jax.data.mixture import AdaptiveMixture, PromptMixture, make_mixture
from rlvr_jax.metrics import read_jsonl
from tests.test_train import tiny_config

SIZES = {"math": 7, "code": 5, "science": 6, "if": 4}
G = 4  # group size of the fake rollouts


def sources(sizes=SIZES):
    return {d: [{"id": f"{d}{i}", "domain": d} for i in range(n)] for d, n in sizes.items()}


def fake_rewards(items, mixed=("math",), step=0):
    """[N, G] rewards: groups of `mixed` domains have unequal rewards, the others all-equal (0 or 1)."""
    rows = []
    for k, it in enumerate(items):
        if it["domain"] in mixed:
            rows.append([1.0, 0.0, 0.0, 1.0] if (k + step) % 2 else [0.0, 0.0, 1.0, 0.0])
        else:
            rows.append([float((k + step) % 2)] * G)
    return np.asarray(rows)


def feed(mix, items, step, signal="informative", mixed=("math",)):
    """What the loop does after scoring: per-group signal -> per-domain totals -> observe."""
    signal_N = adaptive.group_signals(fake_rewards(items, mixed, step))[signal]
    return mix.observe(*adaptive.domain_totals([it["domain"] for it in items], signal_N, mix.domains))


def run(mix, steps, start=0, **kw):
    """(batch ids, weights after each step) of `steps` steps of take -> observe."""
    batches, weights = [], []
    for step in range(start, start + steps):
        items = next(mix)
        feed(mix, items, step, **kw)
        batches.append([it["id"] for it in items])
        weights.append(mix.weights())
    return batches, weights


@pytest.mark.parametrize("signal", adaptive.SIGNALS)
def test_weights_move_toward_informative_domains_and_away_from_all_equal_ones(signal):
    mix = AdaptiveMixture(sources(), batch_size=16, seed=0, settings=AdaptiveSettings(signal=signal))
    assert mix.weights() == pytest.approx({d: 0.25 for d in SIZES})  # nothing observed yet: uniform
    _, weights = run(mix, 8, signal=signal, mixed=("math", "code"))
    for w in weights:
        assert min(w["math"], w["code"]) > 0.4, weights  # informative groups: up from 0.25
        assert max(w["science"], w["if"]) < 0.06, weights  # all-equal groups: down to near the floor (0.05)
        assert sum(w.values()) == pytest.approx(1.0)
    # the batches follow the weights: the last batch is mostly math and code
    shares = mix.take_shares()
    assert shares["math"] + shares["code"] > 0.8 and sum(shares.values()) == pytest.approx(1.0)
    # and when math stops teaching (all-equal) while science starts, the discounted estimate lets go
    for step in range(8, 30):
        feed(mix, next(mix), step, signal=signal, mixed=("science", "code"))
    w = mix.weights()
    assert w["science"] > 0.3 and w["math"] < 0.1, w  # math is seen at the floor: its estimate fades slower


def test_group_signals_on_crafted_groups():
    r = np.asarray([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]], float)
    sig = adaptive.group_signals(r)
    np.testing.assert_array_equal(sig["informative"], [1, 0, 0, 1])
    # |z| is 1 for every row of a half-correct group; 3 rows at |0.25/0.433| and one at |0.75/0.433|
    np.testing.assert_allclose(sig["abs_adv"], [1.0, 0.0, 0.0, (3 * 0.25 + 0.75) / 4 / np.sqrt(3 / 16)], rtol=1e-5)
    units, groups = adaptive.domain_totals(["a", "b", "a", "a"], sig["informative"], ["a", "b", "c"])
    np.testing.assert_array_equal(groups, [3, 1, 0])
    np.testing.assert_array_equal(units * adaptive.SIGNAL_UNIT, [2, 0, 0])


@pytest.mark.parametrize("floor", [0.0, 0.05, 0.25])
def test_floor_holds_under_extreme_signals(floor):
    s = AdaptiveSettings(temperature=1e-3, floor=floor, explore=0.0)
    bandit = DomainBandit(s, ["a", "b", "c", "d"])
    served = np.zeros(4, np.int64)
    for _ in range(200):  # "a" always fully informative, the rest never
        bandit.observe(np.asarray([16, 0, 0, 0]) / adaptive.SIGNAL_UNIT, [16, 16, 16, 16])
        assert bandit.weights_D.min() >= floor - 1e-12 and bandit.weights_D.sum() == pytest.approx(1.0)
        served += bandit.apportion(10)  # 10 x 0.05 = half a prompt: the floor holds over steps
    assert served.sum() == 2000
    np.testing.assert_allclose(bandit.weights_D, [1 - 3 * floor, floor, floor, floor], atol=1e-9)
    assert served[1:].min() >= floor * 2000 - 1  # the carried deficits: within one prompt of the floor
    assert np.all(np.abs(bandit.carry_D) <= 1)


def test_bad_settings_name_the_field_and_numbers():
    problems = AdaptiveSettings(floor=0.3).problems(4)
    assert problems == ["data.adaptive.floor=0.3: must be >= 0 with domains x floor <= 1; 4 domains x 0.3 = 1.2"]
    with pytest.raises(ValueError, match="data.adaptive.floor=0.3"):
        AdaptiveMixture(sources(), batch_size=8, settings=AdaptiveSettings(floor=0.3))
    bad = AdaptiveSettings(signal="loss", temperature=0, discount=1.5, explore=-1).problems(4)
    assert [p.split("=")[0] for p in bad] == [
        f"data.adaptive.{k}" for k in ("signal", "temperature", "discount", "explore")
    ]

    from rlvr_jax.rl import train

    c = tiny_config()
    c.data.mixing = "adaptive"
    c.data.adaptive.floor = 0.3
    c.data.weights = "math=1"
    with pytest.raises(train.ConfigError, match=r"(?s)4 domains x 0.3 = 1.2.*data.weights='math=1'"):
        train.validate(c, jax.device_count())
    c.data.mixing = "curriculum"
    with pytest.raises(train.ConfigError, match="data.mixing='curriculum'"):
        train.validate(c, jax.device_count())
    with pytest.raises(ValueError, match="chooses the weights itself"):
        make_mixture(sources(), mixing="adaptive", batch_size=8, weights={"math": 1.0})


def test_resume_mid_run_reproduces_weights_and_batches_exactly():
    settings = AdaptiveSettings(signal="abs_adv")  # float signals: the state's floats must round-trip
    full_b, full_w = run(AdaptiveMixture(sources(), batch_size=8, seed=3, settings=settings), 14)
    for cut in (1, 5, 9):  # 7 math prompts at ~2-4 a batch: the cuts fall on either side of domain epochs
        first = AdaptiveMixture(sources(), batch_size=8, seed=3, settings=settings)
        head_b, head_w = run(first, cut)
        state = json.loads(json.dumps(first.get_state()))  # what a checkpoint stores
        resumed = AdaptiveMixture(sources(), batch_size=8, seed=3, settings=settings)
        resumed.set_state(state)
        tail_b, tail_w = run(resumed, 14 - cut, start=cut)
        assert head_b + tail_b == full_b, cut
        assert head_w + tail_w == full_w, cut  # bit for bit
    # each domain's stream passes over all its prompts once per epoch: none is served twice more than another
    for d, n in SIZES.items():
        seen = Counter(i for b in full_b for i in b if i.startswith(d))
        assert len(seen) == n and max(seen.values()) - min(seen.values()) <= 1, (d, seen)
    # a state of another stream, or of a fixed mixture, is refused
    with pytest.raises(ValueError, match="differs"):
        AdaptiveMixture(sources(), batch_size=8, seed=4, settings=settings).set_state(state)
    with pytest.raises(ValueError, match="data.mixing changed"):
        AdaptiveMixture(sources(), batch_size=8, seed=3, settings=settings).set_state(
            PromptMixture(sources(), batch_size=8, seed=3).get_state()
        )


def test_two_hosts_take_blocks_of_the_one_host_batch_and_reach_the_same_weights():
    one = AdaptiveMixture(sources(), batch_size=8, seed=1, settings=AdaptiveSettings())
    hosts = [
        AdaptiveMixture(sources(), batch_size=8, seed=1, settings=AdaptiveSettings(), process_index=p, process_count=2)
        for p in (0, 1)
    ]
    for step in range(10):
        items = next(one)
        blocks = [next(h) for h in hosts]
        assert blocks[0] + blocks[1] == items  # the hosts' blocks in process order are the one-host batch
        feed(one, items, step, signal="abs_adv")
        # each host measures its own rows; the totals are summed across hosts (host_metrics.sum_across_hosts)
        totals = [
            adaptive.domain_totals(
                [it["domain"] for it in b],
                adaptive.group_signals(fake_rewards(items, step=step)[4 * p : 4 * p + 4])["abs_adv"],
                one.domains,
            )
            for p, b in enumerate(blocks)
        ]
        units, groups = np.sum([t[0] for t in totals], 0), np.sum([t[1] for t in totals], 0)
        for h in hosts:
            h.observe(units, groups)
            assert h.weights() == one.weights()  # bit for bit


def test_fixed_mixing_is_unchanged():
    # the pooled stream as the fixed mixture built it before adaptive mixing existed (and before its items
    # carried their domain's index through grain): the same batches, item for item
    srcs = sources()
    pool = grain.MapDataset.concatenate([grain.MapDataset.source(srcs[d]) for d in sorted(srcs)])
    grain_seed = int.from_bytes(hashlib.sha256(b"2/pool").digest()[:4], "big")  # mixture's seed hash
    old = pool.shuffle(seed=grain_seed).repeat().batch(4, batch_fn=list)
    mix = make_mixture(srcs, mixing="fixed", batch_size=4, seed=2)
    assert isinstance(mix, PromptMixture) and not mix.adaptive
    for step in range(12):
        batch = next(mix)
        assert batch == old[step], step
        counts = Counter(it["domain"] for it in batch)
        assert mix.take_shares() == {d: counts[d] / 4 for d in SIZES}
    assert mix.take_shares() == {}  # nothing served since


def test_tiny_grpo_run_logs_mixing_metrics_and_checkpoints_the_mixture(tmp_path):
    """One real run (two runs, to resume, cost ~40 s of CPU: resume itself is tested on the mixture above,
    and train.py restores a mixture's state the same way in both modes). Here: the metrics, and that each
    step's checkpoint holds the state the run drew its next batch with."""
    from rlvr_jax.checkpoint import Checkpointer
    from rlvr_jax.data import loading
    from rlvr_jax.data.prompts import build_prompts
    from rlvr_jax.model import build
    from rlvr_jax.rl import train

    c = tiny_config(steps=2, checkpoint_every=1)
    c.data.mixing = "adaptive"
    c.grpo.dynamic_sampling, c.grpo.dynamic_sampling_draws = True, 2  # the refill's draws come from the mixture
    assert train.run(c, str(tmp_path))["last_step"] == 2
    rows = read_jsonl(str(tmp_path / "metrics_train.jsonl"))
    domains = ("code", "if", "math", "science")
    for r in rows:
        weights = [r[f"mixing/weight/{d}"] for d in domains]
        assert min(weights) >= c.data.adaptive.floor - 1e-9 and sum(weights) == pytest.approx(1.0), r
        shares = [r[f"mixing/share/{d}"] for d in domains]
        assert sum(shares) == pytest.approx(1.0) and all(round(s * 8) == s * 8 for s in shares)  # 2 draws x 4
        signals = {k: v for k, v in r.items() if k.startswith("mixing/signal/")}
        assert signals and all(0 <= v <= 1 for v in signals.values())
        assert r["verifier/scored"] + r["verifier/deduplicated"] == 32  # every draw's rows were scored
    ckpt = Checkpointer(str(tmp_path / "checkpoints"))
    states = {k: ckpt.read_meta(k)["data_state"] for k in (1, 2)}
    ckpt.close()
    for k in (1, 2):  # the weights a step logs are those its checkpoint holds for the next batch
        assert states[k]["bandit"]["weights"] == [rows[k - 1][f"mixing/weight/{d}"] for d in domains]
        assert states[k]["step"] == 2 * k  # global batches taken: 2 draws a step
    # the run's mixture restored at step 1 draws step 2's batches (their domains' shares)
    tokenizer = build.load_tokenizer(c.tokenizer, c.model.checkpoint)
    records = loading.load_records(c.data.train, "train", domains, c.data.builtin_train_size)
    by_domain, _ = build_prompts(records, tokenizer, loading.prompt_config(c.data))
    mix = make_mixture(
        by_domain, mixing="adaptive", batch_size=4, seed=c.seed, adaptive=train.adaptive_settings(c.data)
    )
    mix.set_state(states[1])
    next(mix), next(mix)
    assert mix.take_shares() == {d: rows[1][f"mixing/share/{d}"] for d in domains}
