"""GRPO presets of the study (REFERENCE.md "GRPO as the study ran it"): single-domain or multi-task.

ARG = DOMAIN[,tiny] with DOMAIN in math | code | science | if | multi (no ARG: multi); any other word is an error.
Pod scale (Qwen3-4B, 128 prompts x 16 samples, 200 steps per domain, 400 multi-task):
  launch/tpu_pod.sh run --config=configs/grpo.py:math --config.model.checkpoint=gs://BUCKET/anchor --workdir=gs://BUCKET/rl-math
Laptop CPU (tiny model, built-in tasks, SFT warm start first):
  rlvr-train --config=configs/grpo.py:multi,tiny --workdir=runs/multi-tiny
"""

import ml_collections

from rlvr_jax.config_args import parse_arg

DOMAINS = {"math": "math", "code": "code", "science": "science", "if": "if", "multi": "math,code,science,if"}


def get_config(arg: str = ""):
    a = parse_arg(arg, file=__file__, choices={"domain": DOMAINS}, flags=("tiny",), default="multi")
    domain, tiny = a.domain, a.tiny
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.tokenizer = "builtin" if tiny else ""  # directory, "builtin", or "" = the checkpoint's own files

    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # sizes; -1 = the remaining devices

    c.model = ml_collections.ConfigDict()
    c.model.checkpoint = ""  # HF directory or Orbax checkpoint (the SFT anchor); "" = random init of `preset`
    c.model.preset = "tiny" if tiny else "qwen3-4b"  # see rlvr_jax/model/presets.py
    # Architecture overrides of the preset for a random init (unset = the preset's value).
    c.model.overrides = ml_collections.ConfigDict(
        {
            k: ml_collections.config_dict.placeholder(int)
            for k in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim")
        }
    )
    # fp32 master weights: AdamW at lr 2e-6 on bf16 weights would round most updates away. (The study
    # computes in bf16 from fp32 masters; a separate bf16 compute dtype is not implemented yet.)
    c.model.param_dtype = "float32"
    c.model.remat = not tiny  # rematerialise layers in the backward pass
    c.model.remat_policy = "full"  # what a rematerialised layer keeps: "full" (nothing) | "dots" (its matmuls)
    c.model.scan_layers = not tiny  # cache-free passes scan the layers: compile time independent of depth

    c.data = ml_collections.ConfigDict()
    c.data.domains = DOMAINS[domain]
    c.data.train = "builtin"  # "builtin" or comma-separated JSONL/parquet files made by `rlvr-data convert`
    c.data.eval = "builtin"  # held-out records (same format)
    c.data.builtin_train_size = 0  # 0 = the generators' default sizes
    c.data.weights = ""  # "" = proportional to size (the study's pooled shuffle); or "math=1,code=2"
    c.data.thinking = True  # <think>...</think> format gate
    c.data.system_prompt = ""
    c.data.domain_prefixes = not tiny  # per-domain answer-format instructions (built-in prompts carry their own)
    # Longer prompts are dropped (counted in metrics); tiny: 64 halves a CPU step (docs/MEASUREMENTS.md).
    c.data.max_prompt_tokens = 64 if tiny else 2048

    c.rollout = ml_collections.ConfigDict()
    c.rollout.prompts_per_step = 16 if tiny else 128
    c.rollout.samples_per_prompt = 8 if tiny else 16
    c.rollout.max_new_tokens = 64 if tiny else 32768  # tokens
    c.rollout.temperature = 1.0
    c.rollout.top_p = 1.0
    c.rollout.top_k = 0
    # The paged rollout engine (rollout/engine.py): a pool of KV pages per batch shard, decode slots refilled
    # as rows finish (continuous batching), a prompt's samples sharing its prompt pages.
    c.rollout.cache_dtype = "float32" if tiny else "bfloat16"  # the KV pool's dtype
    c.rollout.weights_dtype = "" if tiny else "bfloat16"  # the weights' dtype while sampling; "" = as trained
    # Rows decoded at once per batch shard. Tiny: this preset's whole step; default.py's 256 rows took 2.2 s a
    # rollout with 64 or 128 slots, 2.8 s with 256 (one CPU device, random init: slots filled while others decode).
    c.rollout.num_slots = 128 if tiny else 64
    c.rollout.page_size = 16 if tiny else 64  # tokens per KV page
    # Pages per batch shard's pool (0 = memory_fraction of the memory a device has left). Tiny: 2,048 pages of 32 KiB
    # (64 MiB) hold 256 rows of 64 prompt + 64 new tokens without sharing a page.
    c.rollout.num_pages = 2048 if tiny else 0
    c.rollout.memory_fraction = 0.5  # of the memory a device has left (weights loaded), when num_pages is 0
    c.rollout.prefill_chunk = 128 if tiny else 512  # prompt tokens per prefill program call
    c.rollout.decode_burst = 8  # decode steps per program call (the host refills slots between bursts)

    c.grpo = ml_collections.ConfigDict()
    c.grpo.advantage = "grpo"  # grpo | drgrpo | rloo
    c.grpo.loss_agg = "seq-mean-token-mean"  # the study's; see grpo.LOSS_AGGREGATIONS
    c.grpo.ratio_level = "token"  # "sequence" = GSPO
    c.grpo.eps_low = 0.2
    c.grpo.eps_high = 0.28
    c.grpo.dual_clip_c = 0.0  # 0 = off; e.g. 3.0
    c.grpo.tis_level = "token"
    c.grpo.tis_mode = "truncate"  # or "mask"
    c.grpo.tis_cap = 2.0  # 0 = no truncated importance sampling
    c.grpo.kl_coef = 0.0  # 0 = no reference model is built (the study)
    c.grpo.kl_estimator = "k3"
    c.grpo.kl_in_reward = False
    c.grpo.entropy_coef = 0.0  # > 0: entropy bonus; < 0: entropy penalty (sharpens the policy)
    c.grpo.dynamic_sampling = False  # DAPO: zero-weight groups whose rewards are all equal
    # With dynamic_sampling: sample this many batches of prompts per step and update on one batch's worth
    # of groups, informative ones first (DAPO's refill, at a fixed update shape).
    c.grpo.dynamic_sampling_draws = 1
    c.grpo.overlong_filter = False  # mask truncated responses
    c.grpo.overlong_buffer = 0  # tokens; > 0 enables DAPO's soft overlong penalty
    c.grpo.overlong_penalty = 1.0
    # Skip micro-batches whose rows all have zero advantage when the loss is the policy term alone: the update
    # is unchanged (their gradient is exactly zero); token-mean metrics cover the other rows (docs/MEASUREMENTS.md).
    c.grpo.skip_zero_advantage = True
    c.grpo.updates_per_rollout = 1  # > 1: several PPO epochs (old logprobs then get their own pass)
    # Rows per gradient-accumulation micro-batch (0 = the whole rollout); tiny: 16 rows stay in the CPU's cache
    # (docs/MEASUREMENTS.md).
    c.grpo.micro_batch_size = 16 if tiny else 64  # pod: one 34,816-token row per chip of v5p:4x4x4

    c.optim = ml_collections.ConfigDict()
    # Tiny: 3e-4 with eps 1e-4. Per-parameter RL gradients are ~1e-4 here, so Adam's usual eps turns every noisy
    # coordinate into a full-size step (the sweep: docs/MEASUREMENTS.md).
    c.optim.learning_rate = 3e-4 if tiny else 2e-6
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.1  # not on norms / biases
    c.optim.b1 = 0.9
    c.optim.b2 = 0.98
    c.optim.eps = 1e-4 if tiny else 1e-8
    c.optim.grad_clip_norm = 1.0

    c.train = ml_collections.ConfigDict()
    c.train.steps = 40 if tiny else (400 if domain == "multi" else 200)
    c.train.checkpoint_every = 10 if tiny else 20  # steps
    c.train.keep = 3  # checkpoints kept

    c.sft = ml_collections.ConfigDict()  # supervised warm start before RL (0 steps: start from model.checkpoint)
    c.sft.steps = 1000 if tiny else 0  # tiny: enough for the anchor to solve some code items (docs/MEASUREMENTS.md)
    # Rows of max_len tokens per step; each row packs several examples (tiny: 10 rows ~ 16 examples).
    c.sft.batch_size = 10 if tiny else 64  # pod: one row per chip of v5p:4x4x4
    c.sft.max_len = 128 if tiny else 4096  # tokens of prompt + response
    c.sft.learning_rate = 5e-3 if tiny else 1e-5
    c.sft.warmup_steps = 20
    # "" = the RL training records' reference responses; "builtin-sft" = built-in records disjoint from
    # the RL ones (an anchor fitted on the RL prompts has memorised them and leaves RL nothing to learn).
    c.sft.data = "builtin-sft" if tiny else ""

    c.opd = ml_collections.ConfigDict()  # MT-OPD (on-policy distillation from per-domain experts)
    c.opd.teachers = ""  # "math=CKPT,code=CKPT,..."; non-empty switches the advantage to teacher - student logp

    c.eval = ml_collections.ConfigDict()
    # Tiny: 500 per domain (code: all ~230); the gain's noise is which items flip, so items cut it where more samples
    # do not (docs/MEASUREMENTS.md).
    c.eval.items_per_domain = 500 if tiny else 0  # held-out items per domain, before and after RL; 0 = skip
    # Avg@K with the policy's own sampling temperature, as the study reports (greedy decoding hides
    # much of what RL changes in a small model: it sharpens the sampled distribution first).
    c.eval.samples = 4
    c.eval.temperature = 1.0
    c.eval.max_new_tokens = c.rollout.max_new_tokens

    c.verifier = ml_collections.ConfigDict()
    c.verifier.workers = 0  # 0 = one per core
    c.verifier.deadline_s = 10.0
    c.verifier.allow_unsandboxed = False  # run code without bubblewrap: trusted data only

    c.distributed = ml_collections.ConfigDict()
    c.distributed.enabled = "auto"  # auto (when the environment names a coordinator) | on | off
    c.distributed.coordinator = ""  # host:port for CPU/GPU multi-process runs
    c.distributed.num_processes = 0
    c.distributed.process_id = -1

    # rlvr-plan: the TPU slice this preset is sized for, and the mean response length its projection assumes
    c.plan = ml_collections.ConfigDict()
    c.plan.topology = "v5e:2x2" if tiny else "v5p:4x4x4"
    c.plan.mean_response_tokens = 0 if tiny else 8192  # tokens; 0 = max_new_tokens (an upper bound)
    return c
