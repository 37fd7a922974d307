"""Where an experiment keeps its things: the model table (every model the study evaluates, by name),
the domains and merge methods of a config, each stage's finished marker and evaluation files. Shared
by the experiment's stages and its report."""

from __future__ import annotations

import json
import os

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


def anchor_path(config, workdir: str) -> str:
    return config.anchor or os.path.join(workdir, "sft", "anchor")


def model_table(config, workdir: str) -> dict[str, dict]:
    """name -> {label, kind, path} for every evaluated model, in report order."""
    out = {"sft": {"label": "SFT", "kind": "anchor", "path": anchor_path(config, workdir)}}
    for d in domains_of(config):
        out[f"rl_{d}"] = {
            "label": f"RL-{DOMAIN_LABELS.get(d, d)}",
            "kind": "expert",
            "domain": d,
            "path": os.path.join(workdir, f"rl_{d}", "checkpoints"),
        }
    for m in merge_methods_of(config):
        out[f"merge_{m}"] = {
            "label": f"{MERGE_LABELS.get(m, m)} merge",
            "kind": "merge",
            "method": m,
            "path": os.path.join(workdir, f"merge_{m}", "model"),
        }
    out["opd"] = {"label": "MT-OPD", "kind": "opd", "path": os.path.join(workdir, "opd", "checkpoints")}
    out["multi"] = {"label": "RL-Multi", "kind": "multi", "path": os.path.join(workdir, "multi", "checkpoints")}
    return out


def load_eval(workdir: str, names) -> dict[str, dict]:
    out = {}
    for n in names:
        with open(os.path.join(workdir, "eval", f"{n}.json")) as f:
            out[n] = json.load(f)
    return out


def stage_done(workdir: str, name: str) -> dict | None:
    path = os.path.join(workdir, name, "DONE.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)
