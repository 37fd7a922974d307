"""docs/fidelity.md cannot drift from the configs: every row's keys are read from the study presets (or
the named code constants) and compared with the row's values; rows without a key name the file that
implements the behaviour and the test that checks it, and both must exist."""

import ast
import functools
import importlib
import os
import re

import ml_collections
import pytest

from rlvr_jax.config_args import load_config_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "fidelity.md")
HEADER = ["study item", "study value", "our config key", "study preset's value", "where we differ, why"]
GRPO_PRESETS = ("", "math", "code", "science", "if")  # every study preset of configs/grpo.py (no ARG = multi)
KEY_RE = re.compile(r"^(?:(?P<file>grpo|opd|mix_vs_merge|merge)(?:\[(?P<arg>\w+)\])?|code):(?P<path>[\w.]+)$")
# issue 31's settings: each must have a row
ISSUE_31_KEYS = (
    "model.compute_dtype",
    "verifier.code_max_tests",
    "verifier.truncated_zero",
    "verifier.math_form",
    "verifier.science_form",
    "data.domain_prefixes",
    "opd.student_logp",
)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _rows() -> list[dict]:
    """The rows of every table of docs/fidelity.md whose header is HEADER, with their section."""
    rows, section, in_table = [], "", False
    with open(DOC) as f:
        for line in f:
            if line.startswith("## "):
                section = line[3:].strip()
            if not line.startswith("|"):
                in_table = False
                continue
            cells = _cells(line)
            if cells == HEADER:
                in_table = True
            elif in_table and not set("".join(cells)) <= set("-: "):
                rows.append({"section": section, "line": line.strip(), "cells": cells})
    return rows


ROWS = _rows()


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _keys(row) -> list[str]:
    return [t for t in _ticked(row["cells"][2]) if KEY_RE.match(t)]


@functools.cache
def _config(file: str, arg: str):
    return load_config_module(os.path.join(REPO, "configs", f"{file}.py"), file).get_config(arg)


def _lookup(config, path: str):
    value = config
    for part in path.split("."):
        value = getattr(value, part)  # a missing field is an AttributeError naming it
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def _code_constant(path: str):
    """module.NAME (or module.Class.field: a dataclass field's default) -> its value."""
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            value = getattr(value, name)
        return value
    raise ModuleNotFoundError(path)


def _values_of(key: str) -> list:
    """What the study presets give `key`: one value per preset it names."""
    m = KEY_RE.match(key)
    if m["file"] is None:
        return [_code_constant(m["path"])]
    if m["arg"] is not None:
        args = [m["arg"]]
    else:
        args = {"grpo": GRPO_PRESETS, "merge": [""]}.get(m["file"], [""])
    return [_lookup(_config(m["file"], a), m["path"]) for a in args]


def _row_id(row) -> str:
    return f"{row['section']}:{row['cells'][0]}"


def test_the_doc_has_every_section_and_no_blank_cell():
    assert {r["section"] for r in ROWS} >= {"Pipeline", "GRPO", "Rewards", "Merges", "MT-OPD", "Evaluation", "Analyses"}
    for r in ROWS:
        assert len(r["cells"]) == len(HEADER), f"{r['line']}: {len(r['cells'])} cells, want {len(HEADER)}"
        assert all(r["cells"]), f"a blank cell: {r['line']}"


def test_every_row_has_keys_or_names_its_code():
    for r in ROWS:
        keys, key_cell = _keys(r), r["cells"][2]
        if keys:
            values = _ticked(r["cells"][3])
            assert len(values) == len(keys), f"{len(keys)} keys but {len(values)} values: {r['line']}"
        else:
            assert key_cell.startswith("(code)"), f"neither a config key nor (code): {r['line']}"
            files = [t for t in _ticked(key_cell) if "/" in t]
            assert files or "not implemented" in key_cell, f"(code) row names no file: {r['line']}"
            for path in files:
                assert os.path.exists(os.path.join(REPO, path)), f"{path} does not exist ({r['line']})"


def test_issue_31_settings_each_have_a_row():
    keyed = {KEY_RE.match(k)["path"] for r in ROWS for k in _keys(r)}
    assert set(ISSUE_31_KEYS) <= keyed, set(ISSUE_31_KEYS) - keyed


@pytest.mark.parametrize("row", [r for r in ROWS if _keys(r)], ids=_row_id)
def test_study_presets_carry_the_tables_values(row):
    for key, literal in zip(_keys(row), _ticked(row["cells"][3])):
        want = ast.literal_eval(literal)
        for got in _values_of(key):
            assert got == want and type(got) is type(want), f"{key} is {got!r}, the table says {literal}"


def test_the_study_merges_with_the_merge_recipes():
    """mix_vs_merge's merge options are configs/merge.py's OPTIONS: the merge rows hold for the study."""
    options = _config("mix_vs_merge", "").merge.options.to_dict()
    recipes = load_config_module(os.path.join(REPO, "configs", "merge.py"), "merge").OPTIONS
    assert options == recipes
    for method in _config("mix_vs_merge", "").merge.methods.split(","):
        assert _config("merge", method).options.to_dict() == recipes[method]
