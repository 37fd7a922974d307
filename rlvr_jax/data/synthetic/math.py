"""Built-in math tasks: one- and two-step word problems over single-digit facts, answered in \\boxed{}."""

from __future__ import annotations

import random

from rlvr_jax.data.synthetic.reference import reference

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


def generate(rng: random.Random) -> dict:
    """One math task: prompt, ground truth, reference response and task name."""
    question, reasoning, answer = _math_task(rng)
    return {
        "domain": "math",
        "prompt": question + " Put the final answer in \\boxed{}.",
        "ground_truth": {"answers": [str(answer)]},
        "reference": reference(reasoning, f"Answer: \\boxed{{{answer}}}"),
        "task": "math/arithmetic",
    }
