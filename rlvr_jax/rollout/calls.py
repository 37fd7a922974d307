"""One generate call of the paged engine on this host (`Call`: its weights, schedulers, counters), and
the statistics the engine reports of it (`call_stats`, `track_peak`)."""

from __future__ import annotations

import dataclasses

from rlvr_jax.rollout.sampling import SamplingParams


@dataclasses.dataclass
class Call:
    """One generate call on this host: the weights in the decode layout (and their abstract form), the
    sampling, block-table width J and slots per shard S (agreed over the hosts), each shard's prompts as
    global prompt indices (`offset` is this host's first) and its scheduler, counters and progress bar."""

    weights: object
    target: object
    sp: SamplingParams
    J: int
    S: int
    base_key: object
    ids: list
    offset: int
    scheds: list
    bar: object
    counts: dict = dataclasses.field(
        default_factory=lambda: dict(
            decode_steps=0, decode_rounds=0, prefill_chunks=0, slot_steps=0, peak_pages=0, live_at_peak=0
        )
    )

    def done(self) -> bool:
        return all(s.done() for s in self.scheds)

    def finished_rows(self) -> dict:
        """{this host's output row: its scheduler Row} (row = local prompt x n + sample)."""
        n, rows = self.sp.n, {}
        for ids_g, s in zip(self.ids, self.scheds):
            for r, row in s.finished.items():
                rows[(ids_g[r // n] - self.offset) * n + r % n] = row
        return rows


def call_stats(call: Call, rows: dict, seconds: float, engine, resharded: bool) -> dict:
    """The `stats` of a finished call: time, the pool's size and peak use, preemptions, slot occupancy."""
    scheds, counts = call.scheds, call.counts
    return dict(
        seconds=seconds,
        compile_seconds=engine.last_compile_seconds,
        batch_shards=engine.local_shards,
        resharded_weights=resharded,
        pool_pages=engine.num_pages - 1,
        pool_mib=engine.num_pages * engine.page_bytes / 2**20,
        peak_pages=max(s.pool.peak_used for s in scheds),
        peak_live_tokens=counts["live_at_peak"],
        peak_pages_all_shards=counts["peak_pages"],
        preemptions=sum(s.preemptions for s in scheds),
        slots=call.S,
        slot_occupancy=counts["slot_steps"] / max(1, counts["decode_steps"] * call.S * len(scheds)),
        decode_steps=counts["decode_steps"],
        decode_rounds=counts["decode_rounds"],  # host round trips of decoding (bursts run back to back count once)
        prefill_chunks=counts["prefill_chunks"],
        tokens=sum(len(r.tokens) for r in rows.values()),
    )


def track_peak(call: Call, written: int) -> None:
    """Pages in use over this host's shards at their peak, and the token positions they hold then: read
    after a burst wrote its `written` tokens into the pages secured for it, before finished rows free theirs."""
    used = sum(s.pool.used for s in call.scheds)
    if used > call.counts["peak_pages"]:
        live = written + sum(s.live_tokens() for s in call.scheds)
        call.counts["peak_pages"], call.counts["live_at_peak"] = used, live
