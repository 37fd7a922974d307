"""Records and prompt settings as the entry points ask for them: a spec ('builtin', 'builtin-sft' or
files) and a split in, validated records out; a run config's `data` block to a PromptConfig."""

from __future__ import annotations

from rlvr_jax.data import records as records_io
from rlvr_jax.data import synthetic
from rlvr_jax.data.prompts import PromptConfig


def prompt_config(data_config_dict):
    """The PromptConfig of a run config's `data` block."""
    d = data_config_dict
    return PromptConfig(
        thinking=d.thinking,
        system_prompt=d.system_prompt,
        domain_prefixes=d.domain_prefixes,
        max_prompt_tokens=d.max_prompt_tokens,
    )


def load_records(
    spec: str, split: str, domains: tuple[str, ...], builtin_size: int = 0, builtin_up_to: bool = False
) -> list[dict]:
    """'builtin' for the shipped generators (`builtin_size` records per domain, 0 = their default
    sizes; with `builtin_up_to`, all there are when a domain holds fewer); 'builtin-sft' for built-in
    warm-start records disjoint from the RL ones ('builtin' train records, `builtin_size` of them);
    else a comma-separated list of JSONL/parquet files."""
    if spec == "builtin":
        return [
            r for d in domains for r in synthetic.builtin_records(d, split, builtin_size or None, up_to=builtin_up_to)
        ]
    if spec == "builtin-sft":
        return [r for d in domains for r in synthetic.sft_records(d, train_size=builtin_size or None)]
    records = records_io.load_records([p for p in spec.split(",") if p])
    return [r for r in records if r["domain"] in domains]
