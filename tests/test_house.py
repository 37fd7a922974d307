"""The house rules a reader relies on (DESIGN.md "Layout"): modules a reader can hold in their head, functions
that fit on a screen in the stages with the most logic, and no module reaching into another's private names
(a room publishes what others compile or call)."""

import ast
import pathlib

PKG = pathlib.Path(__file__).resolve().parents[1] / "rlvr_jax"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
SHORT_FUNCTION_FOLDERS = ("rl", "rollout", "plan", "study")


def _sources() -> dict[pathlib.Path, ast.Module]:
    return {p: ast.parse(p.read_text(), filename=str(p)) for p in sorted(PKG.rglob("*.py"))}


def _rel(p: pathlib.Path) -> str:
    return str(p.relative_to(PKG.parent))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_definitions(tree: ast.Module) -> set[str]:
    """Private names a module defines: functions, classes, methods, module variables, `self._x` attributes,
    dataclass fields, and the names of its own private imports (which another module must not re-export)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            out.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
        elif isinstance(node, ast.keyword) and node.arg:
            out.add(node.arg)  # namedtuple/dataclass fields set by keyword
    return {n for n in out if _is_private(n)}


def test_no_module_is_longer_than_a_reader_holds():
    long = {_rel(p): len(p.read_text().splitlines()) for p in _sources()}
    long = {p: n for p, n in long.items() if n > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by concern): {long}"


def test_functions_fit_on_a_screen_in_the_busiest_stages():
    long = []
    for p, tree in _sources().items():
        if p.relative_to(PKG).parts[0] not in SHORT_FUNCTION_FOLDERS:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{_rel(p)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines in {SHORT_FUNCTION_FOLDERS}: {long}"


def _private_reaches(sources: dict) -> list[str]:
    """`from rlvr_jax.x import _y`, `module._y` and `obj._y` where `_y` is private to another of our modules.
    A module may use its own private names on any object (e.g. `other._x` in a method of the same class)."""
    defined = {p: _private_definitions(t) for p, t in sources.items()}
    ours = set().union(*defined.values())
    found = []
    for p, tree in sources.items():
        own = defined[p]
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rlvr_jax"):
                names = [a.name for a in node.names if _is_private(a.name)]
            elif isinstance(node, ast.Attribute) and _is_private(node.attr):
                names = [node.attr] if node.attr in ours and node.attr not in own else []
            else:
                continue
            found += [f"{p}:{node.lineno} {n}" for n in names]
    return found


def test_no_module_uses_another_modules_private_names():
    found = _private_reaches({_rel(p): t for p, t in _sources().items()})
    assert not found, "private names used outside the module that defines them (publish a public name): " + ", ".join(
        found
    )


def test_the_private_name_walk_sees_both_reaches_and_spares_own_names():
    engine = ast.parse(
        "class Engine:\n    def _decode_abstract(self, other):\n        return other._decode_abstract(self)\n"
    )
    methods = ast.parse("def _k_linear(x):\n    return x\n")
    planner = ast.parse(
        "from rlvr_jax.merging.methods import _k_linear\n\ndef f(e):\n    return e._decode_abstract()\n"
    )
    found = _private_reaches({"engine.py": engine, "methods.py": methods, "planner.py": planner})
    assert found == ["planner.py:1 _k_linear", "planner.py:4 _decode_abstract"]
    assert _private_reaches({"engine.py": engine, "methods.py": methods}) == []
