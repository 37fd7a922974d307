"""render.code_line: the report names the code of every stage attempt, not only the code it runs itself."""

from rlvr_jax.study.render import code_line

A = {"git_commit": "a" * 40, "dirty": False}
B = {"git_commit": "b" * 40, "dirty": True}


def test_one_commit_everywhere():
    results = {"provenance": A, "stages": {"sft": {"code": [A]}, "rl_math": {"code": [A, A]}}}
    assert code_line(results) == "Code: commit aaaaaaaaaa."


def test_stages_of_other_commits_and_unrecorded_ones_are_named():
    results = {
        "provenance": A,
        "stages": {"sft": {"code": [B]}, "rl_math": {"code": [B, A]}, "eval": {"code": []}, "merge_ties": {}},
    }
    line = code_line(results)
    assert line.startswith("Code: the report at commit aaaaaaaaaa; the stages at ")
    assert "bbbbbbbbbb with local changes (rl_math, sft)" in line
    assert "aaaaaaaaaa (rl_math)" in line
    assert "unrecorded (eval, merge_ties)" in line
