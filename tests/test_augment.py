"""Temporal feature shift: exactly `channels` channels move by one snippet, zero padded."""

import pytest
import torch

from copl_dist.method.augment import temporal_feature_shift


def _features(B: int = 2, T: int = 6, D: int = 16) -> torch.Tensor:
    # Distinct, nonzero values everywhere, so every move is visible.
    return torch.arange(1, B * T * D + 1, dtype=torch.float32).reshape(B, T, D)


def _classify(x: torch.Tensor, y: torch.Tensor) -> tuple[list[int], list[int], list[int]]:
    """Channels of y that equal x, x shifted forward, x shifted backward."""
    same, fwd, bwd = [], [], []
    for c in range(x.shape[-1]):
        col, out = x[..., c], y[..., c]
        forward = torch.zeros_like(col)
        forward[:, 1:] = col[:, :-1]
        backward = torch.zeros_like(col)
        backward[:, :-1] = col[:, 1:]
        if torch.equal(out, col):
            same.append(c)
        elif torch.equal(out, forward):
            fwd.append(c)
        elif torch.equal(out, backward):
            bwd.append(c)
        else:
            raise AssertionError(f"channel {c} is neither unchanged nor shifted by one")
    return same, fwd, bwd


def test_moves_exactly_channels_half_each_way():
    x = _features()
    before = x.clone()
    y = temporal_feature_shift(x, channels=6, generator=torch.Generator().manual_seed(0))
    same, fwd, bwd = _classify(x, y)
    assert len(fwd) == 3 and len(bwd) == 3 and len(same) == 10
    assert torch.equal(x, before)  # input untouched
    assert y.data_ptr() != x.data_ptr()
    # Zero padding at the ends.
    assert torch.all(y[:, 0, fwd] == 0) and torch.all(y[:, -1, bwd] == 0)


def test_odd_channels_and_extremes():
    x = _features(D=8)
    _, fwd, bwd = _classify(x, temporal_feature_shift(x, channels=5, generator=torch.Generator().manual_seed(1)))
    assert (len(fwd), len(bwd)) == (2, 3)
    assert torch.equal(temporal_feature_shift(x, channels=0), x)
    same, fwd, bwd = _classify(x, temporal_feature_shift(x, channels=8))
    assert not same and len(fwd) == len(bwd) == 4
    with pytest.raises(ValueError):
        temporal_feature_shift(x, channels=9)


def test_deterministic_with_seeded_generator():
    x = torch.randn(3, 10, 32)
    a = temporal_feature_shift(x, channels=8, generator=torch.Generator().manual_seed(7))
    b = temporal_feature_shift(x, channels=8, generator=torch.Generator().manual_seed(7))
    c = temporal_feature_shift(x, channels=8, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_default_512_of_2048_and_unbatched_input():
    x = torch.randn(1, 5, 2048) + 10.0  # no zeros by chance
    y = temporal_feature_shift(x, generator=torch.Generator().manual_seed(0))
    changed = (y != x).any(dim=1).any(dim=0)
    assert int(changed.sum()) == 512
    y2 = temporal_feature_shift(x[0], generator=torch.Generator().manual_seed(0))  # (T, D)
    assert torch.equal(y2, y[0])
