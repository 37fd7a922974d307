"""Continuous batching over decode slots on the page pool (host side, Python and numpy; engine.py runs the
device side): each sequence's page list (block table), prompt-prefix sharing, preemption, and which prefill
chunk and which decode burst run next.

Policy. Pages are taken as sequences grow (a decode burst first secures the pages its tokens will write).
When the pool runs out, the youngest sequence is preempted: its pages are released and it is recomputed
later by a prefill of its prompt and the tokens it had generated (those tokens and their logprobs are
kept; a token's random draw depends only on (seed, prompt, sample, position), so it continues as it would
have). The n samples of a prompt share its full prompt pages; only a partial last page is copied per
sample (pages.SCRATCH_PAGE takes padding).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import numpy as np

from rlvr_jax.rollout.pages import SCRATCH_PAGE, PagePool


@dataclasses.dataclass
class Row:
    """One (prompt, sample) sequence: what it generated and the pages holding its keys and values."""

    row: int  # output row: prompt * n + sample
    prompt: int
    sample: int
    max_new: int
    age: int  # order of entering the scheduler; preemption takes the largest
    tokens: list = dataclasses.field(default_factory=list)  # generated so far
    q_logp: list = dataclasses.field(default_factory=list)
    p_logp: list = dataclasses.field(default_factory=list)
    pages: list = dataclasses.field(default_factory=list)
    fed: int = 0  # positions whose keys and values are in the pages
    stopped: bool = False
    slot: int = -1

    @property
    def budget(self) -> int:
        return self.max_new - len(self.tokens)


@dataclasses.dataclass
class RowState:
    """A row's progress carried between calls (partial rollouts): its tokens, their logprobs under the
    sampling policy, its budget, and whether it ended (stop token or budget)."""

    tokens: list
    q_logp: list
    p_logp: list
    max_new: int
    finished: bool
    stopped: bool


@dataclasses.dataclass
class PrefillJob:
    """One chunk of one sequence's prefill: `tokens` at positions start.. into `pages` (its block table).
    A prompt with a partial last page `copy_src` has one copy of it per extra sample, `copy_dst`: every
    chunk writes the tokens of that page into the copies too, so after the last chunk each holds the same.
    The last chunk samples the n first tokens; a recompute (`row` set) only restores keys and values."""

    prompt: int
    tokens: list
    start: int
    pages: list
    last: bool
    row: Row | None = None
    copy_src: int = SCRATCH_PAGE
    copy_dst: list = dataclasses.field(default_factory=list)
    state: dict | None = dataclasses.field(default=None, repr=False)  # the scheduler's book of this prefill


@dataclasses.dataclass
class DecodeJob:
    """A burst of decode steps over the slots (numpy arrays, one entry per slot; empty slots inactive)."""

    rows: list  # Row or None per slot
    tokens_S: np.ndarray  # the token each slot feeds first
    pos_S: np.ndarray  # its position
    steps_S: np.ndarray  # completion index of the token each slot samples first
    budget_S: np.ndarray  # tokens it may still produce
    active_S: np.ndarray
    prompt_S: np.ndarray
    sample_S: np.ndarray
    pages_SxJ: np.ndarray


class Scheduler:
    """Continuous batching over `num_slots` decode slots. Each engine iteration asks for one prefill chunk
    (`next_prefills`: pieces of up to `max_seqs` sequences packed into `chunk` tokens) and one decode burst
    (`next_decode`) and reports their results back."""

    def __init__(
        self,
        pool: PagePool,
        prompts: Sequence[Sequence[int]],
        n: int,
        max_new_R: Sequence[int],
        *,
        num_slots: int,
        chunk: int,
        burst: int,
        pages_per_seq: int,
        stop_ids: Sequence[int] = (),
        started: dict[int, list[RowState]] | None = None,
    ):
        """`started`: prompt index -> its n rows' states, for prompts whose rows a previous call began
        (partial rollouts): unfinished rows continue by recompute, first; such prompts are not prefilled."""
        self.pool, self.prompts, self.n = pool, [list(p) for p in prompts], n
        self.max_new_R = list(max_new_R)
        self.num_slots, self.chunk, self.burst, self.pages_per_seq = num_slots, chunk, burst, pages_per_seq
        self.stop_ids = set(stop_ids)
        self.slots: list[Row | None] = [None] * num_slots
        self.pending = collections.deque(range(len(prompts)))  # prompts not prefilled yet
        self.ready: collections.deque[Row] = collections.deque()  # prefilled, waiting for a slot
        self.resume: collections.deque[Row] = collections.deque()  # preempted, waiting for a recompute
        self.finished: dict[int, Row] = {}
        self._prefills: list[dict] = []  # sequences being prefilled, chunk by chunk; only the first may be partial
        self._age = 0
        self.preemptions = 0
        self.slot_steps = 0  # sum over decode steps of the slots in use
        self.decode_steps = 0
        self._finished_per_prompt = collections.Counter()
        self._complete: list[int] = []  # prompts whose n rows finished, in that order
        for i, states in sorted((started or {}).items()):
            self._start_rows(i, states)

    def _start_rows(self, i: int, states: Sequence[RowState]) -> None:
        if len(states) != self.n or not all(st.tokens for st in states):
            raise ValueError(f"started prompt {i}: expected {self.n} row states with at least one token each")
        self.pending.remove(i)
        for j, st in enumerate(states):
            row = Row(row=i * self.n + j, prompt=i, sample=j, max_new=st.max_new, age=self._age)
            self._age += 1
            row.tokens, row.q_logp, row.p_logp = list(st.tokens), list(st.q_logp), list(st.p_logp)
            row.stopped = st.stopped
            if st.finished:
                self._finish(row)
            else:
                self.resume.append(row)

    # ---- state -------------------------------------------------------------------------------------
    def done(self) -> bool:
        return len(self.finished) == len(self.prompts) * self.n

    def complete_prompts(self) -> list[int]:
        """Prompts whose n rows all finished, in the order they completed."""
        return list(self._complete)

    def all_row_states(self) -> dict[int, list[RowState]]:
        """prompt -> its n rows now, for every prompt whose rows have begun (one pass over the rows)."""
        rows = list(self.finished.values()) + self._running() + list(self.ready) + list(self.resume)
        rows += [st["row"] for st in self._prefills if st.get("row") is not None]
        by_prompt: dict[int, list] = {}
        for r in rows:
            by_prompt.setdefault(r.prompt, [None] * self.n)[r.sample] = RowState(
                list(r.tokens), list(r.q_logp), list(r.p_logp), r.max_new, r.row in self.finished, r.stopped
            )
        return {i: states for i, states in by_prompt.items() if None not in states}

    def _running(self) -> list[Row]:
        return [r for r in self.slots if r is not None]

    def _free_slots(self) -> int:
        return sum(r is None for r in self.slots)

    def _finish(self, row: Row) -> None:
        self.pool.release(row.pages)
        row.pages = []
        if row.slot >= 0:
            self.slots[row.slot] = None
            row.slot = -1
        self.finished[row.row] = row
        self._finished_per_prompt[row.prompt] += 1
        if self._finished_per_prompt[row.prompt] == self.n:
            self._complete.append(row.prompt)

    def _reservation(self, prompt_len: int) -> int:
        """Pages a prompt's prefill takes: its pages, and a copy of a partial last page per extra sample."""
        partial = prompt_len % self.pool.page_size != 0
        return self.pool.pages_for(prompt_len) + (self.n - 1) * partial

    def page_holders(self) -> list[tuple[Row | None, list[int], int]]:
        """(row, its pages, positions written) of everything holding pages now: seated rows, rows waiting
        for a slot, and the prompt of a prefill in progress (row None)."""
        holders = [(r, r.pages, r.fed) for r in self._running() + list(self.ready)]
        holders += [(None, st["pages"], st["done"]) for st in self._prefills]
        return holders

    def live_tokens(self) -> int:
        """Token positions whose keys and values the pool holds now, a shared page counted once (pages
        secured for tokens not written yet hold none)."""
        fill: dict[int, int] = {}
        ps = self.pool.page_size
        for _, pages, fed in self.page_holders():
            for k, page in enumerate(pages):
                fill[page] = max(fill.get(page, 0), min(ps, max(0, fed - k * ps)))
        return sum(fill.values())

    # ---- prefill -----------------------------------------------------------------------------------
    def next_prefill(self) -> PrefillJob | None:
        """One sequence's next chunk (the one-sequence form of `next_prefills`)."""
        jobs = self.next_prefills(1)
        return jobs[0] if jobs else None

    def next_prefills(self, max_seqs: int) -> list[PrefillJob]:
        """The next prefill chunk: pieces of up to `max_seqs` sequences, `chunk` tokens in all, packed in order:
        the sequence a previous chunk left partial first (the only one that may start past position 0), then
        new ones while a slot would otherwise stay empty and the pool holds their pages. Only the last piece
        may stop short of its sequence's end."""
        jobs, room, k = [], self.chunk, 0
        while room > 0 and len(jobs) < max_seqs:
            if k == len(self._prefills) and not self._start_prefill():
                break
            st = self._prefills[k]
            k += 1
            lo = st["done"]
            hi = min(lo + room, len(st["tokens"]))
            st["done"], room = hi, room - (hi - lo)
            job = PrefillJob(
                st["prompt"], st["tokens"][lo:hi], lo, st["pages"], hi == len(st["tokens"]), row=st.get("row")
            )
            if job.row is None and st.get("copies"):
                job.copy_src, job.copy_dst = st["pages"][-1], st["copies"]
            job.state = st
            jobs.append(job)
        return jobs

    def _incoming(self) -> int:
        """Rows the prefills in progress will seat: n per prompt, one per recompute."""
        return sum(1 if st.get("row") is not None else self.n for st in self._prefills)

    def _start_prefill(self) -> bool:
        """Starts a recompute (first) or a new prompt when a slot would otherwise stay empty and the pool
        holds its pages."""
        if self._free_slots() - len(self.ready) - self._incoming() <= 0:
            return False
        if self.resume:
            row = self.resume[0]
            tokens = self.prompts[row.prompt] + row.tokens[:-1]
            need = self.pool.pages_for(len(tokens))
            if need > self.pool.num_free:
                return False
            self.resume.popleft()
            row.pages = self.pool.allocate(need)
            self._prefills.append(dict(prompt=row.prompt, tokens=tokens, pages=row.pages, done=0, row=row))
            return True
        if not self.pending:
            return False
        i = self.pending[0]
        need = self._reservation(len(self.prompts[i]))
        if need > self.pool.num_free:
            return False
        self.pending.popleft()
        pages = self.pool.allocate(self.pool.pages_for(len(self.prompts[i])))
        partial = len(self.prompts[i]) % self.pool.page_size != 0
        copies = self.pool.allocate((self.n - 1) * partial)
        self._prefills.append(dict(prompt=i, tokens=self.prompts[i], pages=pages, done=0, copies=copies))
        return True

    def finish_prefill(self, job: PrefillJob, first_tokens=(), q_logp=(), p_logp=()) -> None:
        """After a job's last chunk: a recompute takes a slot; a prompt becomes n rows, each with its first
        token, sharing the full prompt pages (the last sample keeps the original partial page)."""
        if not job.last:
            return
        self._prefills = [st for st in self._prefills if st is not job.state]
        if job.row is not None:  # a recompute: back to decoding where it was
            job.row.fed = job.start + len(job.tokens)
            self.ready.appendleft(job.row)
            return
        i, L = job.prompt, job.start + len(job.tokens)
        full = L // self.pool.page_size
        shared, partial = job.pages[:full], job.pages[full:]  # partial: [] or its one last page
        for _ in range(self.n - 1):  # sample 0 takes over the prompt's own references
            self.pool.share(shared)
        for j in range(self.n):
            r = i * self.n + j
            row = Row(row=r, prompt=i, sample=j, max_new=self.max_new_R[r], age=self._age)
            self._age += 1
            own = partial if not partial or j == self.n - 1 else [job.copy_dst[j]]
            row.pages, row.fed = list(shared) + list(own), L
            self._record(row, int(first_tokens[j]), float(q_logp[j]), float(p_logp[j]))
            if row.stopped or row.budget == 0:
                self._finish(row)
            else:
                self.ready.append(row)

    def _record(self, row: Row, token: int, q: float, p: float) -> None:
        row.tokens.append(token)
        row.q_logp.append(q)
        row.p_logp.append(p)
        row.stopped = token in self.stop_ids

    # ---- decode ------------------------------------------------------------------------------------
    def _seat(self) -> None:
        while self.ready and None in self.slots:
            row = self.ready.popleft()
            row.slot = self.slots.index(None)
            self.slots[row.slot] = row

    def steady_bursts(self) -> int:
        """Decode bursts this shard can run back to back with no word from the host: more than one only when
        no row can stop early (no stop tokens), no free slot could be filled before a row finishes, and the
        pool holds every seated row's pages up to the burst in which the first of them finishes (the last)."""
        self._seat()
        running = self._running()
        if self.stop_ids or not running:
            return 1
        if None in self.slots and (self.pending or self.resume or self._prefills):
            return 1
        bursts = min(-(-row.budget // self.burst) for row in running)
        while bursts > 1 and sum(n for _, n in self._pages_wanted(bursts * self.burst)) > self.pool.num_free:
            bursts -= 1
        return bursts

    def next_decode(self, bursts: int = 1) -> DecodeJob | None:
        """The slots' next decode job, with pages secured for `bursts` bursts (`steady_bursts` says how many
        may run back to back)."""
        self._seat()
        if not self._running():
            return None
        self._secure_pages(bursts * self.burst)
        S, J = self.num_slots, self.pages_per_seq
        job = DecodeJob(
            rows=list(self.slots),
            tokens_S=np.zeros(S, np.int32),
            pos_S=np.zeros(S, np.int32),
            steps_S=np.zeros(S, np.int32),
            budget_S=np.zeros(S, np.int32),
            active_S=np.zeros(S, bool),
            prompt_S=np.zeros(S, np.int32),
            sample_S=np.zeros(S, np.int32),
            pages_SxJ=np.full((S, J), SCRATCH_PAGE, np.int32),
        )
        for s, row in enumerate(self.slots):
            if row is None:
                continue
            job.tokens_S[s] = row.tokens[-1]
            job.pos_S[s] = row.fed
            job.steps_S[s] = len(row.tokens)
            job.budget_S[s] = row.budget
            job.active_S[s] = True
            job.prompt_S[s], job.sample_S[s] = row.prompt, row.sample
            job.pages_SxJ[s, : len(row.pages)] = row.pages
        return job

    def _pages_wanted(self, steps: int) -> list[tuple[Row, int]]:
        """(row, pages it still needs) for every seated row to write its next `steps` tokens."""
        want = []
        for row in self._running():
            need = self.pool.pages_for(row.fed + min(steps, row.budget)) - len(row.pages)
            if need > 0:
                want.append((row, need))
        return want

    def _secure_pages(self, steps: int) -> None:
        """Every seated row gets the pages its next `steps` tokens write; short of pages, the youngest
        sequence (seated, waiting or being prefilled) is preempted, until the rest fit."""
        while True:
            want = self._pages_wanted(steps)
            if sum(need for _, need in want) <= self.pool.num_free:
                for row, need in want:
                    row.pages += self.pool.allocate(need)
                return
            self._preempt_youngest()

    def _preempt_youngest(self) -> None:
        fresh = [st for st in self._prefills if st.get("row") is None]
        if fresh:  # a prompt half prefilled is younger than any row: restart the youngest such
            st = fresh[-1]
            self._prefills.remove(st)
            self.pool.release(st["pages"] + st["copies"])
            self.pending.appendleft(st["prompt"])
            return
        recomputing = [st["row"] for st in self._prefills]
        victims = self._running() + list(self.ready) + recomputing
        if len(victims) <= 1:
            raise RuntimeError("the pool cannot hold one sequence's next burst (checked at admission; a bug)")
        row = max(victims, key=lambda r: r.age)
        if row in recomputing:
            self._prefills = [st for st in self._prefills if st.get("row") is not row]
        elif row in self.ready:
            self.ready.remove(row)
        else:
            self.slots[row.slot] = None
            row.slot = -1
        self.pool.release(row.pages)
        row.pages, row.fed = [], 0
        self.resume.appendleft(row)
        self.preemptions += 1

    def finish_decode(self, job: DecodeJob, tokens_KxS, valid_KxS, q_logp_KxS, p_logp_KxS) -> None:
        """Takes a burst's tokens: each slot's valid ones (up to its stop token or budget) are its next
        tokens; a finished row frees its pages and its slot at once."""
        self.decode_steps += tokens_KxS.shape[0]
        self.slot_steps += int(valid_KxS.sum())
        for s, row in enumerate(job.rows):
            if row is None:
                continue
            for t in range(tokens_KxS.shape[0]):
                if not valid_KxS[t, s]:
                    break
                row.fed += 1
                self._record(row, int(tokens_KxS[t, s]), float(q_logp_KxS[t, s]), float(p_logp_KxS[t, s]))
            if row.stopped or row.budget == 0:
                self._finish(row)


def row_budgets(prompt_lens: Sequence[int], n: int, T: int, max_new_tokens: Sequence[int] | None) -> list[int]:
    """New tokens each row (prompt x n + sample) may make: T, or `max_new_tokens` checked against it."""
    N = len(prompt_lens)
    if any(L == 0 for L in prompt_lens):
        raise ValueError("every prompt needs at least one token")
    max_new_R = [T] * (N * n) if max_new_tokens is None else [int(m) for m in max_new_tokens]
    if len(max_new_R) != N * n or any(not 1 <= m <= T for m in max_new_R):
        raise ValueError(f"max_new_tokens: one value in [1, {T}] per row ({N} prompts x {n} samples)")
    return max_new_R


def assign_shards(prompt_lens: Sequence[int], max_new_R: Sequence[int], n: int, shards: int) -> list[list[int]]:
    """Prompts (with their n samples) to `shards` batch shards: longest work first, each to the shard with
    the least work so far (work = prompt + new tokens of its rows). Returns each shard's prompts, in order."""
    work = [n * L + sum(max_new_R[i * n : (i + 1) * n]) for i, L in enumerate(prompt_lens)]
    load, out = [0] * shards, [[] for _ in range(shards)]
    for i in sorted(range(len(prompt_lens)), key=lambda i: (-work[i], i)):
        g = min(range(shards), key=lambda g: (load[g], g))
        out[g].append(i)
        load[g] += work[i]
    return [sorted(s) for s in out]


def occupancy(sched: Scheduler) -> float:
    """Mean fraction of the decode slots producing a token, over the decode steps run."""
    return sched.slot_steps / max(1, sched.decode_steps * sched.num_slots)
