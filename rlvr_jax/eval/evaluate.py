"""Avg@K and unbiased pass@K per domain for one model, with per-item correctness kept for the gain
analyses. `rlvr-eval --checkpoint DIR --data builtin --samples 4 --output results.json`; with `--benchmark NAME
--data FILE`, a standard benchmark's public file, prompt, scorer and metric names (benchmarks.py)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections import defaultdict

import jax
import numpy as np
from tqdm import tqdm

from rlvr_jax import cli, sharding, storage
from rlvr_jax.data import loading
from rlvr_jax.data.prompts import PromptConfig, render_prompt
from rlvr_jax.eval import benchmarks
from rlvr_jax.eval.benchmark_metrics import pass_at_k
from rlvr_jax.model import build
from rlvr_jax.rollout import generate
from rlvr_jax.rollout.engine import Engine
from rlvr_jax.rollout.sampling import SamplingParams, gather_rows, host_block
from rlvr_jax.verifiers.base import VerifierConfig, verifier_config
from rlvr_jax.verifiers.cli import add_reward_rule_args
from rlvr_jax.verifiers.pool import VerifierPool


def decode_completion(tokenizer, tokens, valid) -> str:
    ids = [int(t) for t, v in zip(tokens, valid) if v and int(t) not in tokenizer.eos_ids]
    return tokenizer.decode(ids)


def evaluate(
    engine: Engine,
    params,
    tokenizer,
    records: list[dict],
    pool,
    *,
    prompt_config: PromptConfig,
    samples: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_prompts: int = 64,
    progress: bool = True,
    keep_details: bool = False,
) -> dict:
    """Sample `samples` completions per record, score them with `pool` (under its reward rules: the trainer's
    and the study's pools follow their run config's `verifier` section), and summarise per domain.
    `keep_details`: each item also keeps its samples' Score details (the benchmarks' IFEval numbers)."""
    sp = SamplingParams(
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        n=samples,
        stop_token_ids=tuple(tokenizer.eos_ids),
        seed=seed,
    )
    items = []
    bar = tqdm(total=len(records), desc="eval", file=sys.stderr, disable=not progress, dynamic_ncols=True)

    def collect(chunk, scoring, start, size):
        scores = scoring.result()
        rewards = np.zeros((size, samples), np.float32)
        for r, sc in enumerate(scores):
            rewards[r // samples, r % samples] = sc.reward
        everyone = gather_rows(rewards)  # [hosts x size, samples]: the hosts' blocks in chunk order
        for i, r in enumerate(chunk):
            items.append({"id": r["id"], "domain": r["domain"], "correct": [float(x >= 1.0) for x in everyone[i]]})
            if keep_details:
                items[-1]["details"] = [scores[i * samples + j].details for j in range(samples)]
        bar.update(len(chunk))

    if keep_details and jax.process_count() > 1:
        raise ValueError("per-sample details are kept on one process only: run this evaluation on one host")
    in_flight = None  # the previous chunk, scored by the pool's workers while this one generates
    for start in range(0, len(records), batch_prompts):
        chunk = records[start : start + batch_prompts]
        mine, size = host_block(len(chunk), samples, engine.local_shards)
        # this host's prompts; past the chunk's end, copies of its last prompt fill the block (never scored)
        block = [chunk[min(i, len(chunk) - 1)] for i in range(mine, mine + size)]
        prompts = [tokenizer.encode(render_prompt(r, tokenizer, prompt_config)) for r in block]
        key = jax.random.fold_in(jax.random.key(seed), start)
        out = engine.generate(params, prompts, dataclasses.replace(sp, seed=seed + start), key=key)
        toks, valid = engine.local_rows(out.completion_tokens), engine.local_rows(out.completion_valid)
        cut = ~engine.local_rows(out.stopped)  # the pool zeroes these when its config's truncated_zero says so
        if in_flight is not None:
            collect(*in_flight)
        texts = [decode_completion(tokenizer, t, v) for t, v in zip(toks, valid)]
        row_records = [block[i] for i in np.asarray(out.prompt_index)]
        scoring = pool.submit(row_records, texts, thinking=prompt_config.thinking, truncated=cut)
        in_flight = (chunk, scoring, start, size)
    if in_flight is not None:
        collect(*in_flight)
    bar.close()
    return summarize(items, samples)


def first_per_domain(records: list[dict], n: int) -> list[dict]:
    """The first `n` records of each domain, in their order."""
    seen = defaultdict(int)
    out = []
    for r in records:
        seen[r["domain"]] += 1
        if seen[r["domain"]] <= n:
            out.append(r)
    return out


def summarize(items: list[dict], samples: int) -> dict:
    by_domain = defaultdict(list)
    for it in items:
        by_domain[it["domain"]].append(it["correct"])
    per_domain = {}
    for d, rows in sorted(by_domain.items()):
        arr = np.asarray(rows, np.float64)
        per_item = arr.mean(1)
        per_domain[d] = {
            "n_items": len(rows),
            f"avg@{samples}": float(per_item.mean()),
            f"pass@{samples}": float(np.mean([pass_at_k(samples, int(c.sum()), samples) for c in arr])),
            # standard error of Avg@K over items: the noise band for comparing two models
            "stderr": float(per_item.std(ddof=1) / math.sqrt(len(rows))) if len(rows) > 1 else 0.0,
        }
    return {"samples": samples, "per_domain": per_domain, "items": items}


def paired_gain(before: dict, after: dict) -> dict:
    """Gain of Avg@K per domain, with its standard error from per-item differences (both evaluations
    cover the same items; an item's own difficulty cancels), and the mean over domains, whose error
    adds the domains' in quadrature. Needs both evaluations' `items`."""
    per_item = {d: {} for d in before["per_domain"]}
    for tag, res in (("before", before), ("after", after)):
        for it in res["items"]:
            per_item[it["domain"]].setdefault(it["id"], {})[tag] = float(np.mean(it["correct"]))
    out = {}
    for d, pairs in per_item.items():
        diffs = np.asarray([p["after"] - p["before"] for p in pairs.values() if len(p) == 2])
        if len(diffs) != len(pairs):
            raise ValueError(f"domain {d}: the two evaluations do not cover the same items")
        se = float(diffs.std(ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else 0.0
        out[d] = {"gain": float(diffs.mean()), "stderr": se}
    gains = [v["gain"] for v in out.values()]
    out["mean"] = {
        "gain": float(np.mean(gains)),
        "stderr": float(math.sqrt(sum(v["stderr"] ** 2 for v in out.values())) / len(out)),
    }
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlvr-eval",
        description="Evaluate a checkpoint per domain: Avg@K and "
        "unbiased pass@K, per-item correctness saved for gain analyses; or on a standard benchmark's public "
        "file (--benchmark), scored and named as its paper reports it, with standard errors.",
        epilog="--benchmark NAME --data FILE reads the file as distributed (JSONL, JSONL.gz, parquet; GPQA CSV):\n"
        + benchmarks.where_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="HF directory or rlvr_jax Orbax checkpoint")
    p.add_argument("--tokenizer", default="", help="tokenizer dir or 'builtin' (default: the checkpoint's)")
    p.add_argument("--data", default="builtin", help="'builtin' (held-out split) or comma-separated JSONL files")
    p.add_argument(
        "--benchmark",
        choices=sorted(benchmarks.BENCHMARKS),
        default="",
        help="score --data (the benchmark's public file, see below) with the benchmark's zero-shot prompt, scorer "
        "and metric names; its scorer settings override --math-form/--science-form/--if-mode/--code-max-tests",
    )
    p.add_argument("--domains", default="math,code,science,if")
    p.add_argument(
        "--items-per-domain",
        type=int,
        default=0,
        help="0 = all (built-in data: its default 200; more are generated on request, up to all a domain has)",
    )
    p.add_argument("--samples", type=int, default=1, help="K samples per item")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0)
    add_reward_rule_args(p, if_mode="official")  # reported IF numbers score as IFEval's reference does
    p.add_argument("--output", default="", help="write the JSON results here (default: stdout)")
    p.add_argument("--batch-prompts", type=int, default=64, help="prompts per engine call")
    generate.add_engine_args(p)
    return p


def main(argv=None) -> int:
    # FileNotFoundError / ValueError: a missing checkpoint or tokenizer, an engine the flags cannot size, or
    # a row the engine's pool cannot hold, each with the numbers
    return cli.run_command(build_parser(), argv, run, errors=(FileNotFoundError, ValueError))


def records_and_scoring(args) -> tuple[list[dict], VerifierConfig]:
    """The records to evaluate (a benchmark's, templated, or --data's per --domains) and the verifier settings."""
    scoring = verifier_config(args, thinking=args.thinking)
    if args.benchmark:
        records, _ = benchmarks.load(args.benchmark, args.data)
        scoring, notes = benchmarks.scoring_config(args.benchmark, scoring)
        for note in notes:
            print(f"rlvr-eval: {note}", file=sys.stderr)
    else:
        domains = tuple(args.domains.split(","))
        records = loading.load_records(
            args.data, "eval", domains, builtin_size=args.items_per_domain, builtin_up_to=True
        )
    if args.items_per_domain:
        records = first_per_domain(records, args.items_per_domain)
    return records, scoring


def run(args) -> None:
    mesh = sharding.make_mesh(sharding.MeshShape())
    cfg, graphdef, params, _ = build.load_model(args.checkpoint, mesh, "float32", False)
    tokenizer = build.load_tokenizer(args.tokenizer, args.checkpoint)
    records, scoring = records_and_scoring(args)
    prompt_config = PromptConfig(thinking=args.thinking)
    longest = max((len(tokenizer.encode(render_prompt(r, tokenizer, prompt_config))) for r in records), default=1)
    need = generate.request_pages([longest] * args.batch_prompts, args.samples, args.max_new_tokens, args.page_size)
    engine = generate.engine_from_args(args, graphdef, cfg, mesh, tokenizer.pad_id, need)
    with VerifierPool(args.workers or None, config=scoring) as pool:
        res = evaluate(
            engine,
            params,
            tokenizer,
            records,
            pool,
            prompt_config=prompt_config,
            samples=args.samples,
            temperature=args.temperature,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            batch_prompts=args.batch_prompts,
            keep_details=bool(args.benchmark),
        )
    res["checkpoint"] = args.checkpoint
    if args.benchmark:
        res["benchmark"] = {
            "name": args.benchmark,
            "data": args.data,
            "metrics": benchmarks.report(args.benchmark, res["items"]),
        }
    text = json.dumps(res, indent=1)
    if args.output:
        storage.write_text(args.output, text)
    else:
        print(text)
    if args.benchmark:
        print("\n".join(benchmarks.metric_lines(args.benchmark, res["benchmark"]["metrics"])), file=sys.stderr)
        return
    for d, m in res["per_domain"].items():
        print(
            f"{d:8s} avg@{args.samples}={m[f'avg@{args.samples}']:.3f} ± {m['stderr']:.3f} (n={m['n_items']})",
            file=sys.stderr,
        )


if __name__ == "__main__":
    sys.exit(main())
