"""The built-in default: SFT warm start, then multi-domain GRPO, on the tiny model and built-in tasks.

  rlvr-train --config=configs/default.py:tiny --workdir=runs/default
(`bash scripts/main.sh` runs exactly this.) Without `:tiny` it is the study's multi-task preset.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import grpo  # noqa: E402


def get_config(arg: str = "tiny"):
  return grpo.get_config("multi,tiny" if arg == "tiny" else "multi")
