"""`rlvr-analyze`: update footprints, Jaccard overlaps, projected task-vector cosines (whole model
and per layer) and gain consistency for checkpoints around an anchor, and self-verification (each model
judging its own samples); writes JSON and PNG heatmaps.

Gains file (optional, JSON): {"anchor": {item: score}, "experts": {name: {item: score}},
"models": {name: {item: score}}}; scores are per-item correctness (e.g. Avg@K) in [0, 1].

Self-verification: `rlvr-analyze --self-verify --models rl=PATH[,...] [--anchor PATH] --data builtin
--items-per-domain 32 --samples 2 --out DIR` writes analysis.json's `self_verification` as the study does.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

from rlvr_jax import cli, sharding, storage
from rlvr_jax.data import loading
from rlvr_jax.data.prompts import PromptConfig, render_prompt
from rlvr_jax.eval import analysis
from rlvr_jax.eval import self_verification as sv
from rlvr_jax.eval.evaluate import first_per_domain
from rlvr_jax.model import build, params_io
from rlvr_jax.rollout import generate
from rlvr_jax.verifiers.base import verifier_config
from rlvr_jax.verifiers.cli import add_reward_rule_args
from rlvr_jax.verifiers.pool import VerifierPool


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
    add_self_verify_args(p)
    return p


def add_self_verify_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "self-verification",
        "each of --models (and --anchor, named 'anchor') samples answers to each domain's eval items, the "
        "verifier scores them, and the model judges each of its own answers greedily, seeing the final answer "
        "(outcome) or the whole response (process)",
    )
    d = sv.JudgeSettings()
    g.add_argument("--self-verify", action="store_true", help="run self-verification on the models")
    g.add_argument("--tokenizer", default="", help="tokenizer dir or 'builtin' (default: the first checkpoint's)")
    g.add_argument("--data", default="builtin", help="'builtin' (held-out split) or comma-separated JSONL files")
    g.add_argument("--domains", default="math,code,science,if")
    g.add_argument("--items-per-domain", type=int, default=0, help="the first N eval items of each domain; 0 = all")
    g.add_argument("--samples", type=int, default=d.samples, help="judged samples per item")
    g.add_argument("--temperature", type=float, default=d.temperature, help="of the samples (the judge is greedy)")
    g.add_argument("--max-new-tokens", type=int, default=96, help="tokens per sample")
    g.add_argument("--judge-max-new-tokens", type=int, default=d.judge_max_new_tokens, help="tokens per verdict")
    g.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=True, help="the samples' format")
    g.add_argument("--judge-thinking", action=argparse.BooleanOptionalAction, default=d.judge_thinking)
    g.add_argument("--outcome-template", default=d.outcome_template, help="fields {question} and {answer}")
    g.add_argument("--process-template", default=d.process_template, help="fields {question} and {response}")
    g.add_argument("--sample-seed", type=int, default=0, help="seed of the sampled answers")
    g.add_argument("--batch-prompts", type=int, default=d.batch_prompts, help="items per sampling call")
    g.add_argument("--workers", type=int, default=0, help="verifier processes (0 = one per core)")
    add_reward_rule_args(p, if_mode="official")  # scored as rlvr-eval scores
    generate.add_engine_args(p)


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


def self_verification_report(args, checkpoints: dict[str, str], mesh) -> dict:
    """analysis.json's `self_verification` for `checkpoints` ({name: path}) under the parsed flags."""
    settings = sv.JudgeSettings(
        samples=args.samples,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        judge_max_new_tokens=args.judge_max_new_tokens,
        judge_thinking=args.judge_thinking,
        outcome_template=args.outcome_template,
        process_template=args.process_template,
        seed=args.sample_seed,
        batch_prompts=args.batch_prompts,
    )
    tokenizer = build.load_tokenizer(args.tokenizer, next(iter(checkpoints.values())))
    n = args.items_per_domain
    records = loading.load_records(args.data, "eval", tuple(args.domains.split(",")), n, builtin_up_to=True)
    records = first_per_domain(records, n) if n else records
    prompt_config = PromptConfig(thinking=args.thinking)
    longest = max((len(tokenizer.encode(render_prompt(r, tokenizer, prompt_config))) for r in records), default=1)
    # a judge prompt: the question, the template and the whole response (re-encoded, with some slack)
    judge = longest + args.max_new_tokens + len(tokenizer.encode(settings.process_template)) + 64
    B = args.batch_prompts * args.samples
    need = max(
        generate.request_pages([longest] * args.batch_prompts, args.samples, args.max_new_tokens, args.page_size),
        generate.request_pages([judge] * 2 * B, 1, args.judge_max_new_tokens, args.page_size),
    )
    report, engine = {}, None
    with VerifierPool(args.workers or None, config=verifier_config(args, thinking=args.thinking)) as pool:
        for name, path in checkpoints.items():
            cfg, graphdef, params = params_io.load_params_any(path, mesh)
            if engine is None or engine.cfg != cfg:  # one engine serves every model of one architecture
                engine = generate.engine_from_args(args, graphdef, cfg, mesh, tokenizer.pad_id, need)
            t0 = time.perf_counter()
            res = sv.self_verify(
                engine, params, tokenizer, records, pool, prompt_config=prompt_config, settings=settings
            )
            print(sv.add_result(report, name, res, time.perf_counter() - t0), file=sys.stderr)
            del params
    return report


def _checkpoints(spec: str) -> dict[str, str]:
    """NAME=PATH,... (a bare PATH is named after its directory)."""
    out = {}
    for item in filter(None, (spec or "").split(",")):
        name, _, path = item.rpartition("=")
        out[name or os.path.basename(os.path.normpath(path))] = path
    return out


def run(args) -> int:
    report = {}
    checkpoints = _checkpoints(args.models)
    if checkpoints and not args.anchor and not args.self_verify:
        raise cli.UsageError("--models needs --anchor (weight space) or --self-verify")
    mesh = sharding.make_mesh(sharding.MeshShape.parse(args.mesh)) if checkpoints or args.anchor else None
    if checkpoints and args.anchor:
        _, _, anchor = params_io.load_params_any(args.anchor, mesh)
        models = {name: params_io.load_params_any(path, mesh)[2] for name, path in checkpoints.items()}
        report = {
            "anchor": args.anchor,
            **weight_space(anchor, models, dim=args.dim, seed=args.seed, rel_tol=args.rel_tol),
        }
        del anchor, models
    if args.gains:
        report["gain_consistency"] = gains_report(storage.read_json(args.gains))
    if args.self_verify:
        judged = ({"anchor": args.anchor} if args.anchor else {}) | checkpoints
        if not judged:
            raise cli.UsageError("--self-verify needs --models (and/or --anchor)")
        report["self_verification"] = self_verification_report(args, judged, mesh)
    if not report:
        raise cli.UsageError("nothing to do: give --anchor and --models, --gains, and/or --self-verify")
    write(report, args.out)
    print(f"wrote {os.path.join(args.out, 'analysis.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
