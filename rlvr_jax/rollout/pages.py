"""Host-side book-keeping of the paged KV pool (numpy and Python only; engine.py runs the device side): the
page pool with reference counts, each sequence's page list (block table), prompt-prefix sharing, and the
scheduler that decides which prefill chunk and which decode burst run next.

Policy. Pages are taken as sequences grow (a decode burst first secures the pages its tokens will write).
When the pool runs out, the youngest sequence is preempted: its pages are released and it is recomputed
later by a prefill of its prompt and the tokens it had generated (those tokens and their logprobs are
kept; a token's random draw depends only on (seed, prompt, sample, position), so it continues as it would
have). The n samples of a prompt share its full prompt pages; only a partial last page is copied per
sample. Page 0 is a scratch page: padding tokens write there and no sequence owns it.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import numpy as np

SCRATCH_PAGE = 0


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class PagePool:
    """Pages 1..num_pages-1 with reference counts (page 0 is the scratch page)."""

    def __init__(self, num_pages: int, page_size: int):
        if num_pages < 2 or page_size < 1:
            raise ValueError(f"a pool needs >= 2 pages (one is scratch) and page_size >= 1: {num_pages=} {page_size=}")
        self.num_pages, self.page_size = num_pages, page_size
        self.refs = np.zeros(num_pages, np.int32)
        self.free: collections.deque[int] = collections.deque(range(1, num_pages))
        self.peak_used = 0

    @property
    def capacity(self) -> int:
        return self.num_pages - 1

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def used(self) -> int:
        return self.capacity - self.num_free

    def pages_for(self, tokens: int) -> int:
        return cdiv(tokens, self.page_size)

    def allocate(self, n: int) -> list[int]:
        if n > self.num_free:
            raise MemoryError(f"{n} pages asked, {self.num_free} free")
        out = [self.free.popleft() for _ in range(n)]
        self.refs[out] = 1
        self.peak_used = max(self.peak_used, self.used)
        return out

    def share(self, pages: Sequence[int]) -> None:
        for p in pages:
            assert self.refs[p] > 0, f"sharing free page {p}"
            self.refs[p] += 1

    def release(self, pages: Sequence[int]) -> None:
        for p in pages:
            assert self.refs[p] > 0, f"releasing free page {p}"
            self.refs[p] -= 1
            if self.refs[p] == 0:
                self.free.append(p)


def page_bytes(num_layers: int, num_kv_heads: int, head_dim: int, page_size: int, itemsize: int, shards: int = 1):
    """Bytes one page takes on one device: keys and values of every layer, kv heads split over `shards`."""
    return num_layers * page_size * 2 * cdiv(num_kv_heads, shards) * head_dim * itemsize


def pool_pages(bytes_per_page: int, *, num_pages: int = 0, memory_fraction: float = 0.0, free_bytes: int = 0) -> int:
    """The pool's size in pages: `num_pages` when given, else `memory_fraction` of `free_bytes`."""
    if num_pages:
        return num_pages
    if not 0 < memory_fraction <= 1:
        raise ValueError(f"pool size: give num_pages or a memory_fraction in (0, 1], got {memory_fraction}")
    return int(memory_fraction * free_bytes // bytes_per_page)


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
    """Continuous batching over `num_slots` decode slots. Each engine iteration asks for at most one
    prefill chunk (`next_prefill`) and one decode burst (`next_decode`) and reports their results back."""

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
    ):
        self.pool, self.prompts, self.n = pool, [list(p) for p in prompts], n
        self.max_new_R = list(max_new_R)
        self.num_slots, self.chunk, self.burst, self.pages_per_seq = num_slots, chunk, burst, pages_per_seq
        self.stop_ids = set(stop_ids)
        self.slots: list[Row | None] = [None] * num_slots
        self.pending = collections.deque(range(len(prompts)))  # prompts not prefilled yet
        self.ready: collections.deque[Row] = collections.deque()  # prefilled, waiting for a slot
        self.resume: collections.deque[Row] = collections.deque()  # preempted, waiting for a recompute
        self.finished: dict[int, Row] = {}
        self._prefill: dict | None = None  # the sequence being prefilled, chunk by chunk
        self._age = 0
        self.preemptions = 0
        self.slot_steps = 0  # sum over decode steps of the slots in use
        self.decode_steps = 0

    # ---- state -------------------------------------------------------------------------------------
    def done(self) -> bool:
        return len(self.finished) == len(self.prompts) * self.n

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

    def _reservation(self, prompt_len: int) -> int:
        """Pages a prompt's prefill takes: its pages, and a copy of a partial last page per extra sample."""
        partial = prompt_len % self.pool.page_size != 0
        return self.pool.pages_for(prompt_len) + (self.n - 1) * partial

    def live_tokens(self) -> int:
        """Token positions whose keys and values the pool holds now, a shared page counted once (pages
        secured for tokens not written yet hold none)."""
        fill: dict[int, int] = {}
        holders = [(r.pages, r.fed) for r in self._running() + list(self.ready)]
        if self._prefill is not None:
            holders.append((self._prefill["pages"], self._prefill["done"]))
        ps = self.pool.page_size
        for pages, fed in holders:
            for k, page in enumerate(pages):
                fill[page] = max(fill.get(page, 0), min(ps, max(0, fed - k * ps)))
        return sum(fill.values())

    # ---- prefill -----------------------------------------------------------------------------------
    def next_prefill(self) -> PrefillJob | None:
        if self._prefill is None and not self._start_prefill():
            return None
        st = self._prefill
        lo = st["done"]
        hi = min(lo + self.chunk, len(st["tokens"]))
        st["done"] = hi
        job = PrefillJob(st["prompt"], st["tokens"][lo:hi], lo, st["pages"], hi == len(st["tokens"]), row=st.get("row"))
        if job.row is None and st.get("copies"):
            job.copy_src, job.copy_dst = st["pages"][-1], st["copies"]
        return job

    def _start_prefill(self) -> bool:
        """Starts a recompute (first) or a new prompt when a slot would otherwise stay empty and the pool
        holds its pages."""
        if self._free_slots() - len(self.ready) <= 0:
            return False
        if self.resume:
            row = self.resume[0]
            tokens = self.prompts[row.prompt] + row.tokens[:-1]
            need = self.pool.pages_for(len(tokens))
            if need > self.pool.num_free:
                return False
            self.resume.popleft()
            row.pages = self.pool.allocate(need)
            self._prefill = dict(prompt=row.prompt, tokens=tokens, pages=row.pages, done=0, row=row)
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
        self._prefill = dict(prompt=i, tokens=self.prompts[i], pages=pages, done=0, copies=copies)
        return True

    def finish_prefill(self, job: PrefillJob, first_tokens=(), q_logp=(), p_logp=()) -> None:
        """After a job's last chunk: a recompute takes a slot; a prompt becomes n rows, each with its first
        token, sharing the full prompt pages (the last sample keeps the original partial page)."""
        if not job.last:
            return
        self._prefill = None
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
    def next_decode(self) -> DecodeJob | None:
        while self.ready and None in self.slots:
            row = self.ready.popleft()
            row.slot = self.slots.index(None)
            self.slots[row.slot] = row
        if not self._running():
            return None
        self._secure_pages()
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

    def _secure_pages(self) -> None:
        """Every seated row gets the pages its next burst writes; short of pages, the youngest sequence
        (seated, waiting or being prefilled) is preempted, until the rest fit."""
        while True:
            want = {}
            for row in self._running():
                need = self.pool.pages_for(row.fed + min(self.burst, row.budget)) - len(row.pages)
                if need > 0:
                    want[row.row] = (row, need)
            if sum(need for _, need in want.values()) <= self.pool.num_free:
                for row, need in want.values():
                    row.pages += self.pool.allocate(need)
                return
            self._preempt_youngest()

    def _preempt_youngest(self) -> None:
        if self._prefill is not None and self._prefill.get("row") is None:
            st, self._prefill = self._prefill, None  # a prompt half prefilled is younger than any row: restart it
            self.pool.release(st["pages"] + st["copies"])
            self.pending.appendleft(st["prompt"])
            return
        victims = self._running() + list(self.ready)
        if self._prefill is not None:
            victims.append(self._prefill["row"])
        if len(victims) <= 1:
            raise RuntimeError("the pool cannot hold one sequence's next burst (checked at admission; a bug)")
        row = max(victims, key=lambda r: r.age)
        if self._prefill is not None and row is self._prefill["row"]:
            self._prefill = None
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


def check_fits(prompt_lens: Sequence[int], max_new_R: Sequence[int], n: int, pool: PagePool) -> None:
    """Refuses, with the numbers, a sequence the pool can never hold (its prompt and all its new tokens), or
    a prompt whose prefill and per-sample copies of its partial last page exceed the pool."""
    for i, L in enumerate(prompt_lens):
        longest = max(max_new_R[i * n : (i + 1) * n])
        need = pool.pages_for(L + longest)
        partial = L % pool.page_size != 0
        prefill = pool.pages_for(L) + (n - 1) * partial
        if max(need, prefill) > pool.capacity:
            raise ValueError(
                f"prompt {i} ({L} tokens, up to {longest} new, {n} samples) needs {max(need, prefill)} pages of "
                f"{pool.page_size} tokens (a whole sequence: {need}; its prefill and {n - 1} copies of the partial "
                f"last page: {prefill}), but the pool holds {pool.capacity} (+1 scratch); raise the pool's "
                f"size or shorten the prompt / max_new_tokens"
            )


def occupancy(sched: Scheduler) -> float:
    """Mean fraction of the decode slots producing a token, over the decode steps run."""
    return sched.slot_steps / max(1, sched.decode_steps * sched.num_slots)
