"""Built-in tasks: deterministic generators for the four domains, sized for a tiny model, with
train/eval splits disjoint by prompt and a short reference response per record (thinking format).
"""

from __future__ import annotations

import copy
import hashlib
import random
import re
from typing import Callable

import numpy as np

from rlvr_jax.instructions import registry
from rlvr_jax.model.tokenizer import THINK_CLOSE, THINK_OPEN

DOMAINS = ("math", "code", "science", "if")
SPLITS = ("train", "eval")
# Train sizes follow the study's domain shares (math 28%, science 25%, code 25%, IF 22%), so a
# proportional-to-size mixture of the built-ins reproduces the study's pooled shuffle.
SIZES = {
    "train": {"math": 1400, "code": 1250, "science": 1250, "if": 1100},
    "eval": {"math": 200, "code": 200, "science": 200, "if": 200},
    # Warm-start records after the RL ones in the train stream (`sft_records`); code's train prompt
    # space holds about 2,290 distinct prompts. Science gets few: its ~100 questions each seen ~40 times
    # (1,250 records) gave an anchor at Avg@8 0.98 on held-out science and RL nothing to learn; with 150
    # it is at 0.32 (pass@8 0.91) and 150 science GRPO steps reach 0.57 (docs/MEASUREMENTS.md).
    "sft": {"math": 1400, "code": 1000, "science": 150, "if": 1100},
}
EVAL_FRACTION = 0.1  # share of the prompt space hashed into the held-out split
MAX_MISSES = 20_000  # consecutive duplicate/other-split draws that mean the space is exhausted
SEED = 1234


def reference(reasoning: str, answer: str) -> str:
    """The one layout of `metadata["reference"]`: a full assistant turn, kept to tens of tokens."""
    return f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n{answer}"


def split_of(prompt: str) -> str:
    """Held-out iff the prompt's hash falls in the first EVAL_FRACTION of the range: the same
    text can never land in both splits."""
    h = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
    return "eval" if h < EVAL_FRACTION * 2**64 else "train"


# ---------------------------------------------------------------------------------- math
NAMES = ["Tom", "Ann", "Ben", "Mia", "Sam", "Lily", "Max", "Zoe", "Leo", "Eva", "Jack", "Nora"]
ITEMS = ["apples", "pens", "books", "cards", "coins", "eggs", "shells", "stamps", "cups", "toys"]


def _math_task(rng: random.Random) -> tuple[str, str, int]:
    """(question, reasoning, answer): one- and two-step word problems over single-digit facts.

    Every answer is built from a small table of facts (sums and products of digits), shared by the
    training and held-out prompts, which differ in names, items, kinds and combinations: a tiny
    model can learn the facts, and what RL reinforces on training prompts carries over. (With
    operands up to 60 the default anchor solved 4% of held-out problems and RL had nothing to build on.)
    """
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.choice(["add", "sub", "mul", "div", "add_sub", "mul_add"])
    if kind == "add":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        return (
            f"{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have now?",
            f"{a} + {b} = {a + b}",
            a + b,
        )
    if kind == "sub":
        b, c = rng.randint(1, 9), rng.randint(1, 9)
        a = b + c
        return (f"{name} has {a} {item} and gives away {b}. How many {item} are left?", f"{a} - {b} = {c}", c)
    if kind == "mul":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        return (
            f"There are {a} boxes with {b} {item} in each box. How many {item} are there?",
            f"{a} * {b} = {a * b}",
            a * b,
        )
    if kind == "div":
        b, q = rng.randint(2, 9), rng.randint(2, 9)
        a = b * q
        return (
            f"{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get?",
            f"{a} / {b} = {q}",
            q,
        )
    if kind == "add_sub":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        c = rng.randint(1, min(9, a + b - 1))
        return (
            f"{name} has {a} {item}, finds {b} more, then loses {c}. How many {item} does {name} have?",
            f"{a} + {b} = {a + b}, {a + b} - {c} = {a + b - c}",
            a + b - c,
        )
    a, b, c = rng.randint(2, 5), rng.randint(2, 5), rng.randint(1, 9)
    return (
        f"{name} buys {a} bags of {b} {item} and already had {c}. How many {item} does {name} have?",
        f"{a} * {b} = {a * b}, {a * b} + {c} = {a * b + c}",
        a * b + c,
    )


def _math(rng: random.Random) -> dict:
    question, reasoning, answer = _math_task(rng)
    return {
        "domain": "math",
        "prompt": question + " Put the final answer in \\boxed{}.",
        "ground_truth": {"answers": [str(answer)]},
        "reference": reference(reasoning, f"Answer: \\boxed{{{answer}}}"),
        "task": "math/arithmetic",
    }


# ---------------------------------------------------------------------------------- code
def _code_task(rng: random.Random) -> tuple[str, str, str, Callable[[random.Random], tuple[str, str]]]:
    """(family, statement, program, test maker) for one small stdin/stdout problem.

    Families carry constants in the statement, so held-out prompts ask for programs whose
    constants the model never saw: it must copy them from the prompt into the code.
    """
    fam = rng.choice(
        ["affine", "shift_scale", "pair", "divmod", "replace", "count", "slice", "repeat", "list", "string"]
    )
    if fam == "affine":
        k, c = rng.randint(2, 12), rng.choice([i for i in range(-50, 51) if i])
        expr = f"n * {k} + {c}" if c > 0 else f"n * {k} - {-c}"
        return fam, f"Read an integer n and print {expr}.", f"n = int(input())\nprint({expr})", _ints(1, expr)
    if fam == "shift_scale":
        a, b = rng.randint(1, 30), rng.randint(2, 12)
        expr = f"(n + {a}) * {b}"
        return fam, f"Read an integer n and print {expr}.", f"n = int(input())\nprint({expr})", _ints(1, expr)
    if fam == "pair":
        p, q = rng.randint(1, 12), rng.randint(1, 12)
        expr = rng.choice(
            ["a + b", "a * b", "max(a, b)", "min(a, b)", "a - b", f"a * {p} + b * {q}", f"a * {p} - b * {q}"]
        )
        return (
            fam,
            f"Read two integers a and b on one line and print {expr}.",
            f"a, b = map(int, input().split())\nprint({expr})",
            _ints(2, expr),
        )
    if fam == "divmod":
        m = rng.randint(2, 20)
        expr = rng.choice([f"n // {m}", f"n % {m}"])
        return (
            fam,
            f"Read a non-negative integer n and print {expr}.",
            f"n = int(input())\nprint({expr})",
            _ints(1, expr, lo=0),
        )
    if fam == "replace":
        x, y = rng.sample(ALPHABET, 2)
        expr = f"s.replace('{x}', '{y}')"
        return fam, f"Read a string s and print it with every {x} replaced by {y}.", _str_prog(expr), _strs(expr)
    if fam == "count":
        x = rng.choice(ALPHABET)
        expr = rng.choice([f"s.count('{x}')", f"s.replace('{x}', '')"])
        what = f"how many times {x} appears in it" if "count" in expr else f"it with every {x} removed"
        return fam, f"Read a string s and print {what}.", _str_prog(expr), _strs(expr)
    if fam == "slice":
        k = rng.randint(1, 9)
        expr, what = rng.choice([(f"s[:{k}]", f"its first {k} characters"), (f"s[-{k}:]", f"its last {k} characters")])
        return fam, f"Read a string s and print {what}.", _str_prog(expr), _strs(expr)
    if fam == "repeat":
        k, sep = rng.randint(2, 5), rng.choice(["", " ", "-", ","])
        expr = f"'{sep}'.join([s] * {k})"
        return fam, f"Read a string s and print it {k} times joined by '{sep}'.", _str_prog(expr), _strs(expr)
    if fam == "list":
        t = rng.randint(-10, 10)
        expr, what = rng.choice(
            [
                ("sum(xs)", "their sum"),
                ("max(xs)", "the largest"),
                ("min(xs)", "the smallest"),
                ("len(xs)", "how many there are"),
                (f"sum(x for x in xs if x > {t})", f"the sum of those greater than {t}"),
            ]
        )
        prog = f"xs = list(map(int, input().split()))\nprint({expr})"

        def make(r):
            xs = [r.randint(-20, 20) for _ in range(r.randint(1, 8))]
            return " ".join(map(str, xs)) + "\n", f"{eval(expr, {'xs': xs})}\n"

        return fam, f"Read integers on one line and print {what}.", prog, make
    expr, what = rng.choice(
        [
            ("s[::-1]", "it reversed"),
            ("s.upper()", "it in upper case"),
            ("len(s)", "its length"),
            ("s[0] + s[-1]", "its first and last characters"),
        ]
    )
    return fam, f"Read a string s and print {what}.", _str_prog(expr), _strs(expr)


ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def _ints(arity: int, expr: str, lo: int = -50):
    """Test maker for integer inputs: `arity` ints on one line, expected `expr` evaluated."""

    def make(r):
        vals = [r.randint(lo, 50) for _ in range(arity)]
        env = dict(zip("ab", vals)) if arity == 2 else {"n": vals[0]}
        return " ".join(map(str, vals)) + "\n", f"{eval(expr, env)}\n"

    return make


def _str_prog(expr: str) -> str:
    return f"s = input()\nprint({expr})"


def _strs(expr: str):
    # Inputs favour the letters the statement names, so counting and replacing tests are not
    # all trivially unchanged strings.
    named = "".join(re.findall(r"'([a-z])'", expr))

    def make(r):
        s = "".join(
            r.choice(named) if named and r.random() < 0.3 else r.choice(ALPHABET) for _ in range(r.randint(1, 12))
        )
        return f"{s}\n", f"{eval(expr, {'s': s})}\n"

    return make


def _code(rng: random.Random) -> dict:
    kind, statement, program, make = _code_task(rng)
    prompt = statement + " Write a Python program in a ```python block."

    def ground_truth():
        # Tests come from their own stream seeded by the prompt, and only for accepted prompts.
        r, tests, seen = random.Random(prompt), [], set()
        for _ in range(40):  # bounded: a few tasks have few distinct inputs
            t = make(r)
            if t[0] not in seen:
                seen.add(t[0])
                tests.append({"input": t[0], "output": t[1]})
            if len(tests) == 5:
                break
        return {"tests": tests, "fn_name": None, "time_limit_s": 2.0, "memory_limit_mb": 256}

    return {
        "domain": "code",
        "prompt": prompt,
        "ground_truth": ground_truth,
        # The reasoning names the one computation, i.e. the program's last line.
        "reference": reference(f"Compute {program.splitlines()[-1][6:-1]}.", f"```python\n{program}\n```"),
        "task": f"code/{kind}",
    }


# ---------------------------------------------------------------------------------- science
# (question, answer, category); distractors are drawn from the answers of the same category.
FACTS: list[tuple[str, str, str]] = [
    *[
        (f"What is the chemical symbol of {el}?", sym, "symbol")
        for el, sym in [
            ("hydrogen", "H"),
            ("helium", "He"),
            ("lithium", "Li"),
            ("carbon", "C"),
            ("nitrogen", "N"),
            ("oxygen", "O"),
            ("fluorine", "F"),
            ("neon", "Ne"),
            ("sodium", "Na"),
            ("magnesium", "Mg"),
            ("aluminium", "Al"),
            ("silicon", "Si"),
            ("phosphorus", "P"),
            ("sulfur", "S"),
            ("chlorine", "Cl"),
            ("potassium", "K"),
            ("calcium", "Ca"),
            ("iron", "Fe"),
            ("copper", "Cu"),
            ("zinc", "Zn"),
            ("silver", "Ag"),
            ("gold", "Au"),
            ("lead", "Pb"),
            ("mercury", "Hg"),
            ("tin", "Sn"),
        ]
    ],
    *[
        (f"What is the atomic number of {el}?", str(z), "atomic_number")
        for z, el in enumerate(
            [
                "hydrogen",
                "helium",
                "lithium",
                "beryllium",
                "boron",
                "carbon",
                "nitrogen",
                "oxygen",
                "fluorine",
                "neon",
                "sodium",
                "magnesium",
                "aluminium",
                "silicon",
                "phosphorus",
                "sulfur",
                "chlorine",
                "argon",
                "potassium",
                "calcium",
            ],
            start=1,
        )
    ],
    *[
        (f"What is the SI unit of {q}?", u, "unit")
        for q, u in [
            ("force", "newton"),
            ("energy", "joule"),
            ("power", "watt"),
            ("pressure", "pascal"),
            ("electric charge", "coulomb"),
            ("electric current", "ampere"),
            ("voltage", "volt"),
            ("resistance", "ohm"),
            ("frequency", "hertz"),
            ("mass", "kilogram"),
            ("time", "second"),
            ("temperature", "kelvin"),
            ("length", "metre"),
        ]
    ],
    *[
        (f"Which class of animals does the {a} belong to?", c, "animal_class")
        for a, c in [
            ("whale", "mammal"),
            ("bat", "mammal"),
            ("dolphin", "mammal"),
            ("eagle", "bird"),
            ("penguin", "bird"),
            ("owl", "bird"),
            ("frog", "amphibian"),
            ("salamander", "amphibian"),
            ("shark", "fish"),
            ("salmon", "fish"),
            ("snake", "reptile"),
            ("turtle", "reptile"),
            ("crocodile", "reptile"),
            ("bee", "insect"),
            ("ant", "insect"),
            ("spider", "arachnid"),
            ("scorpion", "arachnid"),
        ]
    ],
    *[
        (f"Which planet is {d} from the Sun?", p, "planet")
        for d, p in [
            ("first", "Mercury"),
            ("second", "Venus"),
            ("third", "Earth"),
            ("fourth", "Mars"),
            ("fifth", "Jupiter"),
            ("sixth", "Saturn"),
            ("seventh", "Uranus"),
            ("eighth", "Neptune"),
        ]
    ],
    *[
        (f"Which organ {f}?", o, "organ")
        for f, o in [
            ("pumps blood", "heart"),
            ("exchanges oxygen and carbon dioxide", "lungs"),
            ("filters blood to make urine", "kidneys"),
            ("makes bile", "liver"),
            ("controls the nervous system", "brain"),
            ("digests food with acid", "stomach"),
        ]
    ],
    *[
        (f"What is the state of {s} at room temperature?", st, "state")
        for s, st in [
            ("water", "liquid"),
            ("iron", "solid"),
            ("oxygen", "gas"),
            ("mercury", "liquid"),
            ("salt", "solid"),
            ("nitrogen", "gas"),
            ("gold", "solid"),
            ("helium", "gas"),
        ]
    ],
    *[
        (f"Which particle {d}?", p, "particle")
        for d, p in [
            ("has a negative charge", "electron"),
            ("has a positive charge", "proton"),
            ("has no charge", "neutron"),
            ("carries light", "photon"),
        ]
    ],
    *[
        (f"Which gas {d}?", g, "gas")
        for d, g in [
            ("do plants take in for photosynthesis", "carbon dioxide"),
            ("do animals need to breathe", "oxygen"),
            ("makes up most of the air", "nitrogen"),
            ("is the lightest", "hydrogen"),
        ]
    ],
]
# Categories with fewer than four distinct answers get extra (always wrong) options.
EXTRA_OPTIONS = {"state": ["plasma"]}
LETTERS = "ABCD"


def answer_letter(question: str) -> str:
    """The option letter of a question's answer: fixed per question (a hash), whatever the distractors.

    A ~1M-parameter model learns the facts (it names the right answer in its reasoning) but not to find
    that answer among shuffled options: with the answer at a random letter the default anchor named the
    right fact for 6 of 6 held-out questions and picked letters at chance (Avg@8 0.24, greedy 0.27 on 200
    items), and RL had nothing it could learn. With the letter a property of the question, a question's
    letter is knowledge like its answer, learned from the other prompts that ask it with other distractors.
    """
    return LETTERS[int.from_bytes(hashlib.sha256(question.encode()).digest()[:4], "big") % len(LETTERS)]


def _science(rng: random.Random) -> dict:
    question, answer, category = rng.choice(FACTS)
    pool = sorted(({a for _, a, c in FACTS if c == category} | set(EXTRA_OPTIONS.get(category, ()))) - {answer})
    options = rng.sample(pool, 3)
    letter = answer_letter(question)
    options.insert(LETTERS.index(letter), answer)
    lines = "\n".join(f"{L}. {o}" for L, o in zip(LETTERS, options))
    return {
        "domain": "science",
        "prompt": f"{question}\n{lines}\nAnswer with the letter.",
        "ground_truth": {"answer": letter, "choices": list(LETTERS)},
        "reference": reference(f"The answer is {answer}.", f"Answer: {letter}"),
        "task": f"science/{category}",
    }


# ---------------------------------------------------------------------------------- if
# No topic word may be a keyword or forbidden word of the registry's built-in kwargs.
IF_TOPICS = [
    "the sea",
    "a cat",
    "rain",
    "the moon",
    "a park",
    "a song",
    "a train",
    "the snow",
    "bread",
    "a lake",
    "a friend",
    "the sun",
    "a forest",
    "a city",
    "a dog",
    "tea",
    "a walk",
    "a book",
    "the stars",
    "a picnic",
]
IF_ASKS = ["Write a short note about {}.", "Describe {} in a few words.", "Tell me about {}."]


def _if(rng: random.Random) -> dict:
    # Imported lazily: the registry lives with the verifiers and owns the constraint wording, the
    # kwargs of its built-in ids and a response proven to satisfy them.

    nprng = np.random.default_rng(rng.getrandbits(64))
    topic = rng.choice(IF_TOPICS)
    ids, kwargs = registry.sample_instruction_set(nprng, max_instructions=3)
    prompt = " ".join([rng.choice(IF_ASKS).format(topic), *(registry.describe(i, k) for i, k in zip(ids, kwargs))])

    def response():
        # Built only for accepted prompts, from a stream seeded by the prompt. A one-line body
        # keeps it to tens of tokens; the registry adds what each instruction needs and checks.
        r = np.random.default_rng(int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big"))
        try:
            text = registry.reference_response(ids, kwargs, r, body=f"Here is a note about {topic}.", prompt=prompt)
        except ValueError:  # the language check misreads some short upper-case texts: longer body
            text = registry.reference_response(ids, kwargs, r, prompt=prompt)
        return reference(f"A note about {topic}.", text)

    return {
        "domain": "if",
        "prompt": prompt,
        "ground_truth": {"instruction_ids": list(ids), "kwargs": [dict(k) for k in kwargs], "prompt": prompt},
        "reference": response,
        "task": "if/" + "+".join(ids),
    }


GENERATORS = {"math": _math, "code": _code, "science": _science, "if": _if}


def sft_records(domain: str, n: int | None = None, *, train_size: int | None = None, seed: int = SEED) -> list[dict]:
    """Warm-start records that no RL run sees: the `n` (default: as many as the RL set) train-split
    records that follow the first `train_size` (default SIZES), which are the RL training records.
    An anchor fitted on the RL prompts themselves has memorised their answers, and RL on them then
    has nothing left to teach (the study's SFT data is likewise separate from its RL data)."""
    offset = SIZES["train"][domain] if train_size is None else train_size
    n = SIZES["sft"][domain] if n is None else n
    records = builtin_records(domain, "train", offset + n, seed=seed)[offset:]
    for i, r in enumerate(records):
        r["id"] = f"builtin-{domain}-sft-{i:05d}"
        r["metadata"]["split"] = "sft"
    return records


def builtin_records(
    domain: str, split: str, n: int | None = None, *, seed: int = SEED, up_to: bool = False
) -> list[dict]:
    """The first `n` (default SIZES) records of one domain and split, in a fixed order. With
    `up_to`, fewer when the split holds fewer distinct prompts (held-out code has about 230);
    without it that is an error."""
    if domain not in GENERATORS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    n = SIZES[split][domain] if n is None else n
    # Records are prefix-stable in n, so the longest run so far serves every smaller n (IF
    # references run the registry's checks, worth caching); callers get their own copies.
    key = (domain, split, seed)
    if len(_CACHE.get(key, ())) < n and key not in _EXHAUSTED:
        _CACHE[key] = _generate(domain, split, n, seed)
        if len(_CACHE[key]) < n:
            _EXHAUSTED.add(key)
    if len(_CACHE[key]) < n and not up_to:
        raise ValueError(
            f"built-in {domain}/{split}: the generator ran out of distinct prompts "
            f"after {len(_CACHE[key])} (asked for {n})"
        )
    return copy.deepcopy(list(_CACHE[key][:n]))


_CACHE: dict[tuple, tuple[dict, ...]] = {}
_EXHAUSTED: set[tuple] = set()  # keys whose cached records are every distinct prompt of the split


def _generate(domain: str, split: str, n: int, seed: int) -> tuple[dict, ...]:
    # One stream per domain, shared by both splits, so a prompt's split never depends on n.
    rng = random.Random(f"{seed}/{domain}")
    out, seen = [], set()
    misses = 0
    while len(out) < n:
        item = GENERATORS[domain](rng)
        prompt = item["prompt"]
        if prompt in seen or split_of(prompt) != split:
            misses += 1
            # Consecutive misses only pile up once the split's prompt space is nearly exhausted.
            if misses > MAX_MISSES:
                break
            continue
        misses = 0
        seen.add(prompt)
        out.append(
            {
                "id": f"builtin-{domain}-{split}-{len(out):05d}",
                "domain": domain,
                "messages": [{"role": "user", "content": prompt}],
                "ground_truth": gt() if callable(gt := item["ground_truth"]) else gt,
                "source": "builtin",
                "metadata": {
                    "split": split,
                    "task": item["task"],
                    "reference": ref() if callable(ref := item["reference"]) else ref,
                },
            }
        )
    return tuple(out)


def all_builtin(split: str, domains=DOMAINS) -> list[dict]:
    return [r for d in domains for r in builtin_records(d, split)]
