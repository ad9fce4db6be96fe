"""PNG plots of a run: mAP and NMI across iterations (the paper's Fig. 4) and actionness against the
ground truth for a few test videos (Fig. 5). Matplotlib's Agg backend: no display needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from copl_dist.common.atomic import atomic_path  # noqa: E402


def plot_iterations(iterations: list[dict[str, Any]], path: Path) -> None:
    """avg mAP (%) and NMI per iteration."""
    xs = [it["iteration"] for it in iterations]
    fig, ax1 = plt.subplots(figsize=(5, 3.2))
    maps = [it.get("map@avg", float("nan")) for it in iterations]
    ax1.plot(xs, maps, "o-", color="tab:blue", label="avg mAP")
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("avg mAP (%)", color="tab:blue")
    ax1.set_xticks(xs)
    ax2 = ax1.twinx()
    ax2.plot(xs, [it.get("nmi", float("nan")) for it in iterations], "s--", color="tab:orange")
    ax2.set_ylabel("NMI", color="tab:orange")
    ax1.set_title("COPL across iterations")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_actionness(traces: list[dict[str, Any]], path: Path) -> None:
    """One panel per video: the teacher's actionness over time with ground-truth segments shaded.

    Each trace: {"video_id", "duration_s", "actionness" (T,), "a_ca" (T,), "a_cs" (T,), "segments" [(s, e)]}.
    """
    n = max(1, len(traces))
    fig, axes = plt.subplots(n, 1, figsize=(8, 1.8 * n), squeeze=False)
    for ax, tr in zip(axes[:, 0], traces):
        t_count = len(tr["actionness"])
        times = (0.5 + np.arange(t_count)) * tr["duration_s"] / t_count
        for s, e in tr["segments"]:
            ax.axvspan(s, e, color="tab:green", alpha=0.25, lw=0)
        ax.plot(times, tr["a_ca"], lw=0.8, color="tab:orange", label="A_ca")
        ax.plot(times, tr["a_cs"], lw=0.8, color="tab:purple", label="A_cs")
        ax.plot(times, tr["actionness"], lw=1.2, color="tab:blue", label="h_cs (top class)")
        ax.set_xlim(0, tr["duration_s"])
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(tr["video_id"], fontsize=8, loc="left")
    axes[0, 0].legend(fontsize=7, loc="upper right", ncol=3)
    axes[-1, 0].set_xlabel("time (s); green: ground truth")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
