"""Multiple-choice rewards: the last answer letter from `\\boxed{X}` or "Answer: X" (the study's form), or
also from "the answer is X", "correct option X" and markdown variants (the lenient form); hedges
("B or C") are no answer in both. Hand-written regexes: the rule set is small and must
be exact about what counts as one committed letter."""

from __future__ import annotations

import re

from rlvr_jax.verifiers.base import Score

# A letter, optionally wrapped in markdown / brackets / \text{}, that ends its clause. An
# upper-case letter may be followed by its option text ("B) 42 m"); a lower-case one must stand
# alone so "the answer is a bit unclear" is not read as (a).
_WRAP_OPEN = r"[\s*_(\[{$]*(?:\\text(?:bf)?\{|\\mathrm\{)?[\s*_(\[{]*"
_LETTER = r"(?P<letter>[A-Za-z])"
_WRAP_CLOSE = r"\}?[\s*_)\]}$]*"
_END = r"(?=$|[\n.,:;!?)\]]|\s+[-–—(]|\s+(?:or|and|/)\b|/|\s*$)"
_MARKER = (
    r"(?:final\s+answer|correct\s+(?:answer|option|choice)|answer)"
    r"(?:\s+is)?(?:\s*\*\*)?\s*[:：]?"
)
_ANSWER_RE = re.compile(r"(?i)" + _MARKER + _WRAP_OPEN + _LETTER + _WRAP_CLOSE + _END)
_BOXED_RE = re.compile(r"\\boxed\s*\{" + _WRAP_OPEN + _LETTER + _WRAP_CLOSE + r"(?P<rest>[^}]*)\}")
# The study's form: "Answer: X" (the word in any case, the colon required, `**` bold around it allowed) or
# \boxed{X}, X one upper-case letter that ends its clause.
_STUDY_RE = re.compile(
    r"(?:(?i:\banswer)\**[ \t]*[:：][ \t*]*(?=[A-Z](?![A-Za-z0-9]))|\\boxed\{[ \t]*(?=[A-Z][ \t]*\}))(?P<letter>[A-Z])"
)
_HEDGE_RE = re.compile(r"(?i)^\s*(?:or|and|/|,|&)\s*[*_(\[{$\\]*(?:text\{)?[A-Za-z]\b")


def _is_letter_token(text: str, m: re.Match) -> bool:
    letter = m.group("letter")
    if letter.islower():  # lower case only when nothing word-like follows
        after = text[m.end("letter") :]
        return not re.match(r"\s+[A-Za-z]{2,}", after) or re.match(r"\s+(?:or|and)\b", after) is not None
    return True


def extract_choice(text: str, form: str = "lenient") -> tuple[str | None, str]:
    """(letter, how) for the last committed letter in text; (None, why) when there is none. The study's
    form reads only "Answer: X" and `\\boxed{X}` with an upper-case X; the lenient one also "the answer
    is X", "correct option X", markdown and `\\text{}` wrappers and a lone lower-case letter."""
    cands = []
    if form == "study":
        for m in _STUDY_RE.finditer(text):
            cands.append((m.start(), m.group("letter"), text[m.end("letter") : m.end("letter") + 40]))
    else:
        for m in _ANSWER_RE.finditer(text):
            if _is_letter_token(text, m):
                cands.append((m.start(), m.group("letter"), text[m.end("letter") : m.end("letter") + 40]))
        for m in _BOXED_RE.finditer(text):
            cands.append((m.start(), m.group("letter"), m.group("rest")))
    if not cands:
        return None, "no_answer"
    _, letter, after = max(cands, key=lambda c: c[0])
    if _HEDGE_RE.match(re.sub(r"^[\s*_)\]}$]*", "", after)):
        return None, "hedge"
    return letter.upper(), "ok"


def score_science(ground_truth: dict, text: str, form: str = "lenient") -> Score:
    """Reward 1 when the extracted letter (`form`: VerifierConfig.science_form) is the gold letter; letters
    outside the choices are no answer."""
    choices = [str(c).upper() for c in ground_truth.get("choices") or []]
    letter, how = extract_choice(text, form)
    if letter is None:
        return Score(0.0, "no_answer", {"why": how})
    if choices and letter not in choices:
        return Score(0.0, "no_answer", {"why": "letter not among choices", "letter": letter})
    gold = str(ground_truth["answer"]).strip().upper()
    return Score(float(letter == gold), "ok" if letter == gold else "wrong", {"letter": letter})
