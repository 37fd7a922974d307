"""Generation section of benchmarks/bench.py: our paged rollout engine (rlvr_jax/rollout/engine.py) against
`transformers` `generate` (torch CPU, fp32, the same random weights) and the static engine it replaced
(benchmarks/baselines/static_engine.py), sampling at temperature 1 with no stop tokens, every row the same fixed length
(the long-tailed, RL-shaped workload is benchmarks/rollout.py's). Ours runs with one decode slot per row on
a pool that holds every row whole (pages of 16 tokens), so all rows decode together as in a static batch.

Rows follow bench.py's contract; the floor is given as bytes and FLOPs per generated token.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.baselines import static_engine
from rlvr_jax import sharding
from rlvr_jax.model import hf
from rlvr_jax.model.decoder import ModelConfig, count_params
from rlvr_jax.model.presets import PRESETS
from rlvr_jax.rollout import engine as engine_lib
from rlvr_jax.rollout import sampling
from rlvr_jax.rollout.settings import EngineConfig


@dataclasses.dataclass(frozen=True)
class Setup:
    cfg: ModelConfig
    batches: tuple[int, ...]
    prompt_len: int
    new_tokens: int
    repeats: int  # timed runs of each engine, interleaved; medians are reported


FULL = Setup(PRESETS["bench-50m"], batches=(16, 64), prompt_len=64, new_tokens=128, repeats=3)
QUICK = Setup(
    dataclasses.replace(PRESETS["bench-50m"], num_layers=2), batches=(4,), prompt_len=16, new_tokens=16, repeats=1
)


def save_random_hf_model(cfg: ModelConfig, directory: str, seed: int = 0):
    """A randomly initialised `transformers` model of `cfg`'s shape, saved as safetensors."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.AutoConfig.for_model(**hf.config_to_hf(cfg, "float32"))
    model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
    model.save_pretrained(directory, safe_serialization=True)


def work_per_token(cfg: ModelConfig, batch: int, prompt_len: int, new_tokens: int, itemsize: int = 4):
    """(bytes, FLOPs) a perfect engine spends per generated token: one prefill plus `new_tokens` decode
    steps, each reading every parameter once and the KV cache written so far (no wasted slots)."""
    params = count_params(cfg)
    kv_per_slot = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim  # K and V elements per row and slot
    mean_kv_slots = prompt_len + (new_tokens - 1) / 2
    bytes_total = (1 + new_tokens) * params * itemsize + new_tokens * batch * mean_kv_slots * kv_per_slot * itemsize
    # matmul FLOPs: 2 per parameter per token (the tied embedding counts once, as the output head) plus
    # attention scores and values: 4 * heads * head_dim per visible key.
    attn_per_key = 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim
    tokens = batch * (prompt_len + new_tokens)
    flops_total = 2 * params * tokens + attn_per_key * batch * (
        prompt_len * (prompt_len + 1) / 2 + new_tokens * (mean_kv_slots + 1)
    )
    generated = batch * new_tokens
    return bytes_total / generated, flops_total / generated


PAGE_SIZE = 16


class Ours:
    """The paged engine at fixed length: per batch size, an engine with one decode slot per row and a pool
    that holds every row's prompt and new tokens (it never preempts)."""

    def __init__(self, directory: str, cfg: ModelConfig, new_tokens: int):
        self.mesh = sharding.make_mesh(sharding.MeshShape(1, 1, 1), devices=jax.devices()[:1])
        _, self.graphdef, self.params = hf.load(directory, self.mesh)
        self.cfg = cfg
        self.engines: dict[int, engine_lib.Engine] = {}
        self.sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=new_tokens)

    def engine(self, prompts) -> engine_lib.Engine:
        B, P = len(prompts), max(len(p) for p in prompts)
        if B not in self.engines:
            pages = B * -(-(P + self.sp.max_new_tokens) // PAGE_SIZE) + 1  # +1: the scratch page
            sizes = EngineConfig(num_slots=B, page_size=PAGE_SIZE, num_pages=pages, cache_dtype="float32")
            self.engines[B] = engine_lib.Engine(self.graphdef, self.cfg, self.mesh, sizes)
        return self.engines[B]

    def compile(self, prompts) -> float:
        """Seconds the warm-up call spent compiling (that call is not timed; without the engine's count,
        the whole warm-up call)."""
        eng = self.engine(prompts)
        t0 = time.perf_counter()
        jax.block_until_ready(eng.generate(self.params, prompts, self.sp).lengths)
        return getattr(eng, "last_compile_seconds", time.perf_counter() - t0)

    def run(self, prompts) -> float:
        eng = self.engine(prompts)
        compiled = eng.num_compilations
        t0 = time.perf_counter()
        out = jax.block_until_ready(eng.generate(self.params, prompts, self.sp).lengths)
        seconds = time.perf_counter() - t0
        assert int(np.asarray(out).min()) == self.sp.max_new_tokens and eng.num_compilations == compiled
        return seconds


class Static:
    """The static engine the paged one replaced (benchmarks/baselines/static_engine.py): one program per batch shape."""

    def __init__(self, ours: Ours):
        self.params, self.sp = ours.params, ours.sp
        self.sampler = static_engine.Sampler(ours.graphdef, ours.cfg, ours.mesh)

    def compile(self, prompts) -> float:
        jax.block_until_ready(self.sampler.generate(self.params, prompts, self.sp).lengths)
        return self.sampler.last_compile_seconds

    def run(self, prompts) -> float:
        t0 = time.perf_counter()
        out = jax.block_until_ready(self.sampler.generate(self.params, prompts, self.sp).lengths)
        seconds = time.perf_counter() - t0
        assert int(np.asarray(out).min()) == self.sp.max_new_tokens
        return seconds


def decode_matmul_kernels(params, cfg: ModelConfig):
    """(matrix, contracted axis) for each weight one decode step multiplies by, in order: each layer's
    projections (o_proj's heads x head_dim flattened) and the output head."""
    mats = []
    for layer in params["layers"].values() if isinstance(params["layers"], dict) else params["layers"]:
        for module, names in (
            ("attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
            ("mlp", ("gate_proj", "up_proj", "down_proj")),
        ):
            for name in names:
                kernel = layer[module][name]["kernel"]
                rows = cfg.hidden_size if kernel.shape[0] == cfg.hidden_size else kernel.size // kernel.shape[-1]
                mats.append(kernel.reshape(rows, -1))
    # The head as the model multiplies it: a tied [V, E] embedding contracted on E, or the [E, V] kernel.
    head = (params["embed"]["embedding"], 1) if cfg.tie_embeddings else (params["lm_head"]["kernel"], 0)
    return [(w, 0) for w in mats] + [head]


def matmul_ceiling(params, cfg: ModelConfig, batch: int, new_tokens: int, repeats: int) -> float:
    """Generated tokens/s of the decode steps' fp32 matmuls alone under XLA, chained as in the model
    (each input depends on the previous output) and nothing else: no attention, cache, norms or
    sampling. No XLA engine decodes faster than this on the machine; prefill is not included."""
    mats = decode_matmul_kernels(params, cfg)
    axes = [axis for _, axis in mats]

    def step(weights, h_BxE):
        for w, axis in zip(weights, axes):
            n_in = w.shape[axis]
            x = jnp.tile(h_BxE, (1, -(-n_in // h_BxE.shape[1])))[:, :n_in]
            y = jax.lax.dot_general(x, w, (((1,), (axis,)), ((), ())))
            h_BxE = h_BxE + 1e-6 * jnp.tile(y, (1, -(-h_BxE.shape[1] // y.shape[1])))[:, : h_BxE.shape[1]]
        return h_BxE

    # The weights are arguments, not closed-over constants baked into the program.
    run_fn = jax.jit(lambda h, weights: jax.lax.fori_loop(0, new_tokens, lambda _, x: step(weights, x), h))
    run = lambda h: run_fn(h, [w for w, _ in mats])
    h = jnp.ones((batch, cfg.hidden_size), jnp.float32)
    jax.block_until_ready(run(h))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(run(h))
        times.append(time.perf_counter() - t0)
    return batch * new_tokens / statistics.median(times)


class Peer:
    """transformers `generate`, sampling with temperature 1 and no top-k / top-p, exactly N new tokens."""

    def __init__(self, directory: str, new_tokens: int):
        import torch
        import transformers

        self.torch = torch
        self.model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        self.new_tokens = new_tokens

    def run(self, prompts, new_tokens: int | None = None) -> float:
        torch = self.torch
        ids = torch.tensor(prompts, dtype=torch.long)
        n = new_tokens or self.new_tokens
        t0 = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                min_new_tokens=n,
                max_new_tokens=n,
                pad_token_id=0,
            )
        seconds = time.perf_counter() - t0
        assert out.shape[1] - ids.shape[1] == n
        return seconds

    def pick_threads(self, prompts) -> int:
        """The faster torch thread count on a short run: on a loaded shared CPU, all-core OpenMP
        barriers can be several times slower than one thread, and the peer deserves its best."""
        candidates = sorted({1, os.cpu_count() or 1})
        probe = max(2, self.new_tokens // 8)
        times = {}
        for threads in candidates:
            self.torch.set_num_threads(threads)
            self.run(prompts, probe)  # warm-up
            times[threads] = self.run(prompts, probe)
        best = min(times, key=times.get)
        self.torch.set_num_threads(best)
        return best


def measure(setup: Setup, seed: int = 0) -> list[dict]:
    """Rows for every batch size of `setup`: generated tokens/s (ours, peer, floor work) and compile time."""
    rows = []
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as directory:
        save_random_hf_model(setup.cfg, directory, seed)
        ours, peer = Ours(directory, setup.cfg, setup.new_tokens), Peer(directory, setup.new_tokens)
        static = Static(ours)
        for batch in setup.batches:
            prompts = rng.integers(1, setup.cfg.vocab_size, (batch, setup.prompt_len)).tolist()
            compile_s = ours.compile(prompts)
            static.compile(prompts)
            threads = peer.pick_threads(prompts)
            ours_s, peer_s, static_s = [], [], []
            for _ in range(setup.repeats):  # interleaved, so all see the same load
                ours_s.append(ours.run(prompts))
                peer_s.append(peer.run(prompts))
                static_s.append(static.run(prompts))
            generated = batch * setup.new_tokens
            floor_bytes, floor_flops = work_per_token(setup.cfg, batch, setup.prompt_len, setup.new_tokens)
            shape = (
                f"{count_params(setup.cfg) / 1e6:.0f}M params, {setup.prompt_len}-token prompts, "
                f"{setup.new_tokens} new tokens"
            )
            rows.append(
                dict(
                    figure=f"generate, batch {batch}",
                    unit="tok/s",
                    ours=generated / statistics.median(ours_s),
                    peer=generated / statistics.median(peer_s),
                    floor_bytes=floor_bytes,
                    floor_flops=floor_flops,
                    note=f"{shape}; fp32, T=1; ours: paged engine, {batch} slots, 1 device, prefill included; "
                    f"peer: transformers generate, torch {threads} thread(s); median of {setup.repeats}",
                    samples={"ours_s": ours_s, "peer_s": peer_s},
                )
            )
            rows.append(
                dict(
                    figure=f"generate, batch {batch}, vs static engine",
                    unit="tok/s",
                    ours=generated / statistics.median(ours_s),
                    peer=generated / statistics.median(static_s),
                    floor_bytes=floor_bytes,
                    floor_flops=floor_flops,
                    note="the same runs; peer: the static engine the paged one replaced "
                    "(benchmarks/baselines/static_engine.py: one program, prefill + while-loop decode over a "
                    "[B, P + T] cache), the same weights on 1 device",
                    samples={"ours_s": ours_s, "peer_s": static_s},
                )
            )
            ceiling = matmul_ceiling(ours.params, setup.cfg, batch, setup.new_tokens, setup.repeats)
            rows.append(
                dict(
                    figure=f"decode matmuls alone, batch {batch}",
                    unit="tok/s",
                    ours=ceiling,
                    peer=generated / statistics.median(peer_s),
                    floor_bytes=floor_bytes,
                    floor_flops=floor_flops,
                    note="not an engine: the fp32 matmuls of each decode step under XLA, chained, with nothing "
                    "else; the most any XLA sampler reaches on this machine (ratio: over the same peer)",
                )
            )
            rows.append(
                dict(
                    figure=f"compile, batch {batch}",
                    unit="s",
                    ours=compile_s,
                    peer=None,
                    note="the paged engine's prefill and decode programs (its warm-up call); not in the tok/s above",
                )
            )
    return rows


def run(quick: bool) -> list[dict]:
    return measure(QUICK if quick else FULL)
