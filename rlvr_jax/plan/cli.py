"""`rlvr-plan`: compile every stage of a config ahead of time for a TPU topology, from a CPU host (libtpu
from the package index; no TPU), and report per chip: memory against HBM, FLOPs, bytes, collective
bytes, a roofline time, and the projected device-hours of the whole run.

    rlvr-plan --config=configs/grpo.py:math --topology=v5p:4x4x4 [--config.a.b=value ...] [--json=plan.json]
"""

from __future__ import annotations

import argparse
import json
import sys

from rlvr_jax import cli
from rlvr_jax.plan.chips import GiB, PlanError
from rlvr_jax.plan.compile import StageReport
from rlvr_jax.plan.planner import STAGE_GROUPS, plan
from rlvr_jax.plan.report import table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlvr-plan", description=__doc__.strip(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cli.add_config_flag(p, example="configs/grpo.py:math")
    p.add_argument("--topology", default="", help="TPU slice, e.g. v5p:4x4x4 (default: the config's plan.topology)")
    p.add_argument(
        "--mean_response_tokens",
        type=int,
        default=0,
        help="mean response length for the projection (default: the config's plan.mean_response_tokens, else the max)",
    )
    p.add_argument(
        "--only",
        default=",".join(STAGE_GROUPS),
        help=f"comma-separated stage groups to compile, of {', '.join(STAGE_GROUPS)} (default: all)",
    )
    p.add_argument("--json", default="", help="also write the report as JSON to this file ('-' = stdout only JSON)")
    return p


def _progress(r: StageReport) -> None:
    state = "fits" if r.fits else "DOES NOT FIT"
    print(
        f"[plan] {r.name}: {r.bytes_per_chip['total'] / GiB:.1f} GiB per chip, {state} "
        f"(compiled in {r.compile_s:.1f} s)",
        file=sys.stderr,
        flush=True,
    )


def run(config, args) -> int:
    if config is None:
        raise cli.UsageError("--config is required (see --help)")
    only = tuple(g for g in args.only.split(",") if g)  # plan() names an unknown group
    topology = args.topology or config.plan.topology
    mean = args.mean_response_tokens or config.plan.mean_response_tokens
    report = plan(config, topology, mean_response_len=mean, only=only, progress=_progress)
    if args.json == "-":
        print(json.dumps(report, indent=1))
    else:
        print(table(report))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)
    return 0 if all(r["fits"] for r in report["stages"]) else 1


def main(argv=None) -> int:
    return cli.run_command(build_parser(), argv, run, config=True, errors=(PlanError,))


if __name__ == "__main__":
    sys.exit(main())
