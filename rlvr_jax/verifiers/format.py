"""Response-format helpers shared by the domain verifiers: the thinking gate, the last `\\boxed{}`,
the last "Answer:" line and the last fenced code block. Hand-written (a few regexes and a brace
scanner) because each domain needs exactly "the last one", with nested braces, in linear time."""

from __future__ import annotations

import re

THINK_CLOSE = "</think>"

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\b")
# "Answer: x", "**Answer:** x", "Final answer: x"; the colon is required so prose such as
# "the answer depends on" is never read as an answer line.
_ANSWER_LINE_RE = re.compile(r"(?im)^[ \t>#*_]*(?:final\s+)?answer[ \t*_]*[:：][ \t*_]*(.*?)[ \t]*$")
_ANSWER_MARKER_RE = re.compile(r"(?i)\banswer[ \t]*[:：]")
_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+\-.]*)[^\n]*\n(.*?)```", re.S)

# Language tags accepted for a configured code-block language.
LANGUAGE_ALIASES = {"python": ("python", "python3", "py", "py3")}


def gate(response: str, thinking: bool) -> str | None:
    """The text to grade: with the thinking format, what follows the last `</think>` (None when the
    model never closed its thoughts, which scores 0); otherwise the whole response."""
    if not thinking:
        return response
    cut = response.rfind(THINK_CLOSE)
    if cut < 0:
        return None
    return response[cut + len(THINK_CLOSE) :]


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the brace group opening at text[start] == '{' and the index after it."""
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == "\\":  # an escaped character such as \{ or \} never opens or closes the group
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed 5`) in text."""
    for m in reversed(list(_BOXED_RE.finditer(text))):
        j = m.end()
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            got = _braced(text, j)
            if got is not None:
                return got[0].strip()
        elif j > m.end():  # "\boxed 5": one token after a space
            tok = re.match(r"[^\s$]+", text[j:])
            if tok:
                return tok.group(0)
    return None


def last_answer_line(text: str) -> str | None:
    """What follows the colon of the last "Answer:" line, markdown and `$` stripped."""
    found = None
    for m in _ANSWER_LINE_RE.finditer(text):
        if m.group(1).strip():
            found = m.group(1)
    if found is None:
        return None
    found = found.strip().strip("*_ ").rstrip(".").strip()
    return strip_dollars(found).rstrip(".").strip() or None


def after_last_answer_marker(text: str) -> str | None:
    """The text after the final "Answer:" (any case, also inside "**Final Answer:**"), or None without one."""
    found = None
    for m in _ANSWER_MARKER_RE.finditer(text):
        found = m.end()
    return None if found is None else text[found:]


def strip_dollars(s: str) -> str:
    """Remove one layer of `$…$`, `$$…$$`, `\\(…\\)` or `\\[…\\]` around a whole answer."""
    s = s.strip()
    for lo, hi in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(lo) + len(hi) and s.startswith(lo) and s.endswith(hi):
            return s[len(lo) : len(s) - len(hi)].strip()
    return s


def last_code_block(text: str, language: str = "python") -> str | None:
    """Body of the last complete fenced block tagged with `language` (any tag when language is "")."""
    accepted = LANGUAGE_ALIASES.get(language.lower(), (language.lower(),))
    found = None
    for m in _FENCE_RE.finditer(text):
        tag = m.group(1).lower()
        if not language or tag in accepted:
            found = m.group(2)
    return found
