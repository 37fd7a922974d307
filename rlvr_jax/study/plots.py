"""The report's PNG figures: learning curves, domain shares of the multi-task runs, accuracy bars and policy
KL (matplotlib, imported only here and only when a figure is drawn)."""

from __future__ import annotations

import numpy as np


def _plt():
    import matplotlib  # local: heavy; only the figures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # local: after matplotlib.use('Agg')

    return plt


def _smoothed(ax, pts: list[list[float]], w: int, **kw) -> None:
    """[[step, value], ...] as its rolling mean over w steps (fewer when the run is shorter)."""
    x, y = np.asarray(pts).T
    k = min(w, len(y))
    marker = "o" if len(y) - k < 1 else None  # a single point draws no line
    ax.plot(x[k - 1 :], np.convolve(y, np.ones(k) / k, mode="valid"), marker=marker, **kw)


def plot_curves(results: dict, path: str) -> None:
    """Per domain: training reward of its expert, of RL-Multi (and RL-Multi-Adaptive) and of MT-OPD against
    the step."""
    plt = _plt()
    domains = list(results["eval"]["items_per_domain"])
    w = max(1, int(results["config"]["report"]["curve_smoothing"]))
    fig, axes = plt.subplots(1, len(domains), figsize=(4 * len(domains), 3.2), squeeze=False)
    for ax, d in zip(axes[0], domains):
        for stage, label in (
            (f"rl_{d}", results["models"][f"rl_{d}"]["label"]),
            ("multi", "RL-Multi"),
            ("multi_adaptive", "RL-Multi-Adaptive"),
            ("opd", "MT-OPD"),
        ):
            pts = results["curves"].get(stage, {}).get(d)
            if pts:
                _smoothed(ax, pts, w, label=label)
        ax.set_ylim(-0.02, 1.02)  # binary rewards
        ax.set_title(f"{d}: training reward (mean of {w} steps)")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def has_share_curves(results: dict) -> bool:
    """Whether a multi-task run logged its domains' shares of the batch (results written before the mixing
    metrics existed have none): domain_shares.png is drawn, and the report shows it, only then."""
    return any(c.get("share") for c in results.get("mixing_curves", {}).values())


def plot_shares(results: dict, path: str) -> None:
    """Per domain: its share of each step's batch in RL-Multi (fixed mixture) and RL-Multi-Adaptive, and the
    adaptive run's sampling weight (dashed), smoothed like the learning curves."""
    plt = _plt()
    domains = list(results["eval"]["items_per_domain"])
    w = max(1, int(results["config"]["report"]["curve_smoothing"]))
    curves = results["mixing_curves"]
    fig, axes = plt.subplots(1, len(domains), figsize=(4 * len(domains), 3.2), squeeze=False)
    for ax, d in zip(axes[0], domains):
        for i, (stage, label) in enumerate((("multi", "RL-Multi"), ("multi_adaptive", "RL-Multi-Adaptive"))):
            c = curves.get(stage, {})
            if c.get("share", {}).get(d):
                _smoothed(ax, c["share"][d], w, label=f"{label}: share", color=f"C{i}")
            if stage == "multi_adaptive" and c.get("weight", {}).get(d):
                _smoothed(ax, c["weight"][d], w, label=f"{label}: weight", color=f"C{i}", linestyle="--")
        ax.set_ylim(-0.02, 1.02)  # fractions of the batch
        ax.set_title(f"{d}: share of the batch (mean of {w} steps)")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy(results: dict, path: str) -> None:
    plt = _plt()
    K = results["eval"]["samples"]
    domains = list(results["eval"]["items_per_domain"])
    names = list(results["models"])
    groups = domains + ["mean"]
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(groups) * len(names) / 4), 4))
    width = 0.8 / len(names)
    cmap = plt.get_cmap("tab20")
    for i, n in enumerate(names):
        vals = [results["eval"]["per_model"][n][d][f"avg@{K}"] for d in domains] + [results["eval"]["mean_avg"][n]]
        ax.bar(
            np.arange(len(groups)) + (i - len(names) / 2 + 0.5) * width,
            100 * np.asarray(vals),
            width,
            label=results["models"][n]["label"],
            color=cmap(i % 20),
        )
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(f"Avg@{K} (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_kl(results: dict, path: str) -> None:
    plt = _plt()
    kl, models = results["policy_kl"], results["models"]
    domains = list(results["eval"]["items_per_domain"])
    fig, axes = plt.subplots(1, len(kl["against"]), figsize=(4.5 * len(kl["against"]), 3.5), squeeze=False)
    for ax, o in zip(axes[0], kl["against"]):
        experts = list(kl["kl"][o])
        mat = np.asarray([[kl["kl"][o][e][d]["per_token"] for d in domains] for e in experts])
        im = ax.imshow(mat, cmap="magma")
        ax.set_xticks(range(len(domains)), domains)
        ax.set_yticks(range(len(experts)), [models[e]["label"] for e in experts])
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                ax.text(j, i, f"{mat[i, j]:.3f}", ha="center", va="center", color="c", fontsize=7)
        ax.set_title(f"KL(expert || {models[o]['label']}) per token", fontsize=9)
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
