"""rlvr_jax: JAX-native multi-domain RLVR: GRPO, verifiers, merging, evaluation."""
