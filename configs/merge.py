"""Merge recipes of the study (REFERENCE.md "Merge methods"): the four single-domain RL experts
around the SFT anchor, lambda = 1, fp32 arithmetic.

ARG = METHOD (average | task_arithmetic | ties | dare_ties | dare_task_arithmetic | sce |
breadcrumbs | model_stock; no ARG: ties). Paths are placeholders to set on the command line:
  rlvr-merge --config=configs/merge.py:ties --config.anchor=ckpt/sft \
    --config.experts.math.path=ckpt/rl-math --config.experts.code.path=ckpt/rl-code \
    --config.experts.science.path=ckpt/rl-science --config.experts.if.path=ckpt/rl-if --out=ckpt/ties
Flags given explicitly (--density, --weights, ...) override the recipe.
"""

import ml_collections

from rlvr_jax.config_args import parse_arg

# The study's settings; mergekit's defaults where the study names none (breadcrumbs, sce select).
OPTIONS = {
    "average": {},
    "task_arithmetic": {"scale": 1.0},
    "ties": {"density": 0.2, "trim_scope": "global", "scale": 1.0},
    "dare_ties": {"density": 0.2, "trim_scope": "global", "drop_rate": 0.2, "seed": 0},
    "dare_task_arithmetic": {"drop_rate": 0.2, "seed": 0, "scale": 1.0},
    "sce": {"density": 1.0},
    "breadcrumbs": {"density": 0.9, "gamma": 0.01, "trim_scope": "tensor"},
    "model_stock": {},
}


def get_config(arg: str = ""):
    method = parse_arg(arg, file=__file__, choices={"method": OPTIONS}, default="ties").method
    c = ml_collections.ConfigDict()
    c.anchor = ""  # HF directory or Orbax checkpoint of the SFT model (required)
    c.experts = ml_collections.ConfigDict()
    for name in ("math", "code", "science", "if"):  # weight: per-expert multiplier (methods that have one)
        c.experts[name] = ml_collections.ConfigDict({"path": "", "weight": 1.0})
    c.method = method
    c.options = ml_collections.ConfigDict(OPTIONS[method])
    c.out = ""  # output directory
    c.format = "orbax"  # orbax | hf
    c.dtype = ""  # output dtype; "" = the anchor's
    c.mesh = "1,-1,1"  # data,fsdp,tensor sizes of the local mesh; -1 = the remaining devices
    return c
