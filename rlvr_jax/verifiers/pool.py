"""VerifierPool: worker processes that score batches asynchronously, in input order, each sample
under a deadline; a stuck or dead worker is SIGKILLed and replaced and only its current sample
scores 0 (`timeout` / `error`). Hand-written rather than multiprocessing.Pool/concurrent.futures,
which can neither kill one stuck task nor say which sample killed a worker. Workers are fresh
interpreters (`python -m rlvr_jax.verifiers.worker`), never forks of the trainer: a fork of a
process running JAX threads is unsafe, and multiprocessing's spawn would re-import its __main__."""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import math as _math
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as mp_wait

from rlvr_jax.verifiers import math as math_verifier
from rlvr_jax.verifiers import sandbox, warm
from rlvr_jax.verifiers.base import DOMAINS, Score, VerifierConfig, truncated_score, verifier_config
from rlvr_jax.verifiers.code import limits_for, sandbox_runs
from rlvr_jax.verifiers.dispatch import score

_MAX_CHUNK = 16  # samples per message for cheap domains (amortises the pipe round trip)
_CRASH_LOOP = 5  # consecutive worker deaths with nothing scored before the pool gives up
_STARTUP_S = 120.0  # a worker that has not imported its verifiers by then is replaced


def worker_main(fd: int, owner_pid: int, slot: int) -> None:
    """Worker loop: receive chunks of samples, send back one result per sample as soon as it is done
    (so the parent knows which sample is current if this process must be killed)."""
    try:  # die with the pool's dispatcher thread, which started us
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the trainer, which closes us
    conn = Connection(fd)
    config = conn.recv()
    sandbox.set_identity(owner_pid, slot)
    math_verifier.warm_up()
    conn.send("ready")
    try:
        while True:
            try:
                chunk = conn.recv()
            except (EOFError, OSError):
                return
            if chunk is None:
                return
            for item_id, record, response, thinking in chunk:
                try:
                    s = score(record, response, thinking=thinking, config=config)
                except Exception as e:  # SandboxUnavailable: the parent checks first; still never hang
                    s = Score(0.0, "error", {"error": f"{type(e).__name__}: {str(e)[:500]}"})
                conn.send((item_id, s.reward, s.reason, s.details))
    finally:
        warm.close()  # its sandbox ends and is reaped here, not orphaned


def _with_truncated(graded: Future, out: Future, cut: list[bool]) -> None:
    """Resolve `out` with the graded rows' scores and truncated_score() for the rows `cut`, in row order."""
    if graded.exception() is not None:
        out.set_exception(graded.exception())
        return
    scores = iter(graded.result())
    out.set_result([truncated_score() if c else next(scores) for c in cut])


def _expand(unique: Future, out: Future, slot_of: list[int]) -> None:
    """Resolve `out` with the unique batch's scores, one per original sample."""
    if out.done():
        return
    if unique.exception() is not None:
        out.set_exception(unique.exception())
    else:
        scores = unique.result()
        out.set_result([scores[i] for i in slot_of])


@dataclasses.dataclass
class _Batch:
    future: Future
    results: list
    remaining: int


@dataclasses.dataclass
class _Item:
    batch: _Batch
    index: int
    domain: str
    record: dict
    response: str
    thinking: bool
    deadline_s: float


@dataclasses.dataclass
class _Worker:
    slot: int
    proc: subprocess.Popen
    conn: Connection
    ready: bool = False
    started: float = dataclasses.field(default_factory=time.monotonic)
    inflight: collections.deque = dataclasses.field(default_factory=collections.deque)
    head_t0: float = 0.0
    deaths: int = 0  # consecutive deaths without a result


def _empty_counters() -> dict:
    return {
        d: {"scored": 0, "timeouts": 0, "errors": 0, "latency_sum": 0.0, "latency_max": 0.0, "restarts": 0}
        for d in DOMAINS + ("other",)
    }


class VerifierPool:
    """`submit(records, responses) -> Future[list[Score]]`; `counters()`; `close()`.

    deadline_s bounds one math / science / if sample; a code sample gets deadline_s plus, per
    test it may run, its time limit and the interpreter start-up slack."""

    def __init__(self, num_workers: int | None = None, deadline_s: float = 10.0, config: VerifierConfig | None = None):
        self.config = config or VerifierConfig()
        self.num_workers = int(num_workers or os.cpu_count() or 1)
        if not 1 <= self.num_workers <= sandbox.MAX_SLOTS:
            raise ValueError(f"num_workers must be in [1, {sandbox.MAX_SLOTS}], got {num_workers}")
        self.deadline_s = float(deadline_s)
        self._lock = threading.Lock()
        self._pending: collections.deque[_Item] = collections.deque()
        self._counters = _empty_counters()
        self._deduplicated = 0  # samples answered by an identical (record, response) of their batch
        self._sandbox_checked = False
        self._closing = False
        self._broken: BaseException | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._workers: list[_Worker] = []
        self._thread = threading.Thread(target=self._loop, name="verifier-pool", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- public API
    def submit(self, records, responses, *, thinking: bool | None = None, truncated=None) -> Future:
        """Queue a batch; the future resolves to its Scores in input order. `truncated`: per row, whether
        the response was cut at the token limit; with config.truncated_zero those rows score 0 (reason
        "truncated") here, without reaching a worker."""
        records, responses = list(records), list(responses)
        if len(records) != len(responses):
            raise ValueError(f"{len(records)} records but {len(responses)} responses")
        cut = [False] * len(records) if truncated is None else [bool(t) for t in truncated]
        if len(cut) != len(records):
            raise ValueError(f"{len(records)} records but {len(cut)} truncated flags")
        if self.config.truncated_zero and any(cut):
            graded = [i for i, c in enumerate(cut) if not c]
            inner = self._submit([records[i] for i in graded], [responses[i] for i in graded], thinking)
            out: Future = Future()
            inner.add_done_callback(lambda f: _with_truncated(f, out, cut))
            return out
        return self._submit(records, responses, thinking)

    def _submit(self, records: list, responses: list, thinking: bool | None) -> Future:
        if self._closing:
            raise RuntimeError("VerifierPool is closed")
        if self._broken is not None:
            raise RuntimeError("VerifierPool is broken") from self._broken
        if not self._sandbox_checked and any(r.get("domain") == "code" for r in records):
            c = self.config  # fail the caller loudly now, rather than score every code sample 0
            sandbox.check_available(c.allow_unsandboxed, c.sandbox_python, c.sandbox_uid_base)
            self._sandbox_checked = True
        think = self.config.thinking if thinking is None else bool(thinking)
        # Score each distinct (record, response) once: a group of samples from one prompt often repeats
        # a response, and scoring is a function of the two (a code sample's sandbox run is the cost).
        slot_of_key: dict[tuple[int, str], int] = {}
        unique, slot_of = [], []
        for r, resp in zip(records, responses):
            key = (id(r), resp)
            if key not in slot_of_key:
                slot_of_key[key] = len(unique)
                unique.append((r, resp))
            slot_of.append(slot_of_key[key])
        fut: Future = Future()
        if not records:
            fut.set_result([])
            return fut
        inner: Future = Future()
        inner.add_done_callback(lambda f: _expand(f, fut, slot_of))
        batch = _Batch(inner, [None] * len(unique), len(unique))
        with self._lock:
            self._deduplicated += len(records) - len(unique)
        items = [
            _Item(
                batch,
                i,
                r.get("domain") if r.get("domain") in DOMAINS else "other",
                r,
                resp,
                think,
                self._deadline_for(r),
            )
            for i, (r, resp) in enumerate(unique)
        ]
        with self._lock:
            self._pending.extend(items)
        os.write(self._wake_w, b"x")
        return fut

    def counters(self, reset: bool = False) -> dict[str, float]:
        """Flat metrics: verifier/<domain>/{scored,timeouts,errors,latency_mean_s,latency_max_s,restarts}
        for domains seen, plus verifier/{scored,timeouts,errors,restarts,deduplicated} totals."""
        with self._lock:
            c, deduplicated = self._counters, self._deduplicated
            if reset:
                self._counters, self._deduplicated = _empty_counters(), 0
        out, tot = {}, collections.Counter()
        for d, v in c.items():
            if not (v["scored"] or v["restarts"]):
                continue
            for k in ("scored", "timeouts", "errors", "restarts"):
                out[f"verifier/{d}/{k}"] = float(v[k])
                tot[k] += v[k]
            out[f"verifier/{d}/latency_mean_s"] = v["latency_sum"] / max(v["scored"], 1)
            out[f"verifier/{d}/latency_max_s"] = v["latency_max"]
        for k in ("scored", "timeouts", "errors", "restarts"):
            out[f"verifier/{k}"] = float(tot[k])
        out["verifier/deduplicated"] = float(deduplicated)
        return out

    def close(self) -> None:
        """Stop the workers (their sandboxes die with them); unfinished batches fail."""
        if self._closing:
            return
        self._closing = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=30)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------- internals
    def _deadline_for(self, record: dict) -> float:
        if record.get("domain") != "code":
            return self.deadline_s
        gt = record.get("ground_truth") or {}
        lim = limits_for(gt, self.config, 0)
        return self.deadline_s + sandbox_runs(gt, self.config) * (lim.wall_s + 0.5)

    def _start(self, slot: int) -> _Worker:
        # Called on the dispatcher thread only: PR_SET_PDEATHSIG fires when the *thread* that
        # started the worker ends, and that thread lives exactly as long as the pool.
        ours, theirs = socket.socketpair()
        pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [pkg_root, os.environ.get("PYTHONPATH")])))
        with sandbox.exec_fork_without_jax_warning():
            proc = subprocess.Popen(
                [sys.executable, "-m", "rlvr_jax.verifiers.worker", str(theirs.fileno()), str(os.getpid()), str(slot)],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        theirs.close()  # so a dead worker shows up as EOF on our end
        conn = Connection(ours.detach())
        conn.send(self.config)
        return _Worker(slot, proc, conn)

    def _replace(self, w: _Worker, domain: str) -> None:
        try:
            w.proc.kill()
        except OSError:
            pass
        try:
            w.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        w.conn.close()
        # The worker's sandboxes die with it (--die-with-parent, pid namespace); the uid sweep is
        # a second line for anything that got out of that tree.
        sandbox.reap_uid(sandbox.sandbox_uid(self.config.sandbox_uid_base, os.getpid(), w.slot))
        fresh = self._start(w.slot)
        fresh.deaths = w.deaths
        self._workers[self._workers.index(w)] = fresh
        with self._lock:
            self._counters[domain]["restarts"] += 1

    def _finish(self, item: _Item, s: Score, latency: float) -> None:
        with self._lock:
            c = self._counters[item.domain]
            c["scored"] += 1
            c["timeouts"] += s.reason == "timeout"
            c["errors"] += s.reason == "error"
            c["latency_sum"] += latency
            c["latency_max"] = max(c["latency_max"], latency)
        b = item.batch
        b.results[item.index] = s
        b.remaining -= 1
        if b.remaining == 0 and not b.future.done():
            b.future.set_result(b.results)

    def _fail_worker(self, w: _Worker, reason: str, why: str) -> None:
        """The head sample gets `reason`; the rest of the worker's chunk goes back to the queue."""
        head = w.inflight.popleft() if w.inflight else None
        rest = list(w.inflight)
        w.inflight.clear()
        with self._lock:
            self._pending.extendleft(reversed(rest))
        w.deaths = w.deaths + 1 if head is None else 0
        if w.deaths >= _CRASH_LOOP:
            raise RuntimeError(f"verifier worker {w.slot} died {w.deaths} times in a row without scoring")
        latency = time.monotonic() - w.head_t0
        self._replace(w, head.domain if head else "other")  # counted before the caller sees the 0
        if head is not None:
            self._finish(head, Score(0.0, reason, {"error": why}), latency)

    def _dispatch(self) -> None:
        with self._lock:
            for w in self._workers:
                if not w.ready or w.inflight or not self._pending:
                    continue
                size = max(1, min(_MAX_CHUNK, _math.ceil(len(self._pending) / self.num_workers)))
                chunk = []
                while self._pending and len(chunk) < size:
                    if chunk and self._pending[0].domain == "code":
                        break  # a code sample is slow: give it its own worker
                    chunk.append(self._pending.popleft())
                    if chunk[-1].domain == "code":
                        break
                w.inflight.extend(chunk)
                w.head_t0 = time.monotonic()
                try:
                    w.conn.send([(id(it), it.record, it.response, it.thinking) for it in chunk])
                except (OSError, ValueError, pickle.PicklingError):
                    pass  # a dead worker shows up as EOF; an unpicklable sample as its deadline

    def _loop(self) -> None:
        try:
            self._workers = [self._start(slot) for slot in range(self.num_workers)]
            while not self._closing:
                self._dispatch()
                now = time.monotonic()
                busy = [w for w in self._workers if w.inflight]
                timeout = min(
                    [w.head_t0 + w.inflight[0].deadline_s - now for w in busy]
                    + [w.started + _STARTUP_S - now for w in self._workers if not w.ready],
                    default=None,
                )
                waits = [self._wake_r] + [w.conn for w in self._workers]
                ready = set(mp_wait(waits, None if timeout is None else max(timeout, 0.0)))
                if self._wake_r in ready:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                for w in list(self._workers):
                    self._service(w, ready)
        except BaseException as e:  # a bug here must not leave callers waiting forever
            self._broken = e
        finally:
            self._shutdown()

    def _service(self, w: _Worker, ready: set) -> None:
        if w.conn in ready:
            try:
                while w.conn.poll():
                    msg = w.conn.recv()
                    now = time.monotonic()
                    if msg == "ready":
                        w.ready = True
                        continue
                    item_id, reward, reason, details = msg
                    head = w.inflight.popleft()
                    assert id(head) == item_id, "worker answered out of order"
                    self._finish(head, Score(reward, reason, details), now - w.head_t0)
                    w.head_t0, w.deaths = now, 0
            except (EOFError, OSError):
                self._fail_worker(w, "error", f"worker died (exit code {w.proc.poll()})")
                return
        if not w.ready and time.monotonic() >= w.started + _STARTUP_S:
            self._fail_worker(w, "error", f"worker did not start within {_STARTUP_S:.0f} s")
        elif w.inflight and time.monotonic() >= w.head_t0 + w.inflight[0].deadline_s:
            self._fail_worker(w, "timeout", f"no result within {w.inflight[0].deadline_s:.1f} s")

    def _shutdown(self) -> None:
        for w in self._workers:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 3
        for w in self._workers:
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            w.conn.close()
            try:
                sandbox.reap_uid(sandbox.sandbox_uid(self.config.sandbox_uid_base, os.getpid(), w.slot))
            except OSError:
                pass
        err = self._broken or RuntimeError("VerifierPool closed before the batch finished")
        with self._lock:
            batches = {id(it.batch): it.batch for it in self._pending}
            batches.update({id(it.batch): it.batch for w in self._workers for it in w.inflight})
            self._pending.clear()
        for b in batches.values():
            if not b.future.done():
                b.future.set_exception(err)


def pool_from_config(verifier_section, *, thinking: bool) -> VerifierPool:
    """The pool a run config asks for: its `verifier` section (workers, deadline_s, and verifier_config's
    rules) and the data's thinking format gate. The trainer and the study both start theirs here."""
    v = verifier_section
    return VerifierPool(
        v.workers or None, deadline_s=v.deadline_s, config=verifier_config(verifier_section, thinking=thinking)
    )
