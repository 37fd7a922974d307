"""What a config file's `get_config(arg)` accepts: the comma-separated words of `--config=FILE.py:ARG`,
checked against the file's own vocabulary (an unknown word is an error, never a silent default), and
sibling config files loaded by path, with no sys.path edits."""

from __future__ import annotations

import importlib.util
import os
import types
from typing import Iterable, Mapping


class ConfigArgError(ValueError):
    """A word of ARG that the config file does not know, or a choice given twice or not at all."""


class ConfigArg:
    """The parsed ARG: `a.<group>` is the word chosen for a choice group, `a.<flag>` whether a flag was given."""

    __slots__ = ("words", "chosen", "flags")

    def __init__(self, words: tuple[str, ...], chosen: Mapping[str, str], flags: Mapping[str, bool]):
        self.words = words  # as given (after the default), in order
        self.chosen = dict(chosen)  # choice group -> its word
        self.flags = dict(flags)  # every allowed flag -> whether it was given

    def __getattr__(self, name: str):
        # reached only for names that are not slots; a dunder or an unset slot (copy, pickle) is no word
        if name.startswith("__") or name in ConfigArg.__slots__:
            raise AttributeError(name)
        if name in self.chosen:
            return self.chosen[name]
        if name in self.flags:
            return self.flags[name]
        raise AttributeError(
            f"{name!r} is neither a choice group {sorted(self.chosen)} nor a flag {sorted(self.flags)}"
        )

    def __repr__(self) -> str:
        return f"ConfigArg({self.chosen}, flags={self.flags})"


def _shown(path: str) -> str:
    """The file as the user named it: relative to the working directory when it lies under it."""
    rel = os.path.relpath(os.path.abspath(path))
    return path if rel.startswith("..") else rel


def _allowed(choices: Mapping[str, tuple[str, ...]], flags: tuple[str, ...]) -> str:
    parts = [f"one {group} of {' | '.join(words)}" for group, words in choices.items()]
    if flags:
        parts.append("optional " + ", ".join(flags))
    return "; ".join(parts) or "no words"


def parse_arg(
    arg: str | None,
    *,
    file: str,
    choices: Mapping[str, Iterable[str]] | None = None,
    flags: Iterable[str] = (),
    default: str = "",
) -> ConfigArg:
    """Split ARG on commas into words: each choice group takes exactly one of its words, each flag may
    appear once, in any order. `default` is the ARG used when none is given (None or blank); `file` is
    the config file (`__file__`), named in errors together with every allowed word."""
    choices = {group: tuple(words) for group, words in (choices or {}).items()}
    flags = tuple(flags)
    owner: dict[str, str | None] = {}  # word -> its choice group (None: a flag)
    for group, words in choices.items():
        for w in words:
            if w in owner:
                raise TypeError(f"word {w!r} is in two choice groups")
            owner[w] = group
    for f in flags:
        if f in owner:
            raise TypeError(f"flag {f!r} is also a choice word or given twice")
        owner[f] = None

    text = default if arg is None or not arg.strip() else arg
    words = tuple(w.strip() for w in text.split(",") if w.strip())
    where, allowed = _shown(file), _allowed(choices, flags)
    chosen: dict[str, str] = {}
    given: set[str] = set()
    for w in words:
        if w not in owner:
            raise ConfigArgError(f"{where}: unknown word {w!r} in ':{text}'; allowed: {allowed}")
        group = owner[w]
        if group is None:
            if w in given:
                raise ConfigArgError(f"{where}: {w!r} given twice in ':{text}'")
            given.add(w)
        elif group in chosen:
            raise ConfigArgError(
                f"{where}: ':{text}' names two of {group} ({chosen[group]!r} and {w!r}); allowed: {allowed}"
            )
        else:
            chosen[group] = w
    missing = [g for g in choices if g not in chosen]
    if missing:
        raise ConfigArgError(f"{where}: ':{text}' names no {' and no '.join(missing)}; allowed: {allowed}")
    return ConfigArg(words, chosen, {f: f in given for f in flags})


def load_config_file(path: str) -> types.ModuleType:
    """Execute the config file at `path` as a fresh module (not put in sys.modules, sys.path untouched)."""
    path = os.path.abspath(path)
    name = "_rlvr_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"no config file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config_module(here: str, name: str) -> types.ModuleType:
    """The config file `name`.py beside the file `here` (a config file passes its `__file__`)."""
    return load_config_file(os.path.join(os.path.dirname(os.path.abspath(here)), name + ".py"))
