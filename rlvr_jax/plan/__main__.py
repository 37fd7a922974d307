"""`python -m rlvr_jax.plan`: the rlvr-plan command."""

import sys

from rlvr_jax.plan.cli import main

sys.exit(main())
