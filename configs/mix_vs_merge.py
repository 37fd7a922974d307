"""The mix-vs-merge study end to end (REFERENCE.md): SFT anchor -> one GRPO run per domain -> every
merge method -> MT-OPD -> multi-task GRPO (2x the single-domain steps) -> the same multi-task run with
adaptive domain mixing (RL-Multi-Adaptive) -> evaluate every model on every domain -> weight-space and
policy analyses -> report.md, results.json and plots.

Laptop CPU (tiny model, built-in tasks; its report: docs/example_tiny, its wall time: docs/MEASUREMENTS.md):
  rlvr-experiment --config=configs/mix_vs_merge.py:tiny --workdir=runs/mix_vs_merge
Study scale (Qwen3-4B, 128 x 16, 200 / 400 steps) on a TPU pod slice; the anchor is the SFT model:
  rlvr-experiment --config=configs/mix_vs_merge.py --config.anchor=/mnt/ckpt/qwen3-4b-sft \\
      --config.base.data.train=/mnt/data/rl.jsonl --config.eval.data=/mnt/data/bench.jsonl --workdir=/mnt/runs/m2rl
A rerun with the same workdir skips the stages that wrote DONE.json (GRPO stages also resume mid-run).
"""

import ml_collections

from rlvr_jax.config_args import load_config_module, parse_arg

grpo = load_config_module(__file__, "grpo")
merge_recipes = load_config_module(__file__, "merge")


def get_config(arg: str = ""):
    tiny = parse_arg(arg, file=__file__, flags=("tiny",)).tiny
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.seeds = ""  # RL seeds, e.g. "0,1,2": each repeats the RL stages from one anchor; the report pools them; "" = seed
    c.domains = "math,code,science,if"  # one expert per domain; the multi-task run pools them all

    # Every RL run (single-domain, multi-task, MT-OPD) starts from this config; the experiment sets the
    # domains, the start checkpoint and the step count per stage, and nothing else.
    c.base = grpo.get_config("multi,tiny" if tiny else "multi")
    c.base.seed = c.get_ref("seed")
    c.base.eval.items_per_domain = 0  # every model is evaluated once, in the eval stage
    c.anchor = ""  # HF directory or Orbax checkpoint of the SFT model; "" = run the SFT stage (base.sft)

    # GRPO steps of each single-domain run; tiny: fewer left the experts' gains within noise (docs/MEASUREMENTS.md)
    c.single_steps = 150 if tiny else 200
    c.multi_step_ratio = 2  # the study: 400 multi-task steps against 200 per domain
    c.multi_steps = c.get_ref("single_steps") * c.get_ref("multi_step_ratio")  # derived; follows overrides
    # The third answer, RL-Multi-Adaptive: RL-Multi's run exactly (steps, batch, hyper-parameters, seed,
    # anchor) with base.data.mixing = "adaptive" (settings: base.data.adaptive), so the domain mixture follows
    # what the model is still learning instead of the pooled dataset sizes; compared with RL-Multi and the
    # best merge in the verdict. False: the study as published (mix or merge only).
    c.multi_adaptive = True

    c.merge = ml_collections.ConfigDict()
    # slerp is left out: it takes two models, the study merges four experts.
    c.merge.methods = "average,task_arithmetic,ties,dare_ties,dare_task_arithmetic,sce,breadcrumbs,model_stock"
    c.merge.options = ml_collections.ConfigDict(merge_recipes.OPTIONS)  # the study's settings per method
    c.merge.main = "ties"  # the merge shown in the main results table (the study's)

    c.opd = ml_collections.ConfigDict()  # MT-OPD: the anchor distils the experts on its own samples
    # The study gives no step count for MT-OPD; we spend one single-domain run's steps.
    c.opd.steps = c.get_ref("single_steps")
    c.opd.prompts_per_step = 16 if tiny else 256  # the study's 256 x 4; tiny: 64 rows per step
    c.opd.samples_per_prompt = 4
    c.opd.learning_rate = 2e-4 if tiny else 1e-6  # the study's 1e-6 would not move the tiny model
    c.opd.eps = 0.2  # symmetric clip

    c.eval = ml_collections.ConfigDict()
    c.eval.data = "builtin"  # "builtin" (held-out split) or JSONL files from `rlvr-data convert`
    c.eval.items_per_domain = 400 if tiny else 0  # 0 = every item; tiny: RL-Math gained 5.9 points at z 2.9 on 300
    # Per-domain counts over items_per_domain, "DOMAIN=N,...". tiny: RL-Math's gain was +3.1 points at z 1.9 on
    # 400 items in two runs (docs/MEASUREMENTS.md): 2,000 math items resolve a 3-point gain at z ~4.
    c.eval.items_by_domain = "math=2000" if tiny else ""
    c.eval.samples = 4 if tiny else 16  # K of Avg@K and pass@K
    # Sampled like training (the study does not state its eval sampling); Avg@K needs K > 1 at T > 0.
    c.eval.temperature = 1.0
    c.eval.max_new_tokens = c.base.rollout.get_ref("max_new_tokens")  # tokens
    c.eval.batch_prompts = 64  # prompts per sampler call

    c.analysis = ml_collections.ConfigDict()
    c.analysis.proj_dim = 256  # random-projection dimensions of the task-vector cosines
    c.analysis.proj_seed = 0
    c.analysis.rel_tol = 1e-3  # update-footprint threshold, relative to the larger magnitude
    c.analysis.kl_against = "multi,merge_ties"  # models compared with each expert by policy KL
    c.analysis.kl_prompts_per_domain = 16 if tiny else 128  # held-out prompts of each domain
    c.analysis.kl_samples = 4  # completions per prompt, sampled from the expert at temperature 1
    c.analysis.kl_max_new_tokens = c.base.rollout.get_ref("max_new_tokens")  # tokens
    # Self-verification: each model samples its own answers to the first items of each domain's eval set
    # (sampled like the eval: eval.temperature, eval.max_new_tokens; scored by the verifier pool), then judges
    # each one greedily, seeing only the final answer (outcome) or the whole response (process).
    sv = c.analysis.self_verification = ml_collections.ConfigDict()
    # model-table names; "experts" = every expert, "main_merge" = merge_<merge.main>; names not in the run are skipped
    sv.models = "sft,experts,multi,multi_adaptive,main_merge"
    sv.items_per_domain = 32 if tiny else 200  # eval items per domain (at most eval.items_per_domain of them)
    sv.samples = 2 if tiny else 4  # judged completions per item
    sv.max_new_tokens = 8 if tiny else 32  # tokens of each verdict (greedy); the templates ask for one word
    sv.thinking = False  # the judge answers directly: with a few tokens a thinking judge rarely closes its block
    # The study does not publish its judge prompts: ours. Fields: {question} (as the model saw it), {answer} (the
    # final answer the verifier extracts: \boxed{} value, choice letter, last code block, the IF response) or
    # {response} (the whole response, thinking included); literal braces doubled.
    sv.outcome_template = (
        "Here is a question and a proposed final answer.\n\nQuestion:\n{question}\n\nProposed answer:\n{answer}\n\n"
        "Is the proposed answer correct? Reply with Yes or No."
    )
    sv.process_template = (
        "Here is a question and a response to it.\n\nQuestion:\n{question}\n\nResponse:\n{response}\n\n"
        "Is the response correct? Reply with Yes or No."
    )

    c.report = ml_collections.ConfigDict()  # changes here do not invalidate finished stages
    c.report.machine = ""  # free text added to the machine line, e.g. "shared with other jobs"
    c.report.curve_smoothing = 5  # steps in the rolling mean of the learning curves
    c.check_fit = True  # on a TPU: compile every stage for the slice before the first one runs (rlvr-plan)
    # Stages run at once on one CPU host, each in a process pinned to its share of the cores
    # (rlvr_jax/study/lanes.py); 1 = one at a time in this process (always so on a pod or a GPU). tiny: two
    # GRPO runs on one core each finish together in 1.45x one run's time on 2 cores (docs/MEASUREMENTS.md).
    c.lanes = 2 if tiny else 1
    c.xla_cache_dir = ""  # XLA compilation cache shared by stages; "" = off (it would bias the cost table)
    return c
