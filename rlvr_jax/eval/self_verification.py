"""Self-verification (REFERENCE.md "Analyses"): a model judges its own samples, seeing only their final answer
(outcome) or the whole response (process), and its yes/no verdicts are scored against the rule-based verifier.
Owns the judge prompts, verdict parsing, the metrics and `self_verify`, which samples, scores and judges."""

from __future__ import annotations

import dataclasses
import re
import string
import sys
from collections import defaultdict

import jax
import numpy as np
from tqdm import tqdm

from rlvr_jax.data.prompts import PromptConfig, prompt_messages, render_prompt
from rlvr_jax.eval.evaluate import decode_completion
from rlvr_jax.model.tokenizer import THINK_OPEN, THINK_PROMPT
from rlvr_jax.rollout.sampling import SamplingParams, gather_rows, host_block
from rlvr_jax.verifiers.base import VerifierConfig
from rlvr_jax.verifiers.format import THINK_CLOSE, gate, last_code_block
from rlvr_jax.verifiers.math import extract_answer
from rlvr_jax.verifiers.science import extract_choice

MODES = ("outcome", "process")
# Our wording (the study does not publish its judge prompts); configs/mix_vs_merge.py carries the same text.
OUTCOME_TEMPLATE = (
    "Here is a question and a proposed final answer.\n\nQuestion:\n{question}\n\nProposed answer:\n{answer}\n\n"
    "Is the proposed answer correct? Reply with Yes or No."
)
PROCESS_TEMPLATE = (
    "Here is a question and a response to it.\n\nQuestion:\n{question}\n\nResponse:\n{response}\n\n"
    "Is the response correct? Reply with Yes or No."
)
# What the outcome judge sees when the verifier's extraction finds no final answer in the sample.
NO_ANSWER = "(none: the response gives no final answer)"
TEMPLATE_FIELDS = {"outcome": ("question", "answer"), "process": ("question", "response")}

JUDGED_CORRECT, JUDGED_INCORRECT, UNPARSABLE = 1, 0, -1
_VERDICT_WORDS = {"yes": 1, "correct": 1, "true": 1, "no": 0, "incorrect": 0, "false": 0}
_WORD_RE = re.compile(r"[a-z]+")
_NEGATION_RE = re.compile(r"(?:\bnot|n't|\bnever)[\s*_]*$")


def check_template(template: str, mode: str) -> None:
    """Raise ValueError unless `template` is a str.format template naming exactly the fields of `mode`
    (outcome: {question} and {answer}; process: {question} and {response}; literal braces doubled)."""
    allowed = TEMPLATE_FIELDS[mode]
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise ValueError(f"{mode} template: {e} (write literal braces as {{{{ and }}}})") from None
    unknown, missing = fields - set(allowed), set(allowed) - fields
    if unknown or missing:
        raise ValueError(
            f"{mode} template must use exactly the fields {{{'}, {'.join(allowed)}}}: "
            f"unknown {sorted(unknown)}, missing {sorted(missing)}"
        )


@dataclasses.dataclass(frozen=True)
class JudgeSettings:
    samples: int = 2  # completions per item, sampled like the evaluation
    temperature: float = 1.0  # of the sampled completions (the judge decodes greedily)
    max_new_tokens: int = 64  # tokens per sampled completion
    judge_max_new_tokens: int = 8  # tokens per verdict
    judge_thinking: bool = False  # the judge's generation prompt opens a thinking block
    outcome_template: str = OUTCOME_TEMPLATE
    process_template: str = PROCESS_TEMPLATE
    seed: int = 0
    batch_prompts: int = 64  # items per sampling call (their judge prompts: 2 x samples as many)

    def __post_init__(self):
        check_template(self.outcome_template, "outcome")
        check_template(self.process_template, "process")
        for name in ("samples", "max_new_tokens", "judge_max_new_tokens", "batch_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"self-verification {name} must be >= 1, got {getattr(self, name)}")


# ------------------------------------------------------------------ prompts


def final_answer(domain: str, response: str, config: VerifierConfig, thinking: bool) -> str | None:
    """The final answer the domain's verifier grades, read with its own extraction under `config`'s rules
    (None when it finds none): math the \\boxed{} / "Answer:" value, science the letter, code the last code
    block, instruction following the whole graded response. With `thinking`, only text after `</think>` counts."""
    text = gate(response, thinking)
    if text is None:
        return None
    if domain == "math":
        return extract_answer(text, config)[0]
    if domain == "science":
        return extract_choice(text, config.science_form)[0]
    if domain == "code":
        return last_code_block(text, config.code_block_language)
    return text.strip() or None


def judge_texts(question: str, response: str, answer: str | None, settings: JudgeSettings) -> dict[str, str]:
    """mode -> the judge's user message: the outcome one shows only the final answer, the process one the
    whole response."""
    return {
        "outcome": settings.outcome_template.format(question=question, answer=NO_ANSWER if answer is None else answer),
        "process": settings.process_template.format(question=question, response=response),
    }


def judge_prompts(
    record: dict, response: str, *, tokenizer, prompt_config: PromptConfig, verifier: VerifierConfig, settings
) -> dict[str, str]:
    """mode -> the rendered judge prompt for one sample of `record`: the question as the model saw it, through
    the chat template of the evaluation prompts (system prompt kept, no domain prefix; thinking per settings)."""
    question = prompt_messages(record, prompt_config)[-1]["content"]
    # the whole trace as the model's turn reads, its thinking block's opening included
    trace = (THINK_PROMPT if prompt_config.thinking else "") + response
    answer = final_answer(record["domain"], response, verifier, prompt_config.thinking)
    judge_pc = dataclasses.replace(prompt_config, thinking=settings.judge_thinking, domain_prefixes=False)
    return {
        mode: render_prompt(
            {"domain": record["domain"], "messages": [{"role": "user", "content": text}]}, tokenizer, judge_pc
        )
        for mode, text in judge_texts(question, trace, answer, settings).items()
    }


# ------------------------------------------------------------------ verdicts and metrics


def parse_verdict(reply: str, thinking: bool = False) -> int:
    """JUDGED_CORRECT / JUDGED_INCORRECT from the first decisive word of the reply (yes/no, correct/incorrect,
    true/false, any case; "not correct" is incorrect), read after the last `</think>`; UNPARSABLE when there is
    none, or when the reply (`thinking`: the judge's prompt opened the block) never closes its thoughts."""
    text = gate(reply, thinking or THINK_CLOSE in reply)
    if text is None:
        return UNPARSABLE
    text = text.split(THINK_OPEN, 1)[0].lower()  # a block opened and never closed: only what precedes it
    for m in _WORD_RE.finditer(text):
        verdict = _VERDICT_WORDS.get(m.group(0))
        if verdict is not None:
            return 1 - verdict if _NEGATION_RE.search(text[: m.start()]) else verdict
    return UNPARSABLE


def verdict_metrics(verdicts, correct) -> dict:
    """Agreement of verdicts (JUDGED_CORRECT / JUDGED_INCORRECT / UNPARSABLE) with the verifier's `correct`:
    accuracy over all samples (an unparsable verdict counts as wrong), precision of each verdict (None where the
    judge never gave it), the unparsable share, the share judged correct and the base rate of correct samples."""
    v, t = np.asarray(verdicts, np.int64).reshape(-1), np.asarray(correct, bool).reshape(-1)
    if len(v) != len(t):
        raise ValueError(f"{len(v)} verdicts for {len(t)} verifier results")
    yes, no = v == JUDGED_CORRECT, v == JUDGED_INCORRECT

    def share(x):
        return float(np.mean(x)) if len(x) else None

    return {
        "n": int(len(v)),
        "accuracy": share((yes & t) | (no & ~t)),
        "precision_correct": share(t[yes]),
        "precision_incorrect": share(~t[no]),
        "unparsable": share(v == UNPARSABLE),
        "judged_correct": share(yes),
        "base_rate": share(t),
    }


def summarize(rows: list[tuple[str, bool, dict[str, int]]]) -> dict:
    """mode -> domain (and "all", every domain pooled) -> verdict_metrics, from (domain, correct, {mode:
    verdict}) rows."""
    by_domain = defaultdict(list)
    for domain, ok, verdicts in rows:
        by_domain[domain].append((ok, verdicts))
    out = {}
    for mode in MODES:
        out[mode] = {
            d: verdict_metrics([v[mode] for _, v in got], [ok for ok, _ in got]) for d, got in sorted(by_domain.items())
        }
        out[mode]["all"] = verdict_metrics([v[mode] for _, _, v in rows], [ok for _, ok, _ in rows])
    return out


# ------------------------------------------------------------------ running it


def _decoded(engine, tokenizer, out) -> list[str]:
    toks, valid = engine.local_rows(out.completion_tokens), engine.local_rows(out.completion_valid)
    return [decode_completion(tokenizer, t, v) for t, v in zip(toks, valid)]


def _judge(engine, params, tokenizer, row_records, texts, pool, prompt_config, settings) -> tuple[np.ndarray, list]:
    """Verdicts [modes, rows] and the judge's replies (outcome rows, then process rows) for this host's rows."""
    per_row = [
        judge_prompts(
            rec, text, tokenizer=tokenizer, prompt_config=prompt_config, verifier=pool.config, settings=settings
        )
        for rec, text in zip(row_records, texts)
    ]
    prompts = [tokenizer.encode(p[mode]) for mode in MODES for p in per_row]
    sp = SamplingParams(
        temperature=0.0,
        max_new_tokens=settings.judge_max_new_tokens,
        n=1,
        stop_token_ids=tuple(tokenizer.eos_ids),
        seed=settings.seed,
    )
    out = engine.generate(params, prompts, sp)
    replies = [""] * len(prompts)
    for row, text in zip(np.asarray(out.prompt_index), _decoded(engine, tokenizer, out)):
        replies[int(row)] = text
    verdicts = np.asarray([parse_verdict(r, settings.judge_thinking) for r in replies], np.int8)
    return verdicts.reshape(len(MODES), len(texts)), replies


def _per_prompt(rows_R: np.ndarray, prompt_R: np.ndarray, size: int, K: int) -> np.ndarray:
    """[size, K]: each row's value under its prompt, the prompt's samples in row order."""
    out, seen = np.zeros((size, K), rows_R.dtype), np.zeros(size, np.int64)
    for v, p in zip(rows_R, prompt_R):
        out[p, seen[p]] = v
        seen[p] += 1
    return out


def _chunk(engine, params, tokenizer, block: list[dict], pool, prompt_config, settings, start: int):
    """Sample, score and judge this host's `block` of one chunk: ([len(block), 3K] int8 of correctness, outcome
    and process verdicts per sample), and the judge's replies as (prompt in `block`, mode, reply) in row order."""
    s, K = settings, settings.samples
    sp = SamplingParams(
        temperature=s.temperature,
        max_new_tokens=s.max_new_tokens,
        n=K,
        stop_token_ids=tuple(tokenizer.eos_ids),
        seed=s.seed + start,
    )
    prompts = [tokenizer.encode(render_prompt(r, tokenizer, prompt_config)) for r in block]
    out = engine.generate(params, prompts, sp, key=jax.random.fold_in(jax.random.key(s.seed), start))
    texts = _decoded(engine, tokenizer, out)
    prompt_R = np.asarray(out.prompt_index)
    row_records = [block[i] for i in prompt_R]
    cut = ~engine.local_rows(out.stopped)  # the pool zeroes these when its config's truncated_zero says so
    scoring = pool.submit(row_records, texts, thinking=prompt_config.thinking, truncated=cut)  # scored while judging
    verdicts, replies = _judge(engine, params, tokenizer, row_records, texts, pool, prompt_config, s)
    correct = np.asarray([sc.reward >= 1.0 for sc in scoring.result()], np.int8)
    table = np.concatenate([_per_prompt(x, prompt_R, len(block), K) for x in (correct, *verdicts)], axis=1)
    shown = [(p, mode, replies[m * len(texts) + r]) for m, mode in enumerate(MODES) for r, p in enumerate(prompt_R)]
    return table, shown


def self_verify(
    engine,
    params,
    tokenizer,
    records: list[dict],
    pool,
    *,
    prompt_config: PromptConfig,
    settings: JudgeSettings,
    progress: bool = True,
    examples: int = 2,
) -> dict:
    """Sample `settings.samples` completions per record (as evaluate.evaluate does: per-host blocks of each
    chunk, draws keyed by seed and chunk), score them with `pool` (reward >= 1: correct), have the same model
    judge each one greedily in both modes, and summarise per mode and domain. `examples` judge replies per mode
    and domain are kept (from this process's rows) so an unparsable share can be read."""
    K = settings.samples
    rows, shown = [], {m: defaultdict(list) for m in MODES}
    bar = tqdm(total=len(records), desc="self-verify", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    for start in range(0, len(records), settings.batch_prompts):
        chunk = records[start : start + settings.batch_prompts]
        mine, size = host_block(len(chunk), K, engine.local_shards)
        block = [chunk[min(i, len(chunk) - 1)] for i in range(mine, mine + size)]  # past the end: never counted
        table, replies = _chunk(engine, params, tokenizer, block, pool, prompt_config, settings, start)
        everyone = gather_rows(table)  # [hosts x size, 3K]: the hosts' blocks in chunk order
        for i, rec in enumerate(chunk):
            for j in range(K):
                verdicts = {mode: int(everyone[i, (m + 1) * K + j]) for m, mode in enumerate(MODES)}
                rows.append((rec["domain"], bool(everyone[i, j]), verdicts))
        for p, mode, reply in replies:
            kept = shown[mode][block[p]["domain"]]
            if mine + p < len(chunk) and len(kept) < examples:
                kept.append(reply[:200])
        bar.update(len(chunk))
    bar.close()
    per_domain = defaultdict(int)
    for r in records:
        per_domain[r["domain"]] += 1
    return {
        "samples": K,
        "items_per_domain": dict(per_domain),
        "metrics": summarize(rows),
        "examples": {m: dict(v) for m, v in shown.items()},
    }


def add_result(report: dict, name: str, res: dict, wall_s: float) -> str:
    """Put one model's self_verify result into an analysis.json `self_verification` entry ({"models": {name:
    metrics}, "examples", "wall_s", "samples", "items_per_domain"}, as rlvr-analyze and the study write it);
    return a one-line summary for the console."""
    report.setdefault("models", {})[name] = res["metrics"]
    report.setdefault("examples", {})[name] = res["examples"]
    report.setdefault("wall_s", {})[name] = wall_s
    report.update(samples=res["samples"], items_per_domain=res["items_per_domain"])
    acc = {m: res["metrics"][m]["all"]["accuracy"] for m in MODES}
    unp = {m: res["metrics"][m]["all"]["unparsable"] for m in MODES}
    return (
        f"self-verification {name}: "
        + ", ".join(f"{m} accuracy {acc[m]:.3f} ({unp[m]:.3f} unparsable)" for m in MODES)
        + f" in {wall_s:.1f} s"
    )
