"""The rollout engine's schedule without a model: the real `scheduler.Scheduler` (one per batch shard, hosts
splitting the prompts as the engine does) driven round by round as `Engine.generate` drives it, with a fake
device that answers each prefill chunk and decode burst from per-row budgets (no stop tokens: a row makes
exactly its budget). Counts what the engine counts (prefill chunks, decode steps and rounds, slot-steps,
preemptions) for synchronous calls and for partial rollouts over consecutive steps; rlvr-plan turns the
counts into seconds with its compiled programs' costs, and the rollout bench replays its own workload.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from rlvr_jax.rollout import pages as pg
from rlvr_jax.rollout import scheduler as sched_lib
from rlvr_jax.rollout.sampling import next_pow2


@dataclasses.dataclass(frozen=True)
class EngineShape:
    """What the schedule depends on: G batch shards over `hosts` hosts (each its share), and per shard the
    decode slots, the pool (pages with the scratch page, of page_size tokens) and the programs' sizes."""

    shards: int
    hosts: int
    num_slots: int
    page_size: int
    num_pages: int
    prefill_chunk: int
    prefill_seqs: int
    decode_burst: int

    def __post_init__(self):
        if self.shards < 1 or self.hosts < 1 or self.shards % self.hosts:
            raise ValueError(f"simulate: {self.shards} batch shards do not split over {self.hosts} hosts")

    @classmethod
    def of_engine(cls, eng, hosts: int = 1) -> "EngineShape":
        """The shape of an `engine.Engine` (its shards are over every host)."""
        return cls(
            shards=eng.num_shards,
            hosts=hosts,
            num_slots=eng.num_slots,
            page_size=eng.page_size,
            num_pages=eng.num_pages,
            prefill_chunk=eng.chunk,
            prefill_seqs=eng.prefill_seqs,
            decode_burst=eng.burst,
        )


@dataclasses.dataclass
class Counts:
    """What a schedule ran: prefill chunks (each a program over every shard), decode steps (bursts x burst) and
    rounds (host round trips), slot-steps producing a token, slot-steps run (decode steps x S x G), and
    key positions decode read (each valid slot-step attends to its prompt and tokens so far)."""

    prefill_chunks: int = 0
    decode_steps: int = 0
    decode_rounds: int = 0
    slot_steps: int = 0
    slot_capacity: int = 0
    preemptions: int = 0
    kv_reads: int = 0

    @property
    def occupancy(self) -> float:
        return self.slot_steps / max(1, self.slot_capacity)

    def add(self, other: "Counts") -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class Call:
    """One engine call on every host at once: host h's prompts (lengths), its rows' budgets and its started
    rows (host-local prompt -> RowStates), split over its shards by `scheduler.assign_shards`, each shard a
    real Scheduler over `num_slots` or fewer slots (as `Engine._start_call` picks them)."""

    def __init__(self, shape: EngineShape, lens_H, budgets_H, n: int, started_H=None):
        self.shape, self.n = shape, n
        local = shape.shards // shape.hosts
        started_H = started_H or [{} for _ in lens_H]
        self.ids = [
            sched_lib.assign_shards(lens, work_left(budgets, started, n), n, local)
            for lens, budgets, started in zip(lens_H, budgets_H, started_H)
        ]
        fullest = max((len(ids_g) for ids_h in self.ids for ids_g in ids_h), default=1)
        self.S = min(shape.num_slots, next_pow2(fullest * n, 1))
        longest = max((lens[r // n] + m for lens, b in zip(lens_H, budgets_H) for r, m in enumerate(b)), default=1)
        J = next_pow2(pg.cdiv(longest, shape.page_size), 1)
        self.scheds = []  # (host, its prompts on this shard, scheduler)
        for h, (lens, budgets, ids_h) in enumerate(zip(lens_H, budgets_H, self.ids)):
            pg.check_fits(lens, budgets, n, pg.PagePool(shape.num_pages, shape.page_size))
            for ids_g in ids_h:
                sched = sched_lib.Scheduler(
                    pg.PagePool(shape.num_pages, shape.page_size),
                    [[0] * lens[i] for i in ids_g],
                    n,
                    [budgets[i * n + j] for i in ids_g for j in range(n)],
                    num_slots=self.S,
                    chunk=shape.prefill_chunk,
                    burst=shape.decode_burst,
                    pages_per_seq=J,
                    started={k: started_H[h][i] for k, i in enumerate(ids_g) if i in started_H[h]},
                )
                self.scheds.append((h, ids_g, sched))
        self.counts = Counts()

    def done(self) -> bool:
        return all(s.done() for _, _, s in self.scheds)

    def round(self) -> None:
        """One iteration of the engine's loop: a prefill round, then a decode round."""
        chunks = self._prefill_round()
        if not self._decode_round() and not chunks and not self.done():
            raise RuntimeError("simulate: nothing to prefill or decode (a scheduler bug)")

    def ended(self, h: int, target: int = 0) -> bool:
        """Host h's rows all ended, or (target > 0) it has `target` complete prompts (`calls.Call.ended`)."""
        mine = [s for hh, _, s in self.scheds if hh == h]
        return all(s.done() for s in mine) or 0 < target <= sum(len(s.complete_prompts()) for s in mine)

    def run(self, target: int = 0) -> None:
        """Rounds while a host has not ended (`ended`), checked before each round as the engine does."""
        while not all(self.ended(h, target) for h in range(self.shape.hosts)):
            self.round()
        self.counts.preemptions = sum(s.preemptions for _, _, s in self.scheds)

    def _prefill_round(self) -> int:
        chunks, n = 0, self.n
        first = np.zeros(n, np.int32), np.zeros(n, np.float32), np.zeros(n, np.float32)
        while True:
            jobs = [s.next_prefills(self.shape.prefill_seqs) for _, _, s in self.scheds]
            if not any(jobs):
                self.counts.prefill_chunks += chunks
                return chunks
            for (_, _, s), jobs_g in zip(self.scheds, jobs):
                for job in jobs_g:
                    if job.last:
                        s.finish_prefill(job, *first)
            chunks += 1

    def _decode_round(self) -> bool:
        bursts = min(s.steady_bursts() for _, _, s in self.scheds)
        djobs = [s.next_decode(bursts) for _, _, s in self.scheds]
        if all(d is None for d in djobs):
            return False
        K, S = self.shape.decode_burst * bursts, self.S
        t_K = np.arange(K)[:, None]
        tokens, logp = np.zeros((K, S), np.int32), np.zeros((K, S), np.float32)
        c = self.counts
        for (_, _, s), job in zip(self.scheds, djobs):
            if job is None:
                continue
            valid = job.active_S[None, :] & (t_K < job.budget_S[None, :])
            c.kv_reads += int(((job.pos_S[None, :] + t_K + 1) * valid).sum())
            c.slot_steps += int(valid.sum())
            s.finish_decode(job, tokens, valid, logp, logp)
        c.decode_steps += K
        c.decode_rounds += 1
        c.slot_capacity += K * S * len(self.scheds)
        return True

    def complete(self, h: int) -> set[int]:
        """Host h's prompts (host-local indices) whose n rows all finished."""
        return {ids_g[k] for hh, ids_g, s in self.scheds if hh == h for k in s.complete_prompts()}

    def row_states(self, h: int) -> dict[int, list]:
        """Host h's prompts whose rows have begun -> their n RowStates now."""
        out = {}
        for hh, ids_g, s in self.scheds:
            if hh == h:
                out.update({ids_g[k]: states for k, states in s.all_row_states().items()})
        return out


def work_left(budgets_R: Sequence[int], started: dict, n: int) -> list[int]:
    """Each row's tokens still to make (a begun row has made some; a finished one none): what the engine
    balances its shards on."""
    left = list(budgets_R)
    for i, states in started.items():
        for j, st in enumerate(states):
            left[i * n + j] = 0 if st.finished else st.max_new - len(st.tokens)
    return left


def split_hosts(items: Sequence, hosts: int) -> list[list]:
    """Contiguous equal shares, one per host (the engine's hosts each hold their own prompts)."""
    if len(items) % hosts:
        raise ValueError(f"simulate: {len(items)} prompts do not split over {hosts} hosts")
    k = len(items) // hosts
    return [list(items[h * k : (h + 1) * k]) for h in range(hosts)]


def synchronous(shape: EngineShape, prompt_lens: Sequence[int], n: int, budgets_R: Sequence[int]) -> Counts:
    """One call over every prompt (with its n rows' budgets), to completion: the engine's counts."""
    lens_H = split_hosts(list(prompt_lens), shape.hosts)
    rows_H = [
        sum(r, [])
        for r in split_hosts([list(budgets_R[i * n : (i + 1) * n]) for i in range(len(prompt_lens))], shape.hosts)
    ]
    call = Call(shape, lens_H, rows_H, n)
    call.run()
    return call.counts


def replay_counts(eng, prompt_lens: Sequence[int], n: int, budgets_R: Sequence[int]) -> dict:
    """The counts `eng.generate(...)` reports in `eng.stats` for these prompts and per-row budgets (no stop
    ids), from the simulator: a bench compares them with what the engine measured."""
    c = synchronous(EngineShape.of_engine(eng), prompt_lens, n, budgets_R)
    return dict(
        decode_steps=c.decode_steps,
        decode_rounds=c.decode_rounds,
        prefill_chunks=c.prefill_chunks,
        slot_occupancy=c.occupancy,
        preemptions=c.preemptions,
    )


@dataclasses.dataclass
class Group:
    """A prompt in flight across partial-rollout steps: its rows' budgets, their states once begun, and the
    step whose policy sampled its first tokens."""

    budgets: list[int]
    rows: list | None = None
    first_step: int = -1


@dataclasses.dataclass(frozen=True)
class Step:
    """One simulated RL step's rollout: the engine's counts, the groups that train and their tokens (useful
    tokens), and the groups carried into the next step and dropped as too stale."""

    counts: Counts
    trained_groups: int
    useful_tokens: int
    carried_groups: int = 0
    dropped_rows: int = 0
    max_lag: int = 0  # steps between the oldest trained group's first tokens and this step


def synchronous_steps(shape: EngineShape, prompt_len: int, n: int, prompts: int, lengths, steps: int) -> list[Step]:
    """`steps` synchronous steps: each one call over `prompts` fresh prompts to completion; `lengths(k)`
    draws k rows' budgets."""
    out = []
    for _ in range(steps):
        budgets = [int(b) for b in lengths(prompts * n)]
        c = synchronous(shape, [prompt_len] * prompts, n, budgets)
        out.append(Step(c, prompts, sum(budgets)))
    return out


def partial_steps(
    shape: EngineShape,
    prompt_len: int,
    n: int,
    prompts: int,
    lengths,
    steps: int,
    oversample: float,
    max_staleness: int,
) -> list[Step]:
    """`steps` steps of partial rollouts as rollout/partial.py runs them on each host: carried groups first,
    then whole batches of fresh prompts while the call holds fewer than ceil(oversample x batch); the call
    stops when every host has its batch of complete groups; the first of them in the call's order train, the
    rest are carried, and a begun group whose first tokens would train more than `max_staleness` steps late
    is dropped. `prompts`: the global batch (each host trains prompts / hosts)."""
    per_host = len(split_hosts(list(range(prompts)), shape.hosts)[0])
    carried: list[list[Group]] = [[] for _ in range(shape.hosts)]
    out = []
    for step in range(steps):
        groups_H = []
        for h in range(shape.hosts):
            groups = list(carried[h])
            while len(groups) < math.ceil(oversample * per_host):
                groups += [Group([int(b) for b in lengths(n)]) for _ in range(per_host)]
            groups_H.append(groups)
        call = Call(
            shape,
            [[prompt_len] * len(g) for g in groups_H],
            [[b for grp in g for b in grp.budgets] for g in groups_H],
            n,
            [{i: grp.rows for i, grp in enumerate(g) if grp.rows is not None} for g in groups_H],
        )
        call.run(target=per_host)
        trained = carried_n = dropped = useful = lag = 0
        for h, groups in enumerate(groups_H):
            for i, states in call.row_states(h).items():
                groups[i].rows = states
                groups[i].first_step = step if groups[i].first_step < 0 else groups[i].first_step
            chosen = set(sorted(call.complete(h))[:per_host])
            rest = [g for i, g in enumerate(groups) if i not in chosen]
            fresh = lambda g: g.rows is None or step + 1 - g.first_step <= max_staleness  # noqa: E731
            carried[h] = [g for g in rest if fresh(g)]
            trained += len(chosen)
            useful += sum(len(st.tokens) for i in chosen for st in groups[i].rows)
            lag = max([lag] + [step - groups[i].first_step for i in chosen])
            carried_n += len(carried[h])
            dropped += n * (len(rest) - len(carried[h]))
        out.append(Step(call.counts, trained, useful, carried_n, dropped, lag))
    return out


def summary(steps: list[Step], warmup: int = 0) -> dict:
    """Means per step after `warmup` steps: the counts, occupancy over all of them, useful tokens, groups
    trained, carried and dropped rows."""
    kept = steps[warmup:] or steps
    total = Counts()
    for s in kept:
        total.add(s.counts)
    k = len(kept)
    return dict(
        steps=k,
        prefill_chunks=total.prefill_chunks / k,
        decode_steps=total.decode_steps / k,
        decode_rounds=total.decode_rounds / k,
        slot_occupancy=total.occupancy,
        preemptions=total.preemptions / k,
        kv_reads=total.kv_reads / k,
        useful_tokens=sum(s.useful_tokens for s in kept) / k,
        trained_groups=sum(s.trained_groups for s in kept) / k,
        carried_groups=sum(s.carried_groups for s in kept) / k,
        dropped_rows=sum(s.dropped_rows for s in kept) / k,
    )
