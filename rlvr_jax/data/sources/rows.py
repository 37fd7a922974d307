"""What every source converter shares: the row error and per-file context, typed field access
that names the missing or malformed field, and the record and chat-message builders.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from typing import Any


class RowError(Exception):
    """A malformed input row; convert_file turns it into a RecordError at the input's file:line."""

    def __init__(self, field: str, what: str):
        self.field, self.what = field, what


@dataclasses.dataclass
class Context:
    """Per-file state: where we are, the seed, skip counts, and what was already seen (dedup)."""

    file: str
    seed: int = 0
    include_generated_tests: bool = False
    line: int = 0
    skipped: Counter = dataclasses.field(default_factory=Counter)
    seen: set = dataclasses.field(default_factory=set)

    def default_id(self, prefix: str) -> str:
        return f"{prefix}/{os.path.splitext(os.path.basename(self.file))[0]}/{self.line}"


def get_field(row: dict, key: str, kind: type | tuple = str) -> Any:
    """row[key] (dotted for nesting), of the given type, else RowError naming the field."""
    value: Any = row
    for part in key.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            raise RowError(key, "missing")
        value = value[part]
    if not isinstance(value, kind):
        raise RowError(key, f"expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        raise RowError(key, "empty")
    return value


def json_field(row: dict, key: str) -> Any:
    """A field that holds JSON text (decoded) or an already-decoded value."""
    value = row.get(key)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as e:
            raise RowError(key, f"invalid JSON: {e}") from None
    return value


def user_turn(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def make_record(ctx: Context, domain: str, rid: str, messages: list, gt: dict, source: str, **meta) -> dict:
    return {
        "id": str(rid),
        "domain": domain,
        "messages": messages,
        "ground_truth": gt,
        "source": source,
        "metadata": {k: v for k, v in meta.items() if v is not None},
    }


def chat_messages(value: Any, field: str) -> list[dict]:
    """Chat messages as rows store them; `developer` (OpenAI Responses) is our `system`."""
    if not isinstance(value, list) or not value:
        raise RowError(field, "expected a non-empty list of chat messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise RowError(f"{field}[{i}]", "expected {role, content}")
        role = {"developer": "system"}.get(m.get("role"), m.get("role"))
        out.append({"role": role, "content": m["content"]})
    return out
