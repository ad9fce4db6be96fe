"""Every random stream derives from one root seed, so a run is reproducible from its config alone."""

from __future__ import annotations

import random

import numpy as np
import torch


def derive_seed(root: int, *keys: int) -> int:
    """A 31-bit seed for the stream named by `keys` (e.g. iteration, rank, purpose)."""
    state = np.random.SeedSequence(entropy=int(root), spawn_key=tuple(int(k) for k in keys))
    return int(state.generate_state(1, dtype=np.uint32)[0] & 0x7FFFFFFF)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch global generators (module-level draws, e.g. weight init)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# Named streams, so two purposes never share draws.
STREAM_INIT = 1
STREAM_SAMPLING = 2
STREAM_SHIFT = 3
STREAM_CLUSTER = 4
STREAM_SYNTH = 5
STREAM_DROPOUT = 6
