"""IFBench's 58 out-of-distribution test instructions (allenai/IFBench, IFBench_test.jsonl): ids, kwargs
and checks written from the reference's semantics. SPECS hold the `reward` checks; OFFICIAL_CHECKS the
reference's own verdicts where a quirk of it is hackable and reward mode fixes it (docs/ifeval_modes.md
lists each). Texts are cut as the reference cuts them (rlvr_jax.instructions.ifbench_text).
"""

from __future__ import annotations

from rlvr_jax.instructions import ifbench_custom
from rlvr_jax.instructions import ifbench_format as f
from rlvr_jax.instructions import ifbench_text as t
from rlvr_jax.instructions import ifbench_words as w
from rlvr_jax.instructions.spec import Kwarg, Spec


def _text(sentence: str):
    return lambda k: sentence


def _fmt(pattern: str):
    return lambda k: pattern.format(**k)


_N = {"N": Kwarg(int, minimum=1)}
_SMALL_N = {"small_n": Kwarg(int, minimum=1)}
_PROMPT = {"prompt_to_repeat": Kwarg(str)}
# id: (reward check, description, kwargs)
_TABLE = {
    "count:word_count_range": (
        lambda r, k, p: k["min_words"] <= t.count_words(r) <= k["max_words"],
        _fmt("The response must contain between {min_words} and {max_words} words."),
        {"min_words": Kwarg(int), "max_words": Kwarg(int)},
    ),
    "count:unique_word_count": (w.unique_words, _fmt("Use at least {N} unique words in the response."), _N),
    "ratio:stop_words": (
        w.stop_words,
        _fmt("Ensure that stop words constitute no more than {percentage}% of the total words in your response."),
        {"percentage": Kwarg(int)},
    ),
    "ratio:sentence_type": (
        w.sentence_type,
        _text("Maintain a 2:1 ratio of declarative to interrogative sentences."),
        {},
    ),
    "ratio:sentence_balance": (
        w.balance,
        _text("Ensure that the ratio of sentence types (declarative, interrogative, exclamatory) is balanced."),
        {},
    ),
    "count:conjunctions": (
        w.conjunctions,
        _fmt("Use at least {small_n} different coordinating conjunctions in the response."),
        _SMALL_N,
    ),
    "count:person_names": (
        w.person_names,
        lambda k: (
            f"Mention at least {k['N']} different person names in the response, from this list of person "
            f"names: {', '.join(w.PERSON_NAMES)} ."
        ),
        _N,
    ),
    "ratio:overlap": (
        w.overlap,
        _fmt("Maintain a trigram overlap of {percentage}% (±2%) with the provided reference text."),
        {"reference_text": Kwarg(str), "percentage": Kwarg(int)},
    ),
    "count:numbers": (w.numbers, _fmt("Include exactly {N} numbers in the response."), {"N": Kwarg(int)}),
    "words:alphabet": (
        w.alphabet,
        _text("Each word must start with the next letter of the alphabet, looping back to 'A' after 'Z'."),
        {},
    ),
    "words:vowel": (w.vowels, _text("Write a paragraph using words that contain only three types of vowels."), {}),
    "words:consonants": (
        w.consonants,
        _text(
            "Ensure each word in your response has at least one consonant cluster (two or more consonants together)."
        ),
        {},
    ),
    "sentence:alliteration_increment": (
        w.alliteration,
        _text("Each sentence must have a longer sequence of consecutive alliterative words than the previous one."),
        {},
    ),
    "words:palindrome": (
        w.palindromes,
        _text("Include at least 10 single-word palindromes, each at least 5 characters long."),
        {},
    ),
    "count:punctuation": (
        f.punctuation,
        _text(
            "Use every standard punctuation mark at least once, including semicolons, colons, and the interrobang (?!)."
        ),
        {},
    ),
    "format:parentheses": (
        f.parentheses,
        _text("Nest parentheses (and [brackets {and braces}]) at least 5 levels deep."),
        {},
    ),
    "format:quotes": (
        f.quotes,
        _text(
            "Include quotes within quotes within quotes, at least 3 levels deep, alternating between double "
            "quotes and single quotes."
        ),
        {},
    ),
    "words:prime_lengths": (w.prime_lengths, _text("Use only words with lengths that are prime numbers."), {}),
    "format:options": (
        f.options,
        _fmt("Answer with one of the following options: {options}. Do not give any explanation."),
        {"options": Kwarg(str)},
    ),
    "format:newline": (f.newline, _text("Write each word on a new line."), {}),
    "format:emoji": (f.emoji, _text("Please use an emoji at the end of every sentence."), {}),
    "ratio:sentence_words": (
        w.sentence_words,
        _text(
            "Respond with three sentences, all containing the same number of characters but using all different words."
        ),
        {},
    ),
    "count:words_japanese": (w.japanese, _fmt("Every {N}th word of your response must be in Japanese."), _N),
    "words:start_verb": (lambda r, k, p: t.starts_with_verb(r), _text("The response must start with a verb."), {}),
    "words:repeats": (
        w.repeats,
        _fmt("The response should not repeat any word more than {small_n} times."),
        {"small_n": Kwarg(int)},
    ),
    "sentence:keyword": (
        w.sentence_keyword,
        _fmt('The response must include keyword "{word}" in the {N}-th sentence.'),
        {"word": Kwarg(str), "N": Kwarg(int, minimum=1)},
    ),
    "count:pronouns": (w.pronouns, _fmt("The response should include at least {N} pronouns."), {"N": Kwarg(int)}),
    "words:odd_even_syllables": (
        w.parity,
        _text("Alternate between words with odd and even numbers of syllables."),
        {},
    ),
    "words:last_first": (
        w.last_first,
        _text("The last word of each sentence must become the first word of the next sentence."),
        {},
    ),
    "words:paragraph_last_first": (
        w.paragraph_last_first,
        _text("Each paragraph must end with the same word it started with, separate paragraphs with a newline."),
        {},
    ),
    "sentence:increment": (
        w.increment,
        _fmt("Each sentence must contain exactly {small_n} more words than the previous one."),
        {"small_n": Kwarg(int)},
    ),
    "words:no_consecutive": (
        w.no_consecutive,
        _text("No two consecutive words can share the same first letter."),
        {},
    ),
    "format:line_indent": (f.stairs, _text("Create stairs by incrementally indenting each new line."), {}),
    "format:quote_unquote": (
        f.quote_unquote,
        _text("Every quoted phrase must be followed by an unquoted explanation."),
        {},
    ),
    "format:list": (
        f.marker_list,
        _fmt("Answer with a list of items, instead of bullet points use {sep}."),
        {"sep": Kwarg(str)},
    ),
    "format:thesis": (
        f.thesis,
        _text("Each section must begin with a thesis statement in italics, use HTML to indicate the italics."),
        {},
    ),
    "format:sub-bullets": (
        f.sub_bullets,
        _text(
            "Your response must include bullet points denoted by * and at least one sub-bullet point denoted "
            "by - for each bullet point."
        ),
        {},
    ),
    "format:no_bullets_bullets": (
        f.some_bullets,
        _text(
            "Your answer must contain at least two sentences ending in a period followed by at least two "
            "bullet points denoted by *."
        ),
        {},
    ),
    "count:keywords_multiple": (
        w.keywords_multiple,
        _fmt(
            "Include keyword {keyword1} once in your response, keyword {keyword2} twice in your response, keyword "
            "{keyword3} three times in your response, keyword {keyword4} five times in your response, and "
            "keyword {keyword5} seven times in your response."
        ),
        {f"keyword{i}": Kwarg(str) for i in range(1, 6)},
    ),
    "words:keywords_specific_position": (
        w.keyword_position,
        _fmt("Include keyword {keyword} in the {n}-th sentence, as the {m}-th word of that sentence."),
        {"keyword": Kwarg(str), "n": Kwarg(int, minimum=1), "m": Kwarg(int, minimum=1)},
    ),
    "words:words_position": (
        w.words_position,
        _fmt(
            "The second word in your response and the second to last word in your response should be the word "
            "{keyword}."
        ),
        {"keyword": Kwarg(str)},
    ),
    "repeat:repeat_change": (
        f.repeat_change,
        lambda k: (
            "Repeat the request, but change the first word of the repeated request, (do not say anything before "
            "repeating the request; the request you need to repeat does not include this sentence) and do not "
            f"answer the actual request! Request: {k['prompt_to_repeat']}"
        ),
        _PROMPT,
    ),
    "repeat:repeat_simple": (
        lambda r, k, p: r.strip().lower() == w.REPEAT_SIMPLE.lower(),
        _text(w.REPEAT_SIMPLE),
        {},
    ),
    "repeat:repeat_span": (
        f.repeat_span,
        _fmt(
            "Copy the span of words that lies between (and including) index {n_start} and {n_end}, the indices "
            "are character indices!"
        ),
        {**_PROMPT, "n_start": Kwarg(int), "n_end": Kwarg(int)},
    ),
    "format:title_case": (
        f.title_case,
        _text("Write the entire response in title case (capitalize the first letter of every major word)."),
        {},
    ),
    "format:output_template": (
        f.template,
        _text(
            "Use this exact template for your response: My Answer: [answer] My Conclusion: [conclusion] "
            "Future Outlook: [outlook]"
        ),
        {},
    ),
    "format:no_whitespace": (
        lambda r, k, p: not any(ch.isspace() for ch in r),
        _text("The output should not contain any whitespace."),
        {},
    ),
}
_TABLE.update({i: (check, _text(text), {}) for i, (check, text) in ifbench_custom.CHECKS.items()})

SPECS: dict[str, Spec] = {i: Spec(c, d, kw, source="ifbench") for i, (c, d, kw) in _TABLE.items()}

# The reference's verdicts where reward mode departs from them (docs/ifeval_modes.md).
OFFICIAL_CHECKS = {
    "ratio:sentence_type": w.sentence_type_official,
    "ratio:sentence_balance": w.balance_official,
    "count:conjunctions": w.conjunctions_official,
    "ratio:sentence_words": w.sentence_words_official,
    "sentence:alliteration_increment": w.alliteration_official,
    "words:last_first": w.last_first_official,
    "words:paragraph_last_first": w.paragraph_last_first_official,
    "sentence:increment": w.increment_official,
    "format:line_indent": f.stairs_official,
    "format:list": f.marker_list_official,
    "format:sub-bullets": f.sub_bullets_official,
    "repeat:repeat_change": f.repeat_change_official,
}
