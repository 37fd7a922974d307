"""IFEval's reference scorer ("official" mode): the checks of Google's instruction_following_eval as
published (and carried by lm-evaluation-harness), quirks included, so that IFEval numbers compare with
published ones. Written from the reference's semantics; ids not listed here check as in reward mode
(rlvr_jax.instructions.ifeval, whose table says where reward mode departs from this one).

Reference quirks kept here on purpose:
- keywords, frequency keywords, forbidden words, section splitters and postscript markers are regular
  expressions, not literals (forbidden words inside `\\b...\\b`, so `e.g.` before a space is never
  found); a pattern Python cannot compile falls back to the literal (the reference would crash);
- `end_checker` strips surrounding double quotes (after whitespace, not again after them);
- the three language checks detect on the raw text and count a response with nothing detectable
  as following (`english_capital` first needs `isupper()`, `english_lowercase` `islower()`);
- `nth_paragraph_first_word` counts non-empty paragraphs but indexes the raw `\\n\\n` split (an empty
  nth piece fails), strips `'` then `"` from the first word, and compares with the unstripped kwarg;
- `capital_word_frequency` counts tokens split as NLTK's word tokenizer splits clitics (`DON'T` is
  `DO` + `N'T`).
Not reproducible, so not reproduced: `number_sentences` (the reference runs NLTK's punkt model, a
data file we do not ship; our splitter is used), and a `letter_frequency` letter outside a-z (the
reference swaps in a random letter; we count the character given).
"""

from __future__ import annotations

import collections
import re
from typing import Any, Callable, Mapping

from rlvr_jax.instructions import ifeval, language
from rlvr_jax.instructions.ifeval import compare

MODES = ("official", "reward")  # VerifierConfig.if_mode


def _pattern(source: str, wrap: str = "{}", flags: int = re.IGNORECASE) -> re.Pattern:
    """`source` compiled as the reference compiles it (a regex), else as a literal."""
    try:
        return re.compile(wrap.format(source), flags=flags)
    except re.error:
        return re.compile(wrap.format(re.escape(source)), flags=flags)


def _detected_is(value: str, code: str) -> bool:
    found = language.detect(value)
    return True if found is None else found == code  # nothing detectable counts as followed


def _language(value, kw, prompt):
    return _detected_is(value, kw["language"])


def _english_capital(value, kw, prompt):
    return value.isupper() and _detected_is(value, "en")


def _english_lowercase(value, kw, prompt):
    return value.islower() and _detected_is(value, "en")


def _end_checker(value, kw, prompt):
    return value.strip().strip('"').lower().endswith(kw["end_phrase"].strip().lower())


def _nth_paragraph_first_word(value, kw, prompt):
    paragraphs = value.split("\n\n")
    count = sum(1 for p in paragraphs if p.strip())
    n = kw["nth_paragraph"]
    if n > count:
        return False
    paragraph = paragraphs[n - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    first = ""
    for ch in word:
        if ch in ".,?!'\"":
            break
        first += ch.lower()
    return count == kw["num_paragraphs"] and first == kw["first_word"].lower()


def _forbidden(value, kw, prompt):
    return not any(_pattern(w, r"\b{}\b").search(value) for w in set(kw["forbidden_words"]))


def _keywords_exist(value, kw, prompt):
    return all(_pattern(k).search(value) for k in kw["keywords"])


def _keyword_frequency(value, kw, prompt):
    return compare(len(_pattern(kw["keyword"].strip()).findall(value)), kw["relation"], kw["frequency"])


def _letter_frequency(value, kw, prompt):
    n = collections.Counter(value.lower())[kw["letter"].strip().lower()]
    return compare(n, kw["let_relation"], kw["let_frequency"])


def _sections(value, kw, prompt):
    parts = _pattern(kw["section_spliter"].strip(), r"\s?{}\s?\d+\s?", 0).split(value)
    return len(parts) - 1 >= kw["num_sections"]


def _postscript(value, kw, prompt):
    marker = kw["postscript_marker"].strip()
    if marker in ("P.P.S", "P.S."):
        return ifeval.SPECS["detectable_content:postscript"].check(value, kw, prompt)
    return _pattern(marker.lower(), r"{}.*$", re.MULTILINE).search(value.lower()) is not None


# NLTK's word tokenizer (the reference's word_tokenize) splits words at these marks and keeps inner
# periods, hyphens and slashes; then it splits clitics off before a space or the end, and a few
# fused words ("CANNOT" is CAN + NOT).
_TREEBANK_SPLIT = re.compile(r"""[?!;@#$%&,:()\[\]{}<>"`«“‘„»”’*\u2012-\u2015]|\.{2,}|--""")
_CLITIC = re.compile(r"([^' ])('[sSmMdD]|'ll|'LL|'re|'RE|'ve|'VE|n't|N'T)(?=\s|$)")
_FUSED = re.compile(
    r"(?i)\b(can)(not)\b|\b(d)('ye)\b|\b(gim|lem)(me)\b|\b(gon)(na)\b|\b(got)(ta)\b|\b(more)('n)\b|\b(wan)(na)(?=\s)"
)


def count_capital_words(value: str) -> int:
    """Tokens in capitals as the reference counts them (`DON'T` is two, `P.P.S` and `AND/OR` one)."""
    spaced = _CLITIC.sub(r"\1 \2", _TREEBANK_SPLIT.sub(" ", value))
    spaced = _FUSED.sub(lambda m: " ".join(g for g in m.groups() if g), spaced)
    return sum(1 for t in spaced.split() if t.isupper())


def _capital_words(value, kw, prompt):
    return compare(count_capital_words(value), kw["capital_relation"], kw["capital_frequency"])


CHECKS: dict[str, Callable[[str, Mapping[str, Any], str], bool]] = {
    "change_case:capital_word_frequency": _capital_words,
    "change_case:english_capital": _english_capital,
    "change_case:english_lowercase": _english_lowercase,
    "detectable_content:postscript": _postscript,
    "detectable_format:multiple_sections": _sections,
    "keywords:existence": _keywords_exist,
    "keywords:forbidden_words": _forbidden,
    "keywords:frequency": _keyword_frequency,
    "keywords:letter_frequency": _letter_frequency,
    "language:response_language": _language,
    "length_constraints:nth_paragraph_first_word": _nth_paragraph_first_word,
    "startend:end_checker": _end_checker,
}
