"""GRPO math: group advantages, importance ratios, clipped policy losses, TIS, KL, entropy, aggregation.

Pure jnp on static shapes (masks, never boolean indexing); no config objects, only typed arguments.
Legend: B sequences = N groups x G samples (a group's samples adjacent), T completion tokens, V vocab.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

sg = jax.lax.stop_gradient
f32 = jnp.float32

STD_EPS = 1e-6  # the study's GRPO denominator: std_unbiased + 1e-6
# exp() of a log-ratio beyond this overflows f32 soon after; a token this far off-policy carries
# no usable signal, so the ratio is held there (the clip already zeroes most such gradients).
MAX_LOG_RATIO = 20.0


def _pick(registry, name, what):
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(registry)}")
    return registry[name]


def _groups(x_B, group_size):
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (unbiased std, leave-one-out), got {group_size}")
    if x_B.shape[0] % group_size:
        raise ValueError(f"batch of {x_B.shape[0]} is not a whole number of groups of {group_size}")
    return x_B.reshape(-1, group_size)


def _mask(mask_BxT):
    return mask_BxT.astype(f32)


def _masked(x, mask_BxT):
    # where, not multiply: padded positions may hold -inf/nan logps, and 0 * inf is nan.
    return jnp.where(mask_BxT > 0, x, 0.0)


# ---------------------------------------------------------------- advantages


def _grpo(r_NxG):
    mean = r_NxG.mean(-1, keepdims=True)
    return (r_NxG - mean) / (r_NxG.std(-1, ddof=1, keepdims=True) + STD_EPS)


def _drgrpo(r_NxG):
    return r_NxG - r_NxG.mean(-1, keepdims=True)


def _rloo(r_NxG):
    g = r_NxG.shape[-1]  # r_i - mean_{j != i} r_j == G / (G - 1) * (r_i - mean)
    return (r_NxG - r_NxG.mean(-1, keepdims=True)) * (g / (g - 1))


ADVANTAGE_ESTIMATORS = {"grpo": _grpo, "drgrpo": _drgrpo, "rloo": _rloo}


def advantages(rewards_B, *, group_size: int, estimator: str = "grpo"):
    """Per-sequence advantage adv_B from group rewards; groups whose rewards are all equal get 0."""
    r_NxG = _groups(rewards_B.astype(f32), group_size)
    adv_NxG = _pick(ADVANTAGE_ESTIMATORS, estimator, "advantage estimator")(r_NxG)
    # Rounding can leave |r - mean| ~ 1 ulp in an all-equal group; divided by 0 + eps it would explode.
    equal_Nx1 = r_NxG.max(-1, keepdims=True) == r_NxG.min(-1, keepdims=True)
    return jnp.where(equal_Nx1, 0.0, adv_NxG).reshape(-1)


def broadcast_to_tokens(x_B, mask_BxT):
    """Per-sequence value on every valid token of its sequence (0 on padding)."""
    return x_B.astype(f32)[:, None] * _mask(mask_BxT)


def opd_advantages(teacher_logp_BxT, student_logp_BxT, mask_BxT):
    """MT-OPD per-token advantage log pi_teacher - log pi_student on the student's samples; no gradient."""
    return sg(_masked(teacher_logp_BxT.astype(f32) - student_logp_BxT.astype(f32), mask_BxT))


# ---------------------------------------------------------------- sequence masks and reward shaping


def mask_sequences(mask_BxT, keep_B):
    """Zero the token mask of every sequence whose keep_B is false (static shape)."""
    return _mask(mask_BxT) * keep_B.astype(f32)[:, None]


def overlong_filter(mask_BxT, truncated_B):
    """Overlong filtering: truncated sequences leave the loss (they are not scored as failures)."""
    return mask_sequences(mask_BxT, ~truncated_B.astype(bool))


def soft_overlong_penalty(lengths_B, *, max_len: int, buffer_len: int, penalty: float = 1.0):
    """DAPO soft overlong penalty (<= 0, add to rewards): 0 up to max_len - buffer_len tokens, then
    linear to -penalty at max_len, -penalty beyond."""
    if not 0 < buffer_len <= max_len:
        raise ValueError(f"need 0 < buffer_len <= max_len, got {buffer_len}, {max_len}")
    over = (lengths_B.astype(f32) - (max_len - buffer_len)) / buffer_len
    return -penalty * jnp.clip(over, 0.0, 1.0)


def dynamic_sampling_keep(rewards_B, *, group_size: int, min_groups: int = 1):
    """DAPO dynamic sampling as a mask: keep_B is true for groups whose rewards differ.

    Fallback instead of an abort: with fewer than min_groups such groups the whole batch is kept
    (a plain GRPO step). Returns (keep_B, fell_back)."""
    varied_N = informative_groups(rewards_B, group_size=group_size)
    fell_back = varied_N.sum() < min_groups
    keep_N = varied_N | fell_back
    return jnp.repeat(keep_N, group_size), fell_back


def informative_groups(rewards_B, *, group_size: int):
    """[N] bool: groups whose rewards differ, the only ones with a nonzero GRPO advantage."""
    r_NxG = _groups(rewards_B, group_size)
    return r_NxG.max(-1) != r_NxG.min(-1)


def refill_rows(informative_N, *, group_size: int, num_groups: int):
    """DAPO's refill with a static shape: from an oversampled rollout whose groups are flagged by
    `informative_groups`, the rows of `num_groups` groups, informative ones first (in rollout order),
    topped up with uninformative ones when too few differ. Returns (row indices [num_groups *
    group_size], keep [same]: false on the top-up rows, unless no group at all is informative, when
    everything is kept as in `dynamic_sampling_keep`'s fallback)."""
    informative_N = np.asarray(informative_N, bool)
    if num_groups > len(informative_N):
        raise ValueError(f"cannot pick {num_groups} groups from a rollout of {len(informative_N)}")
    order_N = np.concatenate([np.flatnonzero(informative_N), np.flatnonzero(~informative_N)])[:num_groups]
    keep_N = informative_N[order_N] | (not informative_N.any())
    rows = (order_N[:, None] * group_size + np.arange(group_size)[None, :]).reshape(-1)
    return rows, np.repeat(keep_N, group_size)


def global_counts(mask_BxT):
    """(num_tokens, num_seqs) of the whole global batch, for the aggregation; call before splitting."""
    mask = _mask(mask_BxT)
    return mask.sum(), (mask.sum(-1) > 0).sum().astype(f32)


# ---------------------------------------------------------------- importance ratios


def _token_log_ratio(logp_BxT, old_logp_BxT, mask_BxT):
    return _masked(logp_BxT - sg(old_logp_BxT), mask_BxT)


def _sequence_log_ratio(logp_BxT, old_logp_BxT, mask_BxT):
    # GSPO: s_i = exp(mean_t log r_t). Every token carries the value s_i with gradient s_i * grad logp_t,
    # so a token-mean over the sequence reproduces grad s_i exactly and the clip acts per sequence.
    log_r_BxT = _token_log_ratio(logp_BxT, old_logp_BxT, mask_BxT)
    seq_B = log_r_BxT.sum(-1) / jnp.maximum(_mask(mask_BxT).sum(-1), 1.0)
    return _masked(logp_BxT - sg(logp_BxT) + sg(seq_B)[:, None], mask_BxT)


RATIO_LEVELS = {"token": _token_log_ratio, "sequence": _sequence_log_ratio}


def importance_ratio(logp_BxT, old_logp_BxT, mask_BxT, *, level: str = "token"):
    """pi_theta / pi_old per token ("token", PPO) or per sequence broadcast to tokens ("sequence", GSPO)."""
    log_r = _pick(RATIO_LEVELS, level, "ratio level")(logp_BxT.astype(f32), old_logp_BxT.astype(f32), mask_BxT)
    return jnp.exp(jnp.clip(log_r, -MAX_LOG_RATIO, MAX_LOG_RATIO))


def clipped_surrogate(ratio_BxT, adv_BxT, *, eps_low: float, eps_high: float, dual_clip_c: float | None = None):
    """Per-token PPO loss max(-rA, -clip(r, 1-eps_low, 1+eps_high)A), optionally dual-clipped at -cA
    for A < 0. Returns (loss_BxT, flags) with boolean flags where each clip is active."""
    unclipped = -adv_BxT * ratio_BxT
    loss = jnp.maximum(unclipped, -adv_BxT * jnp.clip(ratio_BxT, 1.0 - eps_low, 1.0 + eps_high))
    flags = {
        "clip_frac/low": (adv_BxT < 0) & (ratio_BxT < 1.0 - eps_low),
        "clip_frac/high": (adv_BxT > 0) & (ratio_BxT > 1.0 + eps_high),
    }
    if dual_clip_c is not None:
        if dual_clip_c <= 1.0:
            raise ValueError(f"dual_clip_c must be > 1, got {dual_clip_c}")
        # Dual clip: with A < 0 the clipped loss grows without bound in r; cap it at -cA.
        loss = jnp.where(adv_BxT < 0, jnp.minimum(loss, -adv_BxT * dual_clip_c), loss)
        flags["clip_frac/dual"] = (adv_BxT < 0) & (ratio_BxT > dual_clip_c)
    return loss, flags


TIS_LEVELS = ("token", "sequence")
TIS_MODES = ("truncate", "mask")


def tis_weights(
    old_logp_BxT,
    sampler_logp_BxT,
    mask_BxT,
    *,
    level: str = "token",
    mode: str = "truncate",
    cap: float = 2.0,
    low: float | None = None,
):
    """Rollout/trainer mismatch weights w = pi_old / pi_sampler, per token or per sequence (product),
    "truncate": min(w, cap); "mask": w where low <= w <= cap, else 0. No gradient; 0 on padding."""
    if level not in TIS_LEVELS or mode not in TIS_MODES:
        raise ValueError(f"tis level {level!r} / mode {mode!r}; choose from {TIS_LEVELS} / {TIS_MODES}")
    log_w = _masked(old_logp_BxT.astype(f32) - sampler_logp_BxT.astype(f32), mask_BxT)
    if level == "sequence":
        log_w = jnp.broadcast_to(log_w.sum(-1, keepdims=True), log_w.shape)
    log_cap = math.log(cap)
    w = jnp.exp(jnp.minimum(log_w, log_cap))  # capped in log space so a sequence product cannot overflow
    if mode == "mask":
        keep = log_w <= log_cap
        if low is not None:
            keep &= log_w >= math.log(low)
        w = jnp.where(keep, w, 0.0)
    return sg(w * _mask(mask_BxT))


# ---------------------------------------------------------------- KL and entropy
# log_r = log pi_theta - log pi_ref on tokens sampled from pi_theta; each estimates KL(pi_theta || pi_ref).


def _k1(log_r):
    return log_r


def _k2(log_r):
    return 0.5 * log_r**2


def _k3(log_r):
    # "low_var_kl": unbiased and >= 0; the exp argument is clipped only to stay finite.
    return jnp.exp(-jnp.clip(log_r, -MAX_LOG_RATIO, MAX_LOG_RATIO)) - 1.0 + log_r


KL_ESTIMATORS = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_estimate(logp_BxT, ref_logp_BxT, mask_BxT, *, estimator: str = "k3"):
    """Per-token KL(pi_theta || pi_ref) estimate (0 on padding); differentiable in logp only."""
    fn = _pick(KL_ESTIMATORS, estimator, "KL estimator")
    log_r = _masked(logp_BxT.astype(f32) - sg(ref_logp_BxT.astype(f32)), mask_BxT)
    return _masked(fn(log_r), mask_BxT)


def kl_penalized_rewards(rewards_B, logp_BxT, ref_logp_BxT, mask_BxT, *, kl_coef: float, estimator: str = "k1"):
    """KL in the reward: r_i - kl_coef * sum_t kl_t, from the sampling-time logps; no gradient."""
    kl_B = kl_estimate(logp_BxT, ref_logp_BxT, mask_BxT, estimator=estimator).sum(-1)
    return sg(rewards_B.astype(f32) - kl_coef * kl_B)


def entropy_from_logits(logits_BxTxV):
    """Per-token entropy of softmax(logits), computed in f32; -inf logits (banned tokens) allowed."""
    logits = logits_BxTxV.astype(f32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    p = jax.nn.softmax(logits, axis=-1)
    return log_z - jnp.sum(p * jnp.where(jnp.isfinite(logits), logits, 0.0), axis=-1)


# ---------------------------------------------------------------- aggregation
# Each mode divides by counts of the *global* batch passed in, never by counts of the arrays at hand,
# so summing the losses of any micro-batch / data-parallel split gives the full batch's gradient.
# Sequences are never split across micro-batches, so per-sequence lengths may be taken locally.


def _need(value, name, mode):
    if value is None:
        raise ValueError(f"loss aggregation {mode!r} needs {name}")
    return jnp.maximum(jnp.asarray(value, f32), 1.0)  # an empty batch gives loss 0, not nan


def _token_mean(loss_BxT, mask_BxT, n_tok, n_seq, norm_len):
    return loss_BxT.sum() / _need(n_tok, "global_num_tokens", "token-mean")


def _seq_mean_token_mean(loss_BxT, mask_BxT, n_tok, n_seq, norm_len):
    per_seq_B = loss_BxT.sum(-1) / jnp.maximum(mask_BxT.sum(-1), 1.0)
    return per_seq_B.sum() / _need(n_seq, "global_num_seqs", "seq-mean-token-mean")


def _seq_mean_token_sum(loss_BxT, mask_BxT, n_tok, n_seq, norm_len):
    return loss_BxT.sum() / _need(n_seq, "global_num_seqs", "seq-mean-token-sum")


def _seq_mean_token_sum_norm(loss_BxT, mask_BxT, n_tok, n_seq, norm_len):
    # Dr.GRPO: a constant length (e.g. the max response length), so long answers are not down-weighted.
    mode = "seq-mean-token-sum-norm"
    return loss_BxT.sum() / (_need(n_seq, "global_num_seqs", mode) * _need(norm_len, "norm_len", mode))


LOSS_AGGREGATIONS = {
    "token-mean": _token_mean,
    "seq-mean-token-mean": _seq_mean_token_mean,
    "seq-mean-token-sum": _seq_mean_token_sum,
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm,
}


def aggregate_loss(
    loss_BxT, mask_BxT, mode: str, *, global_num_tokens=None, global_num_seqs=None, norm_len: int | None = None
):
    """Scalar loss from per-token losses; the normaliser comes from the global counts (see above)."""
    fn = _pick(LOSS_AGGREGATIONS, mode, "loss aggregation")
    mask = _mask(mask_BxT)
    return fn(_masked(loss_BxT, mask), mask, global_num_tokens, global_num_seqs, norm_len)


# ---------------------------------------------------------------- the policy loss


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """Plain, hashable hyper-parameters of the policy loss (destructured from config.grpo at the boundary).
    Defaults are the study's."""

    loss_agg: str = "seq-mean-token-mean"
    ratio_level: str = "token"  # "sequence" = GSPO
    eps_low: float = 0.2
    eps_high: float = 0.28
    dual_clip_c: float | None = None
    tis_level: str = "token"
    tis_mode: str = "truncate"
    tis_cap: float = 2.0
    tis_low: float | None = None  # lower bound of the TIS weight (None: no lower bound)
    use_tis: bool = True  # the update passes the sampler's logprobs (TIS); policy_loss applies TIS when given them
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    temperature: float = 1.0  # the sampler's: the update's teacher-forced logprobs divide logits by it
    norm_len: int | None = None  # seq-mean-token-sum-norm's constant (max response tokens)

    @property
    def gradient_scales_with_advantage(self) -> bool:
        """True when no loss term (KL to the reference, entropy) acts on a row with zero advantage."""
        return self.kl_coef == 0 and self.entropy_coef == 0


def policy_loss(
    logp_BxT,
    old_logp_BxT,
    adv_BxT,
    mask_BxT,
    settings: LossSettings = LossSettings(),
    *,
    global_num_tokens,
    global_num_seqs,
    sampler_logp_BxT=None,
    ref_logp_BxT=None,
    entropy_BxT=None,
    logits_BxTxV=None,
    metric_mask_BxT=None,
    metric_num_tokens=None,
):
    """Clipped surrogate (x TIS weights when sampler logps are given) + kl_coef * KL - entropy_coef * H,
    each aggregated by settings.loss_agg over the global counts. Returns (loss, metrics);
    every metric but loss/policy is a token mean over metric_mask_BxT (default: mask_BxT) normalised by
    metric_num_tokens (default: global_num_tokens), so micro-batch metrics also sum to batch values."""
    st = settings
    mask = _mask(mask_BxT)
    logp = _masked(logp_BxT.astype(f32), mask)
    agg = lambda x: aggregate_loss(
        x, mask, st.loss_agg, global_num_tokens=global_num_tokens, global_num_seqs=global_num_seqs, norm_len=st.norm_len
    )
    metric_mask = mask if metric_mask_BxT is None else _mask(metric_mask_BxT)
    metric_tokens = global_num_tokens if metric_num_tokens is None else metric_num_tokens
    tok_mean = lambda x: sg(jnp.sum(_masked(x, metric_mask)) / jnp.maximum(jnp.asarray(metric_tokens, f32), 1.0))

    pg_BxT, metrics = _policy_term(logp, old_logp_BxT, adv_BxT, mask, st, tok_mean, sampler_logp_BxT)
    loss = agg(pg_BxT)
    metrics["loss/policy"] = sg(loss)
    loss = _with_kl(loss, metrics, logp, ref_logp_BxT, mask, st, agg, tok_mean)
    loss = _with_entropy(loss, metrics, logp, entropy_BxT, logits_BxTxV, st, agg, tok_mean)
    return loss, metrics


def _policy_term(logp, old_logp_BxT, adv_BxT, mask, st: LossSettings, tok_mean, sampler_logp_BxT):
    """Per-token clipped surrogate, times the TIS weights when sampler logps are given; (loss_BxT, metrics)."""
    ratio = importance_ratio(logp, old_logp_BxT, mask, level=st.ratio_level)
    pg_BxT, flags = clipped_surrogate(
        ratio, adv_BxT.astype(f32), eps_low=st.eps_low, eps_high=st.eps_high, dual_clip_c=st.dual_clip_c
    )
    metrics = {k: tok_mean(v.astype(f32)) for k, v in flags.items()}
    metrics["ratio/mean"] = tok_mean(ratio)
    if sampler_logp_BxT is not None:
        w = tis_weights(
            old_logp_BxT, sampler_logp_BxT, mask, level=st.tis_level, mode=st.tis_mode, cap=st.tis_cap, low=st.tis_low
        )
        pg_BxT = pg_BxT * w
        metrics["tis/weight_mean"] = tok_mean(w)
        metrics["sampler_trainer/logp_diff_abs_mean"] = tok_mean(
            jnp.abs(old_logp_BxT.astype(f32) - sampler_logp_BxT.astype(f32))
        )
    else:
        metrics["tis/weight_mean"] = tok_mean(jnp.ones_like(mask))
    return pg_BxT, metrics


def _with_kl(loss, metrics, logp, ref_logp_BxT, mask, st: LossSettings, agg, tok_mean):
    """`loss` + kl_coef * KL to the reference (metrics["kl/ref"] whenever reference logps are given)."""
    if ref_logp_BxT is not None:
        kl_BxT = kl_estimate(logp, ref_logp_BxT, mask, estimator=st.kl_estimator)
        metrics["kl/ref"] = tok_mean(kl_BxT)
        if st.kl_coef:
            loss = loss + st.kl_coef * agg(kl_BxT)
    elif st.kl_coef:
        raise ValueError("st.kl_coef > 0 needs ref_logp_BxT")
    return loss


def _with_entropy(loss, metrics, logp, entropy_BxT, logits_BxTxV, st: LossSettings, agg, tok_mean):
    """`loss` - entropy_coef * H, and metrics["entropy"]: exact from entropies or logits, else estimated."""
    if entropy_BxT is None and logits_BxTxV is not None:
        entropy_BxT = entropy_from_logits(logits_BxTxV)
    if entropy_BxT is not None:
        metrics["entropy"] = tok_mean(entropy_BxT.astype(f32))
        if st.entropy_coef:
            loss = loss - st.entropy_coef * agg(entropy_BxT.astype(f32))
    elif st.entropy_coef:
        raise ValueError("st.entropy_coef != 0 needs entropy_BxT or logits_BxTxV")
    else:
        # Sampled tokens come from the policy, so -logp is a Monte-Carlo estimate of the entropy
        # (exact in expectation at temperature 1); cheaper than materialising B x T x V logits.
        metrics["entropy"] = tok_mean(-logp)
    return loss
