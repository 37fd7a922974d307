"""Verifier throughput: verifications/s per domain through the pool (1 and 2 workers) against
sequential in-process `score()` on the same samples, and the sandbox's cost per execution
against a bare interpreter start. `run(quick)` returns rows for benchmarks/bench.py."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time

from rlvr_jax.verifiers import VerifierConfig, score


def _samples(domain: str, n: int) -> tuple[list[dict], list[str]]:
    """n distinct samples, about two thirds correct, so no cache serves a repeat."""
    recs, resps = [], []
    for i in range(n):
        right = i % 3 != 0
        if domain == "math":
            recs.append({"domain": "math", "ground_truth": {"answers": [f"\\frac{{{i + 1}}}{{{i + 2}}}"]}})
            val = f"\\frac{{{2 * (i + 1)}}}{{{2 * (i + 2)}}}" if right else f"{i}.5"
            resps.append(f"<think>work {i}</think> Simplifying, the answer is $\\boxed{{{val}}}$.")
        elif domain == "science":
            gold = "ABCD"[i % 4]
            recs.append({"domain": "science", "ground_truth": {"answer": gold, "choices": list("ABCD")}})
            resps.append(f"<think>option {i}</think> **Answer:** {gold if right else 'ABCD'[(i + 1) % 4]}")
        elif domain == "code":
            tests = [{"input": f"{i} {j}\n", "output": f"{i + j}\n"} for j in range(3)]
            recs.append(
                {
                    "domain": "code",
                    "ground_truth": {"tests": tests, "fn_name": None, "time_limit_s": 2, "memory_limit_mb": 256},
                }
            )
            op = "+" if right else "-"
            resps.append(f"<think>add</think>```python\na, b = map(int, input().split())\nprint(a {op} b)\n```")
        else:  # if
            recs.append(
                {
                    "domain": "if",
                    "ground_truth": {
                        "instruction_ids": ["punctuation:no_comma", "change_case:english_lowercase"],
                        "kwargs": [{}, {}],
                        "prompt": "Write lowercase without commas.",
                    },
                }
            )
            body = f"all lowercase words number {i} and no commas here"
            resps.append("<think>ok</think>" + (body if right else body.replace("no commas", "no, commas")))
    return recs, resps


def _domains() -> list[str]:
    out = ["math", "science"]
    if shutil.which("bwrap"):
        out.append("code")
    if importlib.util.find_spec("rlvr_jax.instructions.registry") is not None:
        out.append("if")
    return out


def _sequential_rate(recs, resps, config) -> float:
    t0 = time.perf_counter()
    for r, x in zip(recs, resps):
        score(r, x, config=config)
    return len(recs) / (time.perf_counter() - t0)


def _pool_rate(pool, recs, resps) -> float:
    t0 = time.perf_counter()
    pool.submit(recs, resps).result()
    return len(recs) / (time.perf_counter() - t0)


def _mean_ms(fn, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def _sandbox_rows(reps: int) -> list[dict]:
    from rlvr_jax.verifiers import sandbox, warm

    lim = sandbox.Limits(time_s=5, wall_s=10, memory_mb=512, output_bytes=1 << 16)
    py = sandbox.sandbox_python()
    files = {"main.py": b"print(1)"}
    sandbox.run(files, "main.py", b"", lim)  # warm the page cache
    warm.run(files, "main.py", b"", lim)  # start this thread's warm sandbox
    cold = _mean_ms(lambda: sandbox.run(files, "main.py", b"", lim), reps)
    bare = _mean_ms(lambda: subprocess.run([py, "-I", "-S", "-c", "print(1)"], capture_output=True, check=True), reps)
    hot = _mean_ms(lambda: warm.run(files, "main.py", b"", lim), reps)
    warm.close()
    return [
        {
            "name": "verify/sandbox_exec_ms",
            "ours": round(cold, 2),
            "peer": round(bare, 2),
            "ratio": round(cold / bare, 2),
            "unit": "ms/exec",
            "note": f"a sandbox of its own (bwrap+rlimits+uid) vs bare `python -I -S`; overhead {cold - bare:.1f} ms per test run",
        },
        {
            "name": "verify/warm_sandbox_exec_ms",
            "ours": round(hot, 2),
            "peer": round(cold, 2),
            "ratio": round(hot / cold, 2),
            "unit": "ms/exec",
            "note": f"the warm sandbox (a fork of its pid 1, rlimits, files and processes cleared after) vs a sandbox "
            f"of its own per run; bare `python -I -S` {bare:.1f} ms",
        },
    ]


def run(quick: bool = False) -> list[dict]:
    from rlvr_jax.verifiers.pool import VerifierPool

    config = VerifierConfig(thinking=True)
    sizes = (
        {"math": 40, "science": 400, "code": 8, "if": 200}
        if quick
        else {"math": 200, "science": 4000, "code": 40, "if": 2000}
    )
    domains = _domains()
    data = {d: _samples(d, sizes[d]) for d in domains}
    for d in domains:  # warm imports and caches in this process before timing the peer
        score(data[d][0][0], data[d][1][0], config=config)
    peer = {d: _sequential_rate(*data[d], config) for d in domains}
    rows = []
    for workers in (1, 2):
        with VerifierPool(workers, deadline_s=30.0, config=config) as pool:
            for d in domains:  # workers started and every domain's first-call costs paid
                pool.submit(*[x[: 4 * workers] for x in _samples(d, 4 * workers)]).result()
            for d in domains:
                ours = _pool_rate(pool, *data[d])
                rows.append(
                    {
                        "name": f"verify/{d}/pool{workers}",
                        "ours": round(ours, 1),
                        "peer": round(peer[d], 1),
                        "ratio": round(ours / peer[d], 2),
                        "unit": "verif/s",
                        "note": f"{len(data[d][0])} samples, {workers} worker(s) vs sequential in-process",
                    }
                )
    if shutil.which("bwrap"):
        rows += _sandbox_rows(10 if quick else 50)
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(json.dumps(row))
