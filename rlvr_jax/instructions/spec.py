"""What a registry entry is: typed kwargs plus a checker and a describer, and kwargs validation."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

RELATIONS = ("less than", "at least")


@dataclasses.dataclass(frozen=True)
class Kwarg:
    """One keyword argument: `type` is int, str or list (of non-empty str)."""

    type: type
    required: bool = True
    default: Any = None
    minimum: int = 0  # ints only
    choices: tuple | None = None  # allowed values, or None for any
    max_len: int = 0  # strings only: most characters once stripped (0 = any length)


@dataclasses.dataclass(frozen=True)
class Spec:
    """check(response, kwargs, prompt) -> bool on a non-empty response; describe(kwargs) -> str."""

    check: Callable[[str, Mapping[str, Any], str], bool]
    describe: Callable[[Mapping[str, Any]], str]
    kwargs: Mapping[str, Kwarg] = dataclasses.field(default_factory=dict)
    source: str = "ifeval"  # which family defined the id: ifeval | ifeval_train | ifbench


def relation(**extra) -> Kwarg:
    return Kwarg(str, choices=RELATIONS, **extra)


def _coerce(instruction_id: str, name: str, arg: Kwarg, value: Any) -> Any:
    where = f"instruction {instruction_id!r}: kwarg {name!r}"
    if arg.type is int:
        # Parquet/pandas turn nullable int columns into floats: accept 3.0, refuse 3.5 and bools.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        if value < arg.minimum:
            raise ValueError(f"{where}: must be >= {arg.minimum}, got {value}")
    elif arg.type is str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}: expected a non-empty string, got {value!r}")
        if arg.max_len and len(value.strip()) > arg.max_len:
            raise ValueError(f"{where}: at most {arg.max_len} character(s), got {value!r}")
    elif arg.type is list:
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"{where}: expected a non-empty list of strings, got {value!r}")
        if not all(isinstance(v, str) and v.strip() for v in value):
            raise ValueError(f"{where}: every item must be a non-empty string, got {value!r}")
        value = list(value)
    if arg.choices is not None and value not in arg.choices:
        raise ValueError(f"{where}: must be one of {list(arg.choices)}, got {value!r}")
    return value


def normalize(instruction_id: str, spec: Spec, kwargs: Mapping[str, Any] | None) -> dict:
    """Validated kwargs with defaults filled; None-valued keys count as absent (IFEval rows)."""
    given = {k: v for k, v in (kwargs or {}).items() if v is not None}
    unknown = sorted(set(given) - set(spec.kwargs))
    if unknown:
        raise ValueError(
            f"instruction {instruction_id!r}: unknown kwarg {unknown[0]!r} (accepted: {sorted(spec.kwargs) or 'none'})"
        )
    out = {}
    for name, arg in spec.kwargs.items():
        if name in given:
            out[name] = _coerce(instruction_id, name, arg, given[name])
        elif arg.required:
            raise ValueError(f"instruction {instruction_id!r}: missing required kwarg {name!r}")
        else:
            out[name] = arg.default
    return out
