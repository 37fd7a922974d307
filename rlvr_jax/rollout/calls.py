"""One generate call of the paged engine on this host (`Call`: its weights, schedulers, counters), and
the statistics the engine reports of it (`call_stats`, `track_peak`)."""

from __future__ import annotations

import dataclasses

import numpy as np

from rlvr_jax.rollout.sampling import SamplingParams, next_pow2
from rlvr_jax.rollout.scheduler import RowState


@dataclasses.dataclass
class Groups:
    """A partial-rollout call's outcome on this host (prompt = the call's local prompt index): the prompts
    whose n rows all ended (ascending), and the row states of every prompt whose rows began."""

    complete: list[int]
    states: dict[int, list[RowState]]


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

    def ended(self, target_groups: int = 0) -> bool:
        """Every row ended, or (target_groups > 0) this host has that many complete prompts."""
        if self.done():
            return True
        return target_groups > 0 and sum(len(s.complete_prompts()) for s in self.scheds) >= target_groups

    def groups(self) -> Groups:
        """This host's complete prompts and begun prompts' row states, as local prompt indices."""
        complete, states = [], {}
        for ids_g, s in zip(self.ids, self.scheds):
            complete += [ids_g[k] - self.offset for k in s.complete_prompts()]
            states.update({ids_g[k] - self.offset: v for k, v in s.all_row_states().items()})
        return Groups(sorted(complete), states)

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


# the fewest tokens a prefill program takes: a round with less to prefill than the configured chunk runs the
# smallest power of two from here that holds it (a slot freed by one row would otherwise pay a whole chunk)
MIN_PREFILL_CHUNK = 128


def prefill_sizes(jobs) -> list[int]:
    """What the hosts agree on before a prefill chunk (the largest over them): whether any shard has pieces,
    the longest piece, a continued first piece's tokens (0: none) and the most tokens a shard packs."""
    longest = max((len(job.tokens) for jobs_g in jobs for job in jobs_g), default=0)
    first = max((len(jobs_g[0].tokens) for jobs_g in jobs if jobs_g and jobs_g[0].start > 0), default=0)
    return [any(jobs), longest, first, max((sum(len(j.tokens) for j in jobs_g) for jobs_g in jobs), default=0)]


def prefill_chunk(tokens: int, chunk: int) -> int:
    """Tokens of the prefill program for a round whose shards pack at most `tokens`: the smallest power of two
    from MIN_PREFILL_CHUNK that holds them, at most the configured `chunk`."""
    return min(chunk, max(MIN_PREFILL_CHUNK, next_pow2(tokens, 1)))


def prefill_arrays(call: Call, jobs, G: int, C: int, P: int, page_size: int, pad_id: int) -> tuple:
    """A packed prefill chunk's host inputs (tokens [G, C]; start, q_len [G, P]; pages [G, P, J]; prompt,
    copy_from [G, P]; copy_dst [G, P, n - 1]): jobs[g] are shard g's pieces, in the order they fill its chunk."""
    n, J = call.sp.n, call.J
    tokens = np.full((G, C), pad_id, np.int32)
    start, q_len, prompt = (np.zeros((G, P), np.int32) for _ in range(3))
    copy_from = np.full((G, P), np.iinfo(np.int32).max, np.int32)
    pages = np.zeros((G, P, J), np.int32)
    copy_dst = np.zeros((G, P, n - 1), np.int32)
    for g, jobs_g in enumerate(jobs):
        at = 0
        for p, job in enumerate(jobs_g):
            if p and job.start:
                raise RuntimeError(
                    "rollout engine: only a chunk's first piece may continue a sequence (a scheduler bug)"
                )
            tokens[g, at : at + len(job.tokens)] = job.tokens
            at += len(job.tokens)
            start[g, p], q_len[g, p], prompt[g, p] = job.start, len(job.tokens), call.ids[g][job.prompt]
            if job.copy_dst:  # the partial last page's first position
                copy_from[g, p] = (len(job.pages) - 1) * page_size
            pages[g, p, : len(job.pages)] = job.pages
            copy_dst[g, p, : len(job.copy_dst)] = job.copy_dst
    return tokens, start, q_len, pages, prompt, copy_from, copy_dst


# the most decode steps one program runs (bursts back to back in one program; more go to the next program)
MAX_PROGRAM_STEPS = 32


def bursts_per_program(bursts: int, burst: int) -> int:
    """Bursts the next decode program runs of the `bursts` left to run back to back: the largest power of two
    at most that and at most MAX_PROGRAM_STEPS steps (one program per power of two is compiled)."""
    cap = max(1, MAX_PROGRAM_STEPS // burst)
    return 1 << (min(bursts, cap).bit_length() - 1)


def quarter_octave(n: int) -> int:
    """n rounded up to a value with at most two bits after its leading one: 1, 2, ..., 8, 10, 12, 14, 16, 20,
    24, 28, 32, 40, ... (at most a quarter above n; four sizes per doubling)."""
    shift = max(0, n.bit_length() - 3)
    return -(-n >> shift) << shift


def snapshot_pages(pos_GxS, active_GxS, page_size: int, J: int) -> int:
    """Pages per slot of a decode program's snapshot (snapshot_attention.py): covering every seated row's
    written positions, rounded up to a quarter octave (at most the block-table width J); 0 (attend over the
    paged pool each step) when the seated rows' positions fill less than half of the snapshot, which has
    every slot's width: a long-tailed rollout's last rows beside empty slots read only their own pages.
    Each step reads the whole snapshot, so it is sized closely (a power of two read up to twice the keys at
    fixed lengths: 8 pages for 5); each size is one more compiled program."""
    written_GxS = np.where(active_GxS, pos_GxS, 0)
    pages = min(J, quarter_octave(max(1, -(-int(written_GxS.max(initial=0)) // page_size))))
    return pages if 2 * written_GxS.sum() >= written_GxS.size * pages * page_size else 0


DECODE_INPUTS = ("tokens_S", "pos_S", "steps_S", "budget_S", "active_S", "prompt_S", "sample_S")


def decode_arrays(call: Call, djobs, G: int) -> tuple[dict, np.ndarray]:
    """A decode burst's host inputs: ({DECODE_INPUTS name: [G, S]}, pages [G, S, J]); a shard with no job
    runs inactive slots. Prompts become global prompt indices (each draw's key)."""
    S, J, ids = call.S, call.J, call.ids
    arrays = {k: np.zeros((G, S), bool if k == "active_S" else np.int32) for k in DECODE_INPUTS}
    pages = np.zeros((G, S, J), np.int32)
    for g, job in enumerate(djobs):
        if job is None:
            continue
        for k in DECODE_INPUTS:
            arrays[k][g] = getattr(job, k)
        arrays["prompt_S"][g] = np.asarray(ids[g], np.int32)[job.prompt_S] if ids[g] else 0
        pages[g] = job.pages_SxJ
    return arrays, pages
