"""The instruction registry (id -> Spec), strict/loose checking, and the built-in task helpers.

Built-in helpers serve the synthetic IF domain: ids a tiny model can satisfy, seeded kwargs,
conflict-free instruction sets, and reference responses proven compliant by `check_all`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from rlvr_jax.instructions import ifbench, ifeval, ifeval_train, official, text
from rlvr_jax.instructions.spec import Spec, normalize

INSTRUCTIONS: dict[str, Spec] = {**ifeval.SPECS, **ifeval_train.SPECS, **ifbench.SPECS}
IFEVAL_IDS: tuple[str, ...] = tuple(sorted(ifeval.SPECS))
IFBENCH_IDS: tuple[str, ...] = tuple(sorted(ifbench.SPECS))  # IFBench's test-set ids
# Official mode: the reference scorers' own checks where reward mode departs from them.
OFFICIAL_CHECKS = {**official.CHECKS, **ifbench.OFFICIAL_CHECKS}


def _spec(instruction_id: str) -> Spec:
    try:
        return INSTRUCTIONS[instruction_id]
    except KeyError:
        raise ValueError(f"unknown instruction id {instruction_id!r}") from None


def normalize_kwargs(instruction_id: str, kwargs: Mapping[str, Any] | None) -> dict:
    """Validated kwargs with defaults filled in (None values dropped, 3.0 read as 3)."""
    return normalize(instruction_id, _spec(instruction_id), kwargs)


def validate_kwargs(instruction_id: str, kwargs: Mapping[str, Any] | None) -> None:
    """Raise ValueError naming the id or kwarg: unknown id, missing, mistyped or unknown kwarg."""
    normalize_kwargs(instruction_id, kwargs)


def _checker(instruction_id: str, spec: Spec, mode: str):
    if mode not in official.MODES:
        raise ValueError(f"IF mode must be one of {official.MODES}, got {mode!r}")
    return OFFICIAL_CHECKS.get(instruction_id, spec.check) if mode == "official" else spec.check


def check(
    instruction_id: str, kwargs, response: str, *, prompt: str, strict: bool = True, mode: str = "reward"
) -> bool:
    """Whether `response` follows one instruction; loose mode also tries IFEval's variants. `mode`:
    "reward" (ours, rlvr_jax.instructions.ifeval) or "official" (IFEval's reference scorer)."""
    spec = _spec(instruction_id)
    kw = normalize(instruction_id, spec, kwargs)
    checker = _checker(instruction_id, spec, mode)
    candidates = [response] if strict else text.loose_variants(response)
    # An empty response follows nothing (IFEval), else "no commas" would reward silence.
    return any(c.strip() and checker(c, kw, prompt) for c in candidates)


def check_all(
    instruction_ids: Sequence[str],
    kwargs_list: Sequence[Mapping | None],
    response: str,
    *,
    prompt: str,
    strict: bool = True,
    mode: str = "reward",
) -> list[bool]:
    """One boolean per instruction, in order."""
    if len(instruction_ids) != len(kwargs_list):
        raise ValueError(f"{len(instruction_ids)} instruction ids but {len(kwargs_list)} kwargs dicts")
    return [
        check(i, kw, response, prompt=prompt, strict=strict, mode=mode) for i, kw in zip(instruction_ids, kwargs_list)
    ]


def ifeval_accuracy(
    instruction_ids: Sequence[str], kwargs_list: Sequence[Mapping | None], response: str, *, prompt: str, mode: str
) -> dict:
    """IFEval's four numbers for one prompt: prompt_strict / prompt_loose (every instruction followed)
    and inst_strict / inst_loose (one boolean per instruction), as IFEval reports and averages them."""
    inst_strict = check_all(instruction_ids, kwargs_list, response, prompt=prompt, strict=True, mode=mode)
    inst_loose = check_all(instruction_ids, kwargs_list, response, prompt=prompt, strict=False, mode=mode)
    return {
        "prompt_strict": all(inst_strict),
        "prompt_loose": all(inst_loose),
        "inst_strict": inst_strict,
        "inst_loose": inst_loose,
    }


def describe(instruction_id: str, kwargs: Mapping[str, Any] | None) -> str:
    """The instruction as a sentence for a prompt, e.g. 'Answer with less than 40 words.'"""
    spec = _spec(instruction_id)
    return spec.describe(normalize(instruction_id, spec, kwargs))


# ---- built-in tasks -------------------------------------------------------------------------
# Vocabularies are disjoint on purpose: no keyword, title, bullet, end phrase or body word may
# ever be a forbidden word, so every sampled set has a compliant answer.
_KEYWORDS = ("river", "garden", "lantern", "bridge", "candle", "meadow", "pebble", "harbor")
_FORBIDDEN = ("banana", "winter", "happy", "computer", "ocean", "yellow", "music", "doctor")
_END_PHRASES = (
    "Is there anything else I can help with?",
    "Any other questions?",
    "That is all.",
    "Thank you for reading.",
    "Let me know if you have more questions.",
)
_BODIES = (
    "This short note describes a quiet morning in the small town.",
    "The old train station opens early and the first travelers arrive with their bags.",
    "We walked along the path and talked about the plans for the next week.",
    "The children read a story about a brave fox who found a new home.",
)
_TITLES = ("a quiet morning", "notes from the road", "the small town", "a short story")
_BULLETS = ("first point", "second point", "third point", "fourth point", "fifth point")
_PLACEHOLDERS = ("[name]", "[address]", "[date]")
_HIGHLIGHTS = ("*key idea*", "*main point*", "*final thought*")

BUILTIN_TASK_IDS: list[str] = [
    "change_case:english_lowercase",
    "change_case:english_capital",
    "punctuation:no_comma",
    "startend:end_checker",
    "startend:quotation",
    "length_constraints:number_words",
    "length_constraints:number_sentences",
    "keywords:existence",
    "keywords:forbidden_words",
    "keywords:frequency",
    "detectable_format:title",
    "detectable_format:constrained_response",
    "detectable_format:number_bullet_lists",
    "detectable_format:number_highlighted_sections",
    "detectable_content:postscript",
    "detectable_content:number_placeholders",
]
# Pairs the built-in tasks never combine: the first three no text can satisfy together. Quotation +
# end_checker can be satisfied (both modes accept an end phrase inside the closing quote, as IFEval does, and
# records that combine them load and score); the built-in generator still leaves the pair out so that its
# task set, and every number measured on it (README, docs/example_tiny, tests/test_golden.py), stays the same.
BUILTIN_CONFLICTS = frozenset(
    frozenset(p)
    for p in [
        ("change_case:english_lowercase", "change_case:english_capital"),
        ("change_case:english_lowercase", "detectable_format:constrained_response"),
        ("change_case:english_capital", "detectable_format:constrained_response"),
        ("startend:quotation", "startend:end_checker"),
    ]
)


def _pick(rng: np.random.Generator, options: Sequence, k: int | None = None):
    if k is None:
        return options[int(rng.integers(len(options)))]
    return [options[i] for i in sorted(rng.choice(len(options), size=k, replace=False))]


def sample_kwargs(instruction_id: str, rng: np.random.Generator) -> dict:
    """Seeded kwargs for a built-in id; bounds keep a short answer able to comply."""
    samplers = {
        "startend:end_checker": lambda: {"end_phrase": _pick(rng, _END_PHRASES)},
        # Only upper bounds: a tiny model's challenge is to stop, not to ramble.
        "length_constraints:number_words": lambda: {"num_words": int(rng.integers(30, 81)), "relation": "less than"},
        "length_constraints:number_sentences": lambda: {
            "num_sentences": int(rng.integers(5, 9)),
            "relation": "less than",
        },
        "keywords:existence": lambda: {"keywords": _pick(rng, _KEYWORDS, int(rng.integers(1, 3)))},
        "keywords:forbidden_words": lambda: {"forbidden_words": _pick(rng, _FORBIDDEN, int(rng.integers(1, 3)))},
        "keywords:frequency": lambda: {
            "keyword": _pick(rng, _KEYWORDS),
            "frequency": int(rng.integers(2, 4)),
            "relation": "at least",
        },
        "detectable_format:number_bullet_lists": lambda: {"num_bullets": int(rng.integers(2, 4))},
        "detectable_format:number_highlighted_sections": lambda: {"num_highlights": int(rng.integers(1, 3))},
        "detectable_content:postscript": lambda: {"postscript_marker": _pick(rng, ("P.S.", "P.P.S"))},
        "detectable_content:number_placeholders": lambda: {"num_placeholders": int(rng.integers(1, 3))},
    }
    if instruction_id not in BUILTIN_TASK_IDS:
        raise ValueError(f"instruction id {instruction_id!r} is not a built-in task id")
    kwargs = samplers[instruction_id]() if instruction_id in samplers else {}
    validate_kwargs(instruction_id, kwargs)
    return kwargs


def sample_instruction_set(rng: np.random.Generator, max_instructions: int = 3):
    """1..max_instructions distinct, mutually satisfiable built-in ids with sampled kwargs."""
    want = int(rng.integers(1, max_instructions + 1))
    ids: list[str] = []
    for i in rng.permutation(len(BUILTIN_TASK_IDS)):
        candidate = BUILTIN_TASK_IDS[int(i)]
        if all(frozenset((candidate, c)) not in BUILTIN_CONFLICTS for c in ids):
            ids.append(candidate)
        if len(ids) == want:
            break
    return ids, [sample_kwargs(i, rng) for i in ids]


def reference_response(
    instruction_ids: Sequence[str],
    kwargs_list: Sequence[Mapping | None],
    rng: np.random.Generator,
    *,
    body: str | None = None,
    prompt: str = "",
) -> str:
    """A response that follows every given built-in instruction (checked before returning).

    `body` replaces the default sentence; ValueError if the result still fails a check (e.g. the
    body has a comma under no_comma) or an id is not built in.
    """
    unknown = [i for i in instruction_ids if i not in BUILTIN_TASK_IDS]
    if unknown:
        raise ValueError(f"reference_response supports built-in ids only, not {unknown}")
    kw = {i: normalize_kwargs(i, k) for i, k in zip(instruction_ids, kwargs_list)}
    # Language detection on short texts can misjudge one draw of filler; redraw a few times.
    out = ""
    for _ in range(8):
        out = _build(kw, rng, body)
        followed = check_all(list(instruction_ids), list(kwargs_list), out, prompt=prompt)
        if all(followed):
            return out
    failed = [i for i, ok in zip(instruction_ids, followed) if not ok]
    raise ValueError(f"could not build a response satisfying {failed}: {out!r}")


def _build(kw: Mapping[str, dict], rng: np.random.Generator, body: str | None) -> str:
    sentences = [body if body is not None else _pick(rng, _BODIES)]
    if "keywords:existence" in kw:
        words = kw["keywords:existence"]["keywords"]
        sentences.append("We saw the " + " and the ".join(words) + " on the way.")
    if "keywords:frequency" in kw:
        f = kw["keywords:frequency"]
        sentences.append("We saw the " + " and the ".join([f["keyword"]] * f["frequency"]) + ".")
    if "detectable_content:number_placeholders" in kw:
        n = kw["detectable_content:number_placeholders"]["num_placeholders"]
        sentences.append("Please send it to " + " and ".join(_PLACEHOLDERS[: max(n, 1)]) + ".")
    if "detectable_format:number_highlighted_sections" in kw:
        n = kw["detectable_format:number_highlighted_sections"]["num_highlights"]
        sentences.append("Note the " + " and the ".join(_HIGHLIGHTS[: max(n, 1)]) + ".")
    if "detectable_format:constrained_response" in kw:
        sentences.append(_pick(rng, ifeval.CONSTRAINED_RESPONSES))
    lines = []
    if "detectable_format:title" in kw:
        lines.append(f"<<{_pick(rng, _TITLES)}>>")
    lines.append(" ".join(sentences))
    if "detectable_format:number_bullet_lists" in kw:
        n = kw["detectable_format:number_bullet_lists"]["num_bullets"]
        lines += [f"* {b}" for b in _BULLETS[:n]]
    if "detectable_content:postscript" in kw:
        lines.append(f"{kw['detectable_content:postscript']['postscript_marker']} see you soon.")
    if "startend:end_checker" in kw:
        lines.append(kw["startend:end_checker"]["end_phrase"])
    out = "\n".join(lines)
    if "change_case:english_lowercase" in kw:
        out = out.lower()
    if "change_case:english_capital" in kw:
        out = out.upper()
    if "startend:quotation" in kw:
        out = f'"{out}"'
    return out
