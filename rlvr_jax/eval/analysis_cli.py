"""`rlvr-analyze`: update footprints, Jaccard overlaps, projected task-vector cosines (whole model
and per layer) and gain consistency for checkpoints around an anchor; writes JSON and PNG heatmaps.

Gains file (optional, JSON): {"anchor": {item: score}, "experts": {name: {item: score}},
"models": {name: {item: score}}}; scores are per-item correctness (e.g. Avg@K) in [0, 1].
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

from rlvr_jax import cli, sharding, storage
from rlvr_jax.eval import analysis
from rlvr_jax.model import params_io


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlvr-analyze", description=__doc__.split("\n\n")[0])
    p.add_argument("--anchor", help="anchor checkpoint (HF directory or Orbax)")
    p.add_argument("--models", help="comma-separated NAME=PATH checkpoints (experts, merges, multi-task)")
    p.add_argument("--gains", help="per-item results JSON for gain consistency")
    p.add_argument("--out", required=True, help="output directory for analysis.json and the heatmaps")
    p.add_argument("--dim", type=int, default=analysis.PROJ_DIM, help="random projection dimensions")
    p.add_argument("--seed", type=int, default=0, help="projection seed (shared by all models)")
    p.add_argument("--rel-tol", type=float, default=analysis.REL_TOL, help="footprint relative threshold")
    p.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor sizes of the local mesh")
    return p


def weight_space(anchor, models: dict, *, dim, seed, rel_tol) -> dict:
    """Footprints, pairwise overlaps and cosines of `models` ({name: params}) around `anchor`."""
    names = list(models)
    fp = {n: analysis.footprint(anchor, models[n], rel_tol) for n in names}
    M = len(names)
    jac, base = np.eye(M), np.eye(M)
    for i in range(M):
        for j in range(i + 1, M):
            o = analysis.overlap(anchor, models[names[i]], models[names[j]], rel_tol)
            jac[i, j] = jac[j, i] = o["jaccard"]
            base[i, j] = base[j, i] = o["random_baseline"]
    cos = analysis.task_vector_cosines(anchor, [models[n] for n in names], dim=dim, seed=seed)
    return {
        "names": names,
        "footprint": fp,
        "overlap": {"jaccard": jac.tolist(), "random_baseline": base.tolist()},
        "cosine": {
            "dim": dim,
            "seed": seed,
            "whole": cos["whole"].tolist(),
            "per_layer": {k: v.tolist() for k, v in cos["per_layer"].items()},
        },
    }


def gains_report(gains: dict) -> dict:
    """Gain consistency of every model and expert in a gains file (None where undefined)."""
    items = list(gains["anchor"])

    def vec(scores, who):
        missing = [i for i in items if i not in scores]
        if missing:
            raise ValueError(f"gains: {who} has no score for item {missing[0]!r}")
        return [float(scores[i]) for i in items]

    anchor = vec(gains["anchor"], "anchor")
    experts = [vec(s, f"expert {n}") for n, s in gains["experts"].items()]
    out = {}
    for group in ("models", "experts"):
        for n, s in gains.get(group, {}).items():
            g = analysis.gain_consistency(anchor, vec(s, n), experts)
            out[n] = None if math.isnan(g) else g
    return out


def heatmap(mat, xlabels, ylabels, title, path, fmt="{:.2f}", extra=None):
    """One annotated heatmap PNG (extra: a second matrix shown in brackets, e.g. the random baseline)."""
    import matplotlib  # local: heavy; only the figures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # local: after matplotlib.use('Agg')

    mat = np.asarray(mat, float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(xlabels), 1.0 + 0.6 * len(ylabels)))
    im = ax.imshow(mat, cmap="viridis", vmin=min(0.0, np.nanmin(mat)), vmax=1.0)
    ax.set_xticks(range(len(xlabels)), xlabels, rotation=45, ha="right")
    ax.set_yticks(range(len(ylabels)), ylabels)
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            s = fmt.format(mat[i, j]) + ("" if extra is None else "\n(" + fmt.format(extra[i][j]) + ")")
            ax.text(j, i, s, ha="center", va="center", color="w", fontsize=7)
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(report: dict, out: str) -> None:
    """analysis.json plus overlap.png, cosine.png and cosine_per_layer.png."""
    with storage.staged_dir(out, upload=storage.is_writer()) as local:  # gs://: written here, uploaded
        _write_local(report, local)


def _write_local(report: dict, out: str) -> None:
    storage.write_json(os.path.join(out, "analysis.json"), report, indent=2)
    if "names" not in report:
        return
    names = report["names"]
    heatmap(
        report["overlap"]["jaccard"],
        names,
        names,
        "changed-entry Jaccard (random baseline)",
        os.path.join(out, "overlap.png"),
        extra=report["overlap"]["random_baseline"],
    )
    heatmap(
        report["cosine"]["whole"],
        names,
        names,
        f"task-vector cosine ({report['cosine']['dim']}-d projection)",
        os.path.join(out, "cosine.png"),
    )
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    if pairs:
        layers = list(report["cosine"]["per_layer"])
        mat = [[report["cosine"]["per_layer"][k][i][j] for k in layers] for i, j in pairs]
        heatmap(
            mat,
            layers,
            [f"{names[i]}-{names[j]}" for i, j in pairs],
            "task-vector cosine per layer",
            os.path.join(out, "cosine_per_layer.png"),
        )


def main(argv=None) -> int:
    return cli.run_command(build_parser(), argv, run, errors=(ValueError, FileNotFoundError, KeyError))


def run(args) -> int:
    report = {}
    if args.models:
        if not args.anchor:
            raise cli.UsageError("--models needs --anchor")
        mesh = sharding.make_mesh(sharding.MeshShape.parse(args.mesh))
        _, _, anchor = params_io.load_params_any(args.anchor, mesh)
        models = {}
        for spec in args.models.split(","):
            name, _, path = spec.rpartition("=")
            models[name or os.path.basename(os.path.normpath(path))] = params_io.load_params_any(path, mesh)[2]
        report = {
            "anchor": args.anchor,
            **weight_space(anchor, models, dim=args.dim, seed=args.seed, rel_tol=args.rel_tol),
        }
    if args.gains:
        report["gain_consistency"] = gains_report(storage.read_json(args.gains))
    if not report:
        raise cli.UsageError("nothing to do: give --anchor and --models, and/or --gains")
    write(report, args.out)
    print(f"wrote {os.path.join(args.out, 'analysis.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
