"""Optimizer: global-norm clipping, then AdamW with weight decay off for biases and norm scales.

The study's preset: lr 2e-6 constant, weight decay 0.1, betas (0.9, 0.98), eps 1e-8, clip 1.0.
"""

import jax
import jax.numpy as jnp
import optax

NO_DECAY_KEYS = ("bias", "scale")  # biases and norm gains (CONTRACTS.md "Params")


def _warmup(lr, warmup_steps, step):
    # Update k (0-based) of the warm-up uses lr * (k + 1) / warmup_steps: no update is wasted at lr 0.
    if not warmup_steps:
        return jnp.asarray(lr, jnp.float32)
    return lr * jnp.minimum(1.0, (step + 1.0) / warmup_steps)


def _constant(lr, warmup_steps, total_steps):
    if warmup_steps:
        raise ValueError("schedule 'constant' has no warm-up; use 'linear_warmup_constant'")
    return lambda step: _warmup(lr, 0, step)


def _linear_warmup_constant(lr, warmup_steps, total_steps):
    return lambda step: _warmup(lr, warmup_steps, step)


def _cosine(lr, warmup_steps, total_steps):
    if total_steps <= warmup_steps:
        raise ValueError(f"cosine needs total_steps > warmup_steps, got {total_steps} <= {warmup_steps}")

    def fn(step):  # warm-up, then half a cosine from lr down to 0 at total_steps
        progress = jnp.clip((step - warmup_steps) / (total_steps - warmup_steps), 0.0, 1.0)
        decay = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(step < warmup_steps, _warmup(lr, warmup_steps, step), lr * decay)

    return fn


SCHEDULES = {"constant": _constant, "linear_warmup_constant": _linear_warmup_constant, "cosine": _cosine}


def make_schedule(
    *, learning_rate: float, schedule: str = "constant", warmup_steps: int = 0, total_steps: int = 0
) -> optax.Schedule:
    """step -> learning rate for one of SCHEDULES."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {sorted(SCHEDULES)}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    return SCHEDULES[schedule](learning_rate, warmup_steps, total_steps)


def lr_at(
    step: int, *, learning_rate: float, schedule: str = "constant", warmup_steps: int = 0, total_steps: int = 0
) -> float:
    """The learning rate the optimizer applies at `step` (0-based update count), for logging."""
    return float(
        make_schedule(
            learning_rate=learning_rate, schedule=schedule, warmup_steps=warmup_steps, total_steps=total_steps
        )(step)
    )


def _last_key(path):
    k = path[-1]
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return str(k)


def weight_decay_mask(params):
    """Pytree of bools: True where weight decay applies (every leaf not named in NO_DECAY_KEYS)."""
    return jax.tree_util.tree_map_with_path(lambda p, _: _last_key(p) not in NO_DECAY_KEYS, params)


def make_optimizer(
    *,
    learning_rate: float,
    schedule: str = "constant",
    warmup_steps: int = 0,
    total_steps: int = 0,
    weight_decay: float = 0.1,
    b1: float = 0.9,
    b2: float = 0.98,
    eps: float = 1e-8,
    grad_clip_norm: float | None = 1.0,
) -> optax.GradientTransformation:
    """Clip by global norm (None or <= 0: off), then AdamW; decay is decoupled and scaled by lr (as torch)."""
    adamw = optax.adamw(
        make_schedule(
            learning_rate=learning_rate, schedule=schedule, warmup_steps=warmup_steps, total_steps=total_steps
        ),
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        mask=weight_decay_mask,
    )
    clip_on = grad_clip_norm is not None and grad_clip_norm > 0
    # Same chain (and state tree) with clipping off, so toggling it does not break a restore.
    return optax.chain(optax.clip_by_global_norm(grad_clip_norm) if clip_on else optax.identity(), adamw)
