"""Where an experiment keeps its things: the model table (every model the study evaluates, by name),
the domains, merge methods and RL seeds of a config, and the evaluation files (pooled over seeds).
Shared by the experiment's stages and its report; each stage's DONE.json is the runner's (runner.py).

Seeds: the main seed (`config.seed`) names its stages and models plainly (rl_math, merge_ties, ...), so a
single-seed workdir keeps the layout it always had; another seed n appends `_seed<n>` (rl_math_seed1, ...).
The SFT anchor is one model shared by every seed."""

from __future__ import annotations

import os

from rlvr_jax import storage
from rlvr_jax.study import stats

DOMAIN_LABELS = {"math": "Math", "code": "Code", "science": "Sci", "if": "IF"}
MERGE_LABELS = {
    "average": "Average",
    "task_arithmetic": "TA",
    "ties": "TIES",
    "dare_ties": "TIES+DARE",
    "dare_task_arithmetic": "TA+DARE",
    "sce": "SCE",
    "breadcrumbs": "Breadcrumbs",
    "model_stock": "Model stock",
    "slerp": "SLERP",
}


def domains_of(config) -> list[str]:
    return [d for d in config.domains.split(",") if d]


def merge_methods_of(config) -> list[str]:
    return [m for m in config.merge.methods.split(",") if m]


def seeds_of(config) -> list[int]:
    """The RL seeds, main seed first: `config.seeds` ("0,1,2"), or just `config.seed` when it is empty."""
    return [int(s) for s in config.seeds.split(",") if s.strip()] or [config.seed]


def eval_items_of(config) -> dict[str, int]:
    """domain -> held-out items each model is evaluated on: `eval.items_by_domain` ("math=2000,if=300") for the
    domains it names, `eval.items_per_domain` for the others (0: all). Raises ValueError on a malformed entry
    or a domain the experiment does not train."""
    items = {d: config.eval.items_per_domain for d in domains_of(config)}
    for entry in filter(None, (e.strip() for e in config.eval.get("items_by_domain", "").split(","))):
        dom, eq, n = entry.partition("=")
        if not eq or not n.strip().isdigit():
            raise ValueError(f"eval.items_by_domain: {entry!r} is not DOMAIN=N")
        if dom.strip() not in items:
            raise ValueError(f"eval.items_by_domain: {dom.strip()!r} is not one of the domains {list(items)}")
        items[dom.strip()] = int(n)
    return items


def suffix(config, seed: int) -> str:
    """What a seed's stage and model names end with: nothing for `config.seed`, else `_seed<n>`."""
    return "" if seed == config.seed else f"_seed{seed}"


def anchor_path(config, workdir: str) -> str:
    return config.anchor or os.path.join(workdir, "sft", "anchor")


def model_table(config, workdir: str, seed: int | None = None) -> dict[str, dict]:
    """name -> {label, kind, path} for every evaluated model of one seed (the main seed by default), in
    report order. Names are the same for every seed; paths carry the seed's suffix."""
    sfx = suffix(config, seeds_of(config)[0] if seed is None else seed)
    out = {"sft": {"label": "SFT", "kind": "anchor", "path": anchor_path(config, workdir)}}
    for d in domains_of(config):
        out[f"rl_{d}"] = {
            "label": f"RL-{DOMAIN_LABELS.get(d, d)}",
            "kind": "expert",
            "domain": d,
            "path": os.path.join(workdir, f"rl_{d}{sfx}", "checkpoints"),
        }
    for m in merge_methods_of(config):
        out[f"merge_{m}"] = {
            "label": f"{MERGE_LABELS.get(m, m)} merge",
            "kind": "merge",
            "method": m,
            "path": os.path.join(workdir, f"merge_{m}{sfx}", "model"),
        }
    out["opd"] = {"label": "MT-OPD", "kind": "opd", "path": os.path.join(workdir, f"opd{sfx}", "checkpoints")}
    out["multi"] = {"label": "RL-Multi", "kind": "multi", "path": os.path.join(workdir, f"multi{sfx}", "checkpoints")}
    if config.multi_adaptive:
        out["multi_adaptive"] = {
            "label": "RL-Multi-Adaptive",
            "kind": "multi_adaptive",
            "path": os.path.join(workdir, f"multi_adaptive{sfx}", "checkpoints"),
        }
    return out


def runs_of(config, workdir: str) -> dict[str, dict]:
    """run name -> model entry plus {model, seed} for every trained model of every seed and the anchor
    (once): what the eval stage evaluates, one eval/<run>.json each."""
    out = {}
    for seed in seeds_of(config):
        for name, m in model_table(config, workdir, seed).items():
            run = name if name == "sft" else name + suffix(config, seed)
            out.setdefault(run, dict(m, model=name, seed=config.seed if name == "sft" else seed))
    return out


def load_eval(workdir: str, names) -> dict[str, dict]:
    out = {}
    for n in names:
        out[n] = storage.read_json(storage.join(workdir, "eval", f"{n}.json"))
    return out


def pooled_evals(config, workdir: str) -> dict[str, dict]:
    """model -> its evaluation pooled over the seeds (stats.pool_seeds; with one seed, eval/<model>.json
    as it is)."""
    runs = runs_of(config, workdir)
    evals = load_eval(workdir, runs)
    return {
        name: stats.pool_seeds([evals[r] for r, m in runs.items() if m["model"] == name])
        for name in model_table(config, workdir)
    }
