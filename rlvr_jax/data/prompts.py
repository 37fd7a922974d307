"""Records to prompts: chat template, optional system prompt and domain prefixes, thinking on or
off, and the prompt-length limit in tokens (dropped prompts are counted per domain, never hidden).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterable, Mapping

from rlvr_jax.model.tokenizer import Tokenizer, completion_for

# Our wording (the study does not publish its prompts): the answer formats the verifiers read.
# Built-in prompts already carry their own format line, so prefixes are off by default.
DOMAIN_PREFIXES = {
    "math": "Solve the following problem step by step. Put the final answer in \\boxed{}.\n\n",
    "code": "Solve the following problem in Python. The program reads standard input and writes "
    "standard output. Put the whole program in one ```python block.\n\n",
    "science": "Answer the following multiple-choice question. End with a line 'Answer: X' where X "
    "is the letter of the correct option.\n\n",
    "if": "",
}


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    thinking: bool = True  # generation prompt opens `<think>\n` (tokenizer.py)
    system_prompt: str = ""  # "" = none; replaces a record's own system message
    domain_prefixes: bool = False  # prepend DOMAIN_PREFIXES (or `prefixes`) to the last user turn
    prefixes: Mapping[str, str] | None = None  # per-domain override of DOMAIN_PREFIXES
    max_prompt_tokens: int = 2048  # longer prompts are dropped (the study's 2,048)


def prompt_messages(record: dict, config: PromptConfig) -> list[dict]:
    """The record's messages with the configured system prompt and domain prefix applied."""
    messages = [dict(m) for m in record["messages"]]
    if config.system_prompt:
        messages = [
            {"role": "system", "content": config.system_prompt},
            *(m for m in messages if m["role"] != "system"),
        ]
    if config.domain_prefixes:
        prefix = (config.prefixes or DOMAIN_PREFIXES).get(record["domain"], "")
        last = messages[-1]
        last["content"] = prefix + last["content"]
    return messages


def render_prompt(record: dict, tokenizer: Tokenizer, config: PromptConfig) -> str:
    return tokenizer.apply_chat_template(
        prompt_messages(record, config), add_generation_prompt=True, thinking=config.thinking
    )


def sft_example(record: dict, tokenizer: Tokenizer, config: PromptConfig) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids) for supervised warm start from `metadata.reference`."""
    prompt = render_prompt(record, tokenizer, config)
    target = completion_for(record["metadata"]["reference"], config.thinking) + tokenizer.end_of_turn
    return tokenizer.encode(prompt), tokenizer.encode(target)


def build_prompts(
    records: Iterable[dict], tokenizer: Tokenizer, config: PromptConfig
) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Per-domain lists of `{"record", "prompt", "prompt_ids"}` in input order, and counts
    `prompts/kept/<domain>`, `prompts/dropped/<domain>` (over max_prompt_tokens)."""
    by_domain: dict[str, list[dict]] = {}
    counts: dict[str, int] = {}
    for record in records:
        domain = record["domain"]
        text = render_prompt(record, tokenizer, config)
        ids = tokenizer.encode(text)
        kept = len(ids) <= config.max_prompt_tokens
        key = f"prompts/{'kept' if kept else 'dropped'}/{domain}"
        counts[key] = counts.get(key, 0) + 1
        if kept:
            by_domain.setdefault(domain, []).append({"record": record, "prompt": text, "prompt_ids": ids})
    dropped = {k.rsplit("/", 1)[1]: v for k, v in counts.items() if k.startswith("prompts/dropped/")}
    if dropped:
        logging.warning("dropped prompts longer than %d tokens: %s", config.max_prompt_tokens, dropped)
    return by_domain, counts
