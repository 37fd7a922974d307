"""rlvr-verify: scores a records+response JSONL, summary on stderr, file:line:field on bad input."""

import json
import shutil
import subprocess
import sys

import pytest

from rlvr_jax.verifiers.cli import main

MSG = [{"role": "user", "content": "solve"}]


def _rec(i, domain, gt, response):
    return {"id": f"r{i}", "domain": domain, "messages": MSG, "ground_truth": gt, "response": response}


def _rows(with_code):
    rows = [
        _rec(0, "math", {"answers": ["4"]}, r"<think>2+2</think> \boxed{4}"),
        _rec(1, "math", {"answers": ["4"]}, r"\boxed{4}"),  # no </think>: 0 with --thinking
        _rec(2, "science", {"answer": "B", "choices": ["A", "B", "C", "D"]}, "<think>hmm</think>Answer: B"),
        _rec(3, "science", {"answer": "B", "choices": ["A", "B", "C", "D"]}, "<think>hmm</think>Answer: C"),
    ]
    if with_code:
        rows.append(
            _rec(
                4,
                "code",
                {
                    "tests": [{"input": "3\n", "output": "9"}],
                    "fn_name": None,
                    "time_limit_s": 2,
                    "memory_limit_mb": 256,
                },
                "<think>square</think>```python\nprint(int(input()) ** 2)\n```",
            )
        )
    return rows


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("workers", ["0", "1"])
def test_scores_every_line_in_order(tmp_path, capsys, workers):
    with_code = shutil.which("bwrap") is not None
    inp = _write(tmp_path / "in.jsonl", _rows(with_code))
    out = tmp_path / "out.jsonl"
    assert main(["--input", inp, "--output", str(out), "--thinking", "--workers", workers]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    want = [1.0, 0.0, 1.0, 0.0] + ([1.0] if with_code else [])
    assert [g["reward"] for g in got] == want
    assert [g["id"] for g in got] == [f"r{i}" for i in range(len(want))]
    assert got[1]["reason"] == "format" and got[3]["reason"] == "wrong"
    assert all(set(g) == {"id", "domain", "reward", "reason", "details"} for g in got)
    err = capsys.readouterr().err
    assert "math" in err and "science" in err and "format=1" in err


def test_thinking_is_off_by_default(tmp_path, capsys):
    inp = _write(tmp_path / "in.jsonl", _rows(False))
    assert main(["--input", inp, "--workers", "0"]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [g["reward"] for g in got] == [1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize(
    "mutate,where",
    [
        (lambda r: r.pop("response"), "field 'response'"),
        (lambda r: r.update(domain="poetry"), "field 'domain'"),
        (lambda r: r["ground_truth"].pop("answers"), "field 'ground_truth.answers'"),
    ],
)
def test_malformed_input_names_file_line_field(tmp_path, capsys, mutate, where):
    rows = _rows(False)
    mutate(rows[2] if "answers" not in where else rows[1])
    inp = _write(tmp_path / "bad.jsonl", rows)
    assert main(["--input", inp, "--workers", "0"]) == 2
    err = capsys.readouterr().err
    line = 2 if "answers" in where else 3
    assert f"{inp}:{line}: {where}" in err
    assert "nothing scored" in err


def test_invalid_json_line(tmp_path, capsys):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(_rows(False)[0]) + "\n{not json\n")
    assert main(["--input", str(p), "--workers", "0"]) == 2
    assert f"{p}:2: field '<line>': invalid JSON" in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    inp = _write(tmp_path / "in.jsonl", _rows(False)[:1])
    res = subprocess.run(
        [sys.executable, "-m", "rlvr_jax.verifiers.cli", "--input", inp, "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["reward"] == 1.0


def test_export_then_verify_scores_every_reference(tmp_path, capsys):
    # `rlvr-data export --with-reference` writes thinking-format references and says so per record;
    # rlvr-verify with no flags must grade each one after its </think> (all four domains score 1).
    from rlvr_jax.data.cli import main as data_main

    refs = tmp_path / "refs.jsonl"
    argv = ["export", "--builtin", "--domain", "all", "--split", "eval", "--n", "50", "--with-reference"]
    assert data_main(argv + ["--output", str(refs)]) == 0
    rows = [json.loads(line) for line in refs.read_text().splitlines()]
    assert {r["response_format"] for r in rows} == {"thinking"}
    if shutil.which("bwrap") is None:  # the code references need the sandbox; the rest still run
        rows = [r for r in rows if r["domain"] != "code"]
        refs = _write(tmp_path / "refs_no_code.jsonl", rows)
    out = tmp_path / "scores.jsonl"
    capsys.readouterr()
    assert main(["--input", str(refs), "--output", str(out), "--workers", "2"]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["id"] for g in got] == [r["id"] for r in rows]
    bad = [(g["id"], g["reason"], g["details"]) for g in got if g["reward"] != 1.0]
    assert not bad, bad[:5]
    assert {g["domain"] for g in got} >= {"math", "science", "if"}
    assert f"{len(rows)} of {len(rows)} record(s) declare `response_format: thinking`" in capsys.readouterr().err
    # The declaration is what makes them pass: graded whole, instructions such as "all lowercase"
    # see the reasoning block and fail.
    plain = [g for g in _score_rows(tmp_path, capsys, [r for r in rows if r["domain"] == "if"], "--no-thinking")]
    assert any(g["reward"] == 0.0 for g in plain)


def _score_rows(tmp_path, capsys, rows, *flags):
    inp = _write(tmp_path / "some.jsonl", rows)
    capsys.readouterr()
    assert main(["--input", inp, "--workers", "0", *flags]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize("workers", ["0", "1"])
def test_declared_format_is_per_record(tmp_path, capsys, workers):
    gt = {"answers": ["4"]}
    rows = [
        {**_rec(0, "math", gt, r"<think>maybe \boxed{5}</think> \boxed{4}"), "response_format": "thinking"},
        {**_rec(1, "math", gt, r"<think>maybe \boxed{4}</think> \boxed{5}"), "response_format": "thinking"},
        # Declared thinking but never closed: the gate still scores it 0, whatever it contains.
        {**_rec(2, "math", gt, r"<think>so \boxed{4}"), "response_format": "thinking"},
        {**_rec(3, "math", gt, r"\boxed{4}"), "response_format": "plain"},
        _rec(4, "math", gt, r"\boxed{4}"),  # undeclared (model output): graded whole, as before
        {**_rec(5, "math", gt, r"\boxed{4}"), "response_format": "thinking"},  # no </think>: 0
    ]
    inp = _write(tmp_path / "in.jsonl", rows)
    assert main(["--input", inp, "--workers", workers]) == 0
    out = capsys.readouterr()
    got = [json.loads(line) for line in out.out.splitlines()]
    assert [g["reward"] for g in got] == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert got[2]["reason"] == "format" and got[5]["reason"] == "format"
    assert "4 of 6 record(s) declare `response_format: thinking`" in out.err


def test_flags_override_declared_format(tmp_path, capsys):
    rows = [
        {**_rec(0, "math", {"answers": ["4"]}, r"\boxed{4}"), "response_format": "plain"},
        {**_rec(1, "math", {"answers": ["4"]}, r"<think>\boxed{4}</think>no answer"), "response_format": "thinking"},
    ]
    assert [g["reward"] for g in _score_rows(tmp_path, capsys, rows)] == [1.0, 0.0]
    assert [g["reward"] for g in _score_rows(tmp_path, capsys, rows, "--thinking")] == [0.0, 0.0]
    assert [g["reward"] for g in _score_rows(tmp_path, capsys, rows, "--no-thinking")] == [1.0, 1.0]


def test_bad_response_format_names_the_field(tmp_path, capsys):
    rows = [{**_rec(0, "math", {"answers": ["4"]}, r"\boxed{4}"), "response_format": "markdown"}]
    assert main(["--input", _write(tmp_path / "bad.jsonl", rows), "--workers", "0"]) == 2
    assert "bad.jsonl:1: field 'response_format': 'markdown' is not one of" in capsys.readouterr().err
