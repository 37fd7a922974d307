"""The GRPO step in parts, each tested alone with stand-in components: score() decodes and grades this
host's rows, build_update_batch() shapes rewards, chooses rows and computes advantages."""

import dataclasses
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import sharding
from rlvr_jax.rl import grpo, optim
from rlvr_jax.rl import loop as rl_loop
from rlvr_jax.rl import update as rl_update
from rlvr_jax.rollout.sampling import Rollout, SamplingParams
from rlvr_jax.verifiers import Score, score
from rlvr_jax.verifiers.base import verifier_config


class _Engine:
    """One host, no mesh: local rows are the arrays themselves."""

    local_rows = staticmethod(np.asarray)
    to_global = staticmethod(jnp.asarray)


class _Pool:
    def __init__(self, rewards):
        self.rewards, self.seen = rewards, []

    def submit(self, records, texts, *, thinking, truncated=None):
        self.seen.append((records, texts, thinking))
        self.truncated = truncated

        class _Done:
            result = staticmethod(lambda: [Score(r, "ok" if r else "wrong") for r in self.rewards])

        return _Done()


class _Tokenizer:
    eos_ids = (99,)

    def decode(self, ids):
        return " ".join(str(int(i)) for i in ids)


def _settings(**kw):
    base = dict(
        steps=1,
        group_size=2,
        max_new_tokens=4,
        thinking=False,
        draws=1,
        dynamic_sampling=False,
        overlong_buffer=0,
        overlong_penalty=1.0,
        overlong_filter=False,
        advantage="grpo",
        kl_coef=0.0,
        kl_in_reward=False,
        kl_estimator="k3",
        opd_student_logp="trainer",
        updates_per_rollout=1,
        skip_zero_advantage=False,
        num_micro=1,
        lr_at=lambda step: 0.0,
    )
    return rl_loop.StepSettings(**{**base, **kw})


def _components(rewards):
    return rl_loop.Components(
        engine=_Engine(),
        sampling=SamplingParams(n=2),
        pool=_Pool(rewards),
        tokenizer=_Tokenizer(),
        mixture=None,
        update=None,
        logprob_fn=None,
        ref_params=None,
        teachers={},
        ckpt=None,
        writer=None,
        checkpoint_meta=dict,
        prompt_counts={},
    )


def _rollout(valid_BxT, stopped_B):
    B, T = valid_BxT.shape
    return Rollout(
        prompt_tokens=jnp.ones((B, 3), jnp.int32),
        prompt_valid=jnp.ones((B, 3), bool),
        completion_tokens=jnp.arange(B * T, dtype=jnp.int32).reshape(B, T),
        completion_valid=jnp.asarray(valid_BxT),
        logprobs=jnp.zeros((B, T)),
        policy_logprobs=jnp.full((B, T), -0.5),
        lengths=jnp.asarray(valid_BxT.sum(-1), jnp.int32),
        stopped=jnp.asarray(stopped_B),
        prompt_index=np.repeat(np.arange(B // 2), 2),
    )


VALID = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]], bool)
STOPPED = np.array([True, False, True, True])
ITEMS = [{"record": {"domain": "math", "id": "a"}}, {"record": {"domain": "if", "id": "b"}}]


def test_score_grades_each_row_against_its_prompts_record():
    c = _components([1.0, 0.0, 1.0, 1.0])
    sc = rl_loop.score(c, _settings(thinking=True), ITEMS, _rollout(VALID, STOPPED))
    records, texts, thinking = c.pool.seen[0]
    assert [r["id"] for r in records] == ["a", "a", "b", "b"] and thinking
    assert texts[0] == "0 1" and texts[1] == "4 5 6 7"  # only the valid tokens are decoded
    np.testing.assert_array_equal(c.pool.truncated, ~STOPPED)  # the pool is told which rows hit the limit
    np.testing.assert_array_equal(sc.rewards_B, [1, 0, 1, 1])
    np.testing.assert_array_equal(sc.lengths_B, [2, 4, 1, 3])


class _InProcessPool:
    """The verifiers' own scoring, in this process, under one VerifierConfig."""

    def __init__(self, config):
        self.config = config

    def submit(self, records, texts, *, thinking, truncated):
        scores = [
            score(r, t, thinking=thinking, config=self.config, truncated=cut)
            for r, t, cut in zip(records, texts, truncated)
        ]

        class _Done:
            result = staticmethod(lambda: scores)

        return _Done()


class _AnswerTokenizer(_Tokenizer):
    def decode(self, ids):
        return "Answer: \\boxed{5}"  # every row writes the right answer; row 1 then runs into the limit


@pytest.mark.parametrize("preset", ["study", "alternative"])
def test_a_truncated_correct_response_scores_0_under_the_study_preset_only(preset):
    config = _grpo_config("math")
    if preset == "alternative":
        config.verifier.truncated_zero = False
    c = dataclasses.replace(
        _components([]),
        pool=_InProcessPool(verifier_config(config.verifier, thinking=False)),
        tokenizer=_AnswerTokenizer(),
    )
    items = [{"record": {"domain": "math", "id": i, "ground_truth": {"answers": ["5"]}}} for i in "ab"]
    sc = rl_loop.score(c, _settings(), items, _rollout(VALID, STOPPED))
    if preset == "study":
        np.testing.assert_array_equal(sc.rewards_B, [1, 0, 1, 1])
        assert [x.reason for x in sc.scores] == ["ok", "truncated", "ok", "ok"]
    else:
        np.testing.assert_array_equal(sc.rewards_B, [1, 1, 1, 1])


def _grpo_config(arg):
    spec = importlib.util.spec_from_file_location("grpo_config", pathlib.Path(__file__).parents[1] / "configs/grpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("overlong_filter", [False, True])
def test_build_update_batch_advantages_and_masks(overlong_filter):
    c = _components([1.0, 0.0, 1.0, 1.0])
    s = _settings(overlong_filter=overlong_filter)
    sc = rl_loop.score(c, s, ITEMS, _rollout(VALID, STOPPED))
    ub = rl_loop.build_update_batch(c, s, sc, params=None)
    keep = STOPPED if overlong_filter else np.ones(4, bool)
    np.testing.assert_array_equal(ub.keep_B, keep)
    np.testing.assert_array_equal(np.asarray(ub.batch["loss_mask"]), VALID & keep[:, None])
    adv_B = np.asarray(grpo.advantages(jnp.asarray([1.0, 0.0, 1.0, 1.0]), group_size=2))
    assert adv_B[0] > 0 > adv_B[1] and adv_B[2] == adv_B[3] == 0  # the second group is uninformative
    np.testing.assert_allclose(np.asarray(ub.batch["adv"]), adv_B[:, None] * (VALID & keep[:, None]))
    np.testing.assert_array_equal(ub.informative_N, [True, False])
    assert "old_logp" not in ub.batch and "ref_logp" not in ub.batch  # one update per rollout, no KL


@pytest.mark.parametrize(
    "settings,optional",
    [
        ({}, ()),
        ({"updates_per_rollout": 2}, ("old_logp",)),
        ({"kl_coef": 0.1}, ("ref_logp",)),
        ({"kl_coef": 0.1, "kl_in_reward": True}, ()),
        ({"kl_coef": 0.1, "updates_per_rollout": 3}, ("old_logp", "ref_logp")),
    ],
)
def test_build_update_batch_gives_the_arrays_the_update_is_compiled_for(settings, optional):
    """The loop's batch is update.update_batch_spec's (names, shapes, dtypes), optional arrays included, for the
    loss settings that add them: what rlvr-plan compiles the update on."""
    c = _components([1.0, 0.0, 1.0, 1.0])
    s = _settings(**settings)
    c.logprob_fn = lambda params, batch: jnp.zeros(batch["completion_tokens"].shape, jnp.float32)
    c.ref_params = {} if s.kl_coef > 0 else None
    assert s.optional_arrays == optional
    ub = rl_loop.build_update_batch(c, s, rl_loop.score(c, s, ITEMS, _rollout(VALID, STOPPED)), params=None)
    mesh = sharding.make_mesh(sharding.MeshShape(), devices=jax.devices()[:1])
    want = rl_update.update_batch_spec(mesh, len(VALID), 3, VALID.shape[1], optional)
    assert {k: (v.shape, v.dtype) for k, v in ub.batch.items()} == {k: (v.shape, v.dtype) for k, v in want.items()}


def test_build_update_batch_puts_rows_with_a_gradient_first():
    c = _components([1.0, 1.0, 0.0, 1.0])  # group 0 uninformative, group 1 informative
    s = _settings(skip_zero_advantage=True, num_micro=2)
    ub = rl_loop.build_update_batch(c, s, rl_loop.score(c, s, ITEMS, _rollout(VALID, STOPPED)), params=None)
    rows_first = np.asarray(ub.batch["completion_tokens"])[:, 0]
    np.testing.assert_array_equal(rows_first, [8, 12, 0, 4])  # rows 2, 3 (informative) before rows 0, 1
    assert np.all(np.asarray(ub.batch["adv"])[2:] == 0) and np.any(np.asarray(ub.batch["adv"])[:2] != 0)


@pytest.mark.parametrize("student_logp", ["trainer", "sampler"])
@pytest.mark.parametrize("updates_per_rollout", [1, 2])
def test_opd_advantage_takes_the_student_logp_the_settings_name(student_logp, updates_per_rollout):
    """Sampler and trainer disagree on the student's log-probabilities: MT-OPD's advantage is the teacher's
    minus the trainer's pass under "trainer", minus the sampler's under "sampler"; the student's pass runs
    only under "trainer", and old_logp (several updates per rollout) reuses it."""
    T = VALID.shape[1]
    trainer_T = -0.3 - 0.01 * np.arange(T, dtype=np.float32)  # the rollout's sampler_logp is -0.5 everywhere
    by_model = {"student": trainer_T, "math": np.full(T, -0.1, np.float32), "if": np.full(T, -0.2, np.float32)}
    calls = []

    def logprob_fn(params, batch):
        calls.append(params["who"])
        return jnp.broadcast_to(jnp.asarray(by_model[params["who"]]), batch["completion_tokens"].shape)

    c = _components([1.0, 0.0, 1.0, 1.0])
    c.logprob_fn, c.teachers = logprob_fn, {"math": {"who": "math"}, "if": {"who": "if"}}
    s = _settings(opd_student_logp=student_logp, updates_per_rollout=updates_per_rollout)
    sc = rl_loop.score(c, s, ITEMS, _rollout(VALID, STOPPED))
    ub = rl_loop.build_update_batch(c, s, sc, params={"who": "student"})
    teacher_B = np.array([-0.1, -0.1, -0.2, -0.2], np.float32)  # rows 0, 1 are math's, rows 2, 3 IF's
    student_T = trainer_T if student_logp == "trainer" else np.full(T, -0.5, np.float32)
    np.testing.assert_allclose(np.asarray(ub.batch["adv"]), (teacher_B[:, None] - student_T) * VALID, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(ub.batch["sampler_logp"]), -0.5)  # TIS still sees the sampler's
    want_calls = {"trainer": 1, "sampler": updates_per_rollout - 1}[student_logp]
    assert sorted(calls) == sorted(["math", "if"] + ["student"] * want_calls)
    if updates_per_rollout > 1:
        np.testing.assert_allclose(np.asarray(ub.batch["old_logp"]), np.broadcast_to(trainer_T, VALID.shape))


def test_step_settings_from_a_config_file():
    spec = importlib.util.spec_from_file_location("grpo_config", pathlib.Path(__file__).parents[1] / "configs/grpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("multi,tiny")
    loss = rl_loop.loss_settings(config)
    s = rl_loop.StepSettings.from_config(config, num_micro=4, loss=loss)
    assert s.group_size == config.rollout.samples_per_prompt and s.num_micro == 4
    assert s.skip_zero_advantage == (config.grpo.skip_zero_advantage and loss.gradient_scales_with_advantage)
    o = config.optim
    want = optim.lr_at(
        3,
        learning_rate=o.learning_rate,
        schedule=o.schedule,
        warmup_steps=o.warmup_steps,
        total_steps=config.train.steps,
    )
    assert s.lr_at(3) == pytest.approx(want)
    assert dataclasses.replace(loss, temperature=1.0).eps_high == config.grpo.eps_high
    assert s.opd_student_logp == config.opd.student_logp == "trainer"
    config.opd.student_logp = "teacher"
    with pytest.raises(rl_loop.ConfigError, match="opd.student_logp"):
        rl_loop.StepSettings.from_config(config, num_micro=4, loss=loss)
