"""`python -m rlvr_jax.data` is `rlvr-data`."""

import sys

from rlvr_jax.data.cli import main

sys.exit(main())
