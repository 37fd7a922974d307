"""`rlvr-data convert|validate|stats|export`: source files to records, checks, length stats, built-ins.

rlvr-data convert --format gsm8k --input train.parquet --output gsm8k.jsonl
rlvr-data convert --format humaneval --input HumanEval.jsonl.gz --output humaneval.jsonl   (also mbpp, acecode, kodcode)
rlvr-data validate data/*.jsonl
rlvr-data stats data/*.jsonl [--tokenizer DIR] [--json]
rlvr-data export --builtin --domain all --split eval --with-reference --output eval.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

import numpy as np

from rlvr_jax import cli
from rlvr_jax.data import records as rec
from rlvr_jax.data import sources, synthetic
from rlvr_jax.data.prompts import PromptConfig, render_prompt
from rlvr_jax.model.tokenizer import THINK_CLOSE, builtin_tokenizer, load_tokenizer

BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def _convert(args) -> int:
    out, skipped = sources.convert_file(
        args.format,
        args.input,
        seed=args.seed,
        include_generated_tests=args.include_generated_tests,
        skip_invalid=args.skip_invalid,
    )
    rec.write_jsonl(out, args.output)
    per_domain = Counter(r["domain"] for r in out)
    print(f"{args.input} -> {args.output}: {len(out)} records {dict(sorted(per_domain.items()))}", file=sys.stderr)
    for reason, n in sorted(skipped.items()):
        print(f"  skipped {n}: {reason}", file=sys.stderr)
    return 0


def _validate(args) -> int:
    bad = 0
    for path in args.files:
        good, errors = rec.load_records(path, skip_invalid=True)
        for e in errors[: args.max_errors]:
            print(e, file=sys.stderr)
        if len(errors) > args.max_errors:
            print(f"{path}: ... {len(errors) - args.max_errors} more errors", file=sys.stderr)
        per_domain = dict(sorted(Counter(r["domain"] for r in good).items()))
        print(f"{path}: {len(good)} valid {per_domain}, {len(errors)} invalid")
        bad += len(errors)
    return 1 if bad else 0


def _tokenizer(path):

    return load_tokenizer(path) if path else builtin_tokenizer()


def length_stats(records, tokenizer, config) -> dict:
    """Per domain: count, prompt-token percentiles and a histogram over BUCKETS (upper bounds)."""

    lengths: dict[str, list[int]] = {}
    for r in records:
        lengths.setdefault(r["domain"], []).append(len(tokenizer.encode(render_prompt(r, tokenizer, config))))
    out = {}
    for domain, ls in sorted(lengths.items()):
        a = np.asarray(ls)
        edges = np.searchsorted(BUCKETS, a)  # index of the first bucket >= length
        hist = {f"<={b}": int((edges == i).sum()) for i, b in enumerate(BUCKETS)}
        hist[f">{BUCKETS[-1]}"] = int((edges == len(BUCKETS)).sum())
        out[domain] = {
            "count": len(ls),
            "min": int(a.min()),
            "p50": float(np.percentile(a, 50)),
            "p90": float(np.percentile(a, 90)),
            "max": int(a.max()),
            f"over_{config.max_prompt_tokens}": int((a > config.max_prompt_tokens).sum()),
            "histogram": {k: v for k, v in hist.items() if v},
        }
    return out


def _stats(args) -> int:

    records, _ = rec.load_records(args.files)
    stats = length_stats(
        records,
        _tokenizer(args.tokenizer),
        PromptConfig(thinking=args.thinking, max_prompt_tokens=args.max_prompt_tokens),
    )
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(
        f"{'domain':<8} {'count':>7} {'min':>5} {'p50':>7} {'p90':>7} {'max':>6} {'over':>6}  histogram (prompt tokens)"
    )
    for d, s in stats.items():
        hist = " ".join(f"{k}:{v}" for k, v in s["histogram"].items())
        print(
            f"{d:<8} {s['count']:>7} {s['min']:>5} {s['p50']:>7.0f} {s['p90']:>7.0f} {s['max']:>6} "
            f"{s[f'over_{args.max_prompt_tokens}']:>6}  {hist}"
        )
    return 0


def _export(args) -> int:
    if not args.builtin:
        raise SystemExit("export: only --builtin is supported (convert real sources with `convert`)")
    domains = synthetic.DOMAINS if args.domain == "all" else (args.domain,)
    out = []
    for d in domains:
        for r in synthetic.builtin_records(d, args.split, args.n):
            if args.with_reference:
                r["response"] = r["metadata"]["reference"]
                # The reference is a full thinking turn (`<think>...</think>` then the answer): say
                # so, or rlvr-verify would grade the reasoning as part of the answer.
                r["response_format"] = "thinking" if THINK_CLOSE in r["response"] else "plain"
            out.append(r)
    rec.write_jsonl(out, args.output)
    print(f"wrote {len(out)} built-in {args.split} records ({', '.join(domains)}) to {args.output}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlvr-data", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    where = "\n".join(f"  {k:<14} {v}" for k, v in sources.WHERE.items())
    c = sub.add_parser(
        "convert",
        help="convert one source file (JSONL or parquet) to records",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="formats and where to get them (download locally, then point --input at a file):\n" + where,
    )
    c.add_argument("--format", required=True, choices=sorted(sources.CONVERTERS))
    c.add_argument("--input", required=True)
    c.add_argument("--output", required=True)
    c.add_argument("--seed", type=int, default=0, help="option shuffle seed (GPQA); recorded per record")
    c.add_argument("--include-generated-tests", action="store_true", help="code_contests: add generated tests")
    c.add_argument("--skip-invalid", action="store_true", help="count and skip bad rows instead of stopping")
    c.set_defaults(fn=_convert)

    v = sub.add_parser("validate", help="check record files; prints every error as FILE:LINE: field")
    v.add_argument("files", nargs="+")
    v.add_argument("--max-errors", type=int, default=20)
    v.set_defaults(fn=_validate)

    s = sub.add_parser("stats", help="records per domain and prompt length in tokens")
    s.add_argument("files", nargs="+")
    s.add_argument("--tokenizer", help="tokenizer dir or .model (default: the built-in one)")
    s.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=True)
    s.add_argument("--max-prompt-tokens", type=int, default=2048)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_stats)

    e = sub.add_parser("export", help="write built-in task records")
    e.add_argument("--builtin", action="store_true", required=True)
    e.add_argument("--domain", default="all", choices=["all", *synthetic.DOMAINS])
    e.add_argument("--split", default="train", choices=synthetic.SPLITS)
    e.add_argument("--n", type=int, default=None, help="records per domain (default: the built-in size)")
    e.add_argument(
        "--with-reference",
        action="store_true",
        help="put the reference in a `response` field, its layout in `response_format`",
    )
    e.add_argument("--output", required=True)
    e.set_defaults(fn=_export)
    return p


def run(args) -> int:
    """The chosen subcommand; a bad record is a finding (exit 1), not a usage error."""
    try:
        return args.fn(args)
    except rec.RecordError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def main(argv=None) -> int:
    return cli.run_command(build_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
