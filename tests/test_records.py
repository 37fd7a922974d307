"""Record validation: every domain's ground truth, FILE:LINE: field errors, JSONL and parquet files."""

import copy
import json

import pytest

from rlvr_jax.data import cli
from rlvr_jax.data.records import RecordError, load_records, validate_record, write_jsonl

GOOD = {
    "math": {"answers": ["12", "\\frac{1}{2}"]},
    "science": {"answer": "C", "choices": ["A", "B", "C", "D"]},
    "if": {
        "instruction_ids": ["punctuation:no_comma", "length_constraints:number_words"],
        "kwargs": [{}, {"num_words": 50, "relation": "less than"}],
        "prompt": "Write.",
    },
    "code": {
        "tests": [{"input": "1 2\n", "output": "3\n"}],
        "fn_name": None,
        "time_limit_s": 2,
        "memory_limit_mb": 256,
    },
}


def record(domain="math", **over):
    r = {
        "id": "r1",
        "domain": domain,
        "messages": [{"role": "user", "content": "Q?"}],
        "ground_truth": copy.deepcopy(GOOD.get(domain, GOOD["math"])),
        "source": "test",
        "metadata": {},
    }
    r.update(over)
    return r


def with_gt(domain, **gt):
    r = record(domain)
    r["ground_truth"].update(gt)
    return r


def registry_available():
    try:
        import rlvr_jax.instructions.registry  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("domain", list(GOOD))
def test_good_records_pass(domain):
    assert validate_record(record(domain))["domain"] == domain


def test_defaults_and_extra_fields():
    r = record()
    del r["source"], r["metadata"]
    out = validate_record(r)
    assert out["source"] == "" and out["metadata"] == {}
    assert validate_record(record(response="x"))["response"] == "x"  # rlvr-verify input
    for fmt in ("thinking", "plain"):  # the layout `response` was written in (rlvr-data export)
        assert validate_record(record(response="x", response_format=fmt))["response_format"] == fmt
    fn = with_gt("code", fn_name="add", tests=[{"input": "1\n[2, 3]", "output": "[3]"}])
    validate_record(fn)


# An assert-style code record (HumanEval layout): test code in place of `tests`.
ASSERT_GT = {"tests": [], "test_code": "def check(candidate):\n    assert candidate(1) == 2\n", "entry_point": "f"}


def test_assert_style_code_records():
    validate_record(with_gt("code", **ASSERT_GT, program_prefix="def f(x):\n"))
    gt = {k: v for k, v in GOOD["code"].items() if k != "tests"}  # `tests` may be left out
    for code in ("assert f(1) == 2", "def test_f():\n    assert f(1) == 2", "class TestF:\n    def test_a(self): pass"):
        validate_record(record("code", ground_truth={**gt, "test_code": code}))


BAD = [
    ({k: v for k, v in record().items() if k != "id"}, "id", "missing"),
    (record(id=""), "id", "empty"),
    (record(domain="chemistry"), "domain", "not one of"),
    (record(messages=[]), "messages", "empty list"),
    (record(messages=[{"role": "user", "content": 3}]), "messages[0].content", "expected a string"),
    (record(messages=[{"role": "robot", "content": "x"}]), "messages[0].role", "not one of"),
    (
        record(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]),
        "messages[1].role",
        "end with a user message",
    ),
    (record(ground_truth=[1]), "ground_truth", "expected an object"),
    (record(groundtruth={}), "groundtruth", "unknown field"),
    (record(metadata=[]), "metadata", "expected an object"),
    (record(response="x", response_format="markdown"), "response_format", "not one of"),
    (with_gt("math", answers=[]), "ground_truth.answers", "empty list"),
    (with_gt("math", answers=["1", " "]), "ground_truth.answers[1]", "non-empty string"),
    (with_gt("science", answer="E"), "ground_truth.answer", "not one of the choices"),
    (with_gt("science", choices=["A", "A", "B"]), "ground_truth.choices", "duplicate"),
    (with_gt("science", choices=["A", "b"]), "ground_truth.choices[1]", "upper-case letter"),
    (with_gt("if", kwargs=[{}]), "ground_truth.kwargs", "1 kwargs for 2 instruction ids"),
    (with_gt("if", kwargs=[{}, 5]), "ground_truth.kwargs[1]", "expected an object"),
    (with_gt("if", prompt=""), "ground_truth.prompt", "empty"),
    (with_gt("code", tests=[]), "ground_truth.tests", "empty list"),
    (with_gt("code", tests=[{"input": "1"}]), "ground_truth.tests[0].output", "missing"),
    (with_gt("code", fn_name="f", tests=[{"input": "not json", "output": "1"}]), "ground_truth.tests[0].input", "JSON"),
    (with_gt("code", fn_name="1bad"), "ground_truth.fn_name", "identifier"),
    (with_gt("code", time_limit_s=0), "ground_truth.time_limit_s", "positive"),
    (with_gt("code", memory_limit_mb=1.5), "ground_truth.memory_limit_mb", "positive int"),
    # assert-style code tests (ASSERT_GT below)
    (with_gt("code", **{**ASSERT_GT, "test_code": " "}), "ground_truth.test_code", "empty"),
    (with_gt("code", **{**ASSERT_GT, "test_code": 3}), "ground_truth.test_code", "expected a string"),
    (with_gt("code", **{**ASSERT_GT, "test_code": "assert f(1) ==\n"}), "ground_truth.test_code", "line 1"),
    (with_gt("code", **{**ASSERT_GT, "test_code": "x = f(1)\n"}), "ground_truth.test_code", "no top-level assert"),
    (with_gt("code", **{**ASSERT_GT, "entry_point": None}), "ground_truth.entry_point", "check(candidate)"),
    (with_gt("code", **{**ASSERT_GT, "entry_point": "not-a-name"}), "ground_truth.entry_point", "identifier"),
    (with_gt("code", **{**ASSERT_GT, "tests": [{"input": "1", "output": "1"}]}), "ground_truth.tests", "not both"),
    (with_gt("code", **ASSERT_GT, fn_name="f"), "ground_truth.fn_name", "entry_point"),
    (with_gt("code", **ASSERT_GT, program_prefix=["def f"]), "ground_truth.program_prefix", "expected a string"),
    (with_gt("code", **ASSERT_GT, time_limit_s=None), "ground_truth.time_limit_s", "positive"),
]


@pytest.mark.parametrize("obj,field,what", BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_records_name_file_line_field(obj, field, what):
    with pytest.raises(RecordError) as e:
        validate_record(obj, file="data.jsonl", line=7)
    assert str(e.value).startswith(f"data.jsonl:7: field '{field}': ")
    assert what in e.value.what


@pytest.mark.skipif(not registry_available(), reason="IF registry not installed")
@pytest.mark.parametrize(
    "ids,kwargs,field,what",
    [
        (["no:such_instruction"], [{}], "ground_truth.instruction_ids[0]", "unknown instruction"),
        (["length_constraints:number_words"], [{"relation": "less than"}], "ground_truth.kwargs[0]", "num_words"),
        (
            ["length_constraints:number_words"],
            [{"num_words": 5, "relation": "about"}],
            "ground_truth.kwargs[0]",
            "relation",
        ),
    ],
)
def test_if_registry_checks(ids, kwargs, field, what):
    r = with_gt("if", instruction_ids=ids, kwargs=kwargs)
    with pytest.raises(RecordError) as e:
        validate_record(r, file="f", line=1)
    assert e.value.field == field and what in e.value.what


def test_load_jsonl_line_numbers_and_skip(tmp_path):
    path = tmp_path / "r.jsonl"
    lines = [
        json.dumps(record(id="a")),
        "",
        json.dumps(record(id="b")),
        "{not json",
        json.dumps(with_gt("math", answers=[])),
        json.dumps(record(id="c")),
    ]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError, match=rf"^{path}:4: field '<line>': invalid JSON"):
        load_records(str(path))
    good, errors = load_records(str(path), skip_invalid=True)
    assert [r["id"] for r in good] == ["a", "b", "c"]
    assert [(e.line, e.field) for e in errors] == [(4, "<line>"), (5, "ground_truth.answers")]


def test_load_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [record(id="p1", metadata={"k": 1}), record(id="p2", ground_truth={"answers": []}, metadata={"k": 2})]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "r.parquet")
    with pytest.raises(RecordError, match=r"r\.parquet:2: field 'ground_truth.answers'"):
        load_records(str(tmp_path / "r.parquet"))
    good, errors = load_records(str(tmp_path / "r.parquet"), skip_invalid=True)
    assert [r["id"] for r in good] == ["p1"] and good[0]["metadata"] == {"k": 1} and errors[0].line == 2


def test_cli_validate(tmp_path, capsys):
    ok, bad = tmp_path / "ok.jsonl", tmp_path / "bad.jsonl"
    write_jsonl([record(id="x"), record("code", id="y")], str(ok))
    write_jsonl([record(id="x"), record(domain="bio")], str(bad))
    assert cli.main(["validate", str(ok)]) == 0
    assert "2 valid {'code': 1, 'math': 1}, 0 invalid" in capsys.readouterr().out
    assert cli.main(["validate", str(ok), str(bad)]) == 1
    captured = capsys.readouterr()
    assert f"{bad}:2: field 'domain'" in captured.err and "1 invalid" in captured.out


def test_cli_export_with_reference_declares_its_format(tmp_path):
    out = tmp_path / "refs.jsonl"
    assert (
        cli.main(["export", "--builtin", "--split", "eval", "--n", "3", "--with-reference", "--output", str(out)]) == 0
    )
    got, _ = load_records(str(out))
    assert len(got) == 12
    for r in got:
        assert r["response"] == r["metadata"]["reference"] and r["response"].startswith("<think>\n")
        assert r["response_format"] == "thinking"
    bare = tmp_path / "bare.jsonl"
    assert cli.main(["export", "--builtin", "--split", "eval", "--n", "1", "--output", str(bare)]) == 0
    assert not any("response_format" in r or "response" in r for r in load_records(str(bare))[0])
