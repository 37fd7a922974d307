"""IF modes: "official" gives IFEval's reference verdict on every known disagreement (the expected values
below are what Google's instruction_following_eval, as lm-evaluation-harness 0.4.13 ships it, returns),
"reward" keeps its documented fixes, both load every public row layout, and the mode is selectable."""

import importlib.util
import json
import pathlib

import pytest

from rlvr_jax.instructions import registry as ifr
from rlvr_jax.verifiers import score
from rlvr_jax.verifiers.base import VerifierConfig, verifier_config
from rlvr_jax.verifiers.cli import build_parser
from rlvr_jax.verifiers.instruction import score_if

AL, LT = "at least", "less than"
NTH = "length_constraints:nth_paragraph_first_word"

# (id, kwargs, response, reference verdict (official), reward verdict)
DISAGREEMENTS = [
    # The reference strips double quotes around the response before checking the end.
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, '"Done. Any other questions?"', True, True),
    # ... but not the whitespace inside them; reward mode forgives that too.
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, '"Done. Any other questions? "', False, True),
    # Forbidden words sit in \b...\b unescaped: "C#" and "e.g." before a space are never found.
    ("keywords:forbidden_words", {"forbidden_words": ["C#"]}, "I write C# daily.", True, False),
    ("keywords:forbidden_words", {"forbidden_words": ["e.g."]}, "Fruit, e.g. apples.", True, False),
    # ... and as a regex its dots match any character.
    ("keywords:forbidden_words", {"forbidden_words": ["e.g."]}, "I like exgx.", False, True),
    # english_capital: the reference detects on the raw all-caps text, which langdetect often misreads.
    ("change_case:english_capital", {}, "HELLO WORLD", False, True),
    ("change_case:english_capital", {}, "GOOD MORNING EVERYONE", False, True),
    ("change_case:english_capital", {}, "THIS IS A SHORT ANSWER WRITTEN IN ENGLISH.", True, True),
    # A response with no detectable language follows the language checks in the reference.
    ("change_case:english_lowercase", {}, "http://example.com/abc", True, False),
    ("language:response_language", {"language": "fr"}, "123 456 !!!", True, False),
    # nth_paragraph_first_word: the reference indexes the raw "\n\n" split, so an empty piece at the nth
    # place fails even when the count of non-empty paragraphs is right.
    (NTH, {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"}, "First.\n\n\n\nThen more.", False, True),
    # ... and the nth non-empty paragraph is not the nth raw piece.
    (NTH, {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"}, "\n\nFirst.\n\nThen more.", False, True),
    # It strips ' then ", so a '" opening leaves the ' and the first word is empty.
    (NTH, {"num_paragraphs": 1, "nth_paragraph": 1, "first_word": "hi"}, "\"'hi there", False, True),
    # capital_word_frequency counts NLTK word tokens: DON'T is DO + N'T.
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": AL}, "DON'T go", True, False),
    # Keywords are regexes in the reference.
    ("keywords:existence", {"keywords": ["c.t"]}, "A cut.", True, False),
]


@pytest.mark.parametrize("iid,kwargs,response,official,reward", DISAGREEMENTS)
def test_official_gives_the_reference_verdict(iid, kwargs, response, official, reward):
    assert ifr.check(iid, kwargs, response, prompt="", mode="official") is official
    assert ifr.check(iid, kwargs, response, prompt="") is reward


def test_reward_mode_finds_punctuation_edged_forbidden_words():
    kw = {"forbidden_words": ["C++", "e.g.", "#tag", "cat"]}
    for text in ("C++ rocks", "Use C++.", "fruit, e.g. apples", "E.G. this", "a #tag here", "(C++)"):
        assert not ifr.check("keywords:forbidden_words", kw, text, prompt=""), text
    # Whole words still: no hit inside a longer word on an alphanumeric edge.
    assert ifr.check("keywords:forbidden_words", kw, "A category; eggs; hashtag", prompt="")
    assert ifr.check("keywords:forbidden_words", {"forbidden_words": ["C"]}, "Cat and C++", prompt="") is False


def test_reward_mode_accepts_quotes_around_the_end_phrase():
    kw = {"end_phrase": "Any other questions?"}
    for text in (
        '"All done. Any other questions?"',
        "All done. “Any other questions?”",
        "Done. 'Any other questions?'",
    ):
        assert ifr.check("startend:end_checker", kw, text, prompt=""), text
    assert not ifr.check("startend:end_checker", kw, '"Any other questions?" Bye.', prompt="")
    # Hence a record may ask for both, and one response satisfies both, in either mode (the built-in task
    # generator still leaves the pair out, to keep its measured task set: registry.BUILTIN_CONFLICTS).
    both = ["startend:quotation", "startend:end_checker"]
    for mode in ("reward", "official"):
        assert ifr.check_all(both, [{}, kw], '"All done. Any other questions?"', prompt="", mode=mode) == [True, True]


def test_strict_and_loose_accuracy_as_ifeval_reports_them():
    ids = ["startend:end_checker", "punctuation:no_comma", "detectable_format:title"]
    kwargs = [{"end_phrase": "Bye."}, {}, {}]
    # Strict: the markdown line after the end phrase breaks end_checker; the title is missing.
    # Loose: removing the last line fixes the end, nothing fixes the title.
    response = "Sure! Here it is.\nAll good. Bye.\n**"
    acc = ifr.ifeval_accuracy(ids, kwargs, response, prompt="", mode="official")
    assert acc == {
        "prompt_strict": False,
        "prompt_loose": False,
        "inst_strict": [False, True, False],
        "inst_loose": [True, True, False],
    }
    titled = "<<t>>\nAll good. Bye.\n**"
    acc = ifr.ifeval_accuracy(ids, kwargs, titled, prompt="", mode="official")
    assert (acc["prompt_strict"], acc["prompt_loose"]) == (False, True)
    s = score_if({"instruction_ids": ids, "kwargs": kwargs, "prompt": ""}, titled, mode="official")
    assert (s.reward, s.reason, s.details["inst_loose"], s.details["failed"]) == (
        0.0,
        "wrong",
        [True, True, True],
        ["startend:end_checker"],
    )


def _ifeval_row(key, ids, kwargs):
    every = ("num_words", "relation", "letter", "let_frequency", "let_relation", "language", "keywords")
    return {
        "key": key,
        "prompt": "Write.",
        "instruction_id_list": ids,
        "kwargs": [{k: kw.get(k) for k in every} for kw in kwargs],
    }


@pytest.mark.parametrize("mode", ["official", "reward"])
def test_public_rows_load_in_both_modes(mode):
    rows = [
        # IFEval keys 1122 and 1129 ask for the letters '#' and '!'.
        _ifeval_row(1122, ["keywords:letter_frequency"], [{"letter": "#", "let_frequency": 4, "let_relation": AL}]),
        _ifeval_row(1129, ["keywords:letter_frequency"], [{"letter": "!", "let_frequency": 2, "let_relation": LT}]),
        # A language outside the reference's 30 that langdetect knows (Welsh).
        _ifeval_row(7, ["language:response_language"], [{"language": "cy"}]),
    ]
    rlvr = {"func_name": "verify_letter_frequency", "N": 2, "letter": "!", "quantifier": None}
    rows.append(
        _ifeval_row(
            8, ["keywords:letter_frequency"], [{"letter": rlvr["letter"], "let_frequency": 2, "let_relation": AL}]
        )
    )
    json.dumps(rows)  # the layout is plain JSON
    got = []
    for row in rows:
        kwargs = [{k: v for k, v in kw.items() if v is not None} for kw in row["kwargs"]]
        truth = {"instruction_ids": row["instruction_id_list"], "kwargs": kwargs, "prompt": row["prompt"]}
        for i, kw in zip(truth["instruction_ids"], kwargs):
            ifr.validate_kwargs(i, kw)
        got.append(score_if(truth, "### Heading! ## Two #s!", mode=mode).reward)
    assert got[:2] == [1.0, 0.0] and got[3] == 1.0
    with pytest.raises(ValueError, match="language"):
        ifr.validate_kwargs("language:response_language", {"language": "xx"})


def test_if_mode_is_selectable_everywhere():
    with pytest.raises(ValueError, match="if_mode"):
        VerifierConfig(if_mode="lenient")
    rec = {
        "domain": "if",
        "ground_truth": {"instruction_ids": ["startend:end_checker"], "kwargs": [{"end_phrase": "x"}]},
    }
    spaced = '"ends with x "'
    assert score(rec, spaced).reward == 1.0
    assert score(rec, spaced, config=VerifierConfig(if_mode="official")).reward == 0.0
    assert "prompt_loose" in score(rec, spaced, config=VerifierConfig(if_mode="official")).details
    args = build_parser().parse_args(["--input", "x.jsonl", "--if-mode", "official"])
    assert verifier_config(args, thinking=False).if_mode == "official"
    assert verifier_config(build_parser().parse_args(["--input", "x"]), thinking=False).if_mode == "reward"
    spec = importlib.util.spec_from_file_location("grpo_cfg", pathlib.Path(__file__).parents[1] / "configs/grpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert verifier_config(module.get_config("if").verifier, thinking=False).if_mode == "reward"
