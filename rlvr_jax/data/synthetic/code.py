"""Built-in code tasks: small stdin/stdout programs from ten families whose constants sit in the
statement, with tests drawn from a stream seeded by the prompt.
"""

from __future__ import annotations

import random
import re
from typing import Callable

from rlvr_jax.data.synthetic.reference import reference

ALPHABET = "abcdefghijklmnopqrstuvwxyz"

# A family draws its constants and gives (statement, program, test maker); a test maker draws one
# (stdin, expected stdout) pair from the random stream it is handed.
TestMaker = Callable[[random.Random], tuple[str, str]]


def _ints(arity: int, expr: str, lo: int = -50):
    """Test maker for integer inputs: `arity` ints on one line, expected `expr` evaluated."""

    def make(r):
        vals = [r.randint(lo, 50) for _ in range(arity)]
        env = dict(zip("ab", vals)) if arity == 2 else {"n": vals[0]}
        return " ".join(map(str, vals)) + "\n", f"{eval(expr, env)}\n"

    return make


def _int_prog(expr: str) -> str:
    return f"n = int(input())\nprint({expr})"


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


# ---------------------------------------------------------------------------------- integer families
def _affine(rng: random.Random) -> tuple[str, str, TestMaker]:
    k, c = rng.randint(2, 12), rng.choice([i for i in range(-50, 51) if i])
    expr = f"n * {k} + {c}" if c > 0 else f"n * {k} - {-c}"
    return f"Read an integer n and print {expr}.", _int_prog(expr), _ints(1, expr)


def _shift_scale(rng: random.Random) -> tuple[str, str, TestMaker]:
    a, b = rng.randint(1, 30), rng.randint(2, 12)
    expr = f"(n + {a}) * {b}"
    return f"Read an integer n and print {expr}.", _int_prog(expr), _ints(1, expr)


def _pair(rng: random.Random) -> tuple[str, str, TestMaker]:
    p, q = rng.randint(1, 12), rng.randint(1, 12)
    expr = rng.choice(["a + b", "a * b", "max(a, b)", "min(a, b)", "a - b", f"a * {p} + b * {q}", f"a * {p} - b * {q}"])
    return (
        f"Read two integers a and b on one line and print {expr}.",
        f"a, b = map(int, input().split())\nprint({expr})",
        _ints(2, expr),
    )


def _divmod(rng: random.Random) -> tuple[str, str, TestMaker]:
    m = rng.randint(2, 20)
    expr = rng.choice([f"n // {m}", f"n % {m}"])
    return f"Read a non-negative integer n and print {expr}.", _int_prog(expr), _ints(1, expr, lo=0)


def _list(rng: random.Random) -> tuple[str, str, TestMaker]:
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

    return f"Read integers on one line and print {what}.", prog, make


# ---------------------------------------------------------------------------------- string families
def _replace(rng: random.Random) -> tuple[str, str, TestMaker]:
    x, y = rng.sample(ALPHABET, 2)
    expr = f"s.replace('{x}', '{y}')"
    return f"Read a string s and print it with every {x} replaced by {y}.", _str_prog(expr), _strs(expr)


def _count(rng: random.Random) -> tuple[str, str, TestMaker]:
    x = rng.choice(ALPHABET)
    expr = rng.choice([f"s.count('{x}')", f"s.replace('{x}', '')"])
    what = f"how many times {x} appears in it" if "count" in expr else f"it with every {x} removed"
    return f"Read a string s and print {what}.", _str_prog(expr), _strs(expr)


def _slice(rng: random.Random) -> tuple[str, str, TestMaker]:
    k = rng.randint(1, 9)
    expr, what = rng.choice([(f"s[:{k}]", f"its first {k} characters"), (f"s[-{k}:]", f"its last {k} characters")])
    return f"Read a string s and print {what}.", _str_prog(expr), _strs(expr)


def _repeat(rng: random.Random) -> tuple[str, str, TestMaker]:
    k, sep = rng.randint(2, 5), rng.choice(["", " ", "-", ","])
    expr = f"'{sep}'.join([s] * {k})"
    return f"Read a string s and print it {k} times joined by '{sep}'.", _str_prog(expr), _strs(expr)


def _string(rng: random.Random) -> tuple[str, str, TestMaker]:
    expr, what = rng.choice(
        [
            ("s[::-1]", "it reversed"),
            ("s.upper()", "it in upper case"),
            ("len(s)", "its length"),
            ("s[0] + s[-1]", "its first and last characters"),
        ]
    )
    return f"Read a string s and print {what}.", _str_prog(expr), _strs(expr)


# The order is part of the seeded stream: a task's family is `rng.choice` over these names.
FAMILIES: dict[str, Callable[[random.Random], tuple[str, str, TestMaker]]] = {
    "affine": _affine,
    "shift_scale": _shift_scale,
    "pair": _pair,
    "divmod": _divmod,
    "replace": _replace,
    "count": _count,
    "slice": _slice,
    "repeat": _repeat,
    "list": _list,
    "string": _string,
}


def _code_task(rng: random.Random) -> tuple[str, str, str, TestMaker]:
    """(family, statement, program, test maker) for one small stdin/stdout problem.

    Families carry constants in the statement, so held-out prompts ask for programs whose
    constants the model never saw: it must copy them from the prompt into the code.
    """
    family = rng.choice(list(FAMILIES))
    return (family, *FAMILIES[family](rng))


def generate(rng: random.Random) -> dict:
    """One code task: the statement asks for a program in a ```python block; tests are made on demand."""
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
