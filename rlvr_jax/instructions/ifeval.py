"""IFEval's 25 verifiable instructions as the RL reward checks them ("reward" mode), and their wording.

Reward mode is IFEval's semantics except where IFEval's reference scorer is wrong or hackable. Every
departure from the reference ("official" mode, rlvr_jax.instructions.official) is listed here and
nowhere else in code (docs/ifeval_modes.md repeats the list for users):

| id | official (reference) | reward (here) |
| --- | --- | --- |
| keywords:existence, keywords:frequency | the keyword is a regex | matched literally |
| keywords:forbidden_words | regex inside `\\b...\\b`: `e.g.` before a space, `C#` are never found | literal; a word edge is required only where the word starts/ends with a letter or digit |
| startend:end_checker | strips `"` around the response, then no whitespace | also strips whitespace inside the quotes and curly quotes |
| language checks (3) | nothing detectable (no letters) counts as followed | fails (an easy reward hack) |
| change_case:english_capital | language detected on the raw all-caps text | detected on the lowercased text (langdetect's profiles are lowercase: all-caps French reads as English) |
| length_constraints:nth_paragraph_first_word | indexes the raw `\\n\\n` split, counts only non-empty pieces | indexes non-empty paragraphs |
| change_case:capital_word_frequency | NLTK tokens (`DON'T` is two capital words) | contractions stay one word |
| detectable_format:multiple_sections, detectable_content:postscript | splitter / marker is a regex | literal |

Both modes share `number_sentences` (our splitter: the reference's punkt model is not shipped).
"""

from __future__ import annotations

import json
import re

from rlvr_jax.instructions import language, text
from rlvr_jax.instructions.spec import Kwarg, Spec, relation

CONSTRAINED_RESPONSES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
LANGUAGE_NAMES = {
    "en": "English",
    "es": "Spanish",
    "pt": "Portuguese",
    "ar": "Arabic",
    "hi": "Hindi",
    "fr": "French",
    "ru": "Russian",
    "de": "German",
    "ja": "Japanese",
    "it": "Italian",
    "bn": "Bengali",
    "uk": "Ukrainian",
    "th": "Thai",
    "ur": "Urdu",
    "ta": "Tamil",
    "te": "Telugu",
    "bg": "Bulgarian",
    "ko": "Korean",
    "pl": "Polish",
    "he": "Hebrew",
    "fa": "Persian",
    "vi": "Vietnamese",
    "ne": "Nepali",
    "sw": "Swahili",
    "kn": "Kannada",
    "mr": "Marathi",
    "gu": "Gujarati",
    "pa": "Punjabi",
    "ml": "Malayalam",
    "fi": "Finnish",
    "nl": "Dutch",
    "sv": "Swedish",
    "tr": "Turkish",
    "zh-cn": "Simplified Chinese",
    "zh-tw": "Traditional Chinese",
}


def compare(count: int, rel: str, n: int) -> bool:
    """IFEval's two relations: 'less than' is count < n, 'at least' is count >= n."""
    return count < n if rel == "less than" else count >= n


def count_highlights(response: str) -> int:
    """Non-empty *single* plus **double** asterisk spans on one line, counted as IFEval does."""
    single = re.findall(r"\*[^\n*]*\*", response)
    double = re.findall(r"\*\*[^\n*]*\*\*", response)
    return sum(1 for h in single if h.strip("*").strip()) + sum(1 for h in double if h[2:-2].strip())


def count_bullets(response: str) -> int:
    """Lines starting with `* ` (not `**`) or `-`, as IFEval counts markdown bullets."""
    # [^\S\n] rather than IFEval's \s: same count, but no quadratic scan over blank lines.
    stars = re.findall(r"^[^\S\n]*\*[^*].*$", response, flags=re.MULTILINE)
    dashes = re.findall(r"^[^\S\n]*-.*$", response, flags=re.MULTILINE)
    return len(stars) + len(dashes)


def strip_json_fence(response: str) -> str:
    body = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        if body.startswith(fence):
            body = body[len(fence) :]
            break
    if body.endswith("```"):
        body = body[:-3]
    return body.strip()


def _json_format(response, kw, prompt):
    try:
        json.loads(strip_json_fence(response))
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the limit
        return False
    return True


def _postscript(response, kw, prompt):
    marker = kw["postscript_marker"].strip()
    # IFEval's two named markers tolerate a space after each period; others match literally.
    # (IFEval's leading \s* changes nothing for a search and is quadratic on long whitespace.)
    if marker == "P.P.S":
        pattern = r"p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"p\.\s?s\..*$"
    else:
        pattern = re.escape(marker.lower()) + r".*$"
    return re.search(pattern, response.lower(), flags=re.MULTILINE) is not None


def _sections(response, kw, prompt):
    splitter = re.escape(kw["section_spliter"].strip())
    parts = re.split(r"\s?" + splitter + r"\s?\d+\s?", response)
    return len(parts) - 1 >= kw["num_sections"]


def _title(response, kw, prompt):
    # IFEval's greedy `<<[^\n]+>>` takes, per line, first "<<" to last ">>"; done by hand
    # because the regex is quadratic on a line of "<<<<..." (degenerate samples do that).
    for line in response.split("\n"):
        start, end = line.find("<<"), line.rfind(">>")
        if start >= 0 and end >= start + 3 and line[start : end + 2].lstrip("<").rstrip(">").strip():
            return True
    return False


def count_placeholders(response: str) -> int:
    """Non-overlapping `[...]` spans within a line, as IFEval's lazy bracket regex finds them."""
    count = 0
    for line in response.split("\n"):
        pos = line.find("[")
        while pos >= 0:
            close = line.find("]", pos + 1)
            if close < 0:
                break  # the regex is quadratic exactly here: many "[" and no "]"
            count += 1
            pos = line.find("[", close + 1)
    return count


def _two_responses(response, kw, prompt):
    pieces = response.split("******")
    kept = []
    for i, piece in enumerate(pieces):
        if piece.strip():
            kept.append(piece.strip())
        elif 0 < i < len(pieces) - 1:
            return False
    return len(kept) == 2 and kept[0] != kept[1]


def _number_paragraphs(response, kw, prompt):
    paragraphs = text.split_divider_paragraphs(response)
    return paragraphs is not None and len(paragraphs) == kw["num_paragraphs"]


def first_word_of(paragraph: str) -> str:
    """Lowercased first word, leading quotes dropped, cut at the first punctuation mark."""
    word = paragraph.split()[0].lstrip("'\"")
    out = []
    for ch in word:
        if ch in ".,?!'\"":
            break
        out.append(ch)
    return "".join(out).lower()


def _nth_paragraph_first_word(response, kw, prompt):
    paragraphs = text.split_blank_line_paragraphs(response)
    n = kw["nth_paragraph"]
    if len(paragraphs) != kw["num_paragraphs"] or n > len(paragraphs):
        return False
    return first_word_of(paragraphs[n - 1]) == kw["first_word"].strip().lower()


def _language(response, kw, prompt):
    return language.detect(response) == kw["language"]


def _english_capital(response, kw, prompt):
    # Detect on the lowercased text: langdetect's profiles are lowercase and call most all-caps
    # text English (IFEval detects on the raw text and so passes all-caps French).
    return response.isupper() and language.detect(response.lower()) == "en"


def _english_lowercase(response, kw, prompt):
    return response.islower() and language.detect(response) == "en"


def _capital_words(response, kw, prompt):
    n = sum(1 for t in text.tokens(response, punctuation=False) if t.isupper())
    return compare(n, kw["capital_relation"], kw["capital_frequency"])


def _keywords_exist(response, kw, prompt):
    return all(re.search(re.escape(k.strip()), response, flags=re.IGNORECASE) for k in kw["keywords"])


def word_pattern(word: str) -> re.Pattern:
    """`word` as a whole word: no letter or digit may touch an edge of it that is itself a letter or
    digit (so `cat` is not found in `category`, and `C++` and `e.g.` are found before punctuation)."""
    word = word.strip()
    head = r"(?<!\w)" if re.match(r"\w", word) else ""
    tail = r"(?!\w)" if re.search(r"\w$", word) else ""
    return re.compile(head + re.escape(word) + tail, flags=re.IGNORECASE)


def _forbidden(response, kw, prompt):
    return not any(word_pattern(w).search(response) for w in kw["forbidden_words"])


def ends_with(response: str, phrase: str) -> bool:
    """Whether `response` ends with `phrase` (case and whitespace aside), inside closing quotes or not."""
    body, phrase = response.strip().lower(), phrase.strip().lower()
    return body.endswith(phrase) or body.rstrip("\"'”’").rstrip().endswith(phrase)


def _keyword_frequency(response, kw, prompt):
    n = len(re.findall(re.escape(kw["keyword"].strip()), response, flags=re.IGNORECASE))
    return compare(n, kw["relation"], kw["frequency"])


def _letter_frequency(response, kw, prompt):
    n = response.lower().count(kw["letter"].strip().lower())
    return compare(n, kw["let_relation"], kw["let_frequency"])


def _sentence(phrase: str) -> str:
    """The phrase with a final period unless it already ends in punctuation."""
    phrase = phrase.strip()
    return phrase if phrase[-1] in ".!?" else phrase + "."


def _quote_list(items) -> str:
    return ", ".join(items)


SPECS: dict[str, Spec] = {
    "change_case:capital_word_frequency": Spec(
        _capital_words,
        lambda k: (
            f"In your response, words with all capital letters should appear "
            f"{k['capital_relation']} {k['capital_frequency']} times."
        ),
        {"capital_frequency": Kwarg(int), "capital_relation": relation()},
    ),
    "change_case:english_capital": Spec(
        _english_capital,
        lambda k: "Your entire response should be in English, and in all capital letters.",
    ),
    "change_case:english_lowercase": Spec(
        _english_lowercase,
        lambda k: (
            "Your entire response should be in English, and in all lowercase letters. No capital letters are allowed."
        ),
    ),
    "combination:repeat_prompt": Spec(
        lambda r, k, p: r.strip().lower().startswith(k["prompt_to_repeat"].strip().lower()),
        lambda k: (
            "First repeat the request word for word without change, then give your answer "
            "(do not say anything before repeating the request; the request you need to repeat "
            "does not include this sentence)."
        ),
        {"prompt_to_repeat": Kwarg(str)},
    ),
    "combination:two_responses": Spec(
        _two_responses,
        lambda k: (
            "Give two different responses. Responses and only responses should be "
            "separated by 6 asterisk symbols: ******."
        ),
    ),
    "detectable_content:number_placeholders": Spec(
        lambda r, k, p: count_placeholders(r) >= k["num_placeholders"],
        lambda k: (
            f"The response must contain at least {k['num_placeholders']} placeholders "
            "represented by square brackets, such as [address]."
        ),
        {"num_placeholders": Kwarg(int)},
    ),
    "detectable_content:postscript": Spec(
        _postscript,
        lambda k: (
            f"At the end of your response, please explicitly add a postscript starting with {k['postscript_marker']}"
        ),
        {"postscript_marker": Kwarg(str)},
    ),
    "detectable_format:constrained_response": Spec(
        lambda r, k, p: any(c in r for c in CONSTRAINED_RESPONSES),
        lambda k: "Answer with one of the following options: " + " / ".join(f'"{c}"' for c in CONSTRAINED_RESPONSES),
    ),
    "detectable_format:json_format": Spec(
        _json_format,
        lambda k: "Entire output should be wrapped in JSON format. You can use markdown ticks such as ```.",
    ),
    "detectable_format:multiple_sections": Spec(
        _sections,
        lambda k: (
            f"Your response must have {k['num_sections']} sections. Mark the beginning of "
            f"each section with {k['section_spliter']} X, such as: {k['section_spliter']} 1"
        ),
        {"section_spliter": Kwarg(str), "num_sections": Kwarg(int, minimum=1)},
    ),
    "detectable_format:number_bullet_lists": Spec(
        lambda r, k, p: count_bullets(r) == k["num_bullets"],
        lambda k: (
            f"Your answer must contain exactly {k['num_bullets']} bullet points. Use the "
            "markdown bullet points such as:\n* This is point 1.\n* This is point 2"
        ),
        {"num_bullets": Kwarg(int)},
    ),
    "detectable_format:number_highlighted_sections": Spec(
        lambda r, k, p: count_highlights(r) >= k["num_highlights"],
        lambda k: (
            f"Highlight at least {k['num_highlights']} sections in your answer with "
            "markdown, i.e. *highlighted section*."
        ),
        {"num_highlights": Kwarg(int)},
    ),
    "detectable_format:title": Spec(
        _title,
        lambda k: "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
    ),
    "keywords:existence": Spec(
        _keywords_exist,
        lambda k: f"Include keywords {_quote_list(k['keywords'])} in the response.",
        {"keywords": Kwarg(list)},
    ),
    "keywords:forbidden_words": Spec(
        _forbidden,
        lambda k: f"Do not include keywords {_quote_list(k['forbidden_words'])} in the response.",
        {"forbidden_words": Kwarg(list)},
    ),
    "keywords:frequency": Spec(
        _keyword_frequency,
        lambda k: f"In your response, the word {k['keyword']} should appear {k['relation']} {k['frequency']} times.",
        {"keyword": Kwarg(str), "frequency": Kwarg(int), "relation": relation()},
    ),
    "keywords:letter_frequency": Spec(
        _letter_frequency,
        lambda k: (
            f"In your response, the letter {k['letter']} should appear {k['let_relation']} {k['let_frequency']} times."
        ),
        {
            # Any one character: IFEval itself asks for `#` and `!` (keys 1122, 1129).
            "letter": Kwarg(str, max_len=1),
            "let_frequency": Kwarg(int),
            "let_relation": relation(),
        },
    ),
    "language:response_language": Spec(
        _language,
        lambda k: (
            f"Your ENTIRE response should be in "
            f"{LANGUAGE_NAMES.get(k['language'], k['language'])} language, no other language is allowed."
        ),
        {"language": Kwarg(str, choices=language.LANGUAGES)},
    ),
    "length_constraints:nth_paragraph_first_word": Spec(
        _nth_paragraph_first_word,
        lambda k: (
            f"There should be {k['num_paragraphs']} paragraphs. Paragraphs and only "
            "paragraphs are separated with each other by two new lines as if it was '\\n\\n' in "
            f"python. Paragraph {k['nth_paragraph']} must start with word {k['first_word']}."
        ),
        {
            "num_paragraphs": Kwarg(int, minimum=1),
            "nth_paragraph": Kwarg(int, minimum=1),
            "first_word": Kwarg(str),
        },
    ),
    "length_constraints:number_paragraphs": Spec(
        _number_paragraphs,
        lambda k: (
            f"There should be {k['num_paragraphs']} paragraphs. Paragraphs are separated with the markdown divider: ***"
        ),
        {"num_paragraphs": Kwarg(int, minimum=1)},
    ),
    "length_constraints:number_sentences": Spec(
        lambda r, k, p: compare(text.count_sentences(r), k["relation"], k["num_sentences"]),
        lambda k: f"Your response should contain {k['relation']} {k['num_sentences']} sentences.",
        {"num_sentences": Kwarg(int), "relation": relation()},
    ),
    "length_constraints:number_words": Spec(
        lambda r, k, p: compare(text.count_words(r), k["relation"], k["num_words"]),
        lambda k: f"Answer with {k['relation']} {k['num_words']} words.",
        {"num_words": Kwarg(int), "relation": relation()},
    ),
    "punctuation:no_comma": Spec(
        lambda r, k, p: "," not in r,
        lambda k: "In your entire response, refrain from the use of any commas.",
    ),
    "startend:end_checker": Spec(
        lambda r, k, p: ends_with(r, k["end_phrase"]),
        lambda k: (
            f"Finish your response with this exact phrase: {_sentence(k['end_phrase'])} "
            "No other words should follow this phrase."
        ),
        {"end_phrase": Kwarg(str)},
    ),
    "startend:quotation": Spec(
        lambda r, k, p: len(r.strip()) > 1 and r.strip()[0] == '"' and r.strip()[-1] == '"',
        lambda k: "Wrap your entire response with double quotation marks.",
    ),
}
