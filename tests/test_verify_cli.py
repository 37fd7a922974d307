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
