"""GRPO presets of the study (REFERENCE.md "GRPO as the study ran it"): single-domain or multi-task.

ARG = DOMAIN[,tiny][,partial] with DOMAIN in math | code | science | if | multi (no ARG: multi); any other word is
an error. `partial` turns on partial rollouts (rollout.partial: throughput; the study ran synchronous steps).
Pod scale (Qwen3-4B, 128 prompts x 16 samples, 200 steps per domain, 400 multi-task):
  launch/tpu_pod.sh run --config=configs/grpo.py:math --config.model.checkpoint=gs://BUCKET/anchor --workdir=gs://BUCKET/rl-math
Laptop CPU (tiny model, built-in tasks, SFT warm start first):
  rlvr-train --config=configs/grpo.py:multi,tiny --workdir=runs/multi-tiny
`study_preset` is the study's recipe at pod scale; `TINY` is every difference of the CPU-sized variant, in
one place (the measurements behind its values: docs/MEASUREMENTS.md).
"""

import ml_collections

from rlvr_jax.config_args import parse_arg

DOMAINS = {"math": "math", "code": "code", "science": "science", "if": "if", "multi": "math,code,science,if"}

ARCHITECTURE_FIELDS = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim")


def study_preset(domain: str) -> ml_collections.ConfigDict:
    """The study's GRPO run for one domain (or all four pooled) on Qwen3-4B at pod scale."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.tokenizer = ""  # a directory, "builtin", or "" = the checkpoint's own files
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # axis sizes; -1 = the remaining devices

    c.model = ml_collections.ConfigDict()
    c.model.checkpoint = ""  # HF directory or Orbax checkpoint (the SFT anchor); "" = random init of `preset`
    c.model.preset = "qwen3-4b"  # see rlvr_jax/model/presets.py
    # Architecture overrides of the preset for a random init (unset = the preset's value).
    c.model.overrides = ml_collections.ConfigDict(
        {k: ml_collections.config_dict.placeholder(int) for k in ARCHITECTURE_FIELDS}
    )
    c.model.param_dtype = "float32"  # fp32 masters: AdamW at lr 2e-6 would round most bf16 updates away
    # The study's bf16 compute: activations and matmul operands in bf16 (weights cast at use); softmax, norm
    # statistics, logits, log-probabilities, the loss and the gradients (and their reduction) in fp32.
    c.model.compute_dtype = "bfloat16"
    c.model.remat = True  # rematerialise layers in the backward pass: activations of one layer at a time
    c.model.remat_policy = "full"  # what a rematerialised layer keeps: "full" (nothing) | "dots" (its matmuls)
    c.model.scan_layers = True  # cache-free passes scan the layers: compile time independent of depth

    c.data = ml_collections.ConfigDict()
    c.data.domains = DOMAINS[domain]
    c.data.train = "builtin"  # "builtin" or comma-separated JSONL/parquet files made by `rlvr-data convert`
    c.data.eval = "builtin"  # held-out records (same format)
    c.data.builtin_train_size = 0  # records per domain of the built-in generators; 0 = their default sizes
    c.data.weights = ""  # "" = proportional to size (the study's pooled shuffle); or "math=1,code=2"
    # "fixed": data.weights decide the mix (the study) | "adaptive": every batch's domain weights follow a
    # bandit on what the rollouts just scored say each domain still teaches (rlvr_jax/data/adaptive.py)
    c.data.mixing = "fixed"
    c.data.adaptive = ml_collections.ConfigDict()  # used when data.mixing = "adaptive"
    # per group: "informative" (1 when its rewards are not all equal: a group GRPO learns from, else 0) |
    # "abs_adv" (its mean |std-normalised advantage|, DUMP's); both in [0, 1]
    c.data.adaptive.signal = "informative"
    c.data.adaptive.temperature = 0.2  # softmax temperature over the domains' scores, in signal units
    c.data.adaptive.discount = 0.9  # weight of older observations per step (~10-step memory); 1 = never forget
    c.data.adaptive.explore = (
        0.1  # UCB bonus coefficient on sqrt(ln(1 + all groups) / (1 + a domain's groups)); 0 = off
    )
    c.data.adaptive.floor = 0.05  # minimum weight (fraction of prompts) per domain; domains x floor <= 1
    c.data.thinking = True  # <think>...</think> format gate: only the text after it is graded
    c.data.system_prompt = ""  # prepended as a system message when set
    # False: dataset prompts as given (the study; they carry their own format instructions); True: prepend our
    # per-domain answer-format wording (data/prompts.py DOMAIN_PREFIXES)
    c.data.domain_prefixes = False
    c.data.max_prompt_tokens = 2048  # tokens; longer prompts are dropped (and counted in metrics)

    c.rollout = ml_collections.ConfigDict()
    c.rollout.prompts_per_step = 128  # prompts per GRPO step (the study's batch)
    c.rollout.samples_per_prompt = 16  # the group size of the advantage
    c.rollout.max_new_tokens = 32768  # tokens; a longer response is truncated
    c.rollout.temperature = 1.0  # the study samples at 1.0
    c.rollout.top_p = 1.0  # 1.0 = off: the loss assumes the unmodified policy
    c.rollout.top_k = 0  # 0 = off, for the same reason
    # The paged rollout engine (docs/rollout_engine.md): KV pages per batch shard, decode slots refilled as
    # rows finish, a prompt's samples sharing its prompt pages.
    c.rollout.cache_dtype = "bfloat16"  # the KV pool's dtype
    c.rollout.weights_dtype = "bfloat16"  # the weights' dtype while sampling; "" = as trained
    c.rollout.num_slots = 64  # rows decoded at once per batch shard
    c.rollout.page_size = 64  # tokens per KV page
    c.rollout.num_pages = 0  # pages per batch shard's pool; 0 = memory_fraction of what a device has left
    c.rollout.memory_fraction = 0.5  # of the memory a device has left (weights loaded), when num_pages is 0
    c.rollout.prefill_chunk = 512  # prompt tokens per prefill program call
    c.rollout.prefill_seqs = 8  # sequences one prefill call packs into its chunk (ragged: short prompts share it)
    c.rollout.decode_burst = 8  # decode steps per program call (the host refills slots between bursts)
    # Partial rollouts (rollout/partial.py; off: the study's synchronous step, as the paper ran it). On: a
    # step generates from ceil(partial_oversample x prompts_per_step) prompts, trains the first
    # prompts_per_step groups to complete and carries the other rows, with their tokens, into the next step
    # (re-prefilled under the new weights). A token sampled by an older policy is corrected by the loss's TIS
    # weight min(pi_theta / pi_sampler, grpo.tis_cap) with pi_sampler the log-probability of the policy that
    # sampled it: decoupled PPO's behaviour weight, truncated (the clip's proximal policy is the current one,
    # as in a synchronous step), so grpo.tis_cap must be > 0. Needs grpo.dynamic_sampling_draws = 1.
    c.rollout.partial = False
    c.rollout.partial_oversample = 2.0  # prompts in flight per step / prompts trained per step
    c.rollout.max_staleness = 2  # the most policy versions a trained token may lag; older unfinished rows drop

    c.grpo = ml_collections.ConfigDict()
    c.grpo.advantage = "grpo"  # grpo | drgrpo | rloo
    c.grpo.loss_agg = "seq-mean-token-mean"  # the study's; see grpo.LOSS_AGGREGATIONS
    c.grpo.ratio_level = "token"  # "sequence" = GSPO
    c.grpo.eps_low = 0.2  # the study's clip range [1 - 0.2, 1 + 0.28]
    c.grpo.eps_high = 0.28
    c.grpo.dual_clip_c = 0.0  # 0 = off; e.g. 3.0 bounds the loss of negative-advantage tokens
    c.grpo.tis_level = "token"  # truncated importance sampling between sampler and trainer log-probabilities
    c.grpo.tis_mode = "truncate"  # or "mask"
    c.grpo.tis_cap = 2.0  # 0 = no truncated importance sampling
    c.grpo.kl_coef = 0.0  # 0 = no reference model is built (the study)
    c.grpo.kl_estimator = "k3"
    c.grpo.kl_in_reward = False  # True: the KL penalty goes into the reward instead of the loss
    c.grpo.entropy_coef = 0.0  # > 0: entropy bonus; < 0: entropy penalty (sharpens the policy)
    c.grpo.dynamic_sampling = False  # DAPO: zero-weight groups whose rewards are all equal
    # With dynamic_sampling: batches of prompts sampled per step, updating on one batch's worth of groups,
    # informative ones first (DAPO's refill at a fixed update shape).
    c.grpo.dynamic_sampling_draws = 1
    c.grpo.overlong_filter = False  # mask truncated responses
    c.grpo.overlong_buffer = 0  # tokens; > 0 enables DAPO's soft overlong penalty
    c.grpo.overlong_penalty = 1.0
    # Skip micro-batches whose rows all have zero advantage when the loss is the policy term alone: their
    # gradient is exactly zero, so the update is unchanged.
    c.grpo.skip_zero_advantage = True
    c.grpo.updates_per_rollout = 1  # > 1: several PPO epochs (old logprobs then get their own pass)
    c.grpo.micro_batch_size = 64  # rows per gradient-accumulation micro-batch (0 = all); one row per v5p chip

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 2e-6  # the study's
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.1  # not on norms / biases
    c.optim.b1 = 0.9
    c.optim.b2 = 0.98
    c.optim.eps = 1e-8
    c.optim.grad_clip_norm = 1.0

    c.train = ml_collections.ConfigDict()
    c.train.steps = 400 if domain == "multi" else 200  # the study: twice the steps for the pooled run
    c.train.checkpoint_every = 20  # steps
    c.train.keep = 3  # checkpoints kept

    c.sft = ml_collections.ConfigDict()  # supervised warm start before RL (0 steps: start from model.checkpoint)
    c.sft.steps = 0  # the study's anchor comes SFT-trained (model.checkpoint)
    c.sft.batch_size = 64  # rows of max_len tokens per step, several examples packed per row; one per v5p chip
    c.sft.max_len = 4096  # tokens of prompt + response
    c.sft.learning_rate = 1e-5
    c.sft.warmup_steps = 20
    # "" = the RL training records' reference responses; "builtin-sft" = built-in records disjoint from
    # the RL ones (an anchor fitted on the RL prompts has memorised them and leaves RL nothing to learn).
    c.sft.data = ""

    c.opd = ml_collections.ConfigDict()  # MT-OPD (on-policy distillation from per-domain experts)
    c.opd.teachers = ""  # "math=CKPT,code=CKPT,..."; non-empty switches the advantage to teacher - student logp
    # "trainer": the student's logp from the trainer's teacher-forced pass, the teachers' numerics (the study);
    # "sampler": the rollout's (no extra pass, but its mismatch can be as large as the teacher-student gap)
    c.opd.student_logp = "trainer"

    c.eval = ml_collections.ConfigDict()
    c.eval.items_per_domain = 0  # held-out items per domain, before and after RL; 0 = skip
    # Avg@K at the policy's own sampling temperature, as the study reports (greedy decoding hides much of
    # what RL changes in a small model: it sharpens the sampled distribution first).
    c.eval.samples = 4
    c.eval.temperature = 1.0
    c.eval.max_new_tokens = c.rollout.max_new_tokens

    c.verifier = ml_collections.ConfigDict()
    c.verifier.workers = 0  # 0 = one per core
    c.verifier.deadline_s = 10.0  # seconds per math / science / if sample (code adds its tests' limits)
    c.verifier.allow_unsandboxed = False  # run code without bubblewrap: trusted data only
    # each code program forked in a sandbox that stays up per verifier worker (rlvr_jax/verifiers/warm.py);
    # False: a new sandbox and interpreter per program run (~16 ms each on a 2-core CPU)
    c.verifier.sandbox_warm = True
    # The reward rules (REFERENCE.md "Rewards"); each key's alternative is what the verifiers did before.
    c.verifier.code_max_tests = 20  # the study drew 20 tests at random per problem (seeded, in details); 0 = all
    c.verifier.truncated_zero = True  # a response cut at max_new_tokens scores 0, reason "truncated" (the study)
    c.verifier.math_form = "study"  # the last \boxed{} after the final "Answer:" | "lenient": any last box/Answer line
    c.verifier.science_form = "study"  # the letter of "Answer: X" or \boxed{X} | "lenient": also "answer is X", ...
    c.verifier.if_mode = "reward"  # training rewards: IFEval's checks with its hackable quirks fixed | "official"

    c.distributed = ml_collections.ConfigDict()
    c.distributed.enabled = "auto"  # auto (when the environment names a coordinator) | on | off
    c.distributed.coordinator = ""  # host:port for CPU/GPU multi-process runs
    c.distributed.num_processes = 0
    c.distributed.process_id = -1
    # a host that stops answering this long fails the job on every other host (a dead worker ends the run in
    # about this time, and the pod supervisor restarts it; jax's default is 100 s)
    c.distributed.heartbeat_timeout_s = 30
    c.distributed.shutdown_timeout_s = 60  # how long a finishing process waits for the others at exit
    c.distributed.initialization_timeout_s = 300  # how long a process waits for every host to join

    c.plan = ml_collections.ConfigDict()  # rlvr-plan: the TPU slice this preset is sized for
    c.plan.topology = "v5p:4x4x4"
    c.plan.mean_response_tokens = 8192  # tokens the projection assumes; 0 = max_new_tokens (an upper bound)
    # The tail-aware rollout projection (plan/schedule.py): response lengths "geometric" (length_mean, 0 =
    # mean_response_tokens, capped at length_cap, 0 = rollout.max_new_tokens) or "histogram" (lengths_file:
    # a run's lengths_histogram.json), the engine's schedule simulated for sim_steps steps per mode
    # (partial rollouts after sim_warmup steps), synchronous and partial.
    c.plan.lengths = "geometric"
    c.plan.length_mean = 0
    c.plan.length_cap = 0
    c.plan.lengths_file = ""
    c.plan.sim_steps = 2
    c.plan.sim_warmup = 2
    c.plan.sim_seed = 0
    return c


# The CPU-sized variant: a tiny model on the built-in tasks, SFT warm start first. Each value was measured
# on the 2-core CPU (docs/MEASUREMENTS.md has the sweeps).
TINY = {
    "tokenizer": "builtin",  # the shipped sentencepiece model of the built-in tasks
    "model.preset": "tiny",
    "model.remat": False,  # a tiny model's activations fit; remat only costs time
    "model.scan_layers": False,  # two layers compile fast unrolled
    "model.compute_dtype": "float32",  # XLA:CPU has no fast bf16 matmul, and the main job's numbers are fp32's
    "data.max_prompt_tokens": 64,  # the built-in prompts fit; halves a CPU step against 128
    "rollout.prompts_per_step": 16,
    "rollout.samples_per_prompt": 8,
    "rollout.max_new_tokens": 64,
    "rollout.cache_dtype": "float32",  # CPUs have no fast bf16
    "rollout.weights_dtype": "",
    "rollout.num_slots": 128,  # the whole step's rows at once
    "rollout.page_size": 16,
    "rollout.num_pages": 2048,  # 64 MiB: 256 rows of 64 prompt + 64 new tokens without sharing a page
    "rollout.prefill_chunk": 128,
    "grpo.micro_batch_size": 16,  # 16 rows stay in the CPU's cache
    "optim.learning_rate": 3e-4,  # per-parameter RL gradients are ~1e-4 here: the lr/eps sweep
    "optim.eps": 1e-4,  # Adam's usual eps turns every noisy coordinate into a full-size step at this scale
    "train.steps": 40,
    "train.checkpoint_every": 10,
    "sft.steps": 1000,  # enough for the anchor to solve some code items
    "sft.batch_size": 10,  # 10 rows of 128 tokens ~ 16 packed examples
    "sft.max_len": 128,
    "sft.learning_rate": 5e-3,
    "sft.data": "builtin-sft",  # disjoint from the RL records
    "eval.items_per_domain": 500,  # the gain's noise is which items flip: items cut it where samples do not
    "eval.max_new_tokens": 64,
    # The main job's numbers were measured under the lenient rules: its references end "Answer: \boxed{N}" /
    # "Answer: X", but a tiny policy sampled at 1.0 in 64 tokens drifts from them and hits the limit.
    "verifier.truncated_zero": False,
    "verifier.math_form": "lenient",
    "verifier.science_form": "lenient",
    "plan.topology": "v5e:2x2",
    "plan.mean_response_tokens": 0,
}


def get_config(arg: str = ""):
    a = parse_arg(arg, file=__file__, choices={"domain": DOMAINS}, flags=("tiny", "partial"), default="multi")
    c = study_preset(a.domain)
    if a.tiny:
        for path, value in TINY.items():
            section, _, field = path.rpartition(".")
            setattr(c[section] if section else c, field, value)
    c.rollout.partial = a.partial  # throughput over the paper's synchronous step (see rollout.partial above)
    return c
