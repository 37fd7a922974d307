"""Text units IFBench's checkers are defined on, written without the NLTK data files its reference
downloads at run time (punkt, the stopword corpus, the perceptron POS tagger): a punkt-like sentence
splitter that keeps every fragment as written, a Treebank-like word tokenizer, the English stopword
list, and a lexicon test for "starts with a verb". Syllables come from syllapy and emoji from `emoji`,
as in the reference. docs/ifeval_modes.md lists where these can disagree with the reference.
"""

from __future__ import annotations

import re
import string

import emoji
import syllapy

PUNCTUATION = string.punctuation
_NO_PUNCT = str.maketrans("", "", string.punctuation)

# Abbreviations (lowercase, without the period) whose period does not end a sentence.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs etc inc ltd co corp jan feb mar apr jun jul aug sep sept "
    "oct nov dec no vol fig approx dept est gen gov lt col capt sgt rev e.g i.e a.m p.m u.s".split()
)
# A terminator run, then optional closing quotes/brackets, then whitespace (punkt needs a next token).
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s)")


def strip_punctuation(value: str) -> str:
    """`value` without ASCII punctuation (the reference's str.translate idiom)."""
    return value.translate(_NO_PUNCT)


def _period_ends(text: str, start: int, mark: str) -> bool:
    if "!" in mark or "?" in mark:
        return True
    if mark.startswith(".."):
        return False  # an ellipsis runs on
    word = re.search(r"(\S+)$", text[max(0, start - 40) : start])
    if word is None:
        return True
    token = word.group(1).lstrip("\"'(“‘[").lower()
    if token in _ABBREVIATIONS or re.fullmatch(r"(?:[a-z]\.)+[a-z]", token):
        return False
    return not (len(token) == 1 and token.isalpha())  # an initial: "J. Smith"


def split_sentences(value: str) -> list[str]:
    """Sentences as punkt returns them: spans of the text as written (inner newlines kept), stripped;
    a fragment with no letters (an emoji after "!", a `*`) is a sentence of its own."""
    out, start = [], 0
    for match in _SENTENCE_END.finditer(value):
        if _period_ends(value, match.start(), match.group(0).rstrip("\"'”’)]")):
            piece = value[start : match.end()].strip()
            if piece:
                out.append(piece)
            start = match.end()
    tail = value[start:].strip()
    if tail:
        out.append(tail)
    return out


# Treebank tokenizer steps (NLTK's word_tokenize after its sentence split), in order.
_STEPS = [
    (re.compile(r'^"'), " `` "),
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r"([ (\[{<])(\"|'{2})"), r"\1 `` "),
    (re.compile(r"([«“‘„]|`+)"), r" \1 "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.{2,}"), r" \g<0> "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile(r"([^.])(\.)([\]\)}>\"']*)\s*$"), r"\1 \2\3 "),
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
    (re.compile(r"[\]\[\(\)\{\}<>]"), r" \g<0> "),
    (re.compile(r"--"), r" -- "),
    (re.compile(r"([»”’])"), r" \1 "),
    (re.compile(r'"'), " '' "),
    (re.compile(r"(\S)('')"), r"\1 \2 "),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
    (re.compile(r"(?i)\b(can|gon|got|wan)(not|na|ta)\s"), r" \1 \2 "),
    (re.compile(r"(?i)\b(gim|lem)(me)\b"), r" \1 \2 "),
]


def word_tokens(value: str) -> list[str]:
    """Tokens as NLTK's word_tokenize splits them: punctuation apart (inner periods, hyphens and
    slashes kept), clitics apart (`don't` is `do` + `n't`), `"` written as `` and ''."""
    out: list[str] = []
    for sentence in split_sentences(value):
        s = f" {sentence} "
        for pattern, repl in _STEPS:
            s = pattern.sub(repl, s)
        out += s.split()
    return out


def alnum_tokens(value: str) -> list[str]:
    """word_tokens holding at least one letter or digit."""
    return [t for t in word_tokens(value) if any(ch.isalnum() for ch in t)]


# NLTK's English stopword list (the classic 179 words; \w+ tokens never hold an apostrophe).
STOPWORDS = frozenset(
    """i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself
    yourselves he him his himself she she's her hers herself it it's its itself they them their theirs
    themselves what which who whom this that that'll these those am is are was were be been being have
    has had having do does did doing a an the and but if or because as until while of at by for with
    about against between into through during before after above below to from up down in out on off
    over under again further then once here there when where why how all any both each few more most
    other some such no nor not only own same so than too very s t can will just don don't should
    should've now d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't
    hasn hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't needn needn't shan shan't
    shouldn shouldn't wasn wasn't weren weren't won won't wouldn wouldn't""".split()
)


def count_words(value: str) -> int:
    """Runs of `\\w` (the reference's RegexpTokenizer(r"\\w+"))."""
    return len(re.findall(r"\w+", value))


def count_stopwords(value: str) -> int:
    return sum(1 for t in re.findall(r"\w+", value) if t.lower() in STOPWORDS)


def syllables(word: str) -> int:
    return syllapy.count(word)


def is_emoji(char: str) -> bool:
    return emoji.is_emoji(char)


# "Starts with a verb" without a POS model: the first token is a common English verb form (base,
# -s, -ed, -ing of the lexicon, or an auxiliary). The reference tags with NLTK's perceptron tagger.
_VERBS = frozenset(
    """accept achieve act add adjust admit affect agree aim allow analyze answer apply approach argue
    arrange ask assess assume attach attempt avoid balance be bear beat become begin believe belong bend
    bring build buy calculate call care carry catch cause change check choose claim clarify clean
    climb close collect combine come compare complete compose compute conclude confirm connect consider
    contain continue contribute control convert cook copy correct count cover craft create cross cut
    deal decide define deliver demonstrate describe design determine develop die discover discuss
    dive do draft draw dream drink drive drop eat embrace emphasize enable encourage end enjoy ensure
    enter establish estimate evaluate examine expand expect experience explain explore express face
    fall feel fight fill find finish fit fix focus follow forget form gather generate get give go grab
    grow guess handle hang happen hate have hear help hide highlight hit hold hope identify ignore
    illustrate imagine implement improve include increase indicate inform insert install introduce
    invest invite join jump keep kill know lay lead learn leave let lie like limit list listen live
    look lose love maintain make manage mark match measure meet mention mix move need note notice
    observe obtain offer open order organize outline own paint pass pay perform pick picture place plan
    play point prepare present press prevent print produce protect prove provide pull push put raise
    reach read realize receive recognize recommend reduce reflect refuse relax remain remember remove
    repeat replace reply report represent require respond rest return reveal review rewrite ride ring
    rise run save say search see seek select sell send separate serve set settle shape share shift
    show shut sing sit sleep slow solve sort speak spend stand start state stay step stop store
    study suggest summarize supply support suppose take talk teach tell tend test thank think throw
    touch track train transform translate travel treat try turn understand update use visit wait wake
    walk want warn wash watch wear welcome win wish wonder work worry write
    am is are was were been being has had having does did done doing gone went made said took told
    wrote written began begun brought built bought came felt found gave given got held kept knew known
    left led lost meant met paid ran saw seen sent set sat spoke stood taught thought understood won""".split()
)


# -ing / -ed words that are rarely verbs (nouns, prepositions, adverbs).
_NOT_VERBS = frozenset(
    "thing nothing something anything everything morning evening during king ring spring string ceiling "
    "building feeling meeting wedding pudding hundred indeed bed red shed seed speed breed sacred naked".split()
)


def starts_with_verb(value: str) -> bool:
    tokens = word_tokens(value)
    if not tokens:
        return False
    word = tokens[0].lower()
    if word in _VERBS:
        return True
    if word in _NOT_VERBS or not word.isalpha():
        return False
    if (word.endswith("ing") and len(word) >= 6) or (word.endswith("ed") and len(word) >= 5):
        return True  # a gerund / participle or past form (VBG, VBD, VBN)
    return word.endswith("s") and word[:-1] in _VERBS or word.endswith("es") and word[:-2] in _VERBS
