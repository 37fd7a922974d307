"""Built-in tasks: deterministic, disjoint splits, valid records, short references that the real
verifiers score 1 (and 0 once corrupted), and `rlvr-data export` feeding `rlvr-verify`."""

import contextlib
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from unittest import mock

import pytest

from rlvr_jax.data import cli, synthetic
from rlvr_jax.data.records import load_records, validate_record
from rlvr_jax.model.tokenizer import builtin_tokenizer, completion_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_COMPLETION_TOKENS = 64  # the tiny model generates at most ~64-96 tokens


def digest(records) -> str:
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()


def test_deterministic_across_processes():
    here = digest([synthetic.builtin_records(d, s, 30) for d in synthetic.DOMAINS for s in synthetic.SPLITS])
    code = (
        "import hashlib, json; from rlvr_jax.data import synthetic as s; "
        "print(hashlib.sha256(json.dumps([s.builtin_records(d, p, 30) for d in s.DOMAINS for p in s.SPLITS], "
        "sort_keys=True).encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == here
    # Records are prefix-stable in n, and callers get copies they may mutate.
    a = synthetic.builtin_records("code", "train", 5)
    a[0]["messages"][0]["content"] = "changed"
    assert synthetic.builtin_records("code", "train", 10)[:5] != a
    assert synthetic.builtin_records("code", "train", 10)[1:5] == a[1:]


@pytest.mark.parametrize("domain", synthetic.DOMAINS)
def test_sizes_splits_disjoint_and_valid(domain):
    train = synthetic.builtin_records(domain, "train")
    held = synthetic.builtin_records(domain, "eval")
    assert (len(train), len(held)) == (synthetic.SIZES["train"][domain], synthetic.SIZES["eval"][domain])
    prompts = [r["messages"][0]["content"] for r in train]
    assert len(set(prompts)) == len(prompts)
    assert not set(prompts) & {r["messages"][0]["content"] for r in held}
    assert len({r["id"] for r in train + held}) == len(train) + len(held)
    for r in train + held:
        validate_record(r, file=f"builtin/{domain}", line=r["id"])
        assert r["metadata"]["reference"].startswith("<think>\n") and "\n</think>\n\n" in r["metadata"]["reference"]


@pytest.mark.parametrize("domain", synthetic.DOMAINS)
def test_sft_records_never_share_a_prompt_with_rl_or_held_out(domain):
    sft = synthetic.sft_records(domain)
    assert len(sft) == synthetic.SIZES["sft"][domain]
    prompts = {r["messages"][0]["content"] for r in sft}
    assert len(prompts) == len(sft)
    for split in synthetic.SPLITS:
        assert not prompts & {r["messages"][0]["content"] for r in synthetic.builtin_records(domain, split)}
    assert all(r["id"].startswith(f"builtin-{domain}-sft-") and r["metadata"]["split"] == "sft" for r in sft)
    # A larger RL set moves the warm-start records along with it.
    more_rl = {r["messages"][0]["content"] for r in synthetic.builtin_records(domain, "train", 300)}
    assert not more_rl & {r["messages"][0]["content"] for r in synthetic.sft_records(domain, 50, train_size=300)}
    for r in sft[:20]:
        validate_record(r, file=f"builtin-sft/{domain}", line=r["id"])


def test_exhausted_prompt_space_is_an_error():
    with pytest.raises(ValueError, match="ran out of distinct prompts after 2"):
        synthetic.builtin_records("code", "eval", 10_000)
    with pytest.raises(ValueError, match="unknown domain"):
        synthetic.builtin_records("poetry", "train")


def test_up_to_returns_every_held_out_prompt_when_fewer_exist():
    every = synthetic.builtin_records("code", "eval", 10_000, up_to=True)
    assert 200 <= len(every) < 10_000
    assert len({r["messages"][0]["content"] for r in every}) == len(every)
    assert every[:200] == synthetic.builtin_records("code", "eval")  # prefix-stable
    with pytest.raises(ValueError, match=f"ran out of distinct prompts after {len(every)}"):
        synthetic.builtin_records("code", "eval", len(every) + 1)
    assert len(synthetic.builtin_records("math", "eval", 500, up_to=True)) == 500


def test_references_are_short_under_the_builtin_tokenizer():
    tok = builtin_tokenizer()
    for domain in synthetic.DOMAINS:
        for r in synthetic.builtin_records(domain, "train"):
            completion = completion_for(r["metadata"]["reference"], thinking=True) + tok.end_of_turn
            n = len(tok.encode(completion))
            assert n <= MAX_COMPLETION_TOKENS, (domain, n, r["metadata"]["reference"])


def test_science_options_distinct_and_the_letter_fixed_per_question():
    letters, letter_of, distractors_of = [], {}, {}
    for r in synthetic.builtin_records("science", "train", 300) + synthetic.builtin_records("science", "eval"):
        question, *option_lines, _ = r["messages"][0]["content"].split("\n")
        options = [re.fullmatch(r"([A-D])\. (.+)", line).groups() for line in option_lines]
        assert [o[0] for o in options] == list("ABCD") and len({o[1] for o in options}) == 4
        letter = r["ground_truth"]["answer"]
        assert letter_of.setdefault(question, letter) == letter, question  # same question, same letter
        distractors_of.setdefault(question, set()).add(tuple(o[1] for o in options if o[0] != letter))
        letters.append(letter)
    assert min(letters.count(x) for x in "ABCD") > 40, [letters.count(x) for x in "ABCD"]
    # The distractors vary, so a question is asked by many prompts, in both splits.
    assert sum(len(d) > 1 for d in distractors_of.values()) > 0.8 * len(distractors_of)


def run_trusted(program: str, stdin: str) -> str:
    # In-process and unsandboxed: only for our own reference programs, never model output.
    out = io.StringIO()
    with contextlib.redirect_stdout(out), mock.patch("sys.stdin", io.StringIO(stdin)):
        exec(compile(program, "reference", "exec"), {"__name__": "__main__"})
    return out.getvalue()


def test_code_tests_match_the_reference_program():
    families = set()
    for r in synthetic.builtin_records("code", "train") + synthetic.builtin_records("code", "eval"):
        program = r["metadata"]["reference"].split("```python\n", 1)[1].rsplit("\n```", 1)[0]
        tests = r["ground_truth"]["tests"]
        # Five tests with at least two distinct outputs: a constant program cannot pass.
        assert len(tests) == 5 and len({t["output"] for t in tests}) >= 2, r["messages"]
        for t in tests:
            assert run_trusted(program, t["input"]) == t["output"], (r["messages"][0]["content"], t)
        families.add(r["metadata"]["task"])
    assert len(families) == 10


# ---- against the real verifiers --------------------------------------------------------------
verifiers = pytest.importorskip("rlvr_jax.verifiers")


def corrupt(record) -> str:
    """A response with the reference's format but a wrong answer."""
    ref = record["metadata"]["reference"]
    head, answer = ref.rsplit("</think>\n\n", 1)
    domain = record["domain"]
    if domain == "math":
        gold = int(record["ground_truth"]["answers"][0])
        bad = answer.replace(f"\\boxed{{{gold}}}", f"\\boxed{{{gold + 1}}}")
    elif domain == "science":
        letter = record["ground_truth"]["answer"]
        bad = f"Answer: {'ABCD'[('ABCD'.index(letter) + 1) % 4]}"
    elif domain == "code":
        bad = re.sub(r"print\((.*)\)\n```$", r"print(\1, 'x')\n```", answer)
    else:  # breaks every built-in instruction: commas, mixed case, too long, forbidden words, ...
        bad = "Word, word. " * 60 + "banana winter happy computer ocean yellow music doctor"
    assert bad != answer
    return f"{head}</think>\n\n{bad}"


def sample(domain):
    # Code runs in the sandbox (slow): one record per task family; the other domains in full.
    records = synthetic.builtin_records(domain, "eval")
    if domain != "code":
        return records
    by_family = {}
    for r in records + synthetic.builtin_records(domain, "train", 300):
        by_family.setdefault(r["metadata"]["task"], r)
    return list(by_family.values())


@pytest.mark.parametrize("domain", synthetic.DOMAINS)
def test_references_score_one_and_corruptions_zero(domain):
    for r in sample(domain):
        good = verifiers.score(r, r["metadata"]["reference"], thinking=True)
        assert (good.reward, good.reason) == (1.0, "ok"), (r["id"], good)
        bad = verifiers.score(r, corrupt(r), thinking=True)
        assert bad.reward == 0.0, (r["id"], bad)
        # The thinking gate: no `</think>`, no reward.
        unclosed = r["metadata"]["reference"].replace("</think>", "")
        assert verifiers.score(r, unclosed, thinking=True).reward == 0.0


def test_export_feeds_rlvr_verify(tmp_path, capsys):
    verify = pytest.importorskip("rlvr_jax.verifiers.cli")
    path, scored = tmp_path / "eval.jsonl", tmp_path / "scores.jsonl"
    assert (
        cli.main(
            [
                "export",
                "--builtin",
                "--domain",
                "all",
                "--split",
                "eval",
                "--n",
                "3",
                "--with-reference",
                "--output",
                str(path),
            ]
        )
        == 0
    )
    records, _ = load_records(str(path))
    assert len(records) == 12 and all(r["response"] == r["metadata"]["reference"] for r in records)
    assert verify.main(["--input", str(path), "--output", str(scored), "--thinking", "--workers", "0"]) == 0
    rows = [json.loads(line) for line in scored.read_text().splitlines()]
    assert [r["reward"] for r in rows] == [1.0] * 12
