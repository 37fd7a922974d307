"""The plan report as a table for people: each stage's bytes per chip against HBM, its costs and roofline time,
the projected device-hours, and for a stage that cannot fit what to change (with the micro-batch that would)."""

from __future__ import annotations

from rlvr_jax.plan.chips import GiB


def _fmt_bytes(n) -> str:
    """GiB with one decimal, or MiB below a tenth of a GiB (tiny configs)."""
    return f"{n / GiB:.1f}" if n >= 0.1 * GiB or n == 0 else f"{n / 2**20:.1f}M"


def rows_that_fit(r: dict, rows: int, hbm: int, batch_shards: int, headroom: float = 0.15) -> int:
    """Rows per micro-batch that leave `headroom` of HBM free, by scaling this compile's per-row bytes
    (activations grow linearly with rows); a multiple of the batch shards, 0 when not even one row each fits."""
    b = r["bytes_per_chip"]
    fixed = b["params"] + b["optimizer"]
    per_row = max(b["total"] - fixed, 1) / rows
    fit = int(((1 - headroom) * hbm - fixed) // per_row)
    return max(0, fit // batch_shards * batch_shards)


def advice(r: dict, report: dict) -> str:
    hbm, s = report["hbm_bytes_per_chip"], report["shapes"]
    shards = report["mesh"].get("data", 1) * report["mesh"].get("fsdp", 1)
    if r["name"].startswith("rollout"):
        return (
            "a smaller KV pool (rollout.num_pages or rollout.memory_fraction), fewer decode slots or a smaller "
            "rollout.prefill_chunk, bf16 weights and KV (rollout.weights_dtype, rollout.cache_dtype), or "
            "mesh.tensor > 1 (the decode weights split over tensor)"
        )
    if r["name"].startswith(("update", "logprob")):
        fit = rows_that_fit(r, s["micro_rows"], hbm, shards)
        whole = (
            " (grpo.micro_batch_size=0 puts the whole rollout in one micro-batch)"
            if s["micro_rows"] == s["rows"]
            else ""
        )
        if fit:
            return (
                f"grpo.micro_batch_size={fit} would leave 15% of HBM free (scaled from this compile's "
                f"{s['micro_rows']} rows{whole}; check it with --config.grpo.micro_batch_size={fit})"
            )
        return (
            f"not even one row per batch shard fits{whole}: model.remat=True, shorter responses, or more "
            "chips per row (mesh.tensor)"
        )
    if r["name"].startswith("sft"):
        return "a smaller sft.batch_size or sft.max_len, or more chips"
    return "more chips"


def table(report: dict) -> str:
    hbm = report["hbm_bytes_per_chip"]
    lines = [
        f"{report['topology']}: {report['chips']} chips, mesh {report['mesh']}, {_fmt_bytes(hbm)} GiB HBM per chip; "
        f"model {report['model']['preset']} ({report['model']['params'] / 1e9:.2f}B params)",
        "",
        "| stage | tokens | params | opt | KV | temp | total GiB | HBM % | fits | TFLOP | GB accessed | GB collectives "
        "| roofline s | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["stages"]:
        b = r["bytes_per_chip"]
        lines.append(
            f"| {r['name']} | {r['tokens']:,} | {_fmt_bytes(b['params'])} | {_fmt_bytes(b['optimizer'])} | "
            f"{_fmt_bytes(b['kv'])} | {_fmt_bytes(b.get('temp', 0))} | {_fmt_bytes(b['total'])} | "
            f"{100 * b['total'] / hbm:.0f}% | {'yes' if r['fits'] else '**NO**'} | {r['flops_per_chip'] / 1e12:.2f} | "
            f"{r['bytes_accessed_per_chip'] / 1e9:.2f} | {r['collective_bytes_per_chip'] / 1e9:.3f} | "
            f"{r['roofline_s']:.4f} | {r['compile_s']:.1f} |"
        )
    s = report["shapes"]
    lines += [
        "",
        f"Per RL step (roofline, mean response {s['mean_response_len']:,} tokens, {s['rows']:,} rows): "
        f"{report['roofline_step_s']:.1f} s; {s['steps']} steps on {report['chips']} chips: "
        f"**{report['projected_device_hours']:,.1f} device-hours** (a lower bound: peaks, no overlap losses). "
        "The study reported "
        + ", ".join(f"{v:,.1f} GPU-hours ({k})" for k, v in report["study_gpu_hours"].items())
        + ".",
    ]
    lines += tail_table(report.get("tail_aware_rollout"))
    notes = dict.fromkeys(r["note"] for r in report["stages"] if r.get("note"))
    lines += [f"- KV pool: {n}." for n in notes]
    for r in report["stages"]:
        if not r["fits"]:
            lines.append(
                f"- {r['name']} does not fit: needs {_fmt_bytes(r['bytes_per_chip']['total'])} GiB of "
                f"{_fmt_bytes(hbm)} per chip. Change: {advice(r, report)}."
            )
    return "\n".join(lines)


def tail_table(t: dict | None) -> list[str]:
    """The simulated rollout schedule per mode beside the roofline at the mean (the lower bound)."""
    if not t:
        return []
    d = t["lengths"]
    dist = f"histogram {d['file']}" if d["kind"] == "histogram" else f"geometric, mean {d['mean']:,.0f}"
    lines = [
        "",
        f"Tail-aware rollout (the engine's schedule simulated over response lengths: {dist}, cap {d['cap']:,}; "
        f"{t['simulated_steps']} steps per mode; this run: {t['run_mode']}):",
        "",
        "| rollout | rollout s / step | slot occupancy | decode steps | prefill chunks | step s | device-hours |",
        "|---|---|---|---|---|---|---|",
    ]
    lb = t["lower_bound"]
    lines.append(
        f"| roofline at the mean (lower bound) | {lb['rollout_s']:.1f} | 1.00 | | | {lb['step_s']:.1f} | "
        f"{lb['device_hours']:,.1f} |"
    )
    for mode in ("synchronous", "partial"):
        m = t[mode]
        name = mode if mode == "synchronous" else f"partial (x{m['oversample']:g}, staleness <= {m['max_staleness']})"
        lines.append(
            f"| {name} | {m['rollout_s']:.1f} | {m['slot_occupancy']:.2f} | {m['decode_steps']:,.0f} | "
            f"{m['prefill_chunks']:,.0f} | {m['step_s']:.1f} | {m['device_hours']:,.1f} |"
        )
    return lines
