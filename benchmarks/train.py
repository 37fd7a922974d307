"""Training section of benchmarks/bench.py: GRPO update tokens/s and MFU on the 50M Qwen3-style shape
(peer: a plain PyTorch forward + backward + AdamW step of the same transformers model, same run),
and the time split per phase of one GRPO step at the built-in default (configs/default.py:tiny)."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repo: configs/ lives there


def _median_time(fn, repeats: int) -> float:
    fn()  # compile / warm up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def _update_rows(quick: bool) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import torch

    from benchmarks.generation import save_random_hf_model
    from rlvr_jax import sharding
    from rlvr_jax.model.decoder import count_params, model_shardings
    from rlvr_jax.model.presets import PRESETS
    from rlvr_jax.rl import grpo, optim
    from rlvr_jax.rl import update as rl_step

    cfg = PRESETS["bench-50m"]
    if quick:
        cfg = dataclasses.replace(
            cfg, num_layers=2, vocab_size=4096, hidden_size=256, intermediate_size=768, num_heads=4, num_kv_heads=2
        )
    B, P, N = (4, 32, 32) if quick else (8, 128, 128)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        save_random_hf_model(cfg, tmp)
        import transformers

        hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp).float()
        from rlvr_jax.model import hf

        mesh = sharding.make_mesh(sharding.MeshShape(1, 1, 1), devices=jax.devices()[:1])
        _, graphdef, params = hf.load(tmp, mesh)
    _, _, shardings = model_shardings(cfg, mesh)
    opt = optim.make_optimizer(learning_rate=1e-6)
    opt_state, opt_sh = sharding.init_optimizer_state(opt, params, shardings, mesh)
    step = rl_step.make_update_step(
        graphdef, opt, grpo.LossSettings(), num_micro=1, param_shardings=shardings, opt_shardings=opt_sh, mesh=mesh
    )
    mask = np.ones((B, N), bool)
    adv = np.asarray(grpo.advantages(jnp.asarray(rng.integers(0, 2, B).astype(np.float32)), group_size=4))
    batch = {
        "prompt_tokens": rng.integers(1, cfg.vocab_size, (B, P)).astype(np.int32),
        "prompt_valid": np.ones((B, P), bool),
        "completion_tokens": rng.integers(1, cfg.vocab_size, (B, N)).astype(np.int32),
        "loss_mask": mask,
        "adv": (adv[:, None] * mask).astype(np.float32),
        "sampler_logp": np.full((B, N), -3.0, np.float32),
    }
    state = {"params": params, "opt": opt_state}

    def ours():
        state["params"], state["opt"], m = step(state["params"], state["opt"], batch)
        jax.block_until_ready(m)

    t_ours = _median_time(ours, 2 if quick else 3)

    torch.manual_seed(0)
    torch_opt = torch.optim.AdamW(hf_model.parameters(), lr=1e-6, betas=(0.9, 0.98), weight_decay=0.1)
    ids = torch.as_tensor(np.concatenate([batch["prompt_tokens"], batch["completion_tokens"]], 1), dtype=torch.long)
    hf_model.train()

    def peer():
        torch_opt.zero_grad()
        logits = hf_model(input_ids=ids).logits[:, P - 1 : -1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, P:, None])[..., 0]
        (-(logp * torch.as_tensor(batch["adv"])).mean()).backward()
        torch.nn.utils.clip_grad_norm_(hf_model.parameters(), 1.0)
        torch_opt.step()

    t_peer = _median_time(peer, 2 if quick else 3)

    tokens = B * (P + N)
    n_params = count_params(cfg)
    T = P + N
    # Forward+backward: 6 FLOPs per parameter per token, plus attention (QK^T and PV: 4*T*H*D per token
    # forward, x3 with the backward).
    flops_per_token = 6 * n_params + 3 * 4 * cfg.num_layers * T * cfg.num_heads * cfg.head_dim
    return [
        {
            "figure": f"GRPO update, {'toy' if quick else '50M'} Qwen3 shape, {B}x{T} tokens",
            "ours": tokens / t_ours,
            "peer": tokens / t_peer,
            "unit": "tok/s",
            "floor_flops": flops_per_token,
            "note": f"peer: torch fwd+bwd+AdamW of the same transformers model; {n_params / 1e6:.1f}M params; "
            "floor = FLOPs / measured matmul rate, so floor_fraction is the MFU",
        }
    ]


def _memory_rows(quick: bool) -> list[dict]:
    """Compiled temporaries of one GRPO update of a single long sequence on the 50M shape: blocked attention
    (ours) against the dense [T, T] attention it replaced (peer), and how ours grows from T/2 to T."""
    import jax
    import jax.numpy as jnp

    from rlvr_jax import sharding
    from rlvr_jax.model.decoder import model_shardings
    from rlvr_jax.model.presets import PRESETS
    from rlvr_jax.rl import grpo, optim
    from rlvr_jax.rl import update as rl_step

    base = PRESETS["bench-50m"]
    if quick:
        base = dataclasses.replace(base, num_layers=2, vocab_size=4096, hidden_size=256, intermediate_size=768)
    T = 1024 if quick else 4096
    mesh = sharding.make_mesh(sharding.MeshShape(1, 1, 1), devices=jax.devices()[:1])

    def temp_bytes(impl: str, tokens: int) -> int:
        cfg = dataclasses.replace(base, attention_impl=impl, remat=True)
        graphdef, abstract, shardings = model_shardings(cfg, mesh)
        opt = optim.make_optimizer(learning_rate=1e-6)
        abstract_opt = jax.eval_shape(opt.init, abstract)
        opt_sh = sharding.like_params_shardings(abstract_opt, shardings, mesh)
        step = rl_step.make_update_step(
            graphdef, opt, grpo.LossSettings(), num_micro=1, param_shardings=shardings, opt_shardings=opt_sh, mesh=mesh
        )
        P, N = 64, tokens - 64
        sds = jax.ShapeDtypeStruct
        batch = {
            "prompt_tokens": sds((1, P), jnp.int32),
            "prompt_valid": sds((1, P), jnp.bool_),
            "completion_tokens": sds((1, N), jnp.int32),
            "loss_mask": sds((1, N), jnp.bool_),
            "adv": sds((1, N), jnp.float32),
            "sampler_logp": sds((1, N), jnp.float32),
        }
        with sharding.activate(mesh):
            compiled = step.fn.lower(abstract, abstract_opt, batch).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    ours, half, dense = temp_bytes("blocked", T), temp_bytes("blocked", T // 2), temp_bytes("dense", T)
    return [
        {
            "figure": f"GRPO update memory, one {T:,}-token sequence",
            "ours": ours / 2**20,
            "peer": dense / 2**20,
            "unit": "MiB",
            "growth_from_half": ours / half,
            "note": f"compiled temporaries, remat on; ours: blocked attention + chunked LM head "
            f"(x{ours / half:.2f} from {T // 2:,} tokens: linear); peer: the same with dense [T, T] attention "
            f"(the full-logits path is gone, so it shows the attention's part only)",
        }
    ]


def _phase_rows(quick: bool) -> list[dict]:
    """One GRPO step of the built-in default, phase by phase, each phase blocked on."""
    import jax
    import jax.numpy as jnp

    from rlvr_jax import sharding
    from rlvr_jax.config_args import load_config_file
    from rlvr_jax.data import loading
    from rlvr_jax.data.mixture import PromptMixture
    from rlvr_jax.data.prompts import PromptConfig, build_prompts
    from rlvr_jax.eval.evaluate import decode_completion
    from rlvr_jax.model import build
    from rlvr_jax.rl import grpo, optim, train
    from rlvr_jax.rl import update as rl_step
    from rlvr_jax.rollout.engine import Engine
    from rlvr_jax.rollout.sampling import SamplingParams, next_pow2
    from rlvr_jax.verifiers import VerifierConfig
    from rlvr_jax.verifiers.pool import VerifierPool

    c = load_config_file(os.path.join(ROOT, "configs", "default.py")).get_config("tiny")
    ro = c.rollout
    mesh = sharding.make_mesh(sharding.MeshShape())
    tok = build.load_tokenizer("builtin")
    cfg = build.model_config("tiny", {}, vocab_size=tok.vocab_size, param_dtype="float32", remat=False)
    graphdef, params, shardings = build.init_model(cfg, mesh, 0)
    pc = PromptConfig(thinking=True, max_prompt_tokens=c.data.max_prompt_tokens)
    records = loading.load_records("builtin", "train", ("math", "code", "science", "if"), 200)
    by_domain, _ = build_prompts(records, tok, pc)
    mix = PromptMixture(by_domain, batch_size=ro.prompts_per_step, seed=0)
    bucket = next_pow2(max(len(it["prompt_ids"]) for v in by_domain.values() for it in v), 16)
    if hasattr(train, "make_engine"):  # the trainer's own engine, as the rollout config describes it
        sampler = train.make_engine(ro, graphdef, cfg, mesh, tok.pad_id, min_prompt_bucket=bucket)
    else:  # the defaults, on a pool sized to hold every row whole (the default fraction of RAM is too much)
        rows_total = min(64, ro.prompts_per_step * ro.samples_per_prompt)
        pages = rows_total * -(-(bucket + ro.max_new_tokens) // 16) + 1
        sampler = Engine(graphdef, cfg, mesh, num_pages=pages, pad_id=tok.pad_id, min_prompt_bucket=bucket)
    sp = SamplingParams(
        temperature=1.0, max_new_tokens=ro.max_new_tokens, n=ro.samples_per_prompt, stop_token_ids=tok.eos_ids
    )
    opt = optim.make_optimizer(learning_rate=c.optim.learning_rate)
    opt_state, opt_sh = sharding.init_optimizer_state(opt, params, shardings, mesh)
    sizes = train.validate(c, jax.device_count())  # the trainer's own rows and micro-batch count
    rows_n = sizes["rows"]
    # Every micro-batch computed: this untrained model's groups are nearly all uninformative, so the
    # trainer's zero-advantage skipping would time almost nothing (the main job's metrics show it at work).
    update = rl_step.make_update_step(
        graphdef,
        opt,
        grpo.LossSettings(),
        num_micro=sizes["num_micro"],
        param_shardings=shardings,
        opt_shardings=opt_sh,
        mesh=mesh,
        skip_zero_advantage=False,
    )
    logprob_fn = rl_step.make_logprob_fn(graphdef, mesh, 1.0)
    times = {"rollout": [], "verify": [], "logprobs": [], "update": []}
    with VerifierPool(2, config=VerifierConfig(thinking=True)) as pool:
        for i in range(2 if quick else 4):  # the first step compiles; the median of the rest is reported
            items = next(mix)
            t0 = time.perf_counter()
            r = sampler.generate(params, [it["prompt_ids"] for it in items], sp, key=jax.random.key(i))
            comp, valid = np.asarray(r.completion_tokens), np.asarray(r.completion_valid)
            t1 = time.perf_counter()
            rows = [items[j]["record"] for j in r.prompt_index]
            texts = [decode_completion(tok, a, b) for a, b in zip(comp, valid)]
            rewards = np.asarray([s.reward for s in pool.submit(rows, texts).result()], np.float32)
            t2 = time.perf_counter()
            adv = np.asarray(grpo.advantages(jnp.asarray(rewards), group_size=ro.samples_per_prompt))
            batch = {
                "prompt_tokens": r.prompt_tokens,
                "prompt_valid": r.prompt_valid,
                "completion_tokens": r.completion_tokens,
                "sampler_logp": r.policy_logprobs,
                "loss_mask": valid,
                "adv": (adv[:, None] * valid).astype(np.float32),
            }
            # The trainer skips this pass at the default (one update per rollout: the old policy is the
            # sampler's); it runs with updates_per_rollout > 1, a KL reference or MT-OPD teachers.
            jax.block_until_ready(logprob_fn(params, batch))
            t3 = time.perf_counter()
            params, opt_state, m = update(params, opt_state, batch)
            jax.block_until_ready(m)
            t4 = time.perf_counter()
            if i:
                times["rollout"].append(t1 - t0)
                times["verify"].append(t2 - t1)
                times["logprobs"].append(t3 - t2)
                times["update"].append(t4 - t3)
    return [
        {
            "figure": f"GRPO step phase: {k} (built-in default, {rows_n} rows x {ro.max_new_tokens} new tokens)",
            "ours": 1e3 * float(np.median(v)),
            "peer": None,
            "unit": "ms",
            "note": _PHASE_NOTES[k]
            + (
                f" ({sampler.num_slots} slots, pages of {sampler.page_size}, pool {sampler.num_pages - 1} pages)"
                if k == "rollout"
                else ""
            )
            + "; random-init model, each phase blocked on",
        }
        for k, v in times.items()
    ]


_PHASE_NOTES = {
    "rollout": "paged engine, prefill + decode of every row",
    "verify": "verifier pool, 2 workers (an untrained model writes little code to run)",
    "logprobs": "teacher-forced pass, skipped at the default (one update per rollout); runs for "
    "updates_per_rollout > 1, a KL reference or MT-OPD teachers",
    "update": "every micro-batch computed (the trainer skips zero-advantage ones)",
}


def run(quick: bool) -> list[dict]:
    return _update_rows(quick) + _memory_rows(quick) + _phase_rows(quick)
