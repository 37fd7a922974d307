"""The standard benchmarks of `rlvr-eval --benchmark NAME --data FILE`: for each, the converter that reads
its public file as distributed, the zero-shot prompt it is asked with, the verifier settings that score it
as its reference scorer does, and the metrics under the names its paper reports (benchmark_metrics)."""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from typing import Callable

from rlvr_jax.data import sources
from rlvr_jax.eval.benchmark_metrics import METRICS
from rlvr_jax.verifiers.base import VerifierConfig

# Math: the directive DeepSeek-R1's model card recommends for math prompts ("Usage Recommendations"), the
# same sentence as Qwen2.5-Math's chain-of-thought evaluation, appended to the problem with no system
# prompt; scored on the last \boxed{} with math-verify, as Open-R1 / lighteval do.
MATH_DIRECTIVE = "Please reason step by step, and put your final answer within \\boxed{}."

# GPQA: OpenAI simple-evals' zero-shot multiple-choice template (also lm-evaluation-harness's
# gpqa_*_cot_zeroshot wording): this instruction, a blank line, the question, a blank line, "A) ..." lines.
# The options are shuffled per question by a seed of (0, Record ID) (sources.science.gpqa), so every run
# and every model sees the same order.
GPQA_INSTRUCTION = (
    "Answer the following multiple choice question. The last line of your response should be of the following "
    "format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by step before answering."
)
GPQA_SHUFFLE_SEED = 0

# HumanEval: evalplus' instruction for chat models (evalplus.provider.utility.make_raw_chat_prompt), the
# problem's prompt (signature + docstring, the record's program_prefix) in a plain fence under it. evalplus
# also pre-fills the assistant turn with a sentence and an open ```python fence; our engine starts the
# assistant turn empty, so the model writes its own fence (the code verifier grades the last ```python
# block, run after the prompt's own imports and helpers). MBPP keeps its converter's prompt: the MBPP
# paper's (Austin et al. 2021: the task, then "Your code should pass these tests:" and the asserts, which
# name the function), as lm-evaluation-harness asks it, zero-shot here.
EVALPLUS_INSTRUCTION = (
    "Please provide a self-contained Python script that solves the following problem in a markdown code block:"
)

# LiveCodeBench: its generic chat prompt (lcb_runner/prompts/code_generation.py): a system message, the
# question, the format line (with starter code: call-based; without: stdin/stdout) and the answer header.
LCB_SYSTEM = (
    "You are an expert Python programmer. You will be given a question (problem specification) and will "
    "generate a correct Python program that matches the specification and passes all tests."
)
LCB_WITH_STARTER = (
    "You will use the following starter code to write the solution to the problem and enclose your code within "
    "delimiters."
)
LCB_WITHOUT_STARTER = (
    "Read the inputs from stdin solve the problem and write the answer to stdout (do not directly test on the "
    "sample inputs). Enclose your code within delimiters as follows. Ensure that when the python program runs, "
    "it reads the inputs, runs the algorithm and writes output to STDOUT."
)


def _problem(record: dict) -> str:
    """The text of the record's last user turn: what the converter took from the row."""
    return record["messages"][-1]["content"]


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def as_given(record: dict) -> list[dict]:
    """The converter's prompt as it is: IFEval and IFBench (the prompt alone, as the IFEval paper feeds
    it), MBPP (the paper's prompt)."""
    return _user(_problem(record))


def math_template(record: dict) -> list[dict]:
    return _user(f"{_problem(record)}\n{MATH_DIRECTIVE}")


def gpqa_template(record: dict) -> list[dict]:
    return _user(f"{GPQA_INSTRUCTION}\n\n{_problem(record)}")


def evalplus_template(record: dict) -> list[dict]:
    prompt = record["ground_truth"]["program_prefix"]  # HumanEval's `prompt` field (sources.code_tests)
    return _user(f"{EVALPLUS_INSTRUCTION}\n```\n{prompt.strip()}\n```\n")


def lcb_template(record: dict) -> list[dict]:
    starter = record["metadata"].get("starter_code") or ""
    question = _problem(record)
    if starter.strip():  # the converter appended the starter code to the question: take it off again
        question = question.removesuffix(f"\n\n{starter}")
        fmt = f"### Format: {LCB_WITH_STARTER}\n```python\n{starter}\n```\n\n"
    else:
        fmt = f"### Format: {LCB_WITHOUT_STARTER}\n```python\n# YOUR CODE HERE\n```\n\n"
    user = f"### Question:\n{question}\n\n{fmt}### Answer: (use the provided format with backticks)\n\n"
    return [{"role": "system", "content": LCB_SYSTEM}, *_user(user)]


@dataclasses.dataclass(frozen=True)
class Benchmark:
    fmt: str  # the converter (sources.CONVERTERS) that reads the public rows into records
    template: Callable[[dict], list[dict]]  # record -> the messages the benchmark asks with
    metrics: str  # benchmark_metrics.METRICS key
    scoring: dict  # VerifierConfig fields the benchmark fixes, whatever the flags say
    source: str  # where the public file comes from
    scorer: str  # the reference scorer ours matches


_ALL_TESTS = {"code_max_tests": 0}  # a published pass@1 runs every test

BENCHMARKS: dict[str, Benchmark] = {
    "ifeval": Benchmark(
        "ifeval",
        as_given,
        "ifeval",
        {"if_mode": "official"},
        "google/IFEval: ifeval_input_data.jsonl (541 prompts)",
        "Google's instruction_following_eval (as lm-evaluation-harness `ifeval`), strict and loose",
    ),
    "ifbench": Benchmark(
        "ifbench",
        as_given,
        "ifeval",
        {"if_mode": "official"},
        "allenai/IFBench_test: the test file (JSONL or parquet, IFEval's row layout)",
        "IFBench's evaluation (IFEval's scorer with IFBench's instructions), strict and loose",
    ),
    "humaneval": Benchmark(
        "humaneval",
        evalplus_template,
        "pass@k",
        _ALL_TESTS,
        "openai/openai_humaneval: openai_humaneval/test-*.parquet, or HumanEval.jsonl.gz of "
        "github.com/openai/human-eval (164 problems)",
        "human-eval's execution of `check(candidate)` (evalplus' base tests), unbiased pass@k",
    ),
    "mbpp": Benchmark(
        "mbpp",
        as_given,
        "pass@k",
        _ALL_TESTS,
        "google-research-datasets/mbpp: full/test-*.parquet (500 problems) or sanitized/test-*.parquet (257)",
        "MBPP's test_setup_code + test_list asserts run on the program (the paper, lm-evaluation-harness), "
        "unbiased pass@k",
    ),
    "gsm8k": Benchmark(
        "gsm8k",
        math_template,
        "accuracy",
        {"math_form": "lenient"},
        "openai/gsm8k: main/test-*.parquet, or test.jsonl of github.com/openai/grade-school-math (1,319 problems)",
        "math-verify on the last \\boxed{} (Open-R1 / lighteval), the number after '####' as gold",
    ),
    "math500": Benchmark(
        "math500",
        math_template,
        "accuracy",
        {"math_form": "lenient"},
        "HuggingFaceH4/MATH-500: test.jsonl (500 problems)",
        "math-verify on the last \\boxed{} (Open-R1 / lighteval)",
    ),
    "aime": Benchmark(
        "aime",
        math_template,
        "accuracy",
        {"math_form": "lenient"},
        "HuggingFaceH4/aime_2024: data/train-*.parquet (30 problems); math-ai/aime25: test.jsonl (30); "
        "comma-separate both for 60",
        "math-verify on the last \\boxed{} (Open-R1 / lighteval); usually reported as avg@K over K samples",
    ),
    "gpqa": Benchmark(
        "gpqa",
        gpqa_template,
        "accuracy",
        {"science_form": "study"},
        "Idavidrein/gpqa (gated): gpqa_diamond.csv (198 questions; gpqa_main.csv 448)",
        "simple-evals' 'Answer: X' extraction (ours takes the last such line)",
    ),
    "livecodebench": Benchmark(
        "livecodebench",
        lcb_template,
        "pass@k",
        _ALL_TESTS,
        "livecodebench/code_generation_lite: test*.jsonl per release; decode the private tests to JSON offline "
        "first (this loader never unpickles)",
        "LiveCodeBench's runner: stdin/stdout compared line by line, functional tests as Solution().f(*args)",
    ),
}


def where_text() -> str:
    """Where each benchmark's file comes from, for --help."""
    return "\n".join(f"  {name:13s} {b.source}" for name, b in BENCHMARKS.items())


def get(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def load(name: str, paths: str) -> tuple[list[dict], Counter]:
    """The benchmark's records from its public file(s) (comma-separated), each with the benchmark's prompt
    in place of the converter's, and the rows the converter skipped, by reason (said on stderr)."""
    bench = get(name)
    files = [p for p in paths.split(",") if p]
    if not files or paths == "builtin":
        raise ValueError(f"--benchmark {name} reads its public file: pass --data FILE ({bench.source})")
    records, skipped = [], Counter()
    for path in files:
        recs, why = sources.convert_file(bench.fmt, path, seed=GPQA_SHUFFLE_SEED)
        records += recs
        skipped += why
    if not records:
        raise ValueError(f"{paths}: no {name} items (skipped: {dict(skipped)})")
    if skipped:
        print(f"rlvr-eval: {name}: skipped rows {dict(skipped)} of {paths}", file=sys.stderr)
    return [{**r, "messages": bench.template(r)} for r in records], skipped


def scoring_config(name: str, config: VerifierConfig) -> tuple[VerifierConfig, list[str]]:
    """`config` with the benchmark's scorer settings, and a note for each flag they override."""
    fixed = get(name).scoring
    notes = [
        f"{name} scores with {k}={v!r} (not {getattr(config, k)!r})"
        for k, v in fixed.items()
        if getattr(config, k) != v
    ]
    return dataclasses.replace(config, **fixed), notes


def report(name: str, items: list[dict]) -> dict:
    """{metric key: {label, value, stderr, n}} of evaluate()'s items (with details for IF benchmarks)."""
    return METRICS[get(name).metrics](items)


def metric_lines(name: str, metrics: dict) -> list[str]:
    """One printed line per metric: `gsm8k accuracy = 0.8120 ± 0.0108 (n=1319)`."""
    return [f"{name} {m['label']} = {m['value']:.4f} ± {m['stderr']:.4f} (n={m['n']})" for m in metrics.values()]
