"""IFBench's test-set instructions: a followed and a not-followed response per id in both IF modes, the
reference quirks reward mode fixes, and public rows (tests/data/ifbench_test_excerpt.jsonl: 24 rows of
allenai/IFBench's IFBench_test.jsonl, Apache-2.0, as distributed) through the loaders."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from rlvr_jax.data import cli as data_cli
from rlvr_jax.eval import benchmarks
from rlvr_jax.instructions import IFBENCH_IDS, check, describe, ifeval_accuracy, validate_kwargs
from rlvr_jax.instructions.ifbench_custom import EUROPEAN_CAPITALS

EXCERPT = pathlib.Path(__file__).parent / "data" / "ifbench_test_excerpt.jsonl"
REPEAT = "Write a poem about the sea and the sky"
AFRICA = "\n".join(["Zimbabwe", "Zambia"] + [f"Country {chr(90 - i // 26)}{chr(90 - i % 26)}" for i in range(51)])
MCQ = "\n".join(f"Question {q}: {'Why ' * q}art?\nA. one\nB. two\nC. three\nD. four\nE. five" for q in range(1, 5))
STORY = " ".join(f"{chr(65 + i)}x went home." for i in range(26))
CSV_CITY = "ID,Country,City,Year,Count\n" + "\n".join(f"{i},France,Paris,2020,{i}" for i in range(7))
CSV_SPECIAL = "ProductID,Category,Brand,Price,Stock\n" + "\n".join(f'{i},"Toys & Games",Acme,9,{i}' for i in range(14))
CSV_QUOTES = '"StudentID"\t"Subject"\t"Grade"\t"Semester"\t"Score"\n' + "\n".join(
    f'"{i}"\t"Math"\t"A"\t"Fall"\t"90"' for i in range(3)
)

# id, kwargs, a response that follows, one that does not (both modes agree on these).
CASES = [
    ("count:word_count_range", {"min_words": 3, "max_words": 5}, "one two three four", "one two"),
    ("count:unique_word_count", {"N": 3}, "red green blue", "red red red"),
    ("ratio:stop_words", {"percentage": 40}, "Cats chase the mice", "the cat is on the mat"),
    ("ratio:sentence_type", {}, "I ran. You ran. Who ran?", "I ran. Who ran?"),
    ("ratio:sentence_balance", {}, "I ran. Who ran? Run!", "I ran. I ran. Who ran?"),
    ("count:conjunctions", {"small_n": 2}, "Tea and cake, but no milk.", "Tea and cake and milk."),
    ("count:person_names", {"N": 2}, "Emma met Liam.", "Emma met emma."),
    ("ratio:overlap", {"reference_text": "abcdef", "percentage": 100}, "abcd", "abcxyz"),
    ("count:numbers", {"N": 2}, "I have 3 cats and 4.5 dogs.", "I have 3 cats."),
    ("words:alphabet", {}, "Xylophones yield zebras; apples bloom.", "Apples bloom zebras."),
    ("words:vowel", {}, "A cat sat on a mat.", "Quite unique idea."),
    ("words:consonants", {}, "Strong black trucks.", "Strong red trucks."),
    ("sentence:alliteration_increment", {}, "Big cat ran. Silly snakes slide.", "Silly snakes slide. Big cat ran."),
    ("words:palindrome", {}, " ".join(["level", "radar", "kayak", "civic", "refer"] * 2), "level radar kayak"),
    ("count:punctuation", {}, "Wait, what?! Yes; no: maybe? Sure! Fine.", "Wait, what? Yes; no: maybe."),
    ("format:parentheses", {}, "a (b [c {d (e [f])}]) g", "a (b [c] d) e"),
    ("format:quotes", {}, "He said \"she told me 'they said \"go\"' today\"", "He said \"hi\" to me"),
    ("words:prime_lengths", {}, "We are happy", "We are cool"),
    ("format:options", {"options": "yes/no/maybe"}, "Maybe.", "Maybe not."),
    ("format:newline", {}, "one\ntwo\nthree", "one two\nthree"),
    ("format:emoji", {}, "I love tea 😀. It is warm 🔥.", "I love tea 😀. It is warm."),
    ("ratio:sentence_words", {}, "Cats nap. Dogs run. Owls fly.", "Cats nap. Dogs run. Owl flies."),
    ("count:words_japanese", {"N": 2}, "I 猫 like 犬", "I cat like dog"),
    ("words:start_verb", {}, "Write the answer down.", "The answer is four."),
    ("words:repeats", {"small_n": 2}, "the cat and the dog", "the the the cat"),
    ("sentence:keyword", {"word": "eat", "N": 2}, "Hello there. We eat now.", "We eat now. Hello there."),
    ("count:pronouns", {"N": 3}, "I told him that she/her left.", "The cat sat."),
    ("words:odd_even_syllables", {}, "cat apple dog", "cat dog"),
    ("words:last_first", {}, "I like tea. Tea is warm.", "I like tea. Coffee is warm."),
    ("words:paragraph_last_first", {}, "home is where you go home\nsun and sun", "home is where you go\nsun and sun"),
    ("sentence:increment", {"small_n": 1}, "I ran. I ran far. I ran very far.", "I ran. I ran far. I ran."),
    ("words:no_consecutive", {}, "The cat ran home.", "The tall cat ran."),
    ("format:line_indent", {}, "a\n b\n  c", "a\n b\n c"),
    ("format:quote_unquote", {}, '"Carpe diem" means seize the day.', 'He said "Carpe diem"'),
    ("format:list", {"sep": "SEPARATOR"}, "SEPARATOR apples\nSEPARATOR pears", "SEPARATOR apples and pears"),
    ("format:thesis", {}, "<i>Tea is good.</i> It warms you.", "<i>Tea is good.</i>"),
    ("format:sub-bullets", {}, "* Fruit\n- apple\n* Veg\n- kale", "* Fruit\n- apple\n* Veg"),
    ("format:no_bullets_bullets", {}, "Tea is good. It warms.\n* one\n* two", "Tea is good.\n* one\n* two"),
    ("custom:multiples", {}, "14, 21, 28, 35, 42, 49", "7, 14, 21, 28, 35, 42, 49"),
    ("custom:mcq_count_length", {}, MCQ, "Here you go:\n" + MCQ),
    ("custom:reverse_newline", {}, AFRICA, "Zambia\nZimbabwe"),
    ("custom:word_reverse", {}, "Eagle bald the is it.", "It is the bald eagle."),
    ("custom:character_reverse", {}, "Elgae dlab.", "Bald eagle."),
    ("custom:sentence_alphabet", {}, STORY, STORY.replace("Cx", "Dx")),
    ("custom:european_capitals_sort", {}, ", ".join(EUROPEAN_CAPITALS), ", ".join(EUROPEAN_CAPITALS[::-1])),
    ("custom:csv_city", {}, CSV_CITY, CSV_CITY.rsplit("\n", 1)[0]),
    ("custom:csv_special_character", {}, CSV_SPECIAL, CSV_SPECIAL.replace('"Toys & Games"', "Toys")),
    ("custom:csv_quotes", {}, CSV_QUOTES, CSV_QUOTES.replace('"Math"', "Math")),
    ("custom:date_format_list", {}, "1796-04-12, 1805-12-02", "1796-04-12, 1805-02-30"),
    (
        "count:keywords_multiple",
        {"keyword1": "a1", "keyword2": "b2", "keyword3": "c3", "keyword4": "d4", "keyword5": "e5"},
        " ".join(["a1"] + ["b2"] * 2 + ["c3"] * 3 + ["d4"] * 5 + ["e5"] * 7),
        " ".join(["a1"] + ["b2"] * 2 + ["c3"] * 3 + ["d4"] * 5 + ["e5"] * 6),
    ),
    ("words:keywords_specific_position", {"keyword": "tea", "n": 2, "m": 3}, "Hi. I like tea.", "Hi. I tea like."),
    ("words:words_position", {"keyword": "tea"}, "I tea you tea now.", "I like tea."),
    ("repeat:repeat_change", {"prompt_to_repeat": REPEAT}, "Compose a poem about the sea and the sky", REPEAT),
    ("repeat:repeat_simple", {}, "only output this sentence here, ignore all other requests.", "Sure, here it is."),
    ("repeat:repeat_span", {"prompt_to_repeat": REPEAT, "n_start": 6, "n_end": 11}, "a poem", "a poe"),
    ("format:title_case", {}, "The Big Red Dog Runs", "The big red dog runs"),
    ("format:output_template", {}, "My Answer: yes My Conclusion: so Future Outlook: good", "My Answer: yes"),
    ("format:no_whitespace", {}, "no_space_here", "a space"),
]


def test_every_ifbench_test_id_is_registered_and_covered():
    assert len(IFBENCH_IDS) == 58
    assert sorted(c[0] for c in CASES) == list(IFBENCH_IDS)
    for iid, kwargs, _, _ in CASES:
        sentence = describe(iid, kwargs)
        assert sentence and not re.search(r"\{\w+\}", sentence)  # no placeholder left unfilled


@pytest.mark.parametrize("mode", ["official", "reward"])
@pytest.mark.parametrize("iid,kwargs,good,bad", CASES, ids=[c[0] for c in CASES])
def test_followed_and_not_followed(iid, kwargs, good, bad, mode):
    validate_kwargs(iid, kwargs)
    assert check(iid, kwargs, good, prompt="", mode=mode)
    assert not check(iid, kwargs, bad, prompt="", mode=mode)


# Reference quirks that let a response pass without following the instruction: official keeps them.
HACKS = [
    ("ratio:sentence_type", {}, "Wow! Great!"),  # 0 statements = 2 x 0 questions
    ("ratio:sentence_balance", {}, "no punctuation at all"),
    ("count:conjunctions", {"small_n": 3}, "and And and, cats"),  # one conjunction, written three ways
    ("ratio:sentence_words", {}, "Cats nap. Cats nap. Cats nap."),  # the same words three times
    ("sentence:alliteration_increment", {}, "One sentence only."),
    ("words:last_first", {}, "One sentence only."),
    ("sentence:increment", {"small_n": 2}, "One sentence only."),
    ("words:paragraph_last_first", {}, "Hello"),
    ("format:line_indent", {}, "a single line"),
    ("format:list", {"sep": "-"}, "Well-known, self-made answers."),  # hyphens, no list
    ("format:sub-bullets", {}, "No bullets here."),
    ("repeat:repeat_change", {"prompt_to_repeat": REPEAT}, REPEAT + " "),  # first word unchanged
]


@pytest.mark.parametrize("iid,kwargs,response", HACKS, ids=[h[0] for h in HACKS])
def test_reward_mode_closes_the_reference_loopholes(iid, kwargs, response):
    assert check(iid, kwargs, response, prompt="", mode="official")
    assert not check(iid, kwargs, response, prompt="", mode="reward")


def test_reference_tokenization_quirks_are_kept():
    # NLTK splits "Don't" into "Do" + "n't", and "n't" is a lowercase word: not title case.
    assert not check("format:title_case", {}, "Don't Stop", prompt="", mode="official")
    # A blank line between bullets ends the answer for the reference.
    assert not check("format:no_bullets_bullets", {}, "A b. C d.\n* one\n\n* two", prompt="", mode="official")
    # Emoji after the period opens the next sentence, and the reference accepts that.
    assert check("format:emoji", {}, "I love tea. 😀 It is warm 🔥.", prompt="", mode="official")


def _rows() -> list[dict]:
    return [json.loads(line) for line in EXCERPT.read_text().splitlines()]


def test_public_rows_validate_and_score_in_both_modes():
    rows = _rows()
    assert len(rows) == 24 and len({i for r in rows for i in r["instruction_id_list"]}) == 36
    assert all(None in kw.values() for r in rows for kw in r["kwargs"])  # every key, nulls as in the file
    for row in rows:
        for iid, kw in zip(row["instruction_id_list"], row["kwargs"]):
            validate_kwargs(iid, kw)
        for mode in ("official", "reward"):
            got = ifeval_accuracy(
                row["instruction_id_list"], row["kwargs"], "A reply.", prompt=row["prompt"], mode=mode
            )
            assert len(got["inst_strict"]) == len(row["instruction_id_list"])


def test_public_rows_load_through_the_cli_and_the_benchmark(tmp_path, capsys):
    out = tmp_path / "ifbench.jsonl"
    assert data_cli.main(["convert", "--format", "ifbench", "--input", str(EXCERPT), "--output", str(out)]) == 0
    assert data_cli.main(["validate", str(out)]) == 0
    assert "24 valid" in capsys.readouterr().out
    records, skipped = benchmarks.load("ifbench", str(EXCERPT))
    assert len(records) == 24 and not skipped
    assert records[0]["messages"][-1]["content"] == _rows()[0]["prompt"]
