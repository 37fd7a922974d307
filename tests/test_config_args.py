"""Config-file arguments: every config file accepts each argument it documents and rejects any other word
by name (directly and through the commands), config files load without touching sys.path, `--config.a.b`
overrides reach an in-process command, and every command's --help exits 0."""

import importlib
import os
import sys

import pytest

from rlvr_jax import cli
from rlvr_jax.config_args import ConfigArgError, load_config_file, load_config_module, parse_arg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOMAINS = ("math", "code", "science", "if", "multi")
METHODS = (
    "average",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_task_arithmetic",
    "sce",
    "breadcrumbs",
    "model_stock",
)
# config file -> the arguments its docstring documents ("" = none given)
DOCUMENTED = {
    "grpo": ["", *DOMAINS, *(f"{d},tiny" for d in DOMAINS)],
    "default": ["", "tiny"],
    "merge": ["", *METHODS],
    "opd": ["", "tiny"],
    "mix_vs_merge": ["", "tiny"],
}
TYPOS = {
    "grpo": ["multi,tyni", "mutli", "multi,tiny,extra", "math,code", "tiny", "multi,tiny,tiny"],
    "default": ["tyni", "tiny,multi"],
    "merge": ["tie", "ties,average", "ties,tiny"],
    "opd": ["tyni", "tiny,math"],
    "mix_vs_merge": ["tyni", "full"],
}


def _load(name):
    return load_config_file(os.path.join(REPO, "configs", f"{name}.py"))


def test_every_config_file_is_covered():
    names = {f[:-3] for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".py")}
    assert names == set(DOCUMENTED) == set(TYPOS)


@pytest.mark.parametrize("name,arg", [(n, a) for n, args in DOCUMENTED.items() for a in args])
def test_config_accepts_documented_argument(name, arg):
    c = _load(name).get_config(arg)
    assert c is not None and len(c.keys()) > 0


@pytest.mark.parametrize("name,arg", [(n, a) for n, args in TYPOS.items() for a in args])
def test_config_rejects_unknown_or_conflicting_words(name, arg):
    with pytest.raises(ConfigArgError) as e:
        _load(name).get_config(arg)
    msg = str(e.value)
    assert f"{name}.py" in msg and ("allowed" in msg or "twice" in msg), msg


def test_tiny_and_domain_reach_the_config():
    grpo = _load("grpo")
    assert grpo.get_config("multi,tiny").model.preset == "tiny"
    assert grpo.get_config("tiny,multi").model.preset == "tiny"  # word order is free
    assert grpo.get_config("multi").model.preset == "qwen3-4b"
    assert grpo.get_config("").data.domains == "math,code,science,if"
    assert grpo.get_config("code,tiny").data.domains == "code"
    assert _load("default").get_config().model.preset == "tiny"  # the built-in default is the laptop run
    assert _load("default").get_config("tiny").rollout.prompts_per_step == 32
    assert _load("opd").get_config("tiny").model.preset == "tiny"
    assert _load("opd").get_config().model.preset == "qwen3-4b"
    assert _load("mix_vs_merge").get_config("tiny").base.model.preset == "tiny"
    assert _load("merge").get_config().method == "ties"
    assert _load("merge").get_config("sce").options.density == 1.0


def test_parse_arg_result_and_messages():
    a = parse_arg(" code , tiny ", file="configs/x.py", choices={"domain": DOMAINS}, flags=("tiny", "fast"))
    assert (a.domain, a.tiny, a.fast, a.words) == ("code", True, False, ("code", "tiny"))
    with pytest.raises(AttributeError):
        a.tyni
    assert parse_arg(None, file="x.py", choices={"domain": DOMAINS}, default="math").domain == "math"
    assert parse_arg("", file="x.py", flags=("tiny",)).tiny is False
    with pytest.raises(ConfigArgError, match=r"x\.py: unknown word 'tyni' in ':multi,tyni'; allowed: .*multi.*tiny"):
        parse_arg("multi,tyni", file="x.py", choices={"domain": DOMAINS}, flags=("tiny",))
    with pytest.raises(ConfigArgError, match="names no domain"):
        parse_arg("tiny", file="x.py", choices={"domain": DOMAINS}, flags=("tiny",))
    with pytest.raises(ConfigArgError, match="two of domain"):
        parse_arg("math,if", file="x.py", choices={"domain": DOMAINS})
    with pytest.raises(TypeError):  # a word in two groups is the config file's own mistake
        parse_arg("", file="x.py", choices={"a": ("x",), "b": ("x",)})


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_configs_load_without_sys_path_changes(name):
    path, modules = list(sys.path), set(sys.modules)
    mod = _load(name)
    mod.get_config(DOCUMENTED[name][-1])
    assert sys.path == path
    assert not {m for m in set(sys.modules) - modules if m in DOCUMENTED}  # no bare `grpo` / `merge` module
    src = open(os.path.join(REPO, "configs", f"{name}.py")).read()
    assert "sys.path" not in src


def test_sibling_config_is_the_file_beside():
    grpo = load_config_module(os.path.join(REPO, "configs", "opd.py"), "grpo")
    assert grpo.__file__ == os.path.join(REPO, "configs", "grpo.py") and hasattr(grpo, "DOMAINS")


def test_run_entry_names_the_unknown_word(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    ran = []
    rc = cli.run_entry(
        ["--config=configs/grpo.py:multi,tyni", "--workdir=unused"],
        prog="rlvr-train",
        description="",
        run=lambda c, w: ran.append(c),
    )
    err = capsys.readouterr().err
    assert rc == 2 and not ran
    assert err.startswith("rlvr-train: error: configs/grpo.py: unknown word 'tyni' in ':multi,tyni'; allowed: "), err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "module,spec",
    [
        ("rlvr_jax.rl.train", "configs/grpo.py:multi,tyni"),
        ("rlvr_jax.rl.sft", "configs/grpo.py:multi,tyni"),
        ("rlvr_jax.study.experiment", "configs/mix_vs_merge.py:tyni"),
        ("rlvr_jax.merging.cli", "configs/merge.py:tyes"),
    ],
)
def test_every_config_command_refuses_a_typo(module, spec, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(REPO)
    rc = importlib.import_module(module).main([f"--config={spec}", f"--workdir={tmp_path}"])
    err = capsys.readouterr().err
    word = spec.rsplit(",", 1)[-1].rsplit(":", 1)[-1]
    assert rc != 0 and f"unknown word '{word}'" in err and spec.split(":")[0] in err, err
    assert not os.listdir(tmp_path)


def test_overrides_reach_an_in_process_command(monkeypatch):
    # ml-collections reads overrides from sys.argv unless told otherwise; the argv given must win
    monkeypatch.chdir(REPO)
    got = []
    rc = cli.run_entry(
        ["--config=configs/grpo.py:math,tiny", "--config.train.steps=7", "--workdir=w"],
        prog="rlvr-train",
        description="",
        run=lambda c, w: got.append((c.train.steps, c.data.domains, w)),
    )
    assert rc == 0 and got == [(7, "math", "w")]


@pytest.mark.parametrize("field", ["rollout.rows_per_chunk", "train.stepz"])
def test_an_override_of_a_missing_field_is_refused_by_name(field, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    ran = []
    rc = cli.run_entry(
        ["--config=configs/grpo.py:math,tiny", f"--config.{field}=8", "--workdir=w"],
        prog="rlvr-train",
        description="",
        run=lambda c, w: ran.append(c),
    )
    err = capsys.readouterr().err
    assert rc == 2 and not ran and "Traceback" not in err
    assert err.startswith(f"rlvr-train: error: --config.{field}: the config has no field '{field}'"), err
    if field == "rollout.rows_per_chunk":  # retired: the message names what replaced it
        assert "rollout.num_slots" in err and "rollout.num_pages" in err


def test_a_config_file_setting_a_retired_field_is_refused():
    from rlvr_jax.rl import train

    c = _load("grpo").get_config("math,tiny")
    c.rollout.rows_per_chunk = 256  # as a config file written for the static sampler would
    with pytest.raises(train.ConfigError, match="rollout.rows_per_chunk: retired .* rollout.num_slots"):
        train.validate(c, 8)


COMMANDS = [
    "rlvr_jax.rl.train",
    "rlvr_jax.rl.sft",
    "rlvr_jax.rollout.generate",
    "rlvr_jax.verifiers.cli",
    "rlvr_jax.merging.cli",
    "rlvr_jax.eval.evaluate",
    "rlvr_jax.eval.analysis_cli",
    "rlvr_jax.study.experiment",
    "rlvr_jax.model.convert",
    "rlvr_jax.data.cli",
    "rlvr_jax.plan.cli",
    "rlvr_jax.launch.pod",
]


def test_every_console_script_is_listed_and_takes_the_one_argument_path():
    """pyproject's console scripts are exactly COMMANDS, and each `main` hands its parser to
    cli.run_command (or cli.run_entry for the config-plus-workdir commands): one way to parse, to print
    `--help` and to report a usage error."""
    import ast
    import tomllib

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert sorted(v.split(":")[0] for v in scripts.values()) == sorted(COMMANDS)
    for target in scripts.values():
        module, func = target.split(":")
        tree = ast.parse(open(importlib.import_module(module).__file__).read())
        main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == func)
        calls = {
            n.func.attr
            for n in ast.walk(main)
            if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and isinstance(n.func.value, ast.Name)
            and n.func.value.id == "cli"
        }
        assert calls & {"run_command", "run_entry"}, f"{target} parses its command line its own way"


@pytest.mark.parametrize("module", COMMANDS)
def test_every_command_help_exits_zero(module, capsys):
    try:
        rc = importlib.import_module(module).main(["--help"])
    except SystemExit as e:  # argparse exits from --help
        rc = e.code
    assert rc in (0, None)
    assert "--" in capsys.readouterr().out  # it printed the options
