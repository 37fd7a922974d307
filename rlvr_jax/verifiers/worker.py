"""A verifier pool worker process: `python -m rlvr_jax.verifiers.worker FD OWNER_PID SLOT` (pool.py starts
it). Its own module because `-m rlvr_jax.verifiers.pool` would import the package first, whose __init__
imports pool, and then run pool.py a second time as __main__ (Python warns about exactly that)."""

import sys

from rlvr_jax.verifiers.pool import worker_main

if __name__ == "__main__":
    worker_main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
