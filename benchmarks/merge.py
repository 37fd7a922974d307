"""Merge speed on CPU: 4 experts of a ~250M-parameter decoder (quick: ~30M), bf16 storage, fp32 math.

For task arithmetic and TIES (global and per-tensor trim): wall time, effective GB/s (bytes a
single read-all/write-once pass must move, divided by wall time), the memory-bandwidth floor
(those bytes / np.copyto bandwidth measured in the same run), and peak RSS above the inputs;
each beside a straightforward per-tensor numpy merge of the same tensors. Ours consumes its
inputs as `rlvr-merge` does (fresh copies made untimed before each run). No disk I/O is timed.
`run(quick)` returns rows for benchmarks/bench.py.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import threading
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import psutil

from rlvr_jax.merging import methods as merge

K = 4
DENSITY = 0.2


def model_shapes(quick: bool) -> dict[str, tuple]:
    """A Qwen-like decoder: vocab x embed tables, GQA attention, SwiGLU MLP, untied head."""
    V, E, L, H, KV, Dh, F = (8000, 512, 8, 8, 2, 64, 1408) if quick else (32000, 1024, 16, 16, 4, 64, 2816)
    s = {"embed/embedding": (V, E), "final_norm/scale": (E,), "lm_head/kernel": (E, V)}
    for i in range(L):
        p = f"layers/{i}/"
        s.update(
            {
                p + "attn/q_proj/kernel": (E, H, Dh),
                p + "attn/k_proj/kernel": (E, KV, Dh),
                p + "attn/v_proj/kernel": (E, KV, Dh),
                p + "attn/o_proj/kernel": (H, Dh, E),
                p + "mlp/gate_proj/kernel": (E, F),
                p + "mlp/up_proj/kernel": (E, F),
                p + "mlp/down_proj/kernel": (F, E),
                p + "input_norm/scale": (E,),
                p + "post_attn_norm/scale": (E,),
            }
        )
    return s


def make_models(shapes, seed=0):
    """Anchor and K experts as {path: bf16 numpy} (the peer's inputs) and as jax pytrees (ours)."""
    rng = np.random.default_rng(seed)
    bf16 = ml_dtypes.bfloat16
    a_np, x_np = {}, [dict() for _ in range(K)]
    for p, shp in shapes.items():
        a = rng.standard_normal(shp, dtype=np.float32) * 0.02
        a_np[p] = a.astype(bf16)
        for k in range(K):  # RL-sized updates: ~1% relative, so bf16 keeps most of them
            x_np[k][p] = (a + rng.standard_normal(shp, dtype=np.float32) * 2e-4).astype(bf16)
    tree = lambda d: {p: jnp.asarray(x) for p, x in d.items()}  # flat dict: same leaves, less plumbing
    return a_np, x_np, tree(a_np), [tree(x) for x in x_np]


def copy_bandwidth(nbytes=1 << 28) -> float:
    """GB/s of np.copyto on a warm buffer far beyond cache, counting the read and the write; best of 5
    (the CPUs are shared: the best copy is the closest to what the memory can do)."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = min(_timed(lambda: np.copyto(dst, src))[0] for _ in range(5))
    return 2 * nbytes / best / 1e9


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 2 ms in a thread."""

    def __enter__(self):
        self.proc, self.base, self.peak, self.stop = psutil.Process(), 0, 0, False
        self.base = self.peak = self.proc.memory_info().rss
        self.t = threading.Thread(target=self._watch, daemon=True)
        self.t.start()
        return self

    def _watch(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.stop = True
        self.t.join()
        self.extra_gb = (self.peak - self.base) / 1e9


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return time.perf_counter() - t, out


# ---------------------------------------------------------------- the numpy peer (per tensor, fp32)


def np_task_arithmetic(a_np, x_np, scale=1.0):
    out = {}
    for p, a in a_np.items():
        a32 = a.astype(np.float32)
        acc = np.zeros_like(a32)
        for x in x_np:
            acc += x[p].astype(np.float32) - a32
        out[p] = (a32 + scale * acc).astype(a.dtype)
    return out


def _np_kth_largest(v, k):
    return np.partition(v, v.size - k)[v.size - k]


def np_ties(a_np, x_np, density=DENSITY, scope="global"):
    if scope == "global":  # one expert at a time: |tau| of the whole model, then an exact k-th largest
        thr = []
        for x in x_np:
            v = np.concatenate(
                [np.abs(x[p].astype(np.float32) - a.astype(np.float32)).ravel() for p, a in a_np.items()]
            )
            thr.append(_np_kth_largest(v, merge.keep_count(density, v.size)))
            del v
    out = {}
    for p, a in a_np.items():
        a32 = a.astype(np.float32)
        taus = [x[p].astype(np.float32) - a32 for x in x_np]
        if scope == "tensor":
            thr = [_np_kth_largest(np.abs(t).ravel(), merge.keep_count(density, t.size)) for t in taus]
        taus = [np.where(np.abs(t) >= thr[k], t, 0) for k, t in enumerate(taus)]
        s = np.sign(sum(taus))
        agree = [(np.sign(t) == s) & (t != 0) for t in taus]
        num = sum(np.where(g, t, 0) for g, t in zip(agree, taus))
        den = sum(g.astype(np.float32) for g in agree)
        out[p] = (a32 + np.where(den > 0, num / np.maximum(den, 1), 0)).astype(a.dtype)
    return out


# ---------------------------------------------------------------- rows


def _median_and_peak(fn, repeats: int, make_inputs=tuple):
    """Median wall time of `repeats` runs of fn(*make_inputs()) (inputs made untimed before each run;
    the first run, under the peak-RSS watcher, counts too). One run alone swung 0.21-1.01 s for the
    same task-arithmetic merge here; fresh output buffers that must be faulted in are one cause."""
    peak, times = PeakRSS(), []
    for i in range(repeats):
        args = make_inputs()
        with peak if i == 0 else contextlib.nullcontext():
            times.append(_timed(lambda: fn(*args))[0])  # noqa: F821 (args is bound above; del only ends its life)
        del args
    return statistics.median(times), peak


def fresh_copies(a_j, x_j):
    """Device copies of anchor and experts for one merge that consumes them, as `rlvr-merge` does:
    each input is freed once merged and the result reuses the anchor's buffers."""
    copy = lambda tree: {p: jnp.copy(x) for p, x in tree.items()}
    out = (copy(a_j), [copy(x) for x in x_j])
    jax.block_until_ready(out)
    return out


def run(quick: bool = False) -> list[dict]:
    repeats = 1 if quick else 3
    shapes = model_shapes(quick)
    n = sum(int(np.prod(s)) for s in shapes.values())
    a_np, x_np, a_j, x_j = make_models(shapes)
    moved = (K + 2) * n * 2  # bf16: read anchor + K experts, write one model
    # Ours as rlvr-merge runs it (consuming its inputs); the peer allocates its outputs.
    cases = {
        "task_arithmetic": (
            lambda a, x: merge.task_arithmetic(a, x, consume=True),
            lambda: np_task_arithmetic(a_np, x_np),
        ),
        "ties_global": (
            lambda a, x: merge.ties(a, x, density=DENSITY, trim_scope="global", consume=True),
            lambda: np_ties(a_np, x_np, scope="global"),
        ),
        "ties_tensor": (
            lambda a, x: merge.ties(a, x, density=DENSITY, trim_scope="tensor", consume=True),
            lambda: np_ties(a_np, x_np, scope="tensor"),
        ),
    }
    inputs = lambda: fresh_copies(a_j, x_j)
    bws, rows = [copy_bandwidth()], []
    size = f"{K} experts x {n / 1e6:.0f}M params bf16"
    for name, (ours_fn, peer_fn) in cases.items():
        _timed(lambda: ours_fn(*inputs()))  # compile once; each distinct tensor shape compiles its own kernel
        t_ours, m_ours = _median_and_peak(ours_fn, repeats, inputs)
        bws.append(copy_bandwidth())  # re-measured beside every case: the machine is shared
        bw = max(bws)
        floor = moved / (bw * 1e9)
        t_peer, m_peer = _median_and_peak(peer_fn, repeats)
        rows += [
            {
                "name": f"merge/{name}/wall",
                "ours": round(t_ours, 3),
                "peer": round(t_peer, 3),
                "ratio": round(t_ours / t_peer, 3),
                "unit": "s",
                "note": f"{size}; ours consumes its inputs as rlvr-merge does (output in the anchor's buffers); "
                f"peer: per-tensor numpy; median of {repeats} runs each",
            },
            {
                "name": f"merge/{name}/throughput",
                "ours": round(moved / t_ours / 1e9, 2),
                "peer": round(moved / t_peer / 1e9, 2),
                "ratio": round(t_ours / floor, 2),
                "unit": "GB/s",
                "note": f"one-pass bytes {moved / 1e9:.2f} GB / wall; one-pass floor {floor:.3f} s at {bw:.1f} GB/s"
                + ("; exact global threshold = 2 extra histogram passes" if name == "ties_global" else ""),
            },
            {
                "name": f"merge/{name}/peak_rss_extra",
                "ours": round(m_ours.extra_gb, 3),
                "peer": round(m_peer.extra_gb, 3),
                "ratio": round(m_ours.extra_gb / max(m_peer.extra_gb, 1e-9), 3),
                "unit": "GB",
                "note": f"peak RSS above the loaded inputs; one model is {n * 2 / 1e9:.2f} GB",
            },
        ]
    rows.insert(
        0,
        {
            "name": "merge/copy_bandwidth",
            "ours": round(max(bws), 2),
            "peer": None,
            "ratio": None,
            "unit": "GB/s",
            "note": f"np.copyto, read + write bytes, best of {len(bws)} rounds (min {min(bws):.1f}); sets the floors",
        },
    )
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(json.dumps(row))
