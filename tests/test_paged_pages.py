"""The host side of the paged pool: reference counts, prefix sharing, and the scheduler driven by a fake
device that stores each position's token in its page and checks, before every chunk and burst, that a
sequence's block table reads back exactly its prompt and generated tokens (so shared pages, copied partial
pages, growth and recomputes after preemption are all exercised against what a model would read)."""

import numpy as np
import pytest

from rlvr_jax.rollout import pages as pg
from rlvr_jax.rollout import scheduler as sc

STOP = 2


def fake_token(i, j, t):
    return (i * 131 + j * 31 + t * 7 + (i * j * t) % 5) % 40 + 2  # sometimes STOP


class FakeDevice:
    def __init__(self, pool, prompts):
        self.pool, self.prompts = pool, prompts
        self.cells = np.full((pool.num_pages, pool.page_size), -1, np.int64)

    def _check(self, pages, history):
        ps = self.pool.page_size
        got = [self.cells[pages[p // ps], p % ps] for p in range(len(history))]
        assert got == list(history), "a block table does not read back its sequence"
        assert pg.SCRATCH_PAGE not in pages[: pg.cdiv(len(history), ps)]

    def _write(self, pages, pos, token):
        ps = self.pool.page_size
        page = pages[pos // ps]
        assert page != pg.SCRATCH_PAGE and self.pool.refs[page] > 0
        self.cells[page, pos % ps] = token

    def prefill(self, job, n):
        history = self.prompts[job.prompt] + (job.row.tokens[:-1] if job.row is not None else [])
        self._check(job.pages, history[: job.start])
        for k, tok in enumerate(job.tokens):
            self._write(job.pages, job.start + k, tok)
        self.cells[job.copy_dst] = self.cells[job.copy_src]
        first = [fake_token(job.prompt, j, 0) for j in range(n)]
        return first, [-0.5] * n, [-0.25] * n

    def decode(self, job, burst):
        S = len(job.rows)
        out = np.zeros((burst, S), np.int64)
        valid = np.zeros((burst, S), bool)
        for s, row in enumerate(job.rows):
            if row is None:
                continue
            history = self.prompts[row.prompt] + row.tokens[:-1]
            pages = list(job.pages_SxJ[s])
            self._check(pages, history)
            tok, pos, step, budget = row.tokens[-1], len(history), len(row.tokens), row.budget
            for t in range(burst):
                self._write(pages, pos, tok)
                tok = fake_token(row.prompt, row.sample, step)
                out[t, s], valid[t, s] = tok, True
                pos, step, budget = pos + 1, step + 1, budget - 1
                if tok == STOP or budget == 0:
                    break
        return out, valid, np.full(out.shape, -1.0), np.full(out.shape, -2.0)


def expected(i, j, max_new):
    out = []
    while len(out) < max_new:
        out.append(fake_token(i, j, len(out)))
        if out[-1] == STOP:
            break
    return out


def run(prompts, n, max_new_R, *, num_pages, page_size=4, slots=3, chunk=5, burst=3):
    pool = pg.PagePool(num_pages, page_size)
    J = pg.cdiv(max(len(p) for p in prompts) + max(max_new_R), page_size)
    pg.check_fits([len(p) for p in prompts], max_new_R, n, pool)
    sched = sc.Scheduler(
        pool, prompts, n, max_new_R, num_slots=slots, chunk=chunk, burst=burst, pages_per_seq=J, stop_ids=(STOP,)
    )
    dev = FakeDevice(pool, prompts)
    for _ in range(10_000):
        if sched.done():
            break
        job = sched.next_prefill()
        if job is not None:
            sched.finish_prefill(job, *dev.prefill(job, n))
        djob = sched.next_decode()
        if djob is not None:
            sched.finish_decode(djob, *dev.decode(djob, burst))
        assert job is not None or djob is not None, "the scheduler stalled"
    assert sched.done()
    assert pool.num_free == pool.capacity and not pool.refs.any(), "pages leaked"
    return sched, pool


PROMPTS = [[5 + k for k in range(L)] for L in (7, 3, 12, 8, 1, 9)]


def test_every_row_gets_its_tokens_and_every_page_comes_back():
    n = 3
    max_new_R = [(r * 5) % 17 + 1 for r in range(len(PROMPTS) * n)]
    sched, pool = run(PROMPTS, n, max_new_R, num_pages=200)
    for r, row in sched.finished.items():
        i, j = divmod(r, n)
        assert row.tokens == expected(i, j, max_new_R[r]), r
        assert row.stopped == (row.tokens[-1] == STOP)
        assert row.q_logp[0] == -0.5 and all(q == -1.0 for q in row.q_logp[1:])
    assert sched.preemptions == 0
    assert 0 < sc.occupancy(sched) <= 1


def test_samples_share_full_prompt_pages_and_copy_the_partial_one():
    pool = pg.PagePool(64, 4)
    sched = sc.Scheduler(pool, [list(range(10))], 3, [8] * 3, num_slots=4, chunk=16, burst=2, pages_per_seq=8)
    job = sched.next_prefill()
    assert job.last and len(job.pages) == 3 and len(job.copy_dst) == 2 and job.copy_src == job.pages[2]
    assert pool.used == 5  # 3 prompt pages + 2 copies of the partial third
    sched.finish_prefill(job, [9, 9, 9], [0.0] * 3, [0.0] * 3)
    rows = list(sched.ready)
    assert [r.pages[:2] for r in rows] == [job.pages[:2]] * 3
    assert list(pool.refs[job.pages[:2]]) == [3, 3]
    assert sorted(r.pages[2] for r in rows) == sorted(job.copy_dst + [job.copy_src])


def test_a_small_pool_preempts_the_youngest_and_recomputes_it_to_the_same_tokens():
    n = 2
    max_new_R = [14] * (len(PROMPTS) * n)
    big, _ = run(PROMPTS, n, max_new_R, num_pages=200, slots=4)
    small, pool = run(PROMPTS, n, max_new_R, num_pages=8, slots=4)  # 7 pages: one sequence needs <= 7
    assert small.preemptions > 0
    assert pool.peak_used <= pool.capacity
    for r in big.finished:
        assert small.finished[r].tokens == big.finished[r].tokens
        assert small.finished[r].q_logp == big.finished[r].q_logp


def test_refuses_what_the_pool_can_never_hold_with_the_numbers():
    pool = pg.PagePool(5, 4)  # 4 usable pages = 16 tokens
    pg.check_fits([10], [6], 1, pool)
    with pytest.raises(ValueError, match=r"prompt 0 \(10 tokens, up to 7 new, 1 samples\) needs 5 pages .* holds 4"):
        pg.check_fits([10], [7], 1, pool)
    with pytest.raises(ValueError, match="its prefill and 3 copies of the partial last page: 6"):
        pg.check_fits([10], [2], 4, pool)
    with pytest.raises(ValueError, match="a pool needs >= 2 pages"):
        pg.PagePool(1, 4)


def test_pool_sizing_from_pages_or_memory():
    per_page = pg.page_bytes(num_layers=2, num_kv_heads=4, head_dim=16, page_size=8, itemsize=2, shards=2)
    assert per_page == 2 * 8 * 2 * 2 * 16 * 2
    assert pg.pool_pages(per_page, num_pages=77) == 77
    assert pg.pool_pages(per_page, memory_fraction=0.5, free_bytes=per_page * 100) == 50
    with pytest.raises(ValueError, match="memory_fraction"):
        pg.pool_pages(per_page)
