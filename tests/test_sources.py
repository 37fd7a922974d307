"""Source converters: small files in each public dataset's row format, as JSONL and parquet."""

import base64
import json
import pickle
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlvr_jax.data import cli, sources
from rlvr_jax.data.records import RecordError, load_records
from rlvr_jax.data.sources.code import DEFAULT_TIME_LIMIT_S


def write(tmp_path, rows, kind, name="src"):
    path = tmp_path / f"{name}.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:  # a parquet file has one schema: absent keys become nulls, as in real exports
        keys = list(dict.fromkeys(k for r in rows for k in r))
        pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows]), path)
    return str(path)


def convert(tmp_path, fmt, rows, kind="jsonl", **kw):
    return sources.convert_file(fmt, write(tmp_path, rows, kind), **kw)


BOTH = pytest.mark.parametrize("kind", ["jsonl", "parquet"])


@BOTH
def test_gsm8k(tmp_path, kind):
    rows = [
        {"question": "How many?", "answer": "2 + 2 = 4\n#### 1,234"},
        {"question": "And now?", "answer": "so\n#### -7"},
    ]
    out, skipped = convert(tmp_path, "gsm8k", rows, kind)
    assert [r["ground_truth"]["answers"] for r in out] == [["1234"], ["-7"]]
    assert out[0]["messages"] == [{"role": "user", "content": "How many?"}] and out[0]["id"] == "gsm8k/src/1"
    with pytest.raises(RecordError, match=r"src\.jsonl:2: field 'answer': no '#### <number>'"):
        convert(tmp_path, "gsm8k", [rows[0], {"question": "q", "answer": "no marker"}])


@BOTH
def test_math_and_math500(tmp_path, kind):
    rows = [
        {
            "problem": "P1",
            "level": "Level 5",
            "type": "Algebra",
            "solution": "So \\boxed{1} first, then $\\boxed{\\frac{a}{b^{2}}}$.",
        },
        {
            "problem": "P2",
            "solution": "...",
            "answer": "\\sqrt{2}",
            "unique_id": "test/x/1.json",
            "level": "Level 1",
            "type": "Geometry",
        },
        {"problem": "P3", "solution": "fbox: \\fbox{ 7 }"},
    ]
    out, _ = convert(tmp_path, "math", rows, kind)
    assert [r["ground_truth"]["answers"][0] for r in out] == ["\\frac{a}{b^{2}}", "\\sqrt{2}", "7"]
    assert out[1]["id"] == "test/x/1.json" and out[0]["metadata"]["type"] == "Algebra"
    with pytest.raises(RecordError, match="field 'solution'"):
        convert(tmp_path, "math500", [{"problem": "P", "solution": "unboxed \\boxed{1"}])


def test_deepscaler_skips_empty_answers(tmp_path):
    rows = [
        {"problem": "a", "answer": "3", "solution": ""},
        {"problem": "b", "answer": "", "solution": "s"},
        {"problem": "c", "answer": None, "solution": "s"},
    ]
    out, skipped = convert(tmp_path, "deepscaler", rows)
    assert len(out) == 1 and skipped == {"empty_answer": 2}


@BOTH
def test_dapo_dedup(tmp_path, kind):
    def row(i, q, gt):
        return {
            "data_source": "math_dapo",
            "ability": "MATH",
            "prompt": [{"role": "user", "content": q}],
            "reward_model": {"ground_truth": gt, "style": "rule-lm"},
            "extra_info": {"index": i},
        }

    rows = [row("a", "Q1", "34"), row("b", "Q2", "5"), row("a", "Q1", "34"), row("a", "Q1", "34")]
    out, skipped = convert(tmp_path, "dapo17k", rows, kind)
    assert [(r["id"], r["ground_truth"]["answers"]) for r in out] == [("dapo17k/a", ["34"]), ("dapo17k/b", ["5"])]
    assert skipped == {"duplicate": 2}


def nemotron_rows():
    def base(dataset, uid, **kw):
        return {
            "dataset": dataset,
            "uuid": uid,
            "responses_create_params": {
                "input": [
                    {"role": "developer", "content": "Think first."},
                    {"role": "user", "content": f"question {uid}"},
                ]
            },
            "expected_answer": None,
            "options": None,
            "instruction_id_list": None,
            "kwargs": None,
            "prompt": None,
            "verifier_metadata": None,
            **kw,
        }

    return [
        base("nano_v3_dapo17k", "m1", expected_answer="42"),
        base("nano_v3_skywork_no_omni", "m2", expected_answer="\\frac{1}{3}"),
        base("nano_v3_stem_mcqa", "s1", expected_answer="b", options=[{"A": "x"}, {"B": "y"}, {"C": "z"}, {"D": "w"}]),
        base(
            "nano_v3_instruction_following",
            "i1",
            prompt="Write a poem.",
            instruction_id_list=["punctuation:no_comma", "length_constraints:number_words"],
            kwargs=[{}, {"num_words": 0, "relation": "at least"}],
        ),
        base(
            "nano_v3_comp_coding_50tests",
            "c1",
            verifier_metadata={"unit_tests": {"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]}},
        ),
        base("nano_v3_workbench", "w1"),
        base("nano_v3_structured_outputs", "o1"),
    ]


@BOTH
def test_nemotron_all_domains(tmp_path, kind):
    out, skipped = convert(tmp_path, "nemotron", nemotron_rows(), kind)
    by_id = {r["id"]: r for r in out}
    assert [r["domain"] for r in out] == ["math", "math", "science", "if", "code"]
    assert by_id["m2"]["ground_truth"] == {"answers": ["\\frac{1}{3}"]}
    assert by_id["m1"]["messages"][0] == {"role": "system", "content": "Think first."}
    assert by_id["s1"]["ground_truth"] == {"answer": "B", "choices": ["A", "B", "C", "D"]}
    # Parquet unifies the kwargs structs and fills absent keys with None: only None is dropped, 0 kept.
    assert by_id["i1"]["ground_truth"]["kwargs"] == [{}, {"num_words": 0, "relation": "at least"}]
    assert by_id["i1"]["ground_truth"]["prompt"] == "Write a poem."
    assert by_id["c1"]["ground_truth"]["tests"] == [
        {"input": "1 2\n", "output": "3\n"},
        {"input": "3 4\n", "output": "7\n"},
    ]
    assert by_id["c1"]["ground_truth"]["time_limit_s"] == DEFAULT_TIME_LIMIT_S
    assert skipped == {"out_of_scope:nano_v3_workbench": 1, "out_of_scope:nano_v3_structured_outputs": 1}


@BOTH
def test_taco_apps(tmp_path, kind):
    rows = [
        {
            "question": "Sum two ints.",
            "starter_code": "",
            "time_limit": "2 seconds",
            "memory_limit": "256 megabytes",
            "difficulty": "EASY",
            "source": "codeforces",
            "tags": [],
            "input_output": json.dumps({"inputs": ["1 2\n", "5 5\n"], "outputs": ["3\n", ["10"]]}),
        },
        {
            "question": "Implement add.",
            "starter_code": "def add(a, b):\n",
            "time_limit": None,
            "memory_limit": None,
            "difficulty": "EASY",
            "source": "leetcode",
            "tags": [],
            "input_output": json.dumps(
                {"fn_name": "add", "inputs": [[1, 2], [[1], [2, 3]]], "outputs": [[3], [[1, 2, 3]]]}
            ),
        },
        {
            "question": "No tests.",
            "starter_code": "",
            "input_output": "",
            "time_limit": None,
            "memory_limit": None,
            "difficulty": "EASY",
            "source": "x",
            "tags": [],
        },
    ]
    out, skipped = convert(tmp_path, "taco", rows, kind)
    stdin, call = out
    assert stdin["ground_truth"]["tests"][1] == {"input": "5 5\n", "output": "10"}
    assert (stdin["ground_truth"]["time_limit_s"], stdin["ground_truth"]["memory_limit_mb"]) == (2.0, 256)
    assert call["ground_truth"]["fn_name"] == "add"
    # One JSON value per line per argument; the [result] wrapper is removed.
    assert call["ground_truth"]["tests"] == [
        {"input": "1\n2", "output": "3"},
        {"input": "[1]\n[2, 3]", "output": "[1, 2, 3]"},
    ]
    assert call["messages"][0]["content"].endswith("def add(a, b):\n") and skipped == {"no_tests": 1}


def test_code_contests(tmp_path):
    row = {
        "name": "1A. Theatre",
        "description": "Tiles.",
        "difficulty": 7,
        "public_tests": {"input": ["6 6 4\n"], "output": ["4\n"]},
        "private_tests": {"input": ["1 1 1\n"], "output": ["1\n"]},
        "generated_tests": {"input": ["2 2 1\n"], "output": ["4\n"]},
        "time_limit": {"seconds": 1, "nanos": 500000000},
        "memory_limit_bytes": 268435456,
    }
    out, _ = convert(tmp_path, "code_contests", [row], "parquet")
    gt = out[0]["ground_truth"]
    assert len(gt["tests"]) == 2 and (gt["time_limit_s"], gt["memory_limit_mb"]) == (1.5, 256)
    out, _ = convert(tmp_path, "code_contests", [row], include_generated_tests=True)
    assert len(out[0]["ground_truth"]["tests"]) == 3


def lcb_row(private, testtype="stdin", **kw):
    return {
        "question_title": "T",
        "question_content": "Do it.",
        "platform": "atcoder",
        "question_id": "abc1",
        "contest_date": "2024-08-01T00:00:00",
        "starter_code": "",
        "difficulty": "easy",
        "public_test_cases": json.dumps([{"input": "1\n", "output": "2\n", "testtype": testtype}]),
        "private_test_cases": private,
        "metadata": json.dumps({}),
        **kw,
    }


def test_livecodebench(tmp_path):
    stdin = lcb_row(json.dumps([{"input": "5\n", "output": "6\n", "testtype": "stdin"}]))
    func = lcb_row(
        json.dumps([{"input": "[1, 2]\n3", "output": "4", "testtype": "functional"}]),
        "functional",
        public_test_cases=json.dumps([{"input": "[0]\n1\n", "output": "1", "testtype": "functional"}]),
        metadata=json.dumps({"func_name": "solve"}),
        starter_code="class Solution:\n    def solve(self, a, k):",
    )
    out, _ = convert(tmp_path, "livecodebench", [stdin, func], "parquet")
    assert out[0]["ground_truth"]["tests"] == [{"input": "1\n", "output": "2\n"}, {"input": "5\n", "output": "6\n"}]
    assert out[0]["ground_truth"]["fn_name"] is None and out[0]["id"] == "livecodebench/abc1"
    assert out[1]["ground_truth"]["fn_name"] == "solve"
    assert out[1]["ground_truth"]["tests"] == [
        {"input": "[0]\n1", "output": "1"},
        {"input": "[1, 2]\n3", "output": "4"},
    ]


def test_livecodebench_never_unpickles(tmp_path, monkeypatch):
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    encoded = base64.b64encode(zlib.compress(pickle.dumps(json.dumps([{"input": "1", "output": "1"}])))).decode()
    with pytest.raises(RecordError, match="field 'private_test_cases': not JSON .*never unpickles"):
        convert(tmp_path, "livecodebench", [lcb_row(encoded)])
    out, skipped = convert(tmp_path, "livecodebench", [lcb_row(encoded)], skip_invalid=True)
    assert out == [] and skipped == {"invalid:private_test_cases": 1}


def gpqa_rows():
    return [
        {
            "Question": f"Q{i}?",
            "Correct Answer": f"right{i}",
            "Incorrect Answer 1": "w1",
            "Incorrect Answer 2": "w2",
            "Incorrect Answer 3": "w3",
            "Explanation": "",
            "Subdomain": "Physics",
            "High-level domain": "Physics",
            "Record ID": f"rec{i}",
        }
        for i in range(12)
    ]


@BOTH
def test_gpqa_shuffle_recorded_and_seeded(tmp_path, kind):
    out, _ = convert(tmp_path, "gpqa", gpqa_rows(), kind, seed=5)
    again, _ = convert(tmp_path, "gpqa", gpqa_rows(), kind, seed=5)
    other, _ = convert(tmp_path, "gpqa", gpqa_rows(), kind, seed=6)
    assert out == again and out != other
    letters = set()
    for r in out:
        gt, meta = r["ground_truth"], r["metadata"]
        i = r["id"].removeprefix("gpqa/rec")
        shown = r["messages"][0]["content"].split("\n\n", 1)[1].split("\n")
        assert shown[ord(gt["answer"]) - ord("A")] == f"{gt['answer']}) right{i}"
        assert meta["shuffle_seed"] == 5 and sorted(meta["permutation"]) == [0, 1, 2, 3]
        assert meta["permutation"][ord(gt["answer"]) - ord("A")] == 0
        letters.add(gt["answer"])
    assert len(letters) > 1  # the correct option does not always land on the same letter


def test_gpqa_csv(tmp_path):
    import csv

    path = tmp_path / "gpqa_diamond.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(gpqa_rows()[0]))
        w.writeheader()
        w.writerows(gpqa_rows()[:2])
    out, _ = sources.convert_file("gpqa", str(path), seed=5)
    jsonl, _ = convert(tmp_path, "gpqa", gpqa_rows()[:2], seed=5)
    assert out == jsonl
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=list(gpqa_rows()[0])).writerow({**gpqa_rows()[2], "Question": ""})
    with pytest.raises(RecordError, match=r"gpqa_diamond\.csv:4: field 'Question'"):
        sources.convert_file("gpqa", str(path))


@BOTH
def test_ifeval_and_ifbench(tmp_path, kind):
    rows = [
        {
            "key": 1000,
            "prompt": "Write a letter.",
            "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
            "kwargs": [{"num_words": None, "relation": None}, {"num_words": 300, "relation": "at least"}],
        },
        {"key": 1001, "prompt": "Shout.", "instruction_id_list": ["change_case:english_capital"], "kwargs": [{}]},
    ]
    out, _ = convert(tmp_path, "ifeval", rows, kind)
    assert out[0]["ground_truth"] == {
        "instruction_ids": ["punctuation:no_comma", "length_constraints:number_words"],
        "kwargs": [{}, {"num_words": 300, "relation": "at least"}],
        "prompt": "Write a letter.",
    }
    assert out[0]["id"] == "ifeval/1000"


def test_ifeval_unknown_instruction_is_a_load_error(tmp_path):
    pytest.importorskip("rlvr_jax.instructions.registry")
    rows = [{"key": 1, "prompt": "p", "instruction_id_list": ["made:up"], "kwargs": [{}]}]
    with pytest.raises(RecordError, match=r"src\.jsonl:1: field 'ground_truth.instruction_ids\[0\]'"):
        convert(tmp_path, "ifbench", rows)


def test_rlvr_ifeval(tmp_path):
    def row(func, **args):
        gt = {
            "func_name": func,
            "N": None,
            "quantifier": None,
            "end_phrase": None,
            "keyword_list": None,
            "word": None,
            "letter": None,
            "original_prompt": None,
            **args,
        }
        return {
            "messages": [{"role": "user", "content": f"Do {func}."}],
            "ground_truth": json.dumps(gt),
            "constraint_type": func,
            "constraint": "...",
        }

    rows = [
        row("validate_lowercase"),
        row("validate_word_constraint", N=50, quantifier="at most"),
        row("verify_letter_frequency", N=3, letter="z"),
        row("validate_word_constraint", N=50, quantifier="around"),
        row("validate_choice", options="yes or no"),
    ]
    out, skipped = convert(tmp_path, "rlvr_ifeval", rows)
    assert out[0]["ground_truth"]["instruction_ids"] == ["change_case:english_lowercase"]
    assert out[1]["ground_truth"]["kwargs"] == [{"num_words": 51, "relation": "less than"}]
    # "exactly 3" becomes "at least 3" and "less than 4".
    assert out[2]["ground_truth"]["kwargs"] == [
        {"letter": "z", "let_frequency": 3, "let_relation": "at least"},
        {"letter": "z", "let_frequency": 4, "let_relation": "less than"},
    ]
    assert out[0]["ground_truth"]["prompt"] == "Do validate_lowercase."
    assert skipped == {"unmapped_if:validate_word_constraint:around": 1, "unmapped_if:validate_choice": 1}
    try:
        from rlvr_jax.instructions import registry
    except ImportError:
        return
    resp = "z z z then " + "word " * 10
    assert registry.check_all(
        out[2]["ground_truth"]["instruction_ids"], out[2]["ground_truth"]["kwargs"], resp, prompt=""
    ) == [True, True]
    assert not all(
        registry.check_all(
            out[2]["ground_truth"]["instruction_ids"], out[2]["ground_truth"]["kwargs"], resp + " z", prompt=""
        )
    )


def test_bad_rows_name_input_field(tmp_path):
    with pytest.raises(RecordError, match=r":1: field 'question': missing"):
        convert(tmp_path, "gsm8k", [{"answer": "#### 1"}])
    with pytest.raises(RecordError, match=r":1: field 'responses_create_params.input'"):
        convert(tmp_path, "nemotron", [{"dataset": "x_dapo17k", "expected_answer": "1"}])
    with pytest.raises(RecordError, match=r":1: field '<row>': cannot convert as code_contests"):
        convert(tmp_path, "code_contests", [{"description": "d", "public_tests": "oops"}])
    with pytest.raises(ValueError, match="unknown format"):
        sources.convert_file("nope", "x.jsonl")


def test_cli_convert_then_load(tmp_path, capsys):
    src = write(tmp_path, nemotron_rows(), "parquet")
    out = tmp_path / "out.jsonl"
    assert cli.main(["convert", "--format", "nemotron", "--input", src, "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "5 records" in err and "skipped 1: out_of_scope:nano_v3_workbench" in err
    records, errors = load_records(str(out))
    assert len(records) == 5 and not errors
    bad = write(tmp_path, [{"question": "q"}], "jsonl", name="bad")
    assert cli.main(["convert", "--format", "gsm8k", "--input", bad, "--output", str(out)]) == 1
    assert "bad.jsonl:1: field 'answer': missing" in capsys.readouterr().err
