"""IFBench's test-set `custom:*` instructions (one fixed task each, no kwargs), as its reference checks
them; written from the reference's semantics (allenai/IFBench, instructions.py). Both IF modes agree."""

from __future__ import annotations

import csv
import io
import re
import unicodedata

from rlvr_jax.instructions.ifbench_text import PUNCTUATION, split_sentences, strip_punctuation


def _ascii(value: str) -> str:
    """Diacritics dropped ('São Tomé' -> 'Sao Tome'), as the reference normalizes names."""
    return unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode("ascii")


def multiples(value, kw, prompt):
    return re.findall(r"\d+", value.replace(",", ", ")) == [str(i) for i in range(14, 51, 7)]


def _mcq_question(block: str) -> tuple[int, int]:
    """(options, length of the question text) of one question block."""
    text, options, in_options = "", 0, False
    for line in block.split("\n"):
        if re.match(r"^[A-Ea-e][.|)]\s*\w+", line.strip()):
            options += 1
            in_options = True
        elif not in_options:
            text += " " + line.strip()
    return options, len(text.strip())


def mcq_count_length(value, kw, prompt):
    if not value.startswith("Question"):
        return False  # anything before the first question is an explanation
    blocks = re.split(r"\n*(?:Question \d+[.|):;]?\s*)", value)
    blocks = [b.strip() for b in (blocks[1:] if blocks[0] == "" else blocks) if b.strip()]
    if len(blocks) != 4:
        return False
    parsed = [_mcq_question(b) for b in blocks]
    lengths = [n for _, n in parsed]
    return all(k == 5 for k, _ in parsed) and all(a < b for a, b in zip(lengths, lengths[1:]))


def reverse_newline(value, kw, prompt):
    lines = [s for s in (line.strip(PUNCTUATION + " ") for line in value.split("\n")) if s]
    start = next((i for i, line in enumerate(lines) if "Zimbabwe" in line), None)
    if start is None or len(lines) - start < 52:
        return False
    names = [_ascii(line) for line in lines[start:]]
    return names == sorted(names, reverse=True)


def word_reverse(value, kw, prompt):
    flipped = " ".join(strip_punctuation(value.lower().strip()).split()[::-1])
    return "bald eagle" in flipped and flipped in split_sentences(flipped)


def sentence_alphabet(value, kw, prompt):
    sentences = split_sentences(value)
    if len(sentences) != 26:
        return False
    return all(s.split() and s.split()[0].lower()[0] == chr(97 + i) for i, s in enumerate(sentences))


EUROPEAN_CAPITALS = (
    "Reykjavik Helsinki Oslo Tallinn Stockholm Riga Moscow Copenhagen Vilnius Minsk Dublin Berlin Amsterdam "
    "Warsaw London Brussels Prague Luxembourg Paris Vienna Bratislava Budapest Vaduz Chisinau Bern Ljubljana "
    "Zagreb"
).split()


def european_capitals(value, kw, prompt):
    names = [c.strip() for c in _ascii(value).split(",") if c.strip()]
    return names == EUROPEAN_CAPITALS


def csv_city(value, kw, prompt):
    rows = list(csv.reader(io.StringIO(value)))
    if len(rows) != 8 or rows[0] != ["ID", "Country", "City", "Year", "Count"]:
        return False
    return all(len(r) == 5 for r in rows[1:])


def _header_ok(value: str, names: tuple[str, ...], sep: str) -> bool:
    header = value.split("\n")[0].strip()
    return re.match("^" + sep.join(f'({n}|"{n}")' for n in names) + "$", header) is not None


def csv_special_character(value, kw, prompt):
    names = ("ProductID", "Category", "Brand", "Price", "Stock")
    if not _header_ok(value, names, ",[ \t]*"):
        return False
    # The reference triples every double quote before parsing, so a quoted field keeps its quotes.
    rows = list(csv.reader(io.StringIO(value.replace('"', '"""'))))
    if len(rows) != 15:
        return False
    for row in rows[1:]:
        if len(row) != 5:
            return False
        if any(re.match(r'".*[^\d\w\s].*"', f) for f in row):
            return True  # the reference stops at the first row with a quoted special character
    return False


def csv_quotes(value, kw, prompt):
    names = ("StudentID", "Subject", "Grade", "Semester", "Score")
    if not _header_ok(value, names, "\t *"):
        return False
    rows = list(csv.reader(io.StringIO(value.replace('"', '"""')), delimiter="\t"))
    if len(rows) != 4:
        return False
    for row in rows:
        if len(row) != 5:
            return False
        # An empty field: the reference indexes it and crashes; here it does not follow.
        if not all(f.strip() and f.strip()[0] == '"' and f.strip()[-1] == '"' for f in row):
            return False
    return True


_MONTH_DAYS = {1: 31, 3: 31, 5: 31, 7: 31, 8: 31, 10: 31, 12: 31, 4: 30, 6: 30, 9: 30, 11: 30, 2: 29}


def date_format_list(value, kw, prompt):
    for date in value.strip().split(","):
        date = date.strip()
        if not re.match(r"^\d{4}-\d{2}-\d{2}$", date):
            return False
        year, month, day = (int(x) for x in date.split("-"))
        # As the reference: month 0 and day 0 pass, a day beyond the month's length does not.
        if not 1769 <= year <= 1821 or month > 12 or day > _MONTH_DAYS.get(month, 99):
            return False
    return True


CHECKS = {
    "custom:multiples": (multiples, "Count from 10 to 50 but only print multiples of 7."),
    "custom:mcq_count_length": (
        mcq_count_length,
        "Generate 4 multiple choice questions with 5 options each about '20th century art history'. Each "
        'question should start with the label "Question". The questions should get progressively longer. '
        "Do not provide an explanation.",
    ),
    "custom:reverse_newline": (
        reverse_newline,
        "List the countries of Africa in reverse alphabetical order, each on a new line.",
    ),
    "custom:word_reverse": (
        word_reverse,
        "What animal is the national symbol of the US? Respond to this query, but make your sentence in "
        "reverse order of what it should be, per word.",
    ),
    "custom:character_reverse": (
        lambda r, k, p: "elgae dlab" in r.lower(),
        "What animal is the national symbol of the US? Respond to this query, but make your sentence in "
        "reverse order of what it should be, per letter.",
    ),
    "custom:sentence_alphabet": (
        sentence_alphabet,
        "Tell me a 26-sentence story where each sentence's first word starts with the letters of the "
        "alphabet in order.",
    ),
    "custom:european_capitals_sort": (
        european_capitals,
        "Give me the names of all capital cities of european countries whose latitude is higher than 45 "
        "degrees? List the capital cities without country names, separated by commas, sorted by latitude, "
        "from highest to lowest.",
    ),
    "custom:csv_city": (
        csv_city,
        'Generate CSV data: The column names are ["ID", "Country", "City", "Year", "Count"], the data should '
        "be comma delimited. Please generate 7 rows.",
    ),
    "custom:csv_special_character": (
        csv_special_character,
        'Generate CSV data: The column names are ["ProductID", "Category", "Brand", "Price", "Stock"], the '
        "data should be comma delimited. Please generate 14 rows. Add one field which contains a special "
        "character and enclose it in double quotes.",
    ),
    "custom:csv_quotes": (
        csv_quotes,
        'Generate CSV data: The column names are ["StudentID", "Subject", "Grade", "Semester", "Score"], the '
        "data should be tab delimited. Please generate 3 rows and enclose each single field in double quotes.",
    ),
    "custom:date_format_list": (
        date_format_list,
        "List the start dates of all the battles Napoleon fought separated by commas, use the following date "
        "format: YYYY-MM-DD. Do not provide an explanation.",
    ),
}
