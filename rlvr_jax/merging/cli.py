"""`rlvr-merge`: merge RL experts around their anchor, from Orbax or Hugging Face checkpoints.

Checkpoints are restored straight into their shardings on the local mesh, merged tensor by tensor
under jit (inputs freed as they are consumed) and written sharded. A recipe file
(`--config=configs/merge.py:ties`, `--config.a.b=value` overrides, ml-collections as in rlvr-train)
carries per-expert weights; explicit flags override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import jax

from rlvr_jax import checkpoint, cli, sharding, storage
from rlvr_jax.merging import methods as merge
from rlvr_jax.model import params_io

# flag -> method keyword; flags left unset are not passed, so each method keeps its own default
_OPTION_FLAGS = {
    "scale": "scale",
    "density": "density",
    "trim_scope": "trim_scope",
    "drop_rate": "drop_rate",
    "seed": "seed",
    "t": "t",
    "gamma": "gamma",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlvr-merge",
        description="Merge single-domain RL experts around their anchor (task vectors in fp32).",
        epilog="examples:\n  rlvr-merge --anchor ckpt/sft --experts ckpt/rl-math,ckpt/rl-code "
        "--method ties --density 0.2 --out ckpt/ties\n"
        "  rlvr-merge --config=configs/merge.py:ties --config.anchor=ckpt/sft "
        "--config.experts.math.path=ckpt/rl-math ... --out ckpt/ties",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cli.add_config_flag(p, example="configs/merge.py:ties")
    p.add_argument("--anchor", help="anchor checkpoint (HF directory or Orbax)")
    p.add_argument("--experts", help="comma-separated expert checkpoints, each PATH or NAME=PATH")
    p.add_argument("--method", choices=sorted(merge.MERGE_METHODS))
    p.add_argument("--weights", help="comma-separated per-expert weights")
    p.add_argument("--scale", type=float, help="lambda: multiplier of the merged task vector")
    p.add_argument("--density", type=float, help="fraction of entries kept (ties, breadcrumbs, sce)")
    p.add_argument(
        "--trim-scope",
        dest="trim_scope",
        choices=["global", "tensor"],
        help="TIES/breadcrumbs threshold over the whole model (study) or per tensor (mergekit)",
    )
    p.add_argument("--drop-rate", dest="drop_rate", type=float, help="DARE drop probability")
    p.add_argument("--seed", type=int, help="DARE seed")
    p.add_argument("--t", type=float, help="SLERP interpolation factor (0 = first model)")
    p.add_argument("--gamma", type=float, help="breadcrumbs: fraction of largest |tau| dropped")
    p.add_argument("--out", help="output directory")
    p.add_argument("--format", choices=["orbax", "hf"], help="output format (default orbax)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="output dtype (default: the anchor's)")
    p.add_argument("--mesh", help="data,fsdp,tensor sizes of the local mesh (default 1,-1,1)")
    return p


def resolve(args, config=None) -> dict:
    """One recipe dict from the config (if any) and the flags (which win)."""
    r = {
        "anchor": None,
        "experts": [],
        "method": None,
        "options": {},
        "weights": None,
        "out": None,
        "format": "orbax",
        "dtype": None,
        "mesh": "1,-1,1",
    }
    if config is not None:
        c = config
        r.update(
            anchor=c.anchor or None,
            method=c.method,
            options=dict(c.get("options", {})),
            out=c.get("out") or None,
            format=c.get("format", "orbax"),
            dtype=c.get("dtype") or None,
            mesh=c.get("mesh", "1,-1,1"),
        )
        experts = [(n, e["path"], float(e.get("weight", 1.0))) for n, e in c.experts.items()]
        r["experts"] = [(n, p) for n, p, _ in experts]
        if any(w != 1.0 for *_, w in experts):
            r["weights"] = [w for *_, w in experts]
    if args.experts:
        r["experts"] = [
            tuple(e.split("=", 1)) if "=" in e else (os.path.basename(os.path.normpath(e)), e)
            for e in args.experts.split(",")
        ]
    if args.weights:
        r["weights"] = [float(w) for w in args.weights.split(",")]
    for flag in ("anchor", "method", "out", "format", "dtype", "mesh"):
        if getattr(args, flag) is not None:
            r[flag] = getattr(args, flag)
    for flag, kw in _OPTION_FLAGS.items():
        if getattr(args, flag) is not None:
            r["options"][kw] = getattr(args, flag)
    return r


def check_recipe(r: dict) -> None:
    """Fail before loading anything: missing paths, unknown options, weights of the wrong length."""
    for field in ("anchor", "method", "out"):
        if not r[field]:
            raise ValueError(f"--{field} is required (or set it in the --config recipe)")
    missing = [n for n, p in r["experts"] if not p]
    if not r["experts"] or missing:
        raise ValueError(f"expert paths missing: {missing or 'none given'}")
    allowed = merge.method_options(r["method"])
    for k in list(r["options"]) + (["weights"] if r["weights"] is not None else []):
        if k not in allowed:
            raise ValueError(
                f"option {k!r} does not apply to method {r['method']!r} "
                f"(it takes {sorted(allowed - {'out_dtype', 'consume', 'names'})})"
            )
    if r["weights"] is not None and len(r["weights"]) != len(r["experts"]):
        raise ValueError(f"{len(r['weights'])} weights for {len(r['experts'])} experts")


def _arch(cfg) -> dict:
    d = dataclasses.asdict(cfg)
    for k in ("param_dtype", "compute_dtype", "remat"):  # storage and training choices, not the architecture
        d.pop(k, None)
    return d


def run(r: dict, *, log=print) -> dict:
    """Load, validate, merge and write; returns the timings (s) and the recipe as written."""
    check_recipe(r)
    mesh = sharding.make_mesh(sharding.MeshShape.parse(r["mesh"]))
    t0 = time.perf_counter()
    cfg, _, anchor = params_io.load_params_any(r["anchor"], mesh)
    experts = []
    for name, path in r["experts"]:
        e_cfg, _, params = params_io.load_params_any(path, mesh)
        for k, v in _arch(cfg).items():
            if _arch(e_cfg)[k] != v:
                raise merge.MergeError(f"{name}: architecture field {k!r} is {_arch(e_cfg)[k]!r}, anchor {v!r}")
        experts.append(params)
    jax.block_until_ready((anchor, experts))
    t1 = time.perf_counter()
    kw = dict(r["options"])
    if r["weights"] is not None:
        kw["weights"] = r["weights"]
    merged = merge.MERGE_METHODS[r["method"]](
        anchor, experts, out_dtype=r["dtype"], consume=True, names=[n for n, _ in r["experts"]], **kw
    )
    jax.block_until_ready(merged)
    t2 = time.perf_counter()
    out_cfg = dataclasses.replace(cfg, param_dtype=r["dtype"]) if r["dtype"] else cfg
    recipe = {k: r[k] for k in ("anchor", "experts", "method", "options", "weights", "dtype")}
    params_io.save_params_any(
        merged,
        out_cfg,
        r["out"],
        r["format"],
        source_dir=checkpoint.tokenizer_dir_of(r["anchor"]),
        **({"extra_meta": {"merge": recipe}} if r["format"] == "orbax" else {}),
    )
    if storage.is_writer():
        storage.write_json(storage.join(r["out"], "merge_recipe.json"), recipe, indent=2)
    t3 = time.perf_counter()
    times = {"load_s": t1 - t0, "merge_s": t2 - t1, "save_s": t3 - t2}
    log(
        f"merged {len(experts)} experts with {r['method']} into {r['out']} ({r['format']}): "
        + ", ".join(f"{k} {v:.2f}" for k, v in times.items())
    )
    return {"times": times, "recipe": recipe}


def main(argv=None) -> int:
    def run_recipe(config, args) -> None:
        run(resolve(args, config), log=lambda s: print(s, file=sys.stderr))

    # MergeError is a ValueError
    return cli.run_command(build_parser(), argv, run_recipe, config=True, errors=(ValueError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
