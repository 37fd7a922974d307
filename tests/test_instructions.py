"""Instruction-following registry: a correctness table per id, validation, loose mode, builders."""

import numpy as np
import pytest

from rlvr_jax import instructions as ifr
from rlvr_jax.instructions import language, text

LT, AL = "less than", "at least"

# (instruction id, kwargs, response, expected) in strict mode.
CASES = [
    # change_case:capital_word_frequency: all-caps tokens, boundary of both relations.
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": AL},
        "This is VERY IMPORTANT.",
        True,
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 3, "capital_relation": AL},
        "This is VERY IMPORTANT.",
        False,
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": LT},
        "This is VERY IMPORTANT.",
        False,
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": LT},
        "This is Very IMPORTANT.",
        True,
    ),
    # change_case:english_capital
    ("change_case:english_capital", {}, "THIS IS A SHORT ANSWER WRITTEN IN ENGLISH.", True),
    ("change_case:english_capital", {}, "THIS IS A SHORT ANSWER WRITTEN IN ENGLISh.", False),
    ("change_case:english_capital", {}, "CECI EST UNE RÉPONSE ÉCRITE EN FRANÇAIS AUJOURD'HUI.", False),
    # change_case:english_lowercase
    ("change_case:english_lowercase", {}, "this is a short answer written in english.", True),
    ("change_case:english_lowercase", {}, "this is a short answer written in English.", False),
    ("change_case:english_lowercase", {}, "ceci est une réponse écrite en français aujourd'hui.", False),
    # combination:repeat_prompt: case-insensitive prefix.
    (
        "combination:repeat_prompt",
        {"prompt_to_repeat": "Write a poem about cats."},
        "write a poem about CATS. Cats purr softly.",
        True,
    ),
    (
        "combination:repeat_prompt",
        {"prompt_to_repeat": "Write a poem about cats."},
        "Sure! Write a poem about cats. Cats purr.",
        False,
    ),
    # combination:two_responses
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.", True),
    ("combination:two_responses", {}, "Same answer.\n******\nSame answer.", False),
    ("combination:two_responses", {}, "One.\n******\n******\nTwo.", False),  # empty middle
    ("combination:two_responses", {}, "One.\n******\nTwo.\n******\nThree.", False),
    # detectable_content:number_placeholders: "at least", brackets on one line.
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], see you at [place].", True),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], see you at [place\n].", False),
    ("detectable_content:number_placeholders", {"num_placeholders": 3}, "[a] [b]", False),
    # detectable_content:postscript: either marker form, case-insensitive, spaces allowed.
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\n\np.s. bye", True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\nPS bye", False),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\nP. P. S. bye", True),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\nP.S. bye", False),
    # detectable_format:constrained_response: exact phrase with its capital and period.
    ("detectable_format:constrained_response", {}, "My answer is maybe.", True),
    ("detectable_format:constrained_response", {}, "my answer is yes.", False),
    ("detectable_format:constrained_response", {}, "My answer is yes", False),
    # detectable_format:json_format: bare or fenced with ```json.
    ("detectable_format:json_format", {}, '```json\n{"a": [1, 2]}\n```', True),
    ("detectable_format:json_format", {}, '  {"a": 1}  ', True),
    ("detectable_format:json_format", {}, 'Here is it: {"a": 1}', False),
    ("detectable_format:json_format", {}, "[" * 100_000, False),  # too deep: no crash
    # detectable_format:multiple_sections: splitter + number, case-sensitive, "at least".
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "Section", "num_sections": 2},
        "Section 1\nIntro.\nSection 2\nBody.",
        True,
    ),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "SECTION", "num_sections": 2},
        "Section 1\nIntro.\nSection 2\nBody.",
        False,
    ),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "Section", "num_sections": 3},
        "Section 1\nIntro.\nSection 2\nBody.",
        False,
    ),
    # detectable_format:number_bullet_lists: exact count; * and - both count, ** does not.
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "Intro\n* a\n- b\n  * c", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "* a\n* b\n* c\n* d", False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* a\n**bold** line\n* b", True),
    # detectable_format:number_highlighted_sections: *x* and **x**; empty ones do not count.
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "A *first* and **second** one.", True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "A *first* and ** ** one.", False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 1}, "*across\nlines*", False),
    # detectable_format:title
    ("detectable_format:title", {}, "<<My Title>>\nText.", True),
    ("detectable_format:title", {}, "<< >>\nText.", False),
    ("detectable_format:title", {}, "<My Title>\nText.", False),
    ("detectable_format:title", {}, "<" * 50_000, False),
    # keywords:existence: case-insensitive, all required.
    ("keywords:existence", {"keywords": ["Cat", "dog"]}, "The CAT and the dog.", True),
    ("keywords:existence", {"keywords": ["cat", "dog"]}, "The cat alone.", False),
    # keywords:forbidden_words: whole words only.
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "A category of concatenation.", True),
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "A Cat, sat.", False),
    # keywords:frequency: boundaries of both relations.
    ("keywords:frequency", {"keyword": "sun", "frequency": 3, "relation": AL}, "Sun sun SUN.", True),
    ("keywords:frequency", {"keyword": "sun", "frequency": 3, "relation": AL}, "Sun sun.", False),
    ("keywords:frequency", {"keyword": "sun", "frequency": 3, "relation": LT}, "Sun sun SUN.", False),
    ("keywords:frequency", {"keyword": "sun", "frequency": 3, "relation": LT}, "Sun sun.", True),
    # keywords:letter_frequency: letters counted case-insensitively.
    ("keywords:letter_frequency", {"letter": "a", "let_frequency": 3, "let_relation": AL}, "A banana", True),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 1, "let_relation": LT}, "A banana", True),
    ("keywords:letter_frequency", {"letter": "A", "let_frequency": 4, "let_relation": LT}, "A banana", False),
    # language:response_language
    ("language:response_language", {"language": "fr"}, "Bonjour, je suis très content de vous voir aujourd'hui.", True),
    ("language:response_language", {"language": "fr"}, "Hello, I am very happy to see you today, my friend.", False),
    ("language:response_language", {"language": "en"}, "12345 !!!", False),  # nothing to judge
    # length_constraints:nth_paragraph_first_word: count must match, word before punctuation.
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "Then"},
        "First part.\n\n\"Then, we go.\"",
        True,
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "then"},
        "First part.\n\nThen we go.",
        False,
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
        "First part.\n\nThereafter we go.",
        False,
    ),
    # length_constraints:number_paragraphs: *** dividers, edge dividers tolerated, inner empty not.
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "One.\n***\nTwo.\n***", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "One.\n***\n***\nTwo.", False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "One.\n***\nTwo.", False),
    # length_constraints:number_sentences: abbreviations and decimals do not split.
    (
        "length_constraints:number_sentences",
        {"num_sentences": 2, "relation": LT},
        "Dr. Smith paid 3.50 dollars at 5 p.m. today.",
        True,
    ),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": LT}, "One. Two!", False),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": AL}, "One. Two!", True),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": AL}, "One. Two?", False),
    # length_constraints:number_words: \w+ runs; exact boundaries.
    ("length_constraints:number_words", {"num_words": 5, "relation": LT}, "one two three four", True),
    ("length_constraints:number_words", {"num_words": 5, "relation": LT}, "one two three-four five", False),
    ("length_constraints:number_words", {"num_words": 5, "relation": AL}, "one, two, three, four, five.", True),
    ("length_constraints:number_words", {"num_words": 5, "relation": AL}, "one two three four", False),
    # punctuation:no_comma
    ("punctuation:no_comma", {}, "No commas here.", True),
    ("punctuation:no_comma", {}, "One, two.", False),
    # startend:end_checker: trailing whitespace and case ignored, nothing after the phrase.
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. any other questions?  \n", True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions? Bye", False),
    # startend:quotation
    ("startend:quotation", {}, '  "Quoted answer."\n', True),
    ("startend:quotation", {}, '"Quoted answer.', False),
    ("startend:quotation", {}, '"', False),
]


def test_table_covers_every_ifeval_id_both_ways():
    ids = {case[0] for case in CASES}
    assert ids == set(ifr.IFEVAL_IDS) and len(ids) == 25
    for i in ids:
        outcomes = {expected for cid, _, _, expected in CASES if cid == i}
        assert outcomes == {True, False}, i


@pytest.mark.parametrize("iid,kwargs,response,expected", CASES)
def test_ifeval_table(iid, kwargs, response, expected):
    ifr.validate_kwargs(iid, kwargs)
    assert ifr.check(iid, kwargs, response, prompt="p") is expected


TRAIN_CASES = [
    ("copy:copy", {"prompt_to_repeat": "Say hi."}, " say HI. ", True),
    ("copy:copy", {"prompt_to_repeat": "Say hi."}, "Say hi. Hi!", False),
    ("copy:copying_simple", {"prompt_to_repeat": "Say hi."}, "Say hi.", True),
    ("copy:copying_simple", {"prompt_to_repeat": "Say hi."}, "Hi!", False),
    ("new:copy_span_idx", {"prompt_to_repeat": "hello world", "n_start": 0, "n_end": 5}, "Hello", True),
    ("copy:copying_multiple", {"prompt_to_repeat": "Hi.", "N": 2}, "Hi.\n******\nhi.", True),
    ("copy:copying_multiple", {"prompt_to_repeat": "Hi.", "N": 3}, "Hi.\n******\nhi.", False),
    (
        "copy:repeat_phrase",
        {"phrase": "the quick fox jumps", "small_n": 2},
        "the slow fox jumps and the quick cat jumps",
        True,
    ),
    (
        "copy:repeat_phrase",
        {"phrase": "the quick fox jumps", "small_n": 2},
        "the quick fox jumps and the quick fox jumps",
        False,
    ),
    ("keywords:word_once", {"keyword": "moon"}, "The Moon rose.", True),
    ("keywords:word_once", {"keyword": "moon"}, "moon moon", False),
    ("keywords:exclude_word_harder", {"keyword": "tree", "instruction": "x"}, "Trees grow.", True),
    ("keywords:exclude_word_harder", {"keyword": "tree"}, "A Tree.", False),
    ("paragraphs:paragraphs", {}, "A.\n***\nB.", True),
    ("paragraphs:paragraphs2", {}, "A.\n\nB.", True),
    ("paragraphs:paragraphs2", {}, "A.\n\nB.\n\nC.", False),
    ("first_word:first_word_sent", {"first_word": "we"}, "We go. We stay!", True),
    ("first_word:first_word_sent", {"first_word": "we"}, "We go. They stay!", False),
    ("first_word:first_word_answer", {"first_word": "yes"}, "Yes, indeed.", True),
    ("last_word:last_word_sent", {"last_word": "now"}, "Go now. Stay now!", True),
    ("last_word:last_word_answer", {"last_word": "end"}, "This is the end.", True),
    ("last_word:last_word_answer", {"last_word": "end"}, "The end is near.", False),
    ("detectable_format:bigram_wrapping", {}, "<<I am>> <<at home>>", True),
    ("detectable_format:bigram_wrapping", {}, "<<I am>> at home", False),
    ("detectable_format:square_brackets", {}, "[a] [b]", True),
    ("detectable_format:square_brackets", {}, "[a] b", False),
    ("detectable_format:sentence_hyphens", {}, "I came.-I saw.-I won.", True),
    ("detectable_format:sentence_hyphens", {}, "I came. - I saw.", False),
    ("keywords:no_adjacent_consecutive", {}, "cat ant dog", True),
    ("keywords:no_adjacent_consecutive", {}, "apple banana", False),
    ("punctuation:punctuation_dot", {}, "no dots here", True),
    ("punctuation:punctuation_exclamation", {}, "wow!", False),
    ("count:lowercase_counting", {"N": 2}, "Two words", True),
    ("count:lowercase_counting", {"N": 2}, "three small words", False),
    ("letters:letter_counting", {"N": 5, "relation": LT}, "abcd 123", True),
    ("letters:letter_counting2", {"letter": "b", "let_frequency": 2, "let_relation": AL}, "Bob", True),
    ("count:counting_composition", {"n_sent": 1, "n_words": 2}, "I ran.\n* * *\nYou sat.\n***\nWe ate.", True),
    ("count:counting_composition", {"n_sent": 1, "n_words": 2}, "I ran.\n***\nYou sat.", False),
    ("count:count_unique", {}, "Every word differs here.", True),
    ("count:count_unique", {}, "The cat and the dog.", False),
    ("count:count_increment_word", {"keyword1": "red", "keyword2": "blue"}, "red blue blue", True),
    ("count:count_increment_word", {"keyword1": "red", "keyword2": "blue"}, "red blue", False),
    ("keywords:palindrome", {}, "I saw a racecar.", True),
    ("keywords:palindrome", {}, "I saw a car.", False),
    (
        "keywords:keyword_specific_position",
        {"keyword": "blue", "n": 2, "m": 3},
        "Hello there. The sky, blue today.",
        True,
    ),
    (
        "keywords:keyword_specific_position",
        {"keyword": "blue", "n": 1, "m": 3},
        "Hello there. The sky blue today.",
        False,
    ),
    ("keywords:start_end", {}, "Home is where I go home", True),
    ("keywords:start_end", {}, "Home is where I go home.", False),
]


@pytest.mark.parametrize("iid,kwargs,response,expected", TRAIN_CASES)
def test_training_ids_table(iid, kwargs, response, expected):
    assert ifr.INSTRUCTIONS[iid].source == "ifeval_train"
    assert ifr.check(iid, kwargs, response, prompt="p") is expected


def test_every_registered_id_is_described_and_tested():
    tested = {c[0] for c in CASES + TRAIN_CASES}
    # IFBench test-set ids are covered one by one in tests/test_ifbench.py.
    assert set(ifr.INSTRUCTIONS) - tested - set(ifr.IFBENCH_IDS) == {"keywords:word_count_different_numbers"}
    kw = {"keyword": "x", "frequency": 2, "relation": AL}
    assert ifr.check("keywords:word_count_different_numbers", kw, "x and X", prompt="")
    for iid, kwargs, _, _ in CASES + TRAIN_CASES:
        sentence = ifr.describe(iid, kwargs)
        assert sentence and "{" not in sentence


def test_empty_response_follows_nothing():
    for iid in ("punctuation:no_comma", "keywords:forbidden_words"):
        kw = {"forbidden_words": ["x"]} if iid.startswith("keywords") else {}
        assert not ifr.check(iid, kw, "  \n", prompt="")
        assert not ifr.check(iid, kw, "", prompt="", strict=False)


def test_loose_mode_forgives_wrapper_lines_and_asterisks():
    iid, kw = "startend:end_checker", {"end_phrase": "Any other questions?"}
    response = "Sure.\nAll done. Any other questions?\nHope this helps!"
    assert not ifr.check(iid, kw, response, prompt="")
    assert ifr.check(iid, kw, response, prompt="", strict=False)
    starred = "**My answer is yes.**"
    assert ifr.check("detectable_format:constrained_response", {}, starred, prompt="")
    assert not ifr.check("startend:quotation", {}, '"Hi." **', prompt="")
    assert ifr.check("startend:quotation", {}, '"Hi." **', prompt="", strict=False)
    # Loose is never stricter than strict.
    for iid, kwargs, response, expected in CASES:
        if expected:
            assert ifr.check(iid, kwargs, response, prompt="p", strict=False), (iid, response)


@pytest.mark.parametrize(
    "iid,kwargs,needle",
    [
        ("no:such_id", {}, "no:such_id"),
        ("keywords:frequency", {"keyword": "a", "relation": AL}, "frequency"),  # missing
        ("keywords:frequency", {"keyword": "a", "frequency": 2, "relation": "more than"}, "relation"),
        ("keywords:frequency", {"keyword": "a", "frequency": "2", "relation": AL}, "frequency"),
        ("keywords:frequency", {"keyword": "a", "frequency": 2.5, "relation": AL}, "frequency"),
        ("keywords:frequency", {"keyword": "a", "frequency": True, "relation": AL}, "frequency"),
        ("keywords:existence", {"keywords": "cat"}, "keywords"),
        ("keywords:existence", {"keywords": ["cat"], "num_words": 3}, "num_words"),  # unknown
        ("startend:end_checker", {"end_phrase": "  "}, "end_phrase"),
        ("language:response_language", {"language": "english"}, "language"),
        ("keywords:letter_frequency", {"letter": "ab", "let_frequency": 1, "let_relation": AL}, "letter"),
        ("length_constraints:number_paragraphs", {"num_paragraphs": 0}, "num_paragraphs"),
    ],
)
def test_validation_errors_name_the_culprit(iid, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        ifr.validate_kwargs(iid, kwargs)
    with pytest.raises(ValueError, match=needle):
        ifr.check(iid, kwargs, "text", prompt="")


def test_ifeval_rows_none_means_absent_and_float_ints_are_ints():
    row = {"num_highlights": None, "relation": "at least", "num_words": 3.0, "keywords": None, "frequency": None}
    ifr.validate_kwargs("length_constraints:number_words", row)
    assert ifr.normalize_kwargs("length_constraints:number_words", row) == {"num_words": 3, "relation": AL}
    ifr.validate_kwargs("punctuation:no_comma", {"num_words": None})
    assert ifr.normalize_kwargs("punctuation:no_comma", None) == {}
    # Zeros are values, not absences.
    assert ifr.check("keywords:frequency", {"keyword": "x", "frequency": 0, "relation": AL}, "y", prompt="")


def test_check_all():
    ids = ["punctuation:no_comma", "startend:quotation"]
    assert ifr.check_all(ids, [{}, None], '"a b"', prompt="") == [True, True]
    with pytest.raises(ValueError, match="kwargs"):
        ifr.check_all(ids, [{}], '"a"', prompt="")


def test_text_units():
    assert text.split_sentences("Mr. Smith paid $3.50. Did he? Yes... he did! The U.S. is big") == [
        "Mr. Smith paid $3.50.",
        "Did he?",
        "Yes... he did!",
        "The U.S. is big",
    ]
    assert text.count_sentences("* * *\n- \n") == 0
    assert text.count_words("It's well-known: 3 cats.") == 6  # It, s, well, known, 3, cats
    assert text.tokens("DON'T stop, U.S. well-known!") == ["DON'T", "stop", ",", "U.S.", "well-known", "!"]
    assert text.split_divider_paragraphs("***\nA\n***\nB") == ["A", "B"]
    assert text.split_divider_paragraphs("A\n***\n \n***\nB") is None
    assert len(text.loose_variants("a\nb\nc")) == 8


def test_language_detection_is_deterministic_and_pinned():
    assert sorted(language.supported_languages()) == sorted(language.LANGUAGES)
    sample = "Das ist ein kurzer Satz, aber es ist genug."
    assert {language.detect(sample) for _ in range(5)} == {"de"}
    assert language.detect("") is None


def test_degenerate_outputs_stay_fast():
    import time

    start = time.perf_counter()
    for blob in ("<" * 200_000, "[" * 200_000, "!" * 200_000, "\n" * 200_000 + "x", "*" * 200_000):
        for iid in (
            "detectable_format:title",
            "detectable_content:number_placeholders",
            "detectable_format:number_bullet_lists",
            "length_constraints:number_sentences",
            "detectable_format:number_highlighted_sections",
        ):
            kw = {
                "detectable_content:number_placeholders": {"num_placeholders": 1},
                "detectable_format:number_bullet_lists": {"num_bullets": 1},
                "length_constraints:number_sentences": {"num_sentences": 1, "relation": AL},
                "detectable_format:number_highlighted_sections": {"num_highlights": 1},
            }.get(iid, {})
            ifr.check(iid, kw, blob, prompt="")
    # Quadratic regexes take minutes here; linear scans take well under a second.
    assert time.perf_counter() - start < 5.0


def test_builtin_ids_sample_describe_and_reference_responses_pass():
    rng = np.random.default_rng(1234)
    assert set(ifr.BUILTIN_TASK_IDS) <= set(ifr.INSTRUCTIONS)
    for iid in ifr.BUILTIN_TASK_IDS:
        kw = ifr.sample_kwargs(iid, rng)
        ifr.validate_kwargs(iid, kw)
        sentence = ifr.describe(iid, kw)
        assert sentence[0].isupper() and "None" not in sentence and "{" not in sentence
    seen = set()
    for _ in range(300):
        ids, kws = ifr.sample_instruction_set(rng, max_instructions=3)
        assert 1 <= len(ids) <= 3 and len(set(ids)) == len(ids)
        assert not any(frozenset((a, b)) in ifr.BUILTIN_CONFLICTS for a in ids for b in ids)
        response = ifr.reference_response(ids, kws, rng)
        assert all(ifr.check_all(ids, kws, response, prompt="")), (ids, kws, response)
        seen.update(ids)
    assert seen == set(ifr.BUILTIN_TASK_IDS)
    # Same seed, same output.
    a = ifr.reference_response(*ifr.sample_instruction_set(np.random.default_rng(7)), np.random.default_rng(7))
    b = ifr.reference_response(*ifr.sample_instruction_set(np.random.default_rng(7)), np.random.default_rng(7))
    assert a == b


def test_reference_response_refuses_what_it_cannot_satisfy():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="no_comma"):
        ifr.reference_response(["punctuation:no_comma"], [{}], rng, body="Yes, a comma.")
    with pytest.raises(ValueError, match="built-in"):
        ifr.reference_response(["detectable_format:json_format"], [{}], rng)
    with pytest.raises(ValueError, match="built-in"):
        ifr.sample_kwargs("detectable_format:json_format", rng)
