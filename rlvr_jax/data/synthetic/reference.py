"""The one layout of a built-in record's reference response (`metadata["reference"]`)."""

from __future__ import annotations

from rlvr_jax.model.tokenizer import THINK_CLOSE, THINK_OPEN


def reference(reasoning: str, answer: str) -> str:
    """The one layout of `metadata["reference"]`: a full assistant turn, kept to tens of tokens."""
    return f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n{answer}"
