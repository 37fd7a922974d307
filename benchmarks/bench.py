"""The performance table (DESIGN.md "Performance"): for each figure, ours beside a peer measured in
the same run and the physical floor from this machine's memory bandwidth and matmul rate, both
measured first in the same run. Prints markdown; `--json OUT` writes the rows and the machine.

Section contract: a module `benchmarks/<name>.py` with `run(quick: bool) -> list[dict]`; each row has
`figure` (or `name`), `ours`, `peer` (None if there is none), `unit`, `note`, and for the floor either `floor`
(in `unit`) or the work behind one unit: `floor_bytes` / `floor_flops` per item for a rate unit
("tok/s": per token), per measured operation for a time unit ("s", "ms"). Rates are better higher,
everything else lower (or say `higher_is_better`). `ratio` is how many times better ours is than the
peer (> 1: ours is better); `floor_fraction` how close ours is to the floor (1 = at the floor).

Sections: generation (fixed-length decoding: the paged engine vs transformers and the static engine),
rollout (long-tailed RL-shaped rollouts: the paged engine vs the static engine and transformers, and the KV
pool's allocated over live tokens), verifiers, merge, train.

  python -m benchmarks.bench [--quick] [--only generation] [--json bench.json]   (from the repo root)
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import statistics
import sys
import time

# section name -> module with run(quick) -> rows; a missing module is skipped with a note.
SECTIONS: dict[str, str] = {
    "generation": "benchmarks.generation",
    "rollout": "benchmarks.rollout",
    "verifiers": "benchmarks.verifiers",
    "merge": "benchmarks.merge",
    "train": "benchmarks.train",
}
TIME_UNITS = {"s": 1.0, "ms": 1e-3}


def measure_machine(quick: bool) -> dict:
    """Memory bandwidth (a large numpy copy, read + write bytes) and fp32 matmul rate (jitted jax):
    the best of a few repeats, since a shared machine only ever makes them look slower."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    repeats = 3 if quick else 7
    src = np.ones((16 if quick else 256) * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    copy_s = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        copy_s.append(time.perf_counter() - t0)
    n = 512 if quick else 2048
    a_np = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    a = jnp.asarray(a_np)
    jax_matmul = jax.jit(lambda x: x @ x)
    # The machine's rate is the best any library reaches (numpy's BLAS can beat XLA's kernels).
    runs = {"jax": lambda: jax_matmul(a).block_until_ready(), "numpy": lambda: a_np @ a_np}
    mm_s = {name: [] for name in runs}
    for name, fn in runs.items():
        fn()
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            mm_s[name].append(time.perf_counter() - t0)
    rate = {name: 2 * n**3 / min(ts) / 1e9 for name, ts in mm_s.items()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {
        "mem_bandwidth_gb_s": 2 * src.nbytes / min(copy_s) / 1e9,
        "matmul_gflop_s": max(rate.values()),
        **{f"matmul_gflop_s_{name}": r for name, r in rate.items()},
        "mem_bandwidth_gb_s_median": 2 * src.nbytes / statistics.median(copy_s) / 1e9,
        "cpu_count": os.cpu_count(),
        "load_avg_1m": load,
        "jax_devices": len(jax.devices()),
        "jax_backend": jax.default_backend(),
    }


def floor_of(row: dict, machine: dict) -> float | None:
    """The row's floor in its own unit, from explicit `floor` or from bytes / FLOPs of work."""
    if row.get("floor") is not None:
        return row["floor"]
    bytes_, flops = row.get("floor_bytes"), row.get("floor_flops")
    if bytes_ is None and flops is None:
        return None
    seconds = max(
        (bytes_ or 0) / (machine["mem_bandwidth_gb_s"] * 1e9), (flops or 0) / (machine["matmul_gflop_s"] * 1e9)
    )
    if row["unit"] in TIME_UNITS:
        return seconds / TIME_UNITS[row["unit"]]
    if not row["unit"].endswith("/s"):
        raise ValueError(
            f"row {row['figure']!r}: floor work given for unit {row['unit']!r}, which is neither a time nor a rate"
        )
    return 1.0 / seconds


def higher_is_better(row: dict) -> bool:
    """Rates ("tok/s", "GB/s") are better higher; times and sizes ("s", "ms/exec", "GB") lower."""
    return row.get("higher_is_better", row["unit"].endswith("/s"))


def _better(a, b, higher: bool):
    """How many times better a is than b, or None."""
    if a is None or b is None or (b if higher else a) == 0:
        return None
    return a / b if higher else b / a


def finish(row: dict, section: str, machine: dict) -> dict:
    """Fill section, floor, ratio and floor fraction. One meaning of ratio across sections: a section's
    own `ratio`, where it means something else, is kept as `section_ratio`."""
    row = dict(row, section=section)
    row.setdefault("figure", row.get("name"))
    given = row.pop("ratio", None)
    higher = higher_is_better(row)
    ours, peer = row["ours"], row.get("peer")
    row["floor"] = floor_of(row, machine)
    if row.get("floor_bytes") is not None or row.get("floor_flops") is not None:
        # Both floors on their own too: the issue asks for the memory-bandwidth one even where compute binds.
        for kind, key in (("memory", "floor_bytes"), ("compute", "floor_flops")):
            alone = floor_of({"unit": row["unit"], "figure": row["figure"], key: row.get(key)}, machine)
            row[f"{kind}_floor"], row[f"{kind}_floor_fraction"] = alone, _better(ours, alone, higher)
        row["floor_bound"] = "memory" if row["floor"] == row["memory_floor"] else "compute"
    row["ratio"] = _better(ours, peer, higher)
    row["floor_fraction"] = _better(ours, row["floor"], higher)
    if given is not None and (row["ratio"] is None or not math.isclose(given, row["ratio"], rel_tol=0.02)):
        row["section_ratio"] = given
    return row


def run_sections(names, quick: bool, machine: dict) -> list[dict]:
    rows = []
    for name in names:
        try:
            module = importlib.import_module(SECTIONS[name])
        except ModuleNotFoundError as e:
            if e.name != SECTIONS[name]:
                raise
            print(f"[bench] section {name!r}: {SECTIONS[name]} is absent; skipped", file=sys.stderr)
            continue
        print(f"[bench] running section {name!r}{' (quick)' if quick else ''} ...", file=sys.stderr)
        t0 = time.perf_counter()
        rows += [finish(r, name, machine) for r in module.run(quick)]
        print(f"[bench] section {name!r} took {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return rows


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def markdown(rows: list[dict], machine: dict) -> str:
    lines = [
        f"Machine: {machine['cpu_count']} CPUs, memory bandwidth {machine['mem_bandwidth_gb_s']:.1f} GB/s, "
        f"fp32 matmul {machine['matmul_gflop_s']:.1f} GFLOP/s (best of the run), "
        f"1-min load average {machine['load_avg_1m']:.1f}.",
        "",
        "| section | figure | ours | peer | ratio | floor | of floor | unit | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}×"
        frac = "-" if r["floor_fraction"] is None else f"{100 * r['floor_fraction']:.0f}%"
        note = r.get("note", "")
        if r.get("floor_bound") and r.get("memory_floor") is not None:
            note += (
                f" (floor {r['floor_bound']} bound; memory-bandwidth floor {_fmt(r['memory_floor'])}, "
                f"{100 * r['memory_floor_fraction']:.0f}% of it)"
            )
        lines.append(
            f"| {r['section']} | {r['figure']} | {_fmt(r['ours'])} | {_fmt(r.get('peer'))} | {ratio} | "
            f"{_fmt(r['floor'])} | {frac} | {r['unit']} | {note} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every section")
    p.add_argument("--only", choices=sorted(SECTIONS), action="append", help="run only this section (repeatable)")
    p.add_argument("--json", metavar="OUT", help="write {machine, rows} as JSON here")
    args = p.parse_args(argv)
    machine = measure_machine(args.quick)
    rows = run_sections(args.only or list(SECTIONS), args.quick, machine)
    print(markdown(rows, machine))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "quick": args.quick, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
