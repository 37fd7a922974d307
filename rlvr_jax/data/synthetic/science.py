"""Built-in science tasks: four-option questions over a table of facts, answered with a letter
fixed per question."""

from __future__ import annotations

import hashlib
import random

from rlvr_jax.data.synthetic.reference import reference

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


def generate(rng: random.Random) -> dict:
    """One science task: a fact's question with three distractors from its category."""
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
