"""Installability: requirements.lock agrees with pyproject's ranges, and the package installs from its
metadata on another Python beside other versions of numpy and matplotlib."""

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]

# Older than the lock's, inside pyproject's ranges: what a researcher's environment may already hold.
THEIR_NUMPY = "2.2.6"
THEIR_MATPLOTLIB = "3.10.3"


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _lock() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"requirements.lock pins exact versions: {line!r}"
            pins[_name(req.name)] = Version(spec.version)
    return pins


def test_lock_pins_a_version_inside_every_range_of_the_metadata():
    """The tested set is one the metadata admits: a range narrowed past the lock (or a lock bumped
    past a range) fails here, before a user's install would."""
    project = _project()
    pins = _lock()
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    for line in wanted:
        req = Requirement(line)
        assert _name(req.name) in pins, f"{req.name} is a dependency but requirements.lock does not pin it"
        assert req.specifier.contains(pins[_name(req.name)], prereleases=True), (
            f"requirements.lock has {req.name}=={pins[_name(req.name)]}, outside pyproject's {req}"
        )
    # The tpu extra is jax with TPU support: the same range as jax itself.
    (tpu,) = [Requirement(r) for r in project["optional-dependencies"]["tpu"]]
    (jax,) = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "jax"]
    assert (tpu.name, tpu.extras, tpu.specifier) == ("jax", {"tpu"}, jax.specifier)


def test_repo_venv_holds_exactly_the_locked_versions():
    """scripts/setup.sh installs with the lock; if .venv drifted (an upgrade by hand, a setup.sh that lost
    `-c requirements.lock`), the suite would no longer test what the lock promises."""
    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        pytest.skip(f"not running in {REPO / '.venv'} (sys.prefix {sys.prefix}); the lock describes that one")
    import importlib.metadata as md  # local: only this test reads the installed distributions

    installed = {_name(d.metadata["Name"]): Version(d.version) for d in md.distributions()}
    drift = {
        name: (str(pin), str(installed.get(name)))
        for name, pin in _lock().items()
        # a local label (torch's +cpu) names a build of the same version
        if name not in installed or Version(installed[name].public) != pin
    }
    assert not drift, (
        f"{REPO / '.venv'} differs from requirements.lock {{name: (lock, installed)}}: {drift}; "
        "run `bash scripts/setup.sh`, or regenerate the lock as its header says after testing new versions"
    )


def _find_python(minor: int) -> str | None:
    """A working python3.<minor>: on PATH (a pyenv shim there may refuse to run), in pyenv, or in /usr."""
    candidates = [shutil.which(f"python3.{minor}")]
    candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/3.{minor}.*/bin/python")), reverse=True)
    candidates += [f"/usr/bin/python3.{minor}", f"/usr/local/bin/python3.{minor}"]
    for exe in filter(None, candidates):
        try:
            out = subprocess.run(
                [exe, "-c", "import sys; print(sys.version_info[1])"], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == str(minor):
            return exe
    return None


# Runs in the new environment, from a folder without our sources: everything it uses came from the wheel.
_SMOKE = """
import json, jax.numpy as jnp, matplotlib, numpy, rlvr_jax
import rlvr_jax.rl.train, rlvr_jax.merging.cli, rlvr_jax.eval.evaluate, rlvr_jax.study.experiment
from rlvr_jax.model.tokenizer import builtin_tokenizer
from rlvr_jax.rl.grpo import advantages
tok = builtin_tokenizer()
adv = advantages(jnp.array([1.0, 0.0, 0.0, 0.0, 1.0, 1.0]), group_size=2)
print(json.dumps({"package": rlvr_jax.__file__, "numpy": numpy.__version__, "matplotlib": matplotlib.__version__,
                  "roundtrip": tok.decode(tok.encode("What is 2+3?")), "adv": [float(a) for a in adv]}))
"""


@pytest.mark.slow
def test_installs_from_its_metadata_on_python_312_beside_older_numpy_and_matplotlib(tmp_path):
    """Proves that a researcher on Python 3.12 whose environment already holds numpy 2.2 and matplotlib 3.10
    can `pip install` the package: requires-python admits 3.12, every dependency resolves to wheels (or a
    buildable sdist) for 3.12 from the package index, pip keeps their numpy and matplotlib (the ranges
    admit them), and the installed wheel (not the source tree) carries every subpackage and the built-in
    tokenizer asset: the trainer modules import, and JAX and the tokenizer compute in that environment.
    The versions pip picks are the newest the ranges allow that day, not the lock's; the full test suite
    runs on the lock only. About a minute here (downloads ~400 MB from the index)."""
    python = _find_python(12)
    if python is None:
        pytest.skip(
            "NO PYTHON 3.12 ON THIS MACHINE (looked on PATH, in ~/.pyenv/versions and /usr): "
            "the install check on a Python other than the tested 3.11 did NOT run"
        )
    # Build from a copy, so setuptools writes its build/ and egg-info there and not into the checkout.
    src = tmp_path / "src"
    shutil.copytree(REPO / "rlvr_jax", src / "rlvr_jax", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "JAX_PLATFORMS": "cpu"}
    venv = tmp_path / "venv"
    vpy = str(venv / "bin" / "python")

    def run(*cmd):
        out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
        return out.stdout

    run(python, "-m", "venv", str(venv))
    run(vpy, "-m", "pip", "install", "-q", f"numpy=={THEIR_NUMPY}", f"matplotlib=={THEIR_MATPLOTLIB}")
    run(vpy, "-m", "pip", "install", "-q", str(src))
    got = json.loads(run(vpy, "-c", _SMOKE).strip().splitlines()[-1])

    assert Path(got["package"]).is_relative_to(venv), got["package"]
    assert (got["numpy"], got["matplotlib"]) == (THEIR_NUMPY, THEIR_MATPLOTLIB), "pip replaced the user's versions"
    assert got["roundtrip"] == "What is 2+3?"
    # GRPO on groups (1, 0), (0, 0), (1, 1): +-1/sqrt(2) (std with ddof 1) where rewards differ, 0 elsewhere.
    assert got["adv"] == pytest.approx([0.7071, -0.7071, 0, 0, 0, 0], abs=1e-3)
    for script in _project()["scripts"]:
        assert (venv / "bin" / script).exists(), f"console script {script} was not installed"
    assert "usage: rlvr-verify" in run(str(venv / "bin" / "rlvr-verify"), "--help")
