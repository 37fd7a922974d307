"""Deterministic text units for instruction checks: sentences, words, tokens, paragraphs.

Hand-written rather than NLTK because NLTK's tokenizers need data files downloaded at run time
(punkt), which our workers must never do, and because rewards must not drift with a data version.
"""

from __future__ import annotations

import re

# Abbreviations whose period does not end a sentence (lowercase, without the period).
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs etc inc ltd co corp jan feb mar apr jun jul aug sep sept "
    "oct nov dec no vol fig approx dept est gen gov lt col capt sgt rev".split()
)
# A terminator run, optional closing quotes/brackets, then whitespace or the end of the text.
# The lookbehind and possessive runs keep this linear on degenerate output ("!!!!...").
_SENTENCE_END = re.compile(r"(?<![.!?])[.!?]++[\"'”’)\]]*+(?=\s|$)")
_HAS_ALNUM = re.compile(r"\w")
_WORD = re.compile(r"\w+")
# Acronyms (U.S.A.), words with inner hyphens or apostrophes (well-known, don't), or one
# punctuation mark: close to NLTK's word_tokenize without its contraction splitting.
_TOKEN = re.compile(r"(?:[A-Za-z]\.){2,}|\w+(?:[-'’]\w+)*|[^\w\s]")
_DIVIDER = re.compile(r"\s?\*\*\*\s?")


def _ends_sentence(text: str, match: re.Match) -> bool:
    """False where a period is part of an abbreviation, an initial, an acronym or a number."""
    mark = match.group(0)
    if "!" in mark or "?" in mark:
        return True
    if mark.startswith(".."):
        return False  # an ellipsis trails off inside a sentence, as IFEval's splitter treats it
    # Only the tail matters (abbreviations are short); a bounded window keeps this linear.
    before = text[max(0, match.start() - 32) : match.start()]
    word = re.search(r"([\w.]+)$", before)
    if word is None:
        return True
    token = word.group(1)
    if token.lower() in _ABBREVIATIONS:
        return False
    if re.fullmatch(r"(?:[A-Za-z]\.)+[A-Za-z]", token):  # U.S.A. / e.g / i.e
        return False
    if len(token) == 1 and token.isupper():  # an initial: "J. Smith"
        return False
    return True


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`; newlines are spaces, a final unterminated fragment counts."""
    flat = re.sub(r"\s+", " ", text)
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(flat):
        if _ends_sentence(flat, match):
            sentences.append(flat[start : match.end()].strip())
            start = match.end()
    sentences.append(flat[start:].strip())
    # Fragments without a letter or digit ("***", "-", "") are markup, not sentences.
    return [s for s in sentences if _HAS_ALNUM.search(s)]


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


def words(text: str) -> list[str]:
    """Runs of word characters, as IFEval counts words (`\\w+`)."""
    return _WORD.findall(text)


def count_words(text: str) -> int:
    return len(words(text))


def tokens(text: str, *, punctuation: bool = True) -> list[str]:
    """Word tokens (hyphenated words and contractions stay whole) and, optionally, punctuation."""
    found = _TOKEN.findall(text)
    if punctuation:
        return found
    return [t for t in found if _HAS_ALNUM.search(t)]


def split_divider_paragraphs(text: str) -> list[str] | None:
    """Paragraphs separated by the markdown divider `***`; None if an inner one is empty.

    Empty first/last pieces (a leading or trailing divider) are dropped, as IFEval does.
    """
    pieces = _DIVIDER.split(text)
    kept = []
    for i, piece in enumerate(pieces):
        if piece.strip():
            kept.append(piece)
        elif 0 < i < len(pieces) - 1:
            return None
    return kept


def split_blank_line_paragraphs(text: str) -> list[str]:
    """Non-empty paragraphs separated by blank lines (two newlines)."""
    return [p for p in text.split("\n\n") if p.strip()]


def loose_variants(response: str) -> list[str]:
    """IFEval's loose-mode candidates: first/last/both lines removed, each with `*` stripped."""
    lines = response.split("\n")
    cut = [
        response,
        "\n".join(lines[1:]).strip(),
        "\n".join(lines[:-1]).strip(),
        "\n".join(lines[1:-1]).strip(),
    ]
    return cut + [c.replace("*", "") for c in cut]
