"""The package's import graph: no circles, every folder imports only the folders below it in the data
flow (docs/CONTRACTS.md "Layout"), `sharding.py` imports nothing of ours, and a function-level import
is either a heavy optional dependency whose line says why, or absent."""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "rlvr_jax"

# Bottom to top. A module may import modules of its own layer or of any layer below it.
LAYERS = [
    {
        "rlvr_jax",
        "rlvr_jax.sharding",
        "rlvr_jax.checkpoint",
        "rlvr_jax.metrics",
        "rlvr_jax.cli",
        "rlvr_jax.config_args",
        "rlvr_jax.pytree",
        "rlvr_jax.storage",
    },
    {"rlvr_jax.model"},
    {"rlvr_jax.instructions"},  # the IF instruction registry: data writes and validates with it, verifiers score
    {"rlvr_jax.data"},
    {"rlvr_jax.verifiers"},
    {"rlvr_jax.rollout"},
    {"rlvr_jax.merging"},
    {"rlvr_jax.eval"},
    {"rlvr_jax.rl"},
    {"rlvr_jax.plan"},  # compiles the stages below it; the experiment asks it before running them
    {"rlvr_jax.study"},
    {"rlvr_jax.launch"},  # the pod launcher: drives the CLIs on a slice; of ours it imports only cli
]


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py")) if "__pycache__" not in p.parts}


def _module_level(tree: ast.Module) -> set[int]:
    """ids of the statements that run at import time (module body, and inside its if/try blocks)."""
    out, todo = set(), list(tree.body)
    while todo:
        node = todo.pop()
        out.add(id(node))
        if isinstance(node, (ast.If, ast.Try)):
            todo += node.body + node.orelse + getattr(node, "finalbody", [])
            todo += [s for h in getattr(node, "handlers", []) for s in h.body]
    return out


def _imports(path: pathlib.Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported module of ours, line, at module level) for every import statement in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = _module_level(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from pkg import sub` names the submodule when there is one, else the package itself
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names
            ]
        else:
            continue
        for n in names:
            if n.split(".")[0] == "rlvr_jax":
                while n not in known and "." in n:
                    n = n.rsplit(".", 1)[0]
                out.append((n, node.lineno, id(node) in top))
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {n for n, _, _ in _imports(p, set(mods)) if n != m} for m, p in mods.items()}


def _layer(module: str) -> int:
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if module == prefix or (prefix != "rlvr_jax" and module.startswith(prefix + ".")):
                return i
    raise AssertionError(f"{module} belongs to no layer: add its folder to LAYERS in {__file__}")


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    color, stack = {}, []

    def visit(m):
        color[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if color.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if color.get(n) is None:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        color[m] = 2
        return None

    for m in sorted(graph):
        if color.get(m) is None:
            found = visit(m)
            if found:
                return found
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_folder_imports_only_folders_below_it():
    bad = [
        f"{m} (layer {_layer(m)}) imports {n} (layer {_layer(n)})"
        for m, deps in _graph().items()
        for n in deps
        if _layer(n) > _layer(m)
    ]
    assert not bad, "\n".join(bad)


def test_sharding_imports_nothing_of_ours():
    assert _graph()["rlvr_jax.sharding"] == set()


# Function-level imports that are allowed: heavy or optional third-party modules only, each with a
# comment on its line saying why. Our own modules are always imported at the top.
def test_local_imports_are_third_party_and_say_why():
    bad = []
    for m, path in _modules().items():
        lines = path.read_text().splitlines()
        tree = ast.parse(path.read_text())
        top = _module_level(tree)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in top:
                continue
            mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            line = lines[node.lineno - 1]
            if (mod or "").startswith("rlvr_jax"):
                bad.append(f"{path.relative_to(PKG.parent)}:{node.lineno}: {line.strip()} (ours: import at the top)")
            elif "#" not in line:
                bad.append(f"{path.relative_to(PKG.parent)}:{node.lineno}: {line.strip()} (say why it is local)")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", sorted(_modules()))
def test_module_has_a_docstring(module):
    path = _modules()[module]
    if path.name == "__init__.py" and not path.read_text().strip():
        return
    assert ast.get_docstring(ast.parse(path.read_text())), f"{path}: say in one to three lines what it owns"
