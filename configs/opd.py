"""MT-OPD (REFERENCE.md): the anchor distils the per-domain RL experts on its own samples; per-token
advantage = log p_teacher - log p_student, same clipped surrogate with eps 0.2, 256 x 4, lr 1e-6.

  rlvr-train --config=configs/opd.py --config.model.checkpoint=ANCHOR \\
      --config.opd.teachers=math=RL_MATH,code=RL_CODE,science=RL_SCI,if=RL_IF --workdir=runs/opd
ARG "tiny" gives the CPU-sized variant (used by rlvr-experiment :tiny).
"""

from rlvr_jax.config_args import load_config_module, parse_arg

grpo = load_config_module(__file__, "grpo")


def get_config(arg: str = ""):
    tiny = parse_arg(arg, file=__file__, flags=("tiny",)).tiny
    c = grpo.get_config("multi,tiny" if tiny else "multi")
    c.grpo.eps_low = c.grpo.eps_high = 0.2
    c.sft.steps = 0
    if not tiny:
        c.rollout.prompts_per_step, c.rollout.samples_per_prompt = 256, 4
        c.optim.learning_rate = 1e-6
    return c
