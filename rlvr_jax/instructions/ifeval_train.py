"""The extra instruction ids of IFEval-style RL training sets (IFBench's training constraints).

Ids and kwargs follow the public training data. Where the reference checker contradicts its own
instruction text we grade the text: words are `\\w+` runs (not NLTK tokens that count a final
period as a word), keyword matches ignore case, and a palindrome needs 3+ letters ("a" is not one).
"""

from __future__ import annotations

import dataclasses
import re

from rlvr_jax.instructions import ifeval, text
from rlvr_jax.instructions.ifeval import compare
from rlvr_jax.instructions.spec import Kwarg, Spec, relation

_LOOSE_DIVIDER = re.compile(r"\s?\*\s?\*\s?\*\s?")  # "***" or "* * *": the wording shows both


def _bare(word: str) -> str:
    """A token without surrounding punctuation, lowercased."""
    return re.sub(r"[^\w\s]", "", word).lower()


def _occurrences(needle: str, haystack: str) -> int:
    return len(re.findall(re.escape(needle.strip()), haystack, flags=re.IGNORECASE))


def _same_text(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


def _repeat_phrase(response, kw, prompt):
    ref = [_bare(w) for w in kw["phrase"].split()]
    got = [_bare(w) for w in response.split()]
    n = len(ref)
    found = 0
    for i in range(len(got) - n + 1):
        window = got[i : i + n]
        if window[0] == ref[0] and window[-1] == ref[-1]:
            found += sum(a != b for a, b in zip(window, ref)) == 1
    return found == kw["small_n"]


def _sentence_hyphens(response, kw, prompt):
    pieces = response.strip().split("-")
    return all(p and p == p.strip() and text.count_sentences(p) == 1 for p in pieces)


def _no_adjacent_consecutive(response, kw, prompt):
    initials = [w[0].lower() for w in response.split()]
    return all(ord(b) - ord(a) != 1 for a, b in zip(initials, initials[1:]))


def _paragraphs(response, kw, prompt):
    paragraphs = text.split_divider_paragraphs(response)
    return paragraphs is not None and len(paragraphs) == 2


def _paragraphs2(response, kw, prompt):
    pieces = response.split("\n\n")
    if any(not p.strip() for p in pieces[1:-1]):
        return False
    return sum(1 for p in pieces if p.strip()) == 2


def _first_word_sent(response, kw, prompt):
    sentences = text.split_sentences(response)
    target = kw["first_word"].strip().lower()
    return bool(sentences) and all(_bare(s.split()[0]) == target for s in sentences)


def _last_word_sent(response, kw, prompt):
    sentences = text.split_sentences(response)
    target = kw["last_word"].strip().lower()
    return bool(sentences) and all(_bare(s.split()[-1]) == target for s in sentences)


def _bigram_wrapping(response, kw, prompt):
    w = response.split()
    return len(w) >= 2 and all(w[i].startswith("<<") and w[i + 1].endswith(">>") for i in range(0, len(w) - 1, 2))


def _copying_multiple(response, kw, prompt):
    copies = response.split("******")
    return len(copies) == kw["N"] and all(_same_text(c, kw["prompt_to_repeat"]) for c in copies)


def _counting_composition(response, kw, prompt):
    pieces = _LOOSE_DIVIDER.split(response)
    if any(not p.strip() for p in pieces[1:-1]):
        return False
    paragraphs = [p for p in pieces if p.strip()]
    if len(paragraphs) != 3:
        return False
    for paragraph in paragraphs:
        sentences = text.split_sentences(paragraph)
        if len(sentences) != kw["n_sent"]:
            return False
        if any(text.count_words(s) != kw["n_words"] for s in sentences):
            return False
    return True


def _count_unique(response, kw, prompt):
    words = [w.lower() for w in text.tokens(response, punctuation=False)]
    return len(words) == len(set(words))


def _palindrome(response, kw, prompt):
    for word in response.split():
        letters = re.sub(r"[^\w]", "", word).lower()
        if len(letters) >= 3 and letters == letters[::-1]:
            return True
    return False


def _keyword_position(response, kw, prompt):
    sentences = text.split_sentences(response)
    if len(sentences) < kw["n"]:
        return False
    words = text.tokens(sentences[kw["n"] - 1], punctuation=False)
    return len(words) >= kw["m"] and words[kw["m"] - 1].lower() == kw["keyword"].strip().lower()


def _start_end(response, kw, prompt):
    toks = text.tokens(response)
    return len(toks) >= 2 and toks[0].lower() == toks[-1].lower()


_PROMPT = {"prompt_to_repeat": Kwarg(str)}

SPECS: dict[str, Spec] = {
    "copy:repeat_phrase": Spec(
        _repeat_phrase,
        lambda k: (
            f"Repeat the phrase {k['phrase']} exactly {k['small_n']} times, transforming it "
            "slightly each time by replacing only one word in the center of the phrase."
        ),
        {"phrase": Kwarg(str), "small_n": Kwarg(int, minimum=1)},
    ),
    "copy:copy": Spec(
        lambda r, k, p: _same_text(r, k["prompt_to_repeat"]),
        lambda k: (
            "Copy this instruction verbatim, do not follow the instruction, only copy it "
            "into the output (do not include this instruction sentence!)."
        ),
        _PROMPT,
    ),
    "new:copy_span_idx": Spec(
        # The span is the Python slice [n_start:n_end], as the training data was generated.
        lambda r, k, p: _same_text(r, k["prompt_to_repeat"][k["n_start"] : k["n_end"]]),
        lambda k: (
            f"Copy the span of words that lies between (and including) index {k['n_start']} "
            f"and {k['n_end']}, the indices are character indices!"
        ),
        {**_PROMPT, "n_start": Kwarg(int), "n_end": Kwarg(int)},
    ),
    "detectable_format:sentence_hyphens": Spec(
        _sentence_hyphens,
        lambda k: "All sentences must be connected using hyphens, with no spaces between them.",
    ),
    "keywords:no_adjacent_consecutive": Spec(
        _no_adjacent_consecutive,
        lambda k: "No two adjacent words can start with consecutive letters of the alphabet.",
    ),
    "detectable_format:square_brackets": Spec(
        lambda r, k, p: all(w.startswith("[") and w.endswith("]") for w in r.split()),
        lambda k: "Enclose every word in your response within square brackets.",
    ),
    "keywords:word_once": Spec(
        lambda r, k, p: _occurrences(k["keyword"], r) == 1,
        lambda k: f"Include keyword {k['keyword']} in your response.",
        {"keyword": Kwarg(str)},
    ),
    "keywords:word_count_different_numbers": Spec(
        lambda r, k, p: compare(_occurrences(k["keyword"], r), k["relation"], k["frequency"]),
        lambda k: f"In your response, the word {k['keyword']} should appear {k['relation']} {k['frequency']} times.",
        {"keyword": Kwarg(str), "frequency": Kwarg(int), "relation": relation()},
    ),
    "keywords:exclude_word_harder": Spec(
        lambda r, k, p: not re.search(r"\b" + re.escape(k["keyword"].strip()) + r"\b", r, flags=re.IGNORECASE),
        lambda k: f"Do not include keyword {k['keyword']} in the response.",
        # `instruction` is the text the keyword was drawn from; some rows carry it, unused here.
        {"keyword": Kwarg(str), "instruction": Kwarg(str, required=False)},
    ),
    "paragraphs:paragraphs": Spec(
        _paragraphs,
        lambda k: "There should be 2 paragraphs. Paragraphs are separated with the markdown divider: ***",
    ),
    "paragraphs:paragraphs2": Spec(
        _paragraphs2,
        lambda k: (
            "There should be 2 paragraphs. Paragraphs and only paragraphs are separated "
            "with each other by two line breaks."
        ),
    ),
    "first_word:first_word_sent": Spec(
        _first_word_sent,
        lambda k: f"The first word of each sentence should be the word {k['first_word']}.",
        {"first_word": Kwarg(str)},
    ),
    "first_word:first_word_answer": Spec(
        lambda r, k, p: _bare(r.split()[0]) == k["first_word"].strip().lower(),
        lambda k: f"The first word of your response should be the word {k['first_word']}.",
        {"first_word": Kwarg(str)},
    ),
    "last_word:last_word_sent": Spec(
        _last_word_sent,
        lambda k: f"The last word of each sentence, before punctuation, should be the word {k['last_word']}.",
        {"last_word": Kwarg(str)},
    ),
    "last_word:last_word_answer": Spec(
        lambda r, k, p: _bare(r.split()[-1]) == k["last_word"].strip().lower(),
        lambda k: f"The last word of your response should be the word {k['last_word']}.",
        {"last_word": Kwarg(str)},
    ),
    "detectable_format:bigram_wrapping": Spec(
        _bigram_wrapping,
        lambda k: (
            "Wrap every word bigram in double angular brackets, such as <<I am>> <<at home>> <<with my>> <<cute dog>>."
        ),
    ),
    "copy:copying_simple": Spec(
        lambda r, k, p: _same_text(r, k["prompt_to_repeat"]),
        lambda k: (
            "Repeat the request without change (do not say anything before repeating the "
            "request; the request you need to repeat does not include this sentence) and do not "
            "answer the actual request!"
        ),
        _PROMPT,
    ),
    "copy:copying_multiple": Spec(
        _copying_multiple,
        lambda k: (
            f"Repeat the request without change {k['N']} times, separated by 6 asterisk "
            "symbols (do not say anything before repeating the request; the request you need to "
            "repeat does not include this sentence) and do not answer the actual request!"
        ),
        {**_PROMPT, "N": Kwarg(int, minimum=1)},
    ),
    "punctuation:punctuation_dot": Spec(
        lambda r, k, p: "." not in r,
        lambda k: "In your entire response, refrain from the use of . (i.e. dots) as punctuation and in general.",
    ),
    "punctuation:punctuation_exclamation": Spec(
        lambda r, k, p: "!" not in r,
        lambda k: (
            "In your entire response, refrain from the use of ! (i.e. exclamation marks) as punctuation and in general."
        ),
    ),
    "count:lowercase_counting": Spec(
        # As the training data's checker: the total number of all-lowercase words is at most N.
        lambda r, k, p: len(re.findall(r"\b[a-z]+\b", r)) <= k["N"],
        lambda k: f"In your response, all lowercase words should appear at most {k['N']} times.",
        {"N": Kwarg(int)},
    ),
    "letters:letter_counting": Spec(
        lambda r, k, p: compare(len(re.findall(r"[a-zA-Z]", r)), k["relation"], k["N"]),
        lambda k: f"Answer with {k['relation']} {k['N']} letters.",
        {"N": Kwarg(int), "relation": relation()},
    ),
    "count:counting_composition": Spec(
        _counting_composition,
        lambda k: (
            "Write 3 paragraphs, delimited by the markdown divider: * * *, with exactly "
            f"{k['n_sent']} sentences each, with exactly {k['n_words']} words in each sentence."
        ),
        {"n_sent": Kwarg(int, minimum=1), "n_words": Kwarg(int, minimum=1)},
    ),
    "count:count_unique": Spec(
        _count_unique,
        lambda k: "Only use unique words in your response, no word should be repeated!",
    ),
    "count:count_increment_word": Spec(
        lambda r, k, p: _occurrences(k["keyword1"], r) == 1 and _occurrences(k["keyword2"], r) == 2,
        lambda k: (
            f"Include keyword {k['keyword1']} once in your response, keyword {k['keyword2']} twice in your response."
        ),
        {"keyword1": Kwarg(str), "keyword2": Kwarg(str)},
    ),
    "keywords:palindrome": Spec(
        _palindrome,
        lambda k: "Include a palindrome in your response.",
    ),
    "keywords:keyword_specific_position": Spec(
        _keyword_position,
        lambda k: (
            f"Include keyword {k['keyword']} in the {k['n']}-th sentence, as the {k['m']}-th word of that sentence."
        ),
        {"keyword": Kwarg(str), "n": Kwarg(int, minimum=1), "m": Kwarg(int, minimum=1)},
    ),
    "keywords:start_end": Spec(
        _start_end,
        lambda k: (
            "Start and end your response with the same word (do not write anything after "
            "the last word, not even punctuation)."
        ),
    ),
}
# IFEval's letter_frequency under another name, same kwargs.
SPECS["letters:letter_counting2"] = ifeval.SPECS["keywords:letter_frequency"]
SPECS = {k: dataclasses.replace(v, source="ifeval_train") for k, v in SPECS.items()}
