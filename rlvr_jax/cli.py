"""Shared entry point of the config-driven commands: `--config=configs/x.py[:arg]`,
`--config.a.b=value` overrides (ml-collections), `--workdir`."""
from __future__ import annotations

import logging
import os
import sys


def run_entry(argv, *, prog: str, description: str, runner: str) -> int:
  from absl import flags
  from ml_collections import config_flags

  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/default.py:tiny", flag_values=fv,
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics, TensorBoard logs", flag_values=fv)
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(a in ("-h", "--help", "--helpfull") for a in argv):
    print(f"usage: {prog} --config=configs/FILE.py[:ARG] [--config.a.b=VALUE ...] --workdir=DIR\n")
    print((description or "").strip() + "\n")
    print("Each config file's docstring shows its run command; any field can be overridden, e.g.\n"
          "  --config.train.steps=20 --config.rollout.samples_per_prompt=8\n")
    print(fv.main_module_help() if hasattr(fv, "main_module_help") else "")
    return 0
  try:
    fv([prog] + argv)
  except flags.Error as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    return 2
  if fv.config is None or not fv.workdir:
    print(f"{prog}: error: --config and --workdir are required (see --help)", file=sys.stderr)
    return 2
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                      stream=sys.stderr)
  for noisy in ("absl", "orbax", "jax._src", "grain"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  if runner == "train":
    from rlvr_jax import train
    train.run(fv.config, os.path.expanduser(fv.workdir))
  elif runner == "sft":
    from rlvr_jax import sft
    sft.run(fv.config, os.path.expanduser(fv.workdir))
  elif runner == "experiment":
    from rlvr_jax import experiment
    experiment.run(fv.config, os.path.expanduser(fv.workdir))
  else:
    raise ValueError(runner)
  return 0
