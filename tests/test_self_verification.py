"""Self-verification: verdict parsing on crafted replies, the metrics on hand-counted verdict/verifier pairs,
judge prompts that show the final answer (outcome) or the whole response (process) and not the other, the
row bookkeeping through a scripted engine whose judge is right by construction, and one run of a random
tiny model through the real engine and verifier pool producing every key."""

import concurrent.futures
import json
import os
import types

import jax
import numpy as np
import pytest

from rlvr_jax import sharding
from rlvr_jax.config_args import load_config_file
from rlvr_jax.data import loading
from rlvr_jax.data.prompts import PromptConfig
from rlvr_jax.eval import self_verification as sv
from rlvr_jax.model import build
from rlvr_jax.model.tokenizer import builtin_tokenizer
from rlvr_jax.rollout.engine import Engine
from rlvr_jax.verifiers.base import VerifierConfig
from rlvr_jax.verifiers.dispatch import score

YES, NO, BAD = sv.JUDGED_CORRECT, sv.JUDGED_INCORRECT, sv.UNPARSABLE
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "reply, want",
    [
        ("Yes", YES),
        ("yes.", YES),
        ("  YES!", YES),
        ("**Yes**, the answer is right", YES),
        ("No", NO),
        ("no, it is wrong", NO),
        ("No, ... on reflection yes", NO),  # the first decisive word wins
        ("Correct.", YES),
        ("Incorrect", NO),
        ("True", YES),
        ("FALSE", NO),
        ("It is not correct.", NO),
        ("The answer isn't correct", NO),
        ("I am not sure, but yes", YES),  # "not" negates only a decisive word right after it
        ("Now I see: yes", YES),  # "now" is not "no"
        ("", BAD),
        ("   \n", BAD),
        ("maybe", BAD),
        ("%%% 12 ???", BAD),
        ("correctly computed", BAD),
        ("<think>\nthe sum is 5, so no</think>\nYes", YES),  # only what follows the thoughts counts
        ("Yes <think> hmm, no", YES),  # a block opened and never closed: what precedes it
    ],
)
def test_parse_verdict(reply, want):
    assert sv.parse_verdict(reply) == want


def test_parse_verdict_with_a_thinking_judge():
    # the judge's prompt opened `<think>`: the verdict is what follows `</think>`; never closed = unparsable
    assert sv.parse_verdict("the answer 5 is no good... </think> Yes", thinking=True) == YES
    assert sv.parse_verdict("Yes, it is correct", thinking=True) == BAD
    assert sv.parse_verdict("Yes, it is correct", thinking=False) == YES


def test_metrics_on_hand_counted_pairs():
    # truth:    1  1  1  0  0  0  1  0
    # verdict:  Y  Y  N  N  Y  ?  ?  N
    m = sv.verdict_metrics([YES, YES, NO, NO, YES, BAD, BAD, NO], [1, 1, 1, 0, 0, 0, 1, 0])
    assert m["n"] == 8
    assert m["accuracy"] == pytest.approx(4 / 8)  # Y/1, Y/1, N/0, N/0; unparsable counts as wrong
    assert m["precision_correct"] == pytest.approx(2 / 3)  # judged yes: 3, truly correct: 2
    assert m["precision_incorrect"] == pytest.approx(2 / 3)  # judged no: 3, truly incorrect: 2
    assert m["unparsable"] == pytest.approx(2 / 8)
    assert m["judged_correct"] == pytest.approx(3 / 8)
    assert m["base_rate"] == pytest.approx(4 / 8)
    never_no = sv.verdict_metrics([YES, YES, BAD], [1, 0, 0])
    assert never_no["precision_incorrect"] is None and never_no["precision_correct"] == pytest.approx(0.5)
    assert never_no["accuracy"] == pytest.approx(1 / 3)
    assert sv.verdict_metrics([], [])["accuracy"] is None
    with pytest.raises(ValueError, match="3 verdicts for 2"):
        sv.verdict_metrics([YES, NO, YES], [1, 0])


def test_summarize_pools_domains_under_all():
    rows = [("math", True, {"outcome": YES, "process": NO}), ("math", False, {"outcome": NO, "process": NO})]
    rows += [("if", True, {"outcome": BAD, "process": YES})]
    out = sv.summarize(rows)
    assert set(out) == {"outcome", "process"} and set(out["outcome"]) == {"math", "if", "all"}
    assert out["outcome"]["math"]["accuracy"] == 1.0 and out["outcome"]["if"]["accuracy"] == 0.0
    assert out["outcome"]["all"]["accuracy"] == pytest.approx(2 / 3) and out["outcome"]["all"]["n"] == 3
    assert out["process"]["math"]["accuracy"] == pytest.approx(0.5) and out["process"]["all"]["unparsable"] == 0.0


def _record(domain, question):
    return {"id": "x", "domain": domain, "messages": [{"role": "user", "content": question}], "ground_truth": {}}


@pytest.mark.parametrize(
    "domain, response, answer",
    [
        ("math", "We add 2 and 3 to get 5.\nAnswer: \\boxed{5}", "5"),
        ("science", "Scorpions have eight legs, so they are arachnids.\nAnswer: D", "D"),
        ("code", "Read and add.\n```python\nprint(sum(map(int, input().split())))\n```\nDone.", "print(sum("),
        ("if", "*Snow* is cold and *white*.", "*Snow* is cold and *white*."),
    ],
)
def test_judge_prompts_show_the_answer_or_the_whole_response(domain, response, answer):
    tok = builtin_tokenizer()
    p = sv.judge_prompts(
        _record(domain, "QUESTION-TEXT"),
        response,
        tokenizer=tok,
        prompt_config=PromptConfig(thinking=False),
        verifier=VerifierConfig(),
        settings=sv.JudgeSettings(),
    )
    for mode in sv.MODES:
        assert "QUESTION-TEXT" in p[mode] and p[mode].startswith("<|im_start|>user\n")
        assert p[mode].endswith("<|im_start|>assistant\n")  # the judge answers directly: no thinking block
    assert answer in p["outcome"] and response in p["process"]
    if domain != "if":  # instruction following's final answer is the whole response
        assert response not in p["outcome"]
        first_line = response.splitlines()[0]
        assert first_line not in p["outcome"] and first_line in p["process"]


def test_judge_prompts_with_thinking_samples():
    tok = builtin_tokenizer()
    response = "2 + 3 is 5</think>\nAnswer: \\boxed{5}"
    p = sv.judge_prompts(
        _record("math", "Q"),
        response,
        tokenizer=tok,
        prompt_config=PromptConfig(thinking=True),
        verifier=VerifierConfig(),
        settings=sv.JudgeSettings(),
    )
    assert "<think>\n" + response in p["process"]  # the whole trace, its block's opening included
    assert "Proposed answer:\n5\n" in p["outcome"] and "2 + 3" not in p["outcome"]
    unclosed = sv.judge_prompts(
        _record("math", "Q"),
        "thinking \\boxed{5}",
        tokenizer=tok,
        prompt_config=PromptConfig(thinking=True),
        verifier=VerifierConfig(),
        settings=sv.JudgeSettings(),
    )
    assert sv.NO_ANSWER in unclosed["outcome"]  # graded text is after </think>: there is none


def test_templates_are_checked():
    with pytest.raises(ValueError, match="outcome template must use exactly.*missing \\['answer'\\]"):
        sv.JudgeSettings(outcome_template="Is {question} right? {response}")
    with pytest.raises(ValueError, match="process template.*unknown \\['answer'\\]"):
        sv.JudgeSettings(process_template="{question} {response} {answer}")
    with pytest.raises(ValueError, match="literal braces"):
        sv.JudgeSettings(outcome_template="{question} {answer} \\boxed{")
    with pytest.raises(ValueError, match="judge_max_new_tokens must be >= 1"):
        sv.JudgeSettings(judge_max_new_tokens=0)
    sv.JudgeSettings(outcome_template="{question} -> {answer}? \\boxed{{}}")


def test_the_study_config_carries_the_default_wording():
    c = load_config_file(os.path.join(REPO, "configs", "mix_vs_merge.py")).get_config("tiny")
    s = c.analysis.self_verification
    assert s.outcome_template == sv.OUTCOME_TEMPLATE and s.process_template == sv.PROCESS_TEMPLATE


class _InlinePool:
    """The verifier pool's interface, scoring in this process (no worker start-up in a unit test)."""

    config = VerifierConfig()

    def submit(self, records, responses, *, thinking=None, truncated=None):
        f = concurrent.futures.Future()
        f.set_result([score(r, t, thinking=thinking, config=self.config) for r, t in zip(records, responses)])
        return f


class _ScriptedEngine:
    """Samples: even samples give the gold answer, odd ones a wrong one. The judge: outcome says Yes exactly
    when the proposed answer is not a wrong one (always right); process always replies "No, ... yes".
    Rows come back in reverse order, as the scheduler may return them."""

    local_shards = 1

    def __init__(self, tok, gold=None, cfg=None):
        self.tok, self.gold, self.cfg, self.calls = tok, gold, cfg, []

    def local_rows(self, x):
        return np.asarray(x)

    def _sample(self, text, j):
        if self.gold is None:  # any question: the same answer
            return "Answer: \\boxed{5}"
        q = text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
        right, wrong = self.gold[q]
        return right if j % 2 == 0 else wrong

    def _judge(self, text):
        if "Proposed answer:" in text:
            proposed = text.split("Proposed answer:\n", 1)[1].split("\n\n", 1)[0]
            return "Yes." if proposed in ("5", "D") else "No."
        return "No, ... yes"

    def generate(self, params, prompts, sp, key=None):
        self.calls.append((len(prompts), sp.n, sp.temperature))
        texts = [self.tok.decode(p) for p in prompts]
        rows = [(i, j) for i in range(len(prompts)) for j in range(sp.n)][::-1]
        outs = [
            self._judge(texts[i]) if "Reply with Yes or No" in texts[i] else self._sample(texts[i], j) for i, j in rows
        ]
        ids = [self.tok.encode(o) + [self.tok.eos_ids[0]] for o in outs]
        T = max(len(x) for x in ids)
        toks = np.asarray([x + [0] * (T - len(x)) for x in ids])
        valid = np.asarray([[k < len(x) for k in range(T)] for x in ids])
        stopped = np.ones(len(ids), bool)
        return types.SimpleNamespace(
            completion_tokens=toks,
            completion_valid=valid,
            stopped=stopped,
            prompt_index=np.asarray([i for i, _ in rows]),
        )


def test_scripted_run_keeps_rows_verdicts_and_verifier_together():
    tok = builtin_tokenizer()
    records = [
        _record("math", "What is 2 + 3?") | {"id": "m1", "ground_truth": {"answers": ["5"]}},
        _record("math", "What is 1 + 4?") | {"id": "m2", "ground_truth": {"answers": ["5"]}},
        _record("science", "Pick D.\nA. x\nB. y\nC. z\nD. w")
        | {"ground_truth": {"answer": "D", "choices": list("ABCD")}},
    ]
    gold = {
        "What is 2 + 3?": ("Answer: \\boxed{5}", "Answer: \\boxed{7}"),
        "What is 1 + 4?": ("\\boxed{5}", "\\boxed{6}"),
        "Pick D.\nA. x\nB. y\nC. z\nD. w": ("Answer: D", "Answer: B"),
    }
    engine = _ScriptedEngine(tok, gold)
    settings = sv.JudgeSettings(samples=4, batch_prompts=2, temperature=0.7, max_new_tokens=16)
    res = sv.self_verify(
        engine, None, tok, records, _InlinePool(), prompt_config=PromptConfig(thinking=False), settings=settings
    )
    # two chunks (2 + 1 items): a sampling call and a greedy judge call (2 modes x rows) each
    assert engine.calls == [(2, 4, 0.7), (16, 1, 0.0), (1, 4, 0.7), (8, 1, 0.0)]
    assert res["samples"] == 4 and res["items_per_domain"] == {"math": 2, "science": 1}
    out, proc = res["metrics"]["outcome"], res["metrics"]["process"]
    for d, n in (("math", 8), ("science", 4), ("all", 12)):
        assert out[d]["n"] == n and out[d]["base_rate"] == 0.5
        assert out[d]["accuracy"] == 1.0 and out[d]["precision_correct"] == 1.0
        assert out[d]["precision_incorrect"] == 1.0 and out[d]["unparsable"] == 0.0
        assert proc[d]["accuracy"] == 0.5 and proc[d]["judged_correct"] == 0.0 and proc[d]["precision_correct"] is None
        assert proc[d]["precision_incorrect"] == 0.5
    assert res["examples"]["process"]["math"] == ["No, ... yes", "No, ... yes"]
    assert sorted(res["examples"]["outcome"]["science"]) == ["No.", "Yes."]


def _random_model(tok, seed=0):
    mesh = sharding.make_mesh(sharding.MeshShape(1, 1, 1), devices=jax.devices()[:1])
    cfg = build.model_config(
        "tiny",
        dict(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16),
        vocab_size=tok.vocab_size,
        param_dtype="float32",
        remat=False,
    )
    graphdef, params, _ = build.init_model(cfg, mesh, seed=seed)
    return mesh, cfg, graphdef, params


def test_tiny_random_model_end_to_end():
    """The real engine (the verifier pool: below): every key, every count."""
    tok = builtin_tokenizer()
    mesh, cfg, graphdef, params = _random_model(tok)
    engine = Engine(graphdef, cfg, mesh, num_slots=16, page_size=16, num_pages=128, prefill_chunk=64, pad_id=tok.pad_id)
    domains = ("math", "science", "if")
    records = loading.load_records("builtin", "eval", domains, 2, builtin_up_to=True)
    settings = sv.JudgeSettings(samples=2, max_new_tokens=6, judge_max_new_tokens=3)
    res = sv.self_verify(
        engine, params, tok, records, _InlinePool(), prompt_config=PromptConfig(thinking=False), settings=settings
    )
    assert res["items_per_domain"] == {d: 2 for d in domains}
    keys = {"n", "accuracy", "precision_correct", "precision_incorrect", "unparsable", "judged_correct", "base_rate"}
    for mode in sv.MODES:
        assert set(res["metrics"][mode]) == set(domains) | {"all"}
        for d in domains:
            m = res["metrics"][mode][d]
            assert set(m) == keys and m["n"] == 4
            assert 0.0 <= m["unparsable"] <= 1.0 and m["accuracy"] + m["unparsable"] <= 1.0 + 1e-9
        assert res["metrics"][mode]["all"]["n"] == 12
        assert all(len(v) == 2 for v in res["examples"][mode].values())


def test_rlvr_analyze_self_verify_writes_analysis_json(tmp_path, monkeypatch):
    """rlvr-analyze --self-verify on a saved checkpoint: flags, records, verifier pool and analysis.json (the
    engine scripted: the real one is exercised above): outcome always says yes, so its accuracy is the base rate."""
    from rlvr_jax.eval import analysis_cli
    from rlvr_jax.model import hf

    tok = builtin_tokenizer()
    _, cfg, _, params = _random_model(tok)
    hf.save(params, cfg, str(tmp_path / "ckpt"))
    made = []
    monkeypatch.setattr(
        analysis_cli.generate,
        "engine_from_args",
        lambda args, g, cfg, *a: made.append(cfg) or _ScriptedEngine(tok, cfg=cfg),
    )
    argv = ["--self-verify", "--models", f"a={tmp_path / 'ckpt'},b={tmp_path / 'ckpt'}", "--tokenizer", "builtin"]
    argv += ["--domains", "math,if", "--items-per-domain", "3", "--samples", "2", "--no-thinking", "--workers", "1"]
    assert analysis_cli.main(argv + ["--out", str(tmp_path / "out")]) == 0
    assert len(made) == 1  # one engine for two models of one architecture
    rep = json.load(open(tmp_path / "out" / "analysis.json"))["self_verification"]
    assert rep["samples"] == 2 and rep["items_per_domain"] == {"math": 3, "if": 3} and set(rep["models"]) == {"a", "b"}
    for mode in sv.MODES:
        m = rep["models"]["a"][mode]
        assert m["all"]["n"] == 12 and m["math"]["n"] == 6 and m["if"]["n"] == 6
    out = rep["models"]["a"]["outcome"]["math"]
    assert out["judged_correct"] == 1.0 and out["accuracy"] == out["base_rate"]
    assert rep["models"]["a"]["process"]["all"]["judged_correct"] == 0.0
    assert analysis_cli.main(["--self-verify", "--out", str(tmp_path / "none")]) == 2  # nothing to judge
    bad = argv + ["--outcome-template", "{question}", "--out", str(tmp_path / "bad")]
    assert analysis_cli.main(bad) == 2  # a template without {answer}: a usage error, before any sampling


def test_study_picks_models_and_renders_one_table_per_mode():
    from rlvr_jax.study.analyses import self_verification_models
    from rlvr_jax.study.render_self_verification import self_verification_section

    models = {
        "sft": {"label": "SFT", "kind": "anchor"},
        "rl_math": {"label": "RL-Math", "kind": "expert"},
        "rl_if": {"label": "RL-IF", "kind": "expert"},
        "merge_ties": {"label": "TIES merge", "kind": "merge"},
        "multi": {"label": "RL-Multi", "kind": "multi"},
    }
    names, skipped = self_verification_models("sft,experts,multi,multi_adaptive,main_merge,rl_math", models, "ties")
    assert names == ["sft", "rl_math", "rl_if", "multi", "merge_ties"] and skipped == ["multi_adaptive"]
    rows = [("math", True, {"outcome": YES, "process": BAD}), ("math", False, {"outcome": YES, "process": NO})]
    rows += [("if", False, {"outcome": NO, "process": NO}), ("if", True, {"outcome": BAD, "process": YES})]
    perfect = [(d, ok, {"outcome": YES if ok else NO, "process": YES if ok else NO}) for d, ok, _ in rows]
    results = {
        "models": models,
        "config": {"analysis": {"self_verification": {"samples": 2}}},
        "eval": {"items_per_domain": {"math": 300, "if": 300}},
        "self_verification": {"multi": sv.summarize(rows), "sft": sv.summarize(perfect)},
    }
    md = "\n".join(self_verification_section(results))
    assert md.startswith("## Self-verification") and "samples 2 answers to each of the first 1 eval items" in md
    outcome = md.split("Outcome", 1)[1].split("Process", 1)[0]
    assert "| model | Math | IF | All |" in outcome
    assert "| SFT | 100.00 (0.00) | 100.00 (0.00) | 100.00 (0.00) |" in outcome  # rows in the model table's order
    assert "| RL-Multi | 50.00 (0.00) | 50.00 (50.00) | 50.00 (25.00) |" in outcome
    process = md.split("Process", 1)[1].split("Base rate", 1)[0]
    assert "| RL-Multi | 50.00 (50.00) | 100.00 (0.00) | 75.00 (25.00) |" in process
    assert "| RL-Multi | 50.00 | 50.00 | 50.00 |" in md.split("Base rate", 1)[1]
    assert self_verification_section(dict(results, self_verification={})) == []
