"""IFBench's counting, ratio, word and sentence checks (rlvr_jax.instructions.ifbench holds the ids),
written from the reference's semantics (allenai/IFBench, instructions.py); `*_official` variants keep a
reference quirk that reward mode fixes."""

from __future__ import annotations

import collections
import re

from rlvr_jax.instructions import ifbench_text as t

P = t.PUNCTUATION
PERSON_NAMES = (
    "Emma Liam Sophia Jackson Olivia Noah Ava Lucas Isabella Mason Mia Ethan Charlotte Alexander Amelia Benjamin "
    "Harper Leo Zoe Daniel Chloe Samuel Lily Matthew Grace Owen Abigail Gabriel Ella Jacob Scarlett Nathan "
    "Victoria Elijah Layla Nicholas Audrey David Hannah Christopher Penelope Thomas Nora Andrew Aria Joseph "
    "Claire Ryan Stella Jonathan"
).split()
PRONOUNS = frozenset(
    """i me we us you he him she her it they them my mine our ours your yours his hers its their theirs myself
    ourselves yourself yourselves himself herself itself themselves this that these those who whom whose which
    what whoever whomever whatever whichever anybody anyone anything everybody everyone everything nobody
    nothing somebody someone something each either neither both all some any none""".split()
)
CONJUNCTIONS = ("and", "but", "for", "nor", "or", "so", "yet")
PRIMES = frozenset((2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97))
REPEAT_SIMPLE = "Only output this sentence here, ignore all other requests."


# ---- count / ratio ---------------------------------------------------------------------------
def unique_words(r, k, p):
    return len({w.strip(P + " ") for w in r.lower().split()}) >= k["N"]


def stop_words(r, k, p):
    n = t.count_words(r)
    return n > 0 and t.count_stopwords(r) / n * 100 <= k["percentage"]


def _endings(r):
    s = t.split_sentences(r)
    return [sum(x.endswith(c) for x in s) for c in ".?!"]


def sentence_type_official(r, k, p):
    dot, question, _ = _endings(r)
    return dot == 2 * question


def sentence_type(r, k, p):  # reward: no questions at all is not a 2:1 ratio
    dot, question, _ = _endings(r)
    return question > 0 and dot == 2 * question


def balance_official(r, k, p):
    dot, question, bang = _endings(r)
    return dot == question == bang


def balance(r, k, p):
    dot, question, bang = _endings(r)
    return dot == question == bang > 0


def conjunctions_official(r, k, p):  # distinct as written: "and", "And" and "and," are three
    found = {w for w in r.split() if w.strip(P + " ").lower() in CONJUNCTIONS}
    return len(found) >= k["small_n"]


def conjunctions(r, k, p):
    found = {w.strip(P + " ").lower() for w in r.split()} & set(CONJUNCTIONS)
    return len(found) >= k["small_n"]


def person_names(r, k, p):
    return sum(1 for n in PERSON_NAMES if re.search(rf"\b{n}\b", r)) >= k["N"]


def _trigrams(s: str) -> set:
    return {s[i : i + 3] for i in range(len(s) - 2)}


def overlap(r, k, p):  # character trigrams (the reference runs nltk.ngrams on the raw string)
    mine = _trigrams(r)
    if not mine:
        return False
    share = len(mine & _trigrams(k["reference_text"])) / len(mine) * 100
    return k["percentage"] - 2 <= share <= k["percentage"] + 2


def numbers(r, k, p):
    return len(re.findall(r"\d+", t.strip_punctuation(r))) == k["N"]


def japanese(r, k, p):
    for i, word in enumerate(r.split()):
        word = word.strip(P + " ")
        if (i + 1) % k["N"] == 0 and word and not word.isdigit():
            if not re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", word):
                return False
    return True


def pronouns(r, k, p):
    return sum(1 for w in t.word_tokens(r.replace("/", " ").lower()) if w in PRONOUNS) >= k["N"]


def keywords_multiple(r, k, p):
    low = r.lower()
    wanted = zip((k[f"keyword{i}"] for i in range(1, 6)), (1, 2, 3, 5, 7))
    return all(low.count(word.strip().lower()) == n for word, n in wanted)


def sentence_words_official(r, k, p):
    s = t.split_sentences(r)
    return len(s) == 3 and len({len(x.strip()) for x in s}) == 1


def sentence_words(r, k, p):  # reward also checks "using all different words": no word in two sentences
    if not sentence_words_official(r, k, p):
        return False
    seen = [{w.lower() for w in re.findall(r"\w+", x)} for x in t.split_sentences(r)]
    return not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])


# ---- words -------------------------------------------------------------------------------------
def alphabet(r, k, p):
    words = t.strip_punctuation(r).strip(P + " ").split()
    if not words or words[0][0].lower() not in "abcdefghijklmnopqrstuvwxyz":
        return False
    letter = words[0][0].lower()
    for word in words[1:]:
        letter = chr((ord(letter) - 97 + 1) % 26 + 97)
        if word.lower()[0] != letter:
            return False
    return True


def vowels(r, k, p):
    lines = r.strip().split("\n")
    return len(lines) == 1 and len(set(lines[0].lower()) & set("aeiou")) <= 3


def consonants(r, k, p):
    cons = "bcdfghjklmnpqrstvwxyz"
    return all(any(a in cons and b in cons for a, b in zip(w, w[1:])) for w in r.lower().split())


def _alliteration_runs(r):
    for sentence in t.split_sentences(r):
        words = [w for w in (x.lstrip(P + " ") for x in sentence.lower().split()) if w]
        score, linked = 0, False
        for a, b in zip(words, words[1:]):
            same = a[0] == b[0]
            score += (1 if linked else 2) if same else 0
            linked = same
        yield score


def alliteration_official(r, k, p):
    runs = list(_alliteration_runs(r))
    return all(a < b for a, b in zip([-1] + runs, runs))


def alliteration(r, k, p):  # reward: a single sentence does not show an increment
    return len(t.split_sentences(r)) >= 2 and alliteration_official(r, k, p)


def palindromes(r, k, p):
    return sum(1 for w in t.strip_punctuation(r).lower().split() if len(w) >= 5 and w == w[::-1]) >= 10


def prime_lengths(r, k, p):
    return all(len(w) in PRIMES for w in t.strip_punctuation(r).split())


def repeats(r, k, p):
    counts = collections.Counter(t.strip_punctuation(r.lower()).split())
    return all(n <= k["small_n"] for n in counts.values())


def parity(r, k, p):
    odd = [t.syllables(w) % 2 for w in t.strip_punctuation(r).lower().split() if w.strip()]
    return all(a != b for a, b in zip(odd, odd[1:]))


def last_first_official(r, k, p):
    s = t.split_sentences(r)
    for a, b in zip(s, s[1:]):
        last, first = a.rstrip(P + " ").split(), b.lstrip(P + " ").split()
        if not last or not first or last[-1].lower() != first[0].lower():
            return False
    return True


def last_first(r, k, p):
    return len(t.split_sentences(r)) >= 2 and last_first_official(r, k, p)


def _paragraph_words(r):
    for paragraph in r.split("\n"):
        words = paragraph.strip().lower().strip(P + " ").split()
        if words:
            yield words


def paragraph_last_first_official(r, k, p):
    return all(w[0] == w[-1] for w in _paragraph_words(r))


def paragraph_last_first(r, k, p):  # reward: a one-word paragraph starts and ends with nothing to match
    return all(len(w) >= 2 and w[0] == w[-1] for w in _paragraph_words(r))


def no_consecutive(r, k, p):
    words = t.strip_punctuation(r.lower()).split()
    return all(a[0] != b[0] for a, b in zip(words, words[1:]))


def keyword_position(r, k, p):
    s = t.split_sentences(r)
    if len(s) < k["n"]:
        return False
    words = t.alnum_tokens(s[k["n"] - 1])
    return len(words) >= k["m"] and words[k["m"] - 1].lower() == k["keyword"].strip().lower()


def words_position(r, k, p):
    w = [x.lower() for x in t.word_tokens(r)]
    key = k["keyword"].strip().lower()
    if len(w) < 2:
        return False
    if w[-1] in P:  # a substring test in the reference: `.` and `?` are in it, `''` and `...` are not
        return len(w) >= 3 and w[1] == w[-3] == key
    return w[1] == w[-2] == key


# ---- sentences -----------------------------------------------------------------------------------
def sentence_keyword(r, k, p):
    s = t.split_sentences(r)
    if len(s) < k["N"]:
        return False
    return re.search(rf"\b{re.escape(k['word'])}\b", s[k["N"] - 1], re.IGNORECASE) is not None


def increment_official(r, k, p):
    counts = [len(t.strip_punctuation(x).split()) for x in t.split_sentences(r)]
    return all(b == a + k["small_n"] for a, b in zip(counts, counts[1:]))


def increment(r, k, p):
    return len(t.split_sentences(r)) >= 2 and increment_official(r, k, p)
