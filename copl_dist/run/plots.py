"""PNG plots of a run: mAP and NMI across iterations (the paper's Fig. 4) and actionness against the
ground truth for a few test videos (Fig. 5). Figures drawn on Matplotlib's Agg canvas directly, without
pyplot: no display needed, and a notebook importing copl_dist keeps its own backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from copl_dist.common.atomic import atomic_path


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def plot_iterations(iterations: list[dict[str, Any]], path: Path) -> None:
    """avg mAP (%) and NMI per iteration."""
    xs = [it["iteration"] for it in iterations]
    fig = Figure(figsize=(5, 3.2))
    ax1 = fig.subplots()
    maps = [it.get("map@avg", float("nan")) for it in iterations]
    ax1.plot(xs, maps, "o-", color="tab:blue", label="avg mAP")
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("avg mAP (%)", color="tab:blue")
    ax1.set_xticks(xs)
    ax2 = ax1.twinx()
    ax2.plot(xs, [it.get("nmi", float("nan")) for it in iterations], "s--", color="tab:orange")
    ax2.set_ylabel("NMI", color="tab:orange")
    ax1.set_title("COPL across iterations")
    _save(fig, path)


def plot_actionness(traces: list[dict[str, Any]], path: Path) -> None:
    """One panel per video: the teacher's actionness over time with ground-truth segments shaded.

    Each trace: {"video_id", "duration_s", "actionness" (T,), "a_ca" (T,), "a_cs" (T,), "segments" [(s, e)]}.
    """
    n = max(1, len(traces))
    fig = Figure(figsize=(8, 1.8 * n))
    axes = fig.subplots(n, 1, squeeze=False)
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
    _save(fig, path)
