"""The tiny corpus and schedule that the end-to-end tests share: the point is the plumbing, not the
numbers (3 classes, a few short videos, 2 epochs of a 32-wide IOCNet)."""

from __future__ import annotations

from pathlib import Path

from copl_dist.data.synth import make_synthetic

# Model and batch settings small enough for a test, as `copl run --set` arguments.
TINY_SETS = ["--set", "train.batch_size=4", "--set", "model.hidden_dim=32", "--set", "train.shift_channels=64"]
# A whole `copl run` schedule: 2 iterations of 2 epochs on 32 sampled snippets.
TINY = ["--iterations", "2", "--epochs", "2", "--snippets", "32", "--no-progress", *TINY_SETS]


def tiny_synthetic(root: Path, videos: int = 8, seed: int = 0) -> Path:
    """A THUMOS-like synthetic corpus of `videos` per subset in 3 classes, durations scaled by 0.15."""
    make_synthetic(root, preset="thumos14", videos=videos, classes=3, seed=seed, duration_scale=0.15)
    return root
