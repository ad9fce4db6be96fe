"""Temporal feature shift (§3.4.1, after TSM [44]): the student's data augmentation for L_CO (Eq. 21)."""

from __future__ import annotations

import torch
from torch import Tensor


def temporal_feature_shift(x: Tensor, channels: int = 512, generator: torch.Generator | None = None) -> Tensor:
    """Shift `channels` distinct random feature channels of x (..., T, D) by one snippet.

    The first `channels // 2` chosen channels move forward (x'[t] = x[t-1], zero at t = 0), the rest
    backward (x'[t] = x[t+1], zero at t = T-1); every other channel is copied unchanged. Channels are
    drawn by torch.randperm with `generator` (a CPU generator), so a seeded generator is deterministic.
    Returns a new tensor; x is untouched.
    """
    if x.dim() < 2:
        raise ValueError(f"temporal_feature_shift expects (..., T, D), got {tuple(x.shape)}")
    dim = x.shape[-1]
    if not 0 <= channels <= dim:
        raise ValueError(f"temporal_feature_shift: channels must be in [0, {dim}], got {channels}")
    out = x.clone()
    if channels == 0 or x.shape[-2] == 0:
        return out
    perm = torch.randperm(dim, generator=generator).to(x.device)
    forward, backward = perm[: channels // 2], perm[channels // 2 : channels]

    fwd = x.index_select(-1, forward)
    shifted_f = torch.zeros_like(fwd)
    shifted_f[..., 1:, :] = fwd[..., :-1, :]
    out.index_copy_(-1, forward, shifted_f)

    bwd = x.index_select(-1, backward)
    shifted_b = torch.zeros_like(bwd)
    shifted_b[..., :-1, :] = bwd[..., 1:, :]
    out.index_copy_(-1, backward, shifted_b)
    return out
