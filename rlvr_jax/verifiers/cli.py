"""rlvr-verify: score a JSONL of records + `response` with the verifier pool; one JSON line out per
input line (reward, domain, reason, details), a per-domain summary on stderr.

    python -m rlvr_jax.verifiers.cli --input samples.jsonl [--output scores.jsonl] [--[no-]thinking] [--workers N]

Without --thinking/--no-thinking each record's `response_format` picks the gate (`rlvr-data export
--with-reference` writes "thinking"); a record without one is graded whole, as model output always was.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

from tqdm import tqdm

from rlvr_jax import cli, storage
from rlvr_jax.data.records import EXTRA_FIELDS, validate_record
from rlvr_jax.verifiers import score
from rlvr_jax.verifiers.base import ANSWER_FORMS, IF_MODES, verifier_config
from rlvr_jax.verifiers.pool import VerifierPool
from rlvr_jax.verifiers.sandbox import SandboxUnavailable

_MAX_ERRORS_SHOWN = 20
_CHUNK = 64  # samples per submitted batch: the progress bar moves per batch


def read_input(path: str) -> tuple[list[dict], list[str]]:
    """(records with their response, error messages naming file:line:field)."""
    rows, errors = [], []
    with storage.open(path, encoding="utf-8") as f:
        for n, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except ValueError as e:
                errors.append(f"{path}:{n}: field '<line>': invalid JSON: {e}")
                continue
            try:
                obj = validate_record(obj, file=path, line=n, extra_fields=EXTRA_FIELDS)
                if not isinstance(obj.get("response"), str):
                    raise ValueError(
                        f"{path}:{n}: field 'response': expected a string, got {type(obj.get('response')).__name__}"
                    )
            except ValueError as e:  # RecordError is a ValueError
                errors.append(str(e))
                continue
            rows.append(obj)
    return rows, errors


def gates(rows: list[dict], forced: bool | None) -> list[bool]:
    """Per row, whether the thinking gate applies: `forced` when given, else the row's declared
    `response_format`. Says on stderr what the declarations (or the override) did."""
    declared = collections.Counter(r.get("response_format", "undeclared") for r in rows)
    if forced is not None:
        overridden = sum(n for f, n in declared.items() if f != "undeclared" and (f == "thinking") != forced)
        if overridden:
            print(
                f"rlvr-verify: --{'' if forced else 'no-'}thinking overrides the `response_format` of "
                f"{overridden} record(s)",
                file=sys.stderr,
            )
        return [forced] * len(rows)
    if declared["thinking"]:
        print(
            f"rlvr-verify: {declared['thinking']} of {len(rows)} record(s) declare `response_format: thinking` "
            "and are graded under the thinking gate (only after the last </think>; none -> 0); "
            "the rest are graded whole. --thinking / --no-thinking sets one gate for all.",
            file=sys.stderr,
        )
    return [r.get("response_format") == "thinking" for r in rows]


def _chunks(thinking: list[bool]) -> list[tuple[int, int]]:
    """[start, end) spans of at most _CHUNK rows that share one gate (the pool takes one per batch)."""
    spans, a = [], 0
    for b in range(1, len(thinking) + 1):
        if b == len(thinking) or b - a == _CHUNK or thinking[b] != thinking[a]:
            spans.append((a, b))
            a = b
    return spans


def _summary(rows: list[dict], scores: list, counters: dict) -> str:
    by = collections.defaultdict(list)
    for r, s in zip(rows, scores):
        by[r["domain"]].append(s)
    lines = [f"{'domain':<8} {'n':>6} {'reward':>7}  reasons"]
    for d in sorted(by):
        ss = by[d]
        reasons = collections.Counter(s.reason for s in ss)
        lines.append(
            f"{d:<8} {len(ss):>6} {sum(s.reward for s in ss) / len(ss):>7.3f}  "
            + ", ".join(f"{k}={v}" for k, v in reasons.most_common())
        )
    if counters:
        lines.append(
            "pool: " + ", ".join(f"{k.split('/', 1)[1]}={int(v)}" for k, v in counters.items() if k.count("/") == 1)
        )
    return "\n".join(lines)


def add_reward_rule_args(p: argparse.ArgumentParser, *, truncation: bool = True, if_mode: str = "reward") -> None:
    """The reward rules of a run config's `verifier` section as flags of the same names, so that
    `base.verifier_config(args, ...)` reads them as it reads the section (defaults: the lenient rules; the
    study's preset, configs/grpo.py, uses the study's). Without `truncation`, truncated_zero is False.
    `if_mode` is --if-mode's default (evaluation passes "official")."""
    p.set_defaults(truncated_zero=False, allow_unsandboxed=False)  # for commands without those flags
    p.add_argument(
        "--math-form",
        choices=ANSWER_FORMS,
        default="lenient",
        help="study: the last \\boxed{} after the final 'Answer:'; lenient: the last \\boxed{}, else an Answer: line",
    )
    p.add_argument(
        "--science-form",
        choices=ANSWER_FORMS,
        default="lenient",
        help="study: the letter of 'Answer: X' or \\boxed{X}; lenient: also 'the answer is X', lower case, ...",
    )
    p.add_argument(
        "--if-mode",
        choices=IF_MODES,
        default=if_mode,
        help="instruction following: official = IFEval's reference scorer, quirks included (published numbers); "
        "reward = ours, its hackable quirks fixed (training); docs/ifeval_modes.md lists the differences",
    )
    p.add_argument(
        "--code-max-tests", type=int, default=0, help="tests drawn at random per problem, seeded (0 = all; study: 20)"
    )
    if truncation:
        p.add_argument(
            "--truncated-zero",
            action=argparse.BooleanOptionalAction,
            default=False,
            help="a response cut at the token limit scores 0, reason 'truncated' (the study's rule)",
        )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rlvr-verify", description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", required=True, help="JSONL: records (DESIGN.md schema) plus a `response` field")
    ap.add_argument("--output", default="-", help="where to write one JSON line per input (default stdout)")
    ap.add_argument(
        "--thinking",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="grade every response only after its last </think> (none -> 0); --no-thinking: every response whole; "
        "neither: per record, by its `response_format` (absent: whole)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="verifier processes (0: score in this process, without deadlines)",
    )
    ap.add_argument("--deadline", type=float, default=10.0, help="seconds per non-code sample")
    ap.add_argument("--allow-unsandboxed", action="store_true", help="run code WITHOUT bubblewrap (trusted data only)")
    add_reward_rule_args(ap, truncation=False)  # records carry no truncation flag
    return ap


def main(argv=None) -> int:
    return cli.run_command(build_parser(), argv, run)


def run(args) -> int:
    rows, errors = read_input(args.input)
    if errors:
        for e in errors[:_MAX_ERRORS_SHOWN]:
            print(e, file=sys.stderr)
        if len(errors) > _MAX_ERRORS_SHOWN:
            print(f"... and {len(errors) - _MAX_ERRORS_SHOWN} more malformed lines", file=sys.stderr)
        print(f"rlvr-verify: {len(errors)} malformed line(s) in {args.input}; nothing scored", file=sys.stderr)
        return 2
    config = verifier_config(args, thinking=bool(args.thinking))
    responses = [r["response"] for r in rows]
    thinking = gates(rows, args.thinking)
    bar = tqdm(total=len(rows), unit="sample", file=sys.stderr, disable=None)
    counters = {}
    try:
        if args.workers <= 0:
            scores = []
            for r, resp, t in zip(rows, responses, thinking):
                scores.append(score(r, resp, thinking=t, config=config))
                bar.update(1)
        else:
            with VerifierPool(args.workers, deadline_s=args.deadline, config=config) as pool:
                futures = [
                    (pool.submit(rows[a:b], responses[a:b], thinking=thinking[a]), b - a) for a, b in _chunks(thinking)
                ]
                scores = []
                for fut, n in futures:
                    scores.extend(fut.result())
                    bar.update(n)
                counters = pool.counters()
    except SandboxUnavailable as e:
        bar.close()
        print(f"rlvr-verify: {e}", file=sys.stderr)
        return 3
    bar.close()
    out = sys.stdout if args.output == "-" else storage.open(args.output, "w", encoding="utf-8")
    try:
        for r, s in zip(rows, scores):
            out.write(
                json.dumps(
                    {
                        "id": r.get("id"),
                        "domain": r["domain"],
                        "reward": s.reward,
                        "reason": s.reason,
                        "details": s.details,
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
    finally:
        if out is not sys.stdout:
            out.close()
    print(_summary(rows, scores, counters), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
