"""`rlvr-eval --benchmark`: each benchmark's public rows load, get the benchmark's prompt, and score as its
reference scorer does on crafted responses (no model); the metrics and their standard errors; one end-to-end
run on a tiny random checkpoint."""

import gzip
import json
import math
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlvr_jax.eval import benchmarks
from rlvr_jax.eval.benchmark_metrics import accuracy, instruction_following, mean_and_stderr, pass_at
from rlvr_jax.verifiers import VerifierConfig, score

requires_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")


def write(tmp_path, rows, kind, name="bench"):
    path = tmp_path / f"{name}.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "jsonl.gz":
        with gzip.open(path, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    elif kind == "csv":
        import csv

        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows]), path)
    return str(path)


def scored_items(name, records, responses):
    """evaluate()'s items for one response per record, scored in this process under the benchmark's settings."""
    config, _ = benchmarks.scoring_config(name, VerifierConfig(allow_unsandboxed=False))
    items = []
    for r, resp in zip(records, responses):
        samples = resp if isinstance(resp, list) else [resp]
        scores = [score(r, s, thinking=False, config=config) for s in samples]
        items.append(
            {
                "id": r["id"],
                "domain": r["domain"],
                "correct": [float(s.reward >= 1.0) for s in scores],
                "details": [s.details for s in scores],
            }
        )
    return items


# ----------------------------------------------------------------------------- metrics


def test_stderr_is_over_items_with_samples_averaged_first():
    assert mean_and_stderr([1, 0, 1, 1]) == (0.75, pytest.approx(math.sqrt(0.25 / 4)))
    assert mean_and_stderr([1.0]) == (1.0, 0.0)
    items = [{"correct": c} for c in ([1, 0], [1, 1], [0, 0])]  # per item 0.5, 1, 0
    acc = accuracy(items)["accuracy"]
    assert acc["label"] == "accuracy (avg@2)" and acc["value"] == 0.5 and acc["n"] == 3
    assert acc["stderr"] == pytest.approx(math.sqrt(0.25 / 3))  # not sqrt(var over 6 samples / 6)
    with pytest.raises(ValueError, match="same number"):
        accuracy([{"correct": [1]}, {"correct": [1, 0]}])


def test_pass_at_k_is_the_unbiased_estimator():
    items = [{"correct": c} for c in ([1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0])]
    m = pass_at(items)
    assert set(m) == {"pass@1", "pass@4"} and m["pass@1"]["label"] == "pass@1 (avg@4)"
    assert m["pass@1"]["value"] == pytest.approx((0.25 + 0 + 0.5) / 3)
    assert m["pass@4"]["value"] == pytest.approx(2 / 3)
    ten = pass_at([{"correct": [1] + [0] * 19}])
    assert set(ten) == {"pass@1", "pass@10", "pass@20"}
    assert ten["pass@10"]["value"] == pytest.approx(1 - math.comb(19, 10) / math.comb(20, 10))  # = 0.5
    assert pass_at([{"correct": [1]}, {"correct": [0]}])["pass@1"]["label"] == "pass@1"


# ----------------------------------------------------------------------------- math


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_gsm8k(tmp_path, kind):
    rows = [
        {"question": "Tom has 1,000 apples and buys 234 more. How many?", "answer": "1000+234=1234\n#### 1,234"},
        {"question": "How many legs do 2 cats have?", "answer": "2*4=8\n#### 8"},
    ]
    records, skipped = benchmarks.load("gsm8k", write(tmp_path, rows, kind))
    assert not skipped and len(records) == 2
    assert records[0]["messages"] == [
        {"role": "user", "content": rows[0]["question"] + "\n" + benchmarks.MATH_DIRECTIVE}
    ]
    responses = ["1000 + 234 = 1234, so \\boxed{1,234}.", "Each cat has 4 legs: \\boxed{6}"]
    items = scored_items("gsm8k", records, responses)
    assert [it["correct"] for it in items] == [[1.0], [0.0]]
    m = benchmarks.report("gsm8k", items)
    assert m["accuracy"]["value"] == 0.5 and m["accuracy"]["stderr"] == pytest.approx(0.5)
    assert benchmarks.metric_lines("gsm8k", m) == ["gsm8k accuracy = 0.5000 ± 0.5000 (n=2)"]


def test_math500_and_aime(tmp_path):
    math500 = [
        {
            "problem": "Simplify $\\frac{2}{4}$.",
            "solution": "It is $\\boxed{\\frac{1}{2}}$.",
            "answer": "\\frac{1}{2}",
            "subject": "Algebra",
            "level": 1,
            "unique_id": "test/algebra/1.json",
        }
    ]
    records, _ = benchmarks.load("math500", write(tmp_path, math500, "jsonl", "math500"))
    assert records[0]["id"] == "test/algebra/1.json"
    assert records[0]["messages"][-1]["content"].endswith(
        "\nPlease reason step by step, and put your final answer within \\boxed{}."
    )
    items = scored_items("math500", records, [["So \\boxed{0.5}", "So \\boxed{1/3}"]])
    assert items[0]["correct"] == [1.0, 0.0]  # math-verify: 0.5 == 1/2
    assert benchmarks.report("math500", items)["accuracy"]["label"] == "accuracy (avg@2)"
    # AIME as two hubs carry it: integer answers in parquet (2024), `question` text (2025), one file each
    y2024 = write(
        tmp_path, [{"id": 60, "problem": "Find N.", "answer": 204, "solution": "...", "year": 2024}], "parquet", "a24"
    )
    y2025 = write(tmp_path, [{"question": "Find M.", "answer": "70"}], "jsonl", "a25")
    records, _ = benchmarks.load("aime", f"{y2024},{y2025}")
    assert [r["ground_truth"]["answers"] for r in records] == [["204"], ["70"]]
    assert [r["id"] for r in records] == ["aime/60", "aime/a25/1"]
    items = scored_items("aime", records, ["\\boxed{204}", "\\boxed{071}"])
    assert [it["correct"] for it in items] == [[1.0], [0.0]]


# ----------------------------------------------------------------------------- GPQA


def gpqa_row(i):
    return {
        "Question": f"Which particle is number {i}?",
        "Correct Answer": f"right{i}",
        "Incorrect Answer 1": f"wrong{i}a",
        "Incorrect Answer 2": f"wrong{i}b",
        "Incorrect Answer 3": f"wrong{i}c",
        "Explanation": "...",
        "Subdomain": "Physics",
        "High-level domain": "Physics",
        "Record ID": f"rec{i}",
    }


def test_gpqa_template_shuffle_and_answer_line(tmp_path):
    path = write(tmp_path, [gpqa_row(i) for i in range(6)], "csv", "gpqa_diamond")
    records, _ = benchmarks.load("gpqa", path)
    again, _ = benchmarks.load("gpqa", path)
    assert [r["messages"] for r in records] == [r["messages"] for r in again]  # seeded per item, not per run
    letters = [r["ground_truth"]["answer"] for r in records]
    assert len(set(letters)) > 1  # the shuffle moves the right answer
    text = records[0]["messages"][0]["content"]
    assert text.startswith(benchmarks.GPQA_INSTRUCTION + "\n\nWhich particle is number 0?\n\nA) ")
    right = letters[0]
    assert f"{right}) right0" in text
    wrong = next(x for x in "ABCD" if x != letters[2])
    items = scored_items(
        "gpqa",
        records[:3],
        [f"Thinking...\nAnswer: {right}", f"The answer is {records[1]['ground_truth']['answer']}", f"Answer: {wrong}"],
    )
    # simple-evals reads only an "Answer: X" line: "the answer is X" is no answer there, nor here (study form)
    assert [it["correct"] for it in items] == [[1.0], [0.0], [0.0]]
    assert benchmarks.report("gpqa", items)["accuracy"]["value"] == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------- IFEval / IFBench


def ifeval_rows():
    none_kwargs = {"end_phrase": None, "num_highlights": None, "relation": None}
    return [
        {
            "key": 1000,
            "prompt": "Write a note. Do not use commas. End it with 'Any other questions?'",
            "instruction_id_list": ["punctuation:no_comma", "startend:end_checker"],
            "kwargs": [dict(none_kwargs), {**none_kwargs, "end_phrase": "Any other questions?"}],
        },
        {
            "key": 1001,
            "prompt": "Write two lines without commas.",
            "instruction_id_list": ["punctuation:no_comma"],
            "kwargs": [dict(none_kwargs)],
        },
    ]


@pytest.mark.parametrize("name", ["ifeval", "ifbench"])
def test_ifeval_official_strict_and_loose(tmp_path, name):
    records, _ = benchmarks.load(name, write(tmp_path, ifeval_rows(), "parquet", name))
    assert records[0]["messages"] == [{"role": "user", "content": ifeval_rows()[0]["prompt"]}]
    assert records[0]["ground_truth"]["kwargs"] == [{}, {"end_phrase": "Any other questions?"}]
    responses = [
        # the reference strips the quotes around the response before checking its end: both hold
        '"Here is the note without any pause. Any other questions?"',
        # a comma on the first line only: strict fails, loose (first line dropped) holds
        "Sure, here it is:\nline one\nline two",
    ]
    items = scored_items(name, records, responses)
    m = benchmarks.report(name, items)
    assert list(m) == [
        "prompt_level_strict_acc",
        "inst_level_strict_acc",
        "prompt_level_loose_acc",
        "inst_level_loose_acc",
    ]
    assert m["prompt_level_strict_acc"]["value"] == 0.5 and m["prompt_level_strict_acc"]["n"] == 2
    assert m["inst_level_strict_acc"]["value"] == pytest.approx(2 / 3) and m["inst_level_strict_acc"]["n"] == 3
    assert m["prompt_level_loose_acc"]["value"] == 1.0 and m["inst_level_loose_acc"]["value"] == 1.0
    assert m["prompt_level_loose_acc"]["stderr"] == 0.0
    assert m["inst_level_strict_acc"]["stderr"] == pytest.approx(math.sqrt((1 / 3) / 3))
    lines = benchmarks.metric_lines(name, m)
    assert lines[0] == f"{name} prompt-level strict accuracy = 0.5000 ± 0.5000 (n=2)"


def test_if_metrics_need_official_details():
    with pytest.raises(ValueError, match="carry no 'prompt_strict'"):
        instruction_following([{"id": "x", "correct": [1.0], "details": [{"fraction": 1.0}]}])


# ----------------------------------------------------------------------------- LiveCodeBench


def lcb_rows():
    stdin = {
        "question_title": "Add one",
        "question_content": "Read n and print n + 1.",
        "platform": "atcoder",
        "question_id": "abc1",
        "contest_date": "2024-08-01T00:00:00",
        "starter_code": "",
        "difficulty": "easy",
        "public_test_cases": json.dumps([{"input": "1\n", "output": "2\n", "testtype": "stdin"}]),
        "private_test_cases": json.dumps([{"input": "41\n", "output": "42\n", "testtype": "stdin"}]),
        "metadata": "{}",
    }
    func = {
        **stdin,
        "question_title": "Sum plus k",
        "question_content": "Return sum(a) + k.",
        "platform": "leetcode",
        "question_id": "lc2",
        "starter_code": "class Solution:\n    def solve(self, a: List[int], k: int) -> int:\n        ",
        "public_test_cases": json.dumps([{"input": "[1, 2]\n3", "output": "6", "testtype": "functional"}]),
        "private_test_cases": json.dumps([{"input": "[]\n0", "output": "0", "testtype": "functional"}]),
        "metadata": json.dumps({"func_name": "solve"}),
    }
    return [stdin, func]


def test_livecodebench_template(tmp_path):
    records, _ = benchmarks.load("livecodebench", write(tmp_path, lcb_rows(), "jsonl", "test6"))
    stdin, func = (r["messages"] for r in records)
    assert stdin[0] == {"role": "system", "content": benchmarks.LCB_SYSTEM}
    assert stdin[1]["content"] == (
        "### Question:\nRead n and print n + 1.\n\n"
        f"### Format: {benchmarks.LCB_WITHOUT_STARTER}\n```python\n# YOUR CODE HERE\n```\n\n"
        "### Answer: (use the provided format with backticks)\n\n"
    )
    starter = lcb_rows()[1]["starter_code"]
    assert func[1]["content"] == (
        "### Question:\nReturn sum(a) + k.\n\n"
        f"### Format: {benchmarks.LCB_WITH_STARTER}\n```python\n{starter}\n```\n\n"
        "### Answer: (use the provided format with backticks)\n\n"
    )


@requires_bwrap
def test_livecodebench_scores_stdin_and_functional_tests(tmp_path):
    records, _ = benchmarks.load("livecodebench", write(tmp_path, lcb_rows(), "parquet", "test6"))
    good = [
        "```python\nn = int(input())\nprint(n + 1)\n```",
        "```python\nclass Solution:\n    def solve(self, a: List[int], k: int) -> int:\n        return sum(a) + k\n```",
    ]
    bad_private = "```python\nn = int(input())\nprint(2)\n```"  # passes the public test only
    items = scored_items("livecodebench", records, [[good[0], bad_private], good[1]])
    assert [it["correct"] for it in items] == [[1.0, 0.0], [1.0]]


def test_unknown_benchmark_and_missing_data(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'mmlu'"):
        benchmarks.load("mmlu", "x.jsonl")
    with pytest.raises(ValueError, match="pass --data FILE"):
        benchmarks.load("gsm8k", "builtin")
    with pytest.raises(ValueError, match=r"bench\.jsonl:1: field 'answer'"):
        benchmarks.load("gsm8k", write(tmp_path, [{"question": "q", "answer": "no marker"}], "jsonl"))


def test_scoring_config_overrides_flags_and_says_so():
    cfg, notes = benchmarks.scoring_config("gpqa", VerifierConfig(science_form="lenient", if_mode="reward"))
    assert cfg.science_form == "study" and cfg.if_mode == "reward"
    assert notes == ["gpqa scores with science_form='study' (not 'lenient')"]
    cfg, notes = benchmarks.scoring_config("ifeval", VerifierConfig(if_mode="official"))
    assert cfg.if_mode == "official" and notes == []
    cfg, _ = benchmarks.scoring_config("humaneval", VerifierConfig(code_max_tests=20))
    assert cfg.code_max_tests == 0  # a published pass@1 runs every test


# ----------------------------------------------------------------------------- end to end


def test_rlvr_eval_benchmark_gsm8k_end_to_end(tmp_path, capsys):
    from rlvr_jax.eval import evaluate
    from tests.hf_fixtures import save_hf_model
    from tests.test_generate_cli import write_tokenizer

    ckpt = tmp_path / "tiny"
    ckpt.mkdir()
    save_hf_model("qwen3", ckpt, seed=4)
    write_tokenizer(ckpt)
    rows = [{"question": f"w{i} w{i + 1}", "answer": f"so\n#### {i}"} for i in range(3)]
    data, out = write(tmp_path, rows, "parquet", "test-00000-of-00001"), tmp_path / "eval.json"
    argv = ["--checkpoint", str(ckpt), "--benchmark", "gsm8k", "--data", data, "--no-thinking", "--workers", "1"]
    assert (
        evaluate.main([*argv, "--samples", "2", "--max-new-tokens", "4", "--num-slots", "6", "--output", str(out)]) == 0
    )
    err = capsys.readouterr().err
    # a random model never writes \boxed{}: every sample is wrong, the line says so in the benchmark's terms
    assert "gsm8k accuracy (avg@2) = 0.0000 ± 0.0000 (n=3)" in err.splitlines()
    res = json.loads(out.read_text())
    assert res["benchmark"]["name"] == "gsm8k" and res["benchmark"]["metrics"]["accuracy"]["n"] == 3
    assert len(res["items"]) == 3 and all(len(it["correct"]) == 2 for it in res["items"])


# ----------------------------------------------------------------------------- HumanEval / MBPP

HUMANEVAL_ROWS = [
    {
        "task_id": "HumanEval/900",
        "prompt": 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum of xs.\n    >>> total([1, 2])\n    3\n    """\n',
        "canonical_solution": "    return sum(xs)\n",
        "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n",
        "entry_point": "total",
    },
    {
        "task_id": "HumanEval/901",
        "prompt": 'def close(a: float, b: float) -> bool:\n    """Whether a and b differ by under 1e-6."""\n',
        "canonical_solution": "    return abs(a - b) < 1e-6\n",
        "test": "def check(candidate):\n    assert candidate(1.0, 1.0 + 1e-9)\n    assert not candidate(1.0, 1.1)\n",
        "entry_point": "close",
    },
]


def test_humaneval_template(tmp_path):
    records, _ = benchmarks.load("humaneval", write(tmp_path, HUMANEVAL_ROWS, "jsonl.gz", "HumanEval"))
    assert [r["id"] for r in records] == ["HumanEval/900", "HumanEval/901"]
    assert records[0]["messages"] == [
        {
            "role": "user",
            "content": f"{benchmarks.EVALPLUS_INSTRUCTION}\n```\n{HUMANEVAL_ROWS[0]['prompt'].strip()}\n```\n",
        }
    ]


@requires_bwrap
def test_humaneval_and_mbpp_score_assert_tests(tmp_path):
    records, _ = benchmarks.load("humaneval", write(tmp_path, HUMANEVAL_ROWS, "parquet", "openai_humaneval"))
    whole = "```python\nfrom typing import List\n\ndef total(xs: List[int]) -> int:\n    return sum(xs)\n```"
    body_only = "```python\n" + HUMANEVAL_ROWS[1]["canonical_solution"] + "```"  # continues the prompt's stub
    none = "```python\ndef close(a, b):\n    return None\n```"
    items = scored_items("humaneval", records, [whole, [body_only, none]])
    assert [it["correct"] for it in items] == [[1.0], [1.0, 0.0]]
    mbpp_rows = [
        {
            "task_id": 11,
            "text": "Write a python function to remove first and last occurrence of a given character from the string.",
            "code": "def remove_Occ(s, ch):\n    i = s.index(ch)\n    s = s[:i] + s[i + 1:]\n    j = s.rindex(ch)\n    return s[:j] + s[j + 1:]",
            "test_list": ['assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("abcda","a") == "bcd"'],
            "test_setup_code": "",
            "challenge_test_list": [],
        }
    ]
    mbpp, _ = benchmarks.load("mbpp", write(tmp_path, mbpp_rows, "parquet", "mbpp_test"))
    prompt = mbpp[0]["messages"][0]["content"]
    assert prompt.startswith("You are an expert Python programmer, and here is your task: Write a python function")
    assert 'assert remove_Occ("abcda","a") == "bcd"' in prompt
    good = f"```python\n{mbpp_rows[0]['code']}\n```"
    fake = '```python\nimport sys\ndef remove_Occ(s, ch):\n    sys.exit(0)\n```'  # exits before the asserts fail
    items = scored_items("mbpp", mbpp, [[good, fake]])
    assert items[0]["correct"] == [1.0, 0.0]
    m = benchmarks.report("mbpp", items)
    assert set(m) == {"pass@1", "pass@2"} and m["pass@1"]["value"] == 0.5 and m["pass@2"]["value"] == 1.0
