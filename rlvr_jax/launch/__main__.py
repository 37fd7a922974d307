"""`python -m rlvr_jax.launch ...`: the same as rlvr-pod."""

import sys

from rlvr_jax.launch.pod import main

sys.exit(main())
