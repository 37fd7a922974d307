"""Supervised warm start (the study's first stage): assistant-only token cross-entropy on records'
reference responses, with the trainer's model, optimizer, checkpoint and metrics code.
`rlvr-sft --config=configs/grpo.py:multi,tiny --workdir=DIR` (the config's `sft` fields) writes an Orbax checkpoint the trainer starts from."""

from __future__ import annotations

import logging
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from rlvr_jax import cli, sharding, storage
from rlvr_jax.data import loading
from rlvr_jax.data.prompts import PromptConfig, sft_example
from rlvr_jax.metrics import MetricsWriter
from rlvr_jax.model import build, chunked_logprobs, params_io
from rlvr_jax.rl import optim

log = logging.getLogger(__name__)


def pack_examples(records, tokenizer, prompt_config: PromptConfig, max_len: int, *, seed: int = 0):
    """Examples packed into rows of max_len tokens (first fit, in a seeded shuffled order, among the
    most recent rows): `tokens`, `segments` (1, 2, ... per example of a row; 0 = padding),
    `positions` (restarting at 0 per example) and `loss_mask` (target tokens only), each [B, T]
    (B rows, T = the fullest row's length). Over-long examples are dropped with a warning. The
    built-in records fit ~1.7 per 128-token row."""
    examples, dropped = [], 0
    for r in records:
        prompt, target = sft_example(r, tokenizer, prompt_config)
        if len(prompt) + len(target) > max_len:
            dropped += 1
            continue
        examples.append((prompt + target, [0] * len(prompt) + [1] * len(target)))
    if dropped:
        log.warning("SFT: dropped %d examples longer than %d tokens", dropped, max_len)
    if not examples:
        raise ValueError("SFT: no example fits max_len; raise sft.max_len")
    rows, free = [], []  # example indices per row, free slots per row
    for i in np.random.default_rng(seed).permutation(len(examples)):
        n = len(examples[i][0])
        row = next((j for j in range(max(0, len(rows) - _RECENT_ROWS), len(rows)) if free[j] >= n), None)
        if row is None:
            row = len(rows)
            rows.append([])
            free.append(max_len)
        rows[row].append(i)
        free[row] -= n
    T = max_len - min(free)  # the fullest row
    out = {k: np.zeros((len(rows), T), np.int32) for k in ("tokens", "segments", "positions")}
    out["tokens"][:] = tokenizer.pad_id
    out["loss_mask"] = np.zeros((len(rows), T), bool)
    for j, members in enumerate(rows):
        at = 0
        for seg, i in enumerate(members, start=1):
            ids, mask = examples[i]
            span = slice(at, at + len(ids))
            out["tokens"][j, span], out["segments"][j, span] = ids, seg
            out["positions"][j, span], out["loss_mask"][j, span] = np.arange(len(ids)), mask
            at += len(ids)
    log.info("SFT: %d examples packed into %d rows of %d tokens", len(examples), len(rows), T)
    return out


_RECENT_ROWS = 64  # the rows a new example may still go into (bounds the first-fit search)


def make_sft_step(graphdef, optimizer, mesh, param_shardings, opt_shardings):

    def loss_fn(params, tokens, segments, positions, loss_mask):
        model = nnx.merge(graphdef, params)
        hidden, _ = model(tokens, positions, segments > 0, segments_BxT=segments, return_hidden=True)
        # the LM head a chunk at a time: no [B, T, V] logits (model/chunked_logprobs.py)
        stats = chunked_logprobs.token_stats(hidden[:, :-1], model.head_kernel(), tokens[:, 1:])
        m = loss_mask[:, 1:].astype(jnp.float32)
        loss = -(stats["logp"] * m).sum() / jnp.maximum(m.sum(), 1.0)
        # the target counts as the top token when its logit reaches the row's max (a tie counts too)
        acc = (stats["is_top"] * m).sum() / jnp.maximum(m.sum(), 1.0)
        return loss, {"sft/loss": loss, "sft/token_accuracy": acc}

    def step(params, opt_state, tokens, segments, positions, loss_mask):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, tokens, segments, positions, loss_mask
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, dict(metrics, **{"grad/global_norm": optax.tree.norm(grads)})

    with sharding.activate(mesh):
        return sharding.ActivatedJit(
            jax.jit(step, donate_argnums=(0, 1), out_shardings=(param_shardings, opt_shardings, None)), mesh
        )


def sft_optimizer(learning_rate: float, *, warmup_steps: int, steps: int, weight_decay: float):
    """The warm start's AdamW: cosine schedule after a linear warmup, betas (0.9, 0.98), global-norm clip 1."""
    return optim.make_optimizer(
        learning_rate=learning_rate,
        schedule="cosine",
        warmup_steps=warmup_steps,
        total_steps=steps,
        weight_decay=weight_decay,
        b1=0.9,
        b2=0.98,
        eps=1e-8,
        grad_clip_norm=1.0,
    )


def run_sft(
    graphdef,
    params,
    param_shardings,
    mesh,
    tokenizer,
    records,
    *,
    prompt_config: PromptConfig,
    steps: int,
    batch_size: int,
    max_len: int,
    learning_rate: float,
    warmup_steps: int,
    seed: int,
    workdir: str,
    log_every: int = 10,
    weight_decay: float = 0.0,
):
    """Train `steps` steps of SFT and return the new params. Epochs are reshuffled with `seed`."""
    packed = pack_examples(records, tokenizer, prompt_config, max_len, seed=seed)
    arrays = [packed[k] for k in ("tokens", "segments", "positions", "loss_mask")]
    n = len(arrays[0])
    if batch_size > n:
        raise ValueError(f"SFT: batch_size {batch_size} rows > the {n} packed rows of the data")
    optimizer = sft_optimizer(learning_rate, warmup_steps=warmup_steps, steps=steps, weight_decay=weight_decay)
    opt_state, opt_shardings = sharding.init_optimizer_state(optimizer, params, param_shardings, mesh)
    step_fn = make_sft_step(graphdef, optimizer, mesh, param_shardings, opt_shardings)
    batch_sh = sharding.batch_sharding(mesh, 2)
    writer = MetricsWriter(workdir, "sft")
    rng = np.random.default_rng(seed)
    order, cursor = rng.permutation(n), 0
    bar = tqdm(range(steps), desc="SFT warm start", file=sys.stderr, dynamic_ncols=True)
    pending = None
    t0 = time.perf_counter()
    for step in bar:
        if cursor + batch_size > n:
            order, cursor = rng.permutation(n), 0
        idx = order[cursor : cursor + batch_size]
        cursor += batch_size
        params, opt_state, metrics = step_fn(params, opt_state, *(jax.device_put(a[idx], batch_sh) for a in arrays))
        if pending is not None and (pending[0] % log_every == 0 or pending[0] == steps - 1):
            m = {k: float(v) for k, v in pending[1].items()}
            if not np.isfinite(m["sft/loss"]):
                raise FloatingPointError(f"SFT loss is not finite at step {pending[0]}")
            writer.write(pending[0], m)
            bar.set_postfix(loss=f"{m['sft/loss']:.3f}", tok_acc=f"{m['sft/token_accuracy']:.2f}")
        pending = (step, metrics)
    m = {k: float(v) for k, v in pending[1].items()}
    writer.write(pending[0], m)
    writer.close()
    log.info("SFT: %d steps in %.1fs, final loss %.3f", steps, time.perf_counter() - t0, m["sft/loss"])
    return params, m


def warm_start(config, workdir: str, graphdef, params, param_shardings, mesh, tokenizer):
    """The supervised warm start a run config's `sft` section describes (its records, else the RL training
    records' reference responses), from `params`; returns (new params, last metrics). rlvr-sft runs it
    alone, rlvr-train before its first RL step."""
    s, d = config.sft, config.data
    domains = tuple(x for x in d.domains.split(",") if x)
    records = loading.load_records(s.data or d.train, "train", domains, d.builtin_train_size)
    return run_sft(
        graphdef,
        params,
        param_shardings,
        mesh,
        tokenizer,
        records,
        prompt_config=loading.prompt_config(d),
        steps=s.steps,
        batch_size=s.batch_size,
        max_len=s.max_len,
        learning_rate=s.learning_rate,
        warmup_steps=s.warmup_steps,
        seed=config.seed,
        workdir=workdir,
    )


def run(config, workdir: str) -> str:
    """`rlvr-sft`: the warm start alone, from the same config files as rlvr-train (config.sft, model,
    data); writes the anchor as an Orbax checkpoint in workdir/anchor and returns its path."""
    m = config.model
    cli.initialize_distributed(config.distributed)
    mesh = sharding.make_mesh(sharding.MeshShape.of(config.mesh))
    batch_shards = math.prod(mesh.shape[a] for a in ("data", "fsdp"))
    if problems := sharding.batch_problems(
        {"sft.batch_size": config.sft.batch_size}, batch_shards, jax.process_count()
    ):
        raise cli.UsageError("invalid config: " + "; ".join(problems))
    tokenizer = build.load_tokenizer(config.tokenizer, m.checkpoint)
    cfg, graphdef, params, param_shardings = build.build_model(
        m, mesh, vocab_size=tokenizer.vocab_size, seed=config.seed
    )
    params, _ = warm_start(config, workdir, graphdef, params, param_shardings, mesh, tokenizer)
    out = os.path.join(workdir, "anchor")
    params_io.save_params_any(params, cfg, out, "orbax")
    if storage.is_writer():
        tokenizer.save(os.path.join(out, "tokenizer"))
    log.info("SFT anchor written to %s", out)
    return out


def main(argv=None) -> int:
    return cli.run_entry(argv, prog="rlvr-sft", description=__doc__, run=run)


if __name__ == "__main__":
    sys.exit(main())
