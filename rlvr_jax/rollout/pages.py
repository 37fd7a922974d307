"""The paged KV pool's host-side book-keeping (numpy only): pages with reference counts, a page's bytes,
the pool's size, and the check that every sequence of a request fits. Page 0 is a scratch page: padding
tokens write there and no sequence owns it. scheduler.py decides who holds which pages.
"""

from __future__ import annotations

import collections
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
