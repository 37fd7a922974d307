"""The README stays short and every command it prints runs: each command line of its fenced code blocks is
found by its first word (a console script, `python -m`, `bash FILE`), its `--help` run, its config words
loaded; and every relative link of README.md and docs/*.md points at a file that exists."""

import concurrent.futures
import glob
import os
import re
import shlex
import subprocess
import sys
import tomllib

import pytest

from rlvr_jax.config_args import load_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
MAX_LINES = 200
BIN = os.path.dirname(sys.executable)  # the venv's bin dir: where the console scripts are installed
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
CONFIG_WORD = re.compile(r"^--config=(configs/[^:\s]+\.py)(?::(.*))?$")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _console_scripts() -> set[str]:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return set(tomllib.load(f)["project"]["scripts"])


SCRIPTS = _console_scripts()


def _fenced_blocks(text: str) -> list[list[str]]:
    """The lines of each ``` block, backslash continuations joined."""
    blocks, current = [], None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            if current and current[-1].endswith("\\"):
                current[-1] = current[-1][:-1] + " " + line.strip()
            else:
                current.append(line.strip())
    return blocks


def _command_words(line: str) -> list[str] | None:
    """The words of a command line (leading VAR=value assignments and a trailing # comment dropped), or
    None when the line is not a command the README promises: output, or a shell line of another kind."""
    first = line.split(maxsplit=1)[0] if line.split() else ""
    if not (first.startswith("rlvr-") or first in ("python", "bash") or ENV_ASSIGNMENT.match(first)):
        return None
    words = shlex.split(line, comments=True)
    while words and ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]
    if not words:
        return None
    head = words[0]
    if head.startswith("rlvr-") or head.endswith(".sh") or head == "bash":
        return words
    if head == "python" and words[1:2] == ["-m"]:
        return words
    return None


def _readme_commands() -> list[list[str]]:
    with open(README) as f:
        text = f.read()
    return [w for block in _fenced_blocks(text) for line in block if (w := _command_words(line))]


COMMANDS = _readme_commands()


def _help_argv(words: list[str]) -> list[str] | None:
    """`<the command's words up to its first flag> --help`, for console scripts and `python -m`."""
    if words[0] == "python":
        head, rest = words[:3], words[3:]  # python -m MODULE
    elif words[0].startswith("rlvr-"):
        head, rest = words[:1], words[1:]
    else:
        return None
    for w in rest:
        if w.startswith("-"):
            break
        head.append(w)
    return [*head, "--help"]


HELPS = sorted({tuple(a) for w in COMMANDS if (a := _help_argv(w))})


def test_readme_is_short():
    with open(README) as f:
        n = len(f.read().splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines; move details to docs/ (limit {MAX_LINES})"


def test_readme_opens_with_the_two_commands():
    with open(README) as f:
        first = _fenced_blocks(f.read())[0]
    assert [shlex.split(line, comments=True) for line in first] == [
        ["bash", "scripts/main.sh"],
        ["bash", "scripts/test.sh"],
    ]


def test_every_console_script_is_in_the_readme():
    shown = {w[0] for w in COMMANDS}
    assert SCRIPTS <= shown, f"console scripts without a command line in README.md: {sorted(SCRIPTS - shown)}"
    unknown = {w[0] for w in COMMANDS if w[0].startswith("rlvr-")} - SCRIPTS
    assert not unknown, f"README.md commands that pyproject.toml does not install: {sorted(unknown)}"


@pytest.fixture(scope="module")
def help_results():
    """Every distinct `--help` in one pool: each one imports jax (~2 s), so they overlap."""
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""))

    def run(argv):
        return subprocess.run(list(argv), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return dict(zip(HELPS, pool.map(run, HELPS)))


@pytest.mark.parametrize("argv", HELPS, ids=[" ".join(a) for a in HELPS])
def test_readme_command_help_runs(argv, help_results):
    r = help_results[argv]
    assert r.returncode == 0, f"{' '.join(argv)} exited {r.returncode}:\n{r.stderr[-2000:]}"
    assert r.stdout.strip(), f"{' '.join(argv)} printed no help"


@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(w[:3]) for w in COMMANDS])
def test_readme_command_files_and_configs_exist(words):
    if words[0] == "bash":
        assert os.path.isfile(os.path.join(REPO, words[1])), f"{words[1]} is not a file"
    elif words[0].endswith(".sh"):
        assert os.path.isfile(os.path.join(REPO, words[0])), f"{words[0]} is not a file"
    for i, w in enumerate(words):
        if w == "--config" and i + 1 < len(words) and words[i + 1].startswith("configs/"):
            w = "--config=" + words[i + 1]
        m = CONFIG_WORD.match(w)
        if m:
            path, arg = m.group(1), m.group(2) or ""
            assert os.path.isfile(os.path.join(REPO, path)), f"{path} is not a file"
            config = load_config_file(os.path.join(REPO, path)).get_config(arg)
            assert len(config.keys()) > 0, f"{path}:{arg} gave an empty config"


def test_readme_has_commands():
    assert len(COMMANDS) >= len(SCRIPTS) + 2 and len(HELPS) >= len(SCRIPTS)


def _links(path: str) -> list[str]:
    """Relative link targets of a Markdown file, outside code blocks and code spans."""
    with open(path) as f:
        text = f.read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = [t.split("#", 1)[0] for t in LINK.findall(text)]
    return [t for t in targets if t and not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


DOC_FILES = [README, *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]


@pytest.mark.parametrize("doc", DOC_FILES, ids=[os.path.relpath(d, REPO) for d in DOC_FILES])
def test_relative_links_resolve(doc):
    base = os.path.dirname(doc)
    missing = [t for t in _links(doc) if not os.path.exists(os.path.normpath(os.path.join(base, t)))]
    assert not missing, f"{os.path.relpath(doc, REPO)} links to missing files: {missing}"
