"""The harness of assert-style code tests: runs in the sandbox as /sandbox/main.py beside solution.py
(the program) and tests.py (the record's test code); standard library only, Python >= 3.8. The verifier
also imports `assert_units` to count the units itself and accepts only a result that names them all.

Units, in run order: each top-level `assert` of the test code (where it stands in the module body),
then each top-level `test*` function and each `test*` method of a top-level `Test*` class (file order,
as pytest collects them), then `check(<entry_point>)` when the test code defines `check` (HumanEval).

Why a program cannot fake a pass: the verdict is one line `<nonce> <passed> <total>` that this harness
writes, once, after every unit ran, on a duplicate of stdout (the program's fd 1 goes to stderr). The
nonce is fresh per run and arrives on stdin, which is read and closed before the program runs. An exit
of any kind (sys.exit, os._exit, SystemExit, a signal) before that line means no verdict; a unit that
raises anything, SystemExit included, failed. Test functions and `check` are taken from the code
compiled here before the program ran, and each unit runs with a pristine copy of the builtins, so
patching builtins, AssertionError or the test functions changes nothing. What this does not stop: a
program that reads the harness's memory (frames, gc, ctypes) to learn the nonce; the sandbox bounds
what such a program can do, not what it scores.
"""

import ast
import builtins
import contextlib
import math
import os
import re
import sys
import types


def assert_units(test_code, entry_point=None):
    """Labels of the units `test_code` holds, in run order (see the module docstring)."""
    body = ast.parse(test_code).body
    units = [f"assert@{s.lineno}" for s in body if isinstance(s, ast.Assert)]
    has_check = False
    for s in body:
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if s.name.startswith("test"):
                units.append(s.name)
            has_check = has_check or s.name == "check"
        elif isinstance(s, ast.ClassDef) and s.name.startswith("Test"):
            units += [
                f"{s.name}.{m.name}" for m in s.body if isinstance(m, ast.FunctionDef) and m.name.startswith("test")
            ]
    if has_check and entry_point:
        units.append(f"check({entry_point})")
    return units


def _pytest_shim():
    """The few pytest helpers test files use (raises, approx, mark.parametrize, fail); the sandbox
    interpreter needs no pytest. Fixtures are not supported (such a test fails, saying so)."""
    mod = types.ModuleType("pytest")

    @contextlib.contextmanager
    def raises(expected, match=None):
        try:
            yield
        except expected as e:
            if match is not None:
                if not re.search(match, str(e)):
                    raise AssertionError(f"{e!r} does not match {match!r}") from None
            return
        raise AssertionError(f"DID NOT RAISE {expected}")

    class approx:
        def __init__(self, expected, rel=1e-6, abs=1e-12):
            self.expected, self.rel, self.abs = expected, rel, abs

        def _close(self, a, b):
            if isinstance(b, (list, tuple)):
                return isinstance(a, (list, tuple)) and len(a) == len(b) and all(map(self._close, a, b))
            if isinstance(b, dict):
                return isinstance(a, dict) and a.keys() == b.keys() and all(self._close(a[k], b[k]) for k in b)
            return math.isclose(a, b, rel_tol=self.rel, abs_tol=self.abs)

        def __eq__(self, other):
            return self._close(other, self.expected)

    def parametrize(names, values, **_):
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)

        def mark(fn):
            rows = [v if len(names) > 1 else (v,) for v in values]
            outer = getattr(fn, "_harness_params", [{}])
            fn._harness_params = [{**o, **dict(zip(names, r))} for r in rows for o in outer]
            return fn

        return mark

    def fail(msg=""):
        raise AssertionError(msg)

    mod.raises, mod.approx, mod.fail = raises, approx, fail
    mod.mark = types.SimpleNamespace(parametrize=parametrize)
    return mod


def _describe(unit, e):
    try:
        text = f"{unit}: {type(e).__name__}: {e}"
    except BaseException:  # a program's exception whose str() itself raises
        text = f"{unit}: exception"
    return text[:300].encode("utf-8", "replace").replace(b"\n", b"\\n")


def _code_ids(code):
    """ids of `code` and every code object nested in it (functions, classes, their methods)."""
    out = {id(code)}
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            out |= _code_ids(c)
    return out


def _own(fn, name, codes, ns):
    """`fn` only if it is still a function compiled from the test code, in the tests' namespace."""
    fn = getattr(fn, "__func__", fn)  # a bound test method
    if not isinstance(fn, types.FunctionType) or id(fn.__code__) not in codes or fn.__globals__ is not ns:
        raise AssertionError(f"{name} was replaced or removed")
    return fn


def _call(fn, *self):
    for kwargs in getattr(fn, "_harness_params", [{}]):
        fn(*self, **kwargs)


def main():
    write, exit_ = os.write, os._exit  # the program may replace them in `os`
    nonce = sys.stdin.buffer.read(64).decode("ascii", "replace").strip()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    out = os.dup(1)
    os.dup2(2, 1)
    here = os.path.dirname(os.path.abspath(__file__))
    entry = sys.argv[1] if len(sys.argv) > 1 else ""
    with open(os.path.join(here, "tests.py"), encoding="utf-8") as f:
        test_src = f.read()
    with open(os.path.join(here, "solution.py"), encoding="utf-8") as f:
        program = compile(f.read(), "solution.py", "exec")
    tree = ast.parse(test_src)
    units = assert_units(test_src, entry)
    stmts = [(s, compile(ast.Module([s], []), "tests.py", "exec")) for s in tree.body]
    codes = set().union(*(_code_ids(c) for _, c in stmts))  # the code objects stay alive in `stmts`
    pristine = dict(builtins.__dict__)
    passed, failure = 0, b""

    def record(unit, error):
        nonlocal passed, failure
        if error is None:
            passed += 1
        elif not failure:
            failure = _describe(unit, error)

    solution = types.ModuleType("solution")
    solution.__file__ = os.path.join(here, "solution.py")
    sys.modules["solution"] = solution
    try:
        exec(program, solution.__dict__)
        loaded = None
    except BaseException as e:
        loaded = e
    builtins.__dict__.clear()
    builtins.__dict__.update(pristine)
    if loaded is not None:
        write(out, f"{nonce} 0 {len(units)}\n".encode() + _describe("program", loaded))
        exit_(0)
    candidate = solution.__dict__.get(entry) if entry else None
    ns = {k: v for k, v in solution.__dict__.items() if not k.startswith("__")}
    ns.update(__name__="tests", __builtins__=dict(pristine))
    # Always ours (even where the interpreter has pytest: its parametrize marks are not read here), and
    # made after the program ran, so nothing the program put in sys.modules stands in for it.
    sys.modules["pytest"] = _pytest_shim()
    broken = None  # a setup statement that raised: every later unit fails with it
    for stmt, code in stmts:
        unit = f"assert@{stmt.lineno}" if isinstance(stmt, ast.Assert) else None
        try:
            if broken is not None:
                raise broken
            exec(code, ns)
            error = None
        except BaseException as e:
            error = e
            broken = broken if unit else e
        if unit:
            record(unit, error)
    for unit in units:
        if unit.startswith("assert@"):
            continue
        try:
            if broken is not None:
                raise broken
            builtins.__dict__.update(pristine)
            if unit.startswith("check("):
                if candidate is None:
                    raise NameError(f"the program defines no {entry!r}")
                _own(ns.get("check"), "check", codes, ns)(candidate)
            elif "." in unit:  # a method of a Test* class, on a fresh instance as pytest does
                cls_name, method = unit.split(".")
                cls = ns.get(cls_name)
                _call(_own(getattr(cls, method, None), unit, codes, ns), cls())
            else:
                _call(_own(ns.get(unit), unit, codes, ns))
            record(unit, None)
        except BaseException as e:
            record(unit, e)
    write(out, f"{nonce} {passed} {len(units)}\n".encode() + failure)
    exit_(0)


if __name__ == "__main__":
    main()
