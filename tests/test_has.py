"""HAS (Eqs. 1-3), voting (Eq. 4) and global features (Eq. 5) on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from copl_dist.method.has import (
    binarize_by_median,
    consistent_actionness,
    global_feature,
    has_attention,
    initial_feature,
    mean_feature,
    novelty_feature,
    top_k_attention,
    vote,
    vote_window,
    voting_epochs,
)

# medians: a_cs 0.5 -> [1,1,0,0,1,0]; a_ca 0.45 -> [1,0,1,0,1,0]; both at snippets 0 and 4
A_CS = np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.3])
A_CA = np.array([0.6, 0.2, 0.9, 0.1, 0.7, 0.3])


def test_binarize_strict_median():
    np.testing.assert_array_equal(binarize_by_median(np.array([0.1, 0.5, 0.3, 0.9])), [0, 1, 0, 1])
    # odd length: the median element itself is not "> median"
    np.testing.assert_array_equal(binarize_by_median(np.array([3.0, 1.0, 2.0])), [1, 0, 0])
    np.testing.assert_array_equal(binarize_by_median(np.full(4, 0.5)), [0, 0, 0, 0])


def test_consistent_actionness_eq2():
    expected = [0.75, 0, 0, 0, 0.7, 0]  # (0.9+0.6)/2 and (0.7+0.7)/2
    np.testing.assert_allclose(consistent_actionness(A_CS, A_CA), expected)


def test_consistent_actionness_length_mismatch():
    with pytest.raises(ValueError):
        consistent_actionness(A_CS, A_CA[:5])


@pytest.mark.parametrize(
    "gamma, expected",
    [
        (6.0, [0.75, 0, 0, 0, 0, 0]),  # k = 1
        (3.0, [0.75, 0, 0, 0, 0.7, 0]),  # k = 2
        (2.0, [0.75, 0, 0, 0, 0.7, 0]),  # k = 3 but only two non-zero entries survive
        (100.0, [0.75, 0, 0, 0, 0, 0]),  # floor(6/100) = 0 -> k = 1
    ],
)
def test_has_attention_both(gamma, expected):
    np.testing.assert_allclose(has_attention(A_CS, A_CA, gamma), expected)


def test_top_k_ties_go_to_lower_index():
    np.testing.assert_allclose(top_k_attention(np.array([0.2, 0.5, 0.5, 0.1]), gamma=4), [0, 0.5, 0, 0])


def test_single_branch_ablations():
    # cs: kept where a_cs > 0.5 -> [0.9, 0.8, ., ., 0.7, .], top 2
    np.testing.assert_allclose(has_attention(A_CS, A_CA, 3.0, branch="cs"), [0.9, 0.8, 0, 0, 0, 0])
    # ca: kept where a_ca > 0.45 -> [0.6, ., 0.9, ., 0.7, .], top 2
    np.testing.assert_allclose(has_attention(A_CS, A_CA, 3.0, branch="ca"), [0, 0, 0.9, 0, 0.7, 0])
    with pytest.raises(ValueError):
        has_attention(A_CS, A_CA, 3.0, branch="xx")


def test_vote_is_decayed_sum_newest_weight_one():
    rng = np.random.default_rng(0)
    a0, a1, a2 = rng.random((3, 8))
    v = None
    for a in (a0, a1, a2):
        v = vote(v, a, alpha=0.5)
    np.testing.assert_allclose(v, 0.25 * a0 + 0.5 * a1 + a2)
    assert vote(None, a0, 0.5) is not a0  # a copy, not an alias


@pytest.mark.parametrize(
    ("alpha", "tol", "window"),
    [(0.9, 0.1, 22), (0.9, 0.05, 29), (0.5, 0.25, 2), (0.5, 0.3, 2), (0.5, 0.2, 3), (0.0, 0.1, 1)],
)
def test_vote_window_leaves_out_at_most_tol_of_the_weight(alpha, tol, window):
    assert vote_window(alpha, tol) == window
    # Over a long training, the votes older than the window hold at most tol of the weight, and one
    # epoch fewer would leave out more.
    weights = alpha ** np.arange(2000.0)
    assert weights[window:].sum() / weights.sum() <= tol + 1e-12
    assert weights[window - 1:].sum() / weights.sum() > tol


def test_voting_epochs():
    assert voting_epochs(40, 0.9, 0, 0.1) == range(40)  # the paper: every epoch
    assert voting_epochs(40, 0.9, 10, 0.1) == range(30, 40)
    assert voting_epochs(40, 0.9, -1, 0.1) == range(18, 40)  # the last 22
    assert voting_epochs(12, 0.9, -1, 0.1) == range(12)  # a training shorter than the window
    assert voting_epochs(40, 0.9, 0, 0.1, voting=False) == range(39, 40)  # the ablation keeps the last alone
    with pytest.raises(ValueError, match="tol"):
        vote_window(0.9, 1.0)


def test_global_feature_weighted_sum():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    f = global_feature(x, np.array([1.0, 0.0, 2.0]))
    np.testing.assert_allclose(f, np.array([3.0, 2.0]) / np.sqrt(13.0), rtol=1e-6)
    assert f.dtype == np.float32
    assert np.linalg.norm(f) == pytest.approx(1.0, abs=1e-6)


def test_global_feature_zero_vote_falls_back_to_mean():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    f = global_feature(x, np.zeros(3))
    np.testing.assert_allclose(f, [2 ** -0.5, 2 ** -0.5], rtol=1e-6)
    np.testing.assert_allclose(f, mean_feature(x))


def test_mean_feature_unit_norm_and_zero_safe():
    rng = np.random.default_rng(1)
    assert np.linalg.norm(mean_feature(rng.normal(size=(5, 16)))) == pytest.approx(1.0, abs=1e-6)
    z = mean_feature(np.zeros((3, 4)))
    assert np.all(z == 0) and np.all(np.isfinite(z))


def test_global_feature_shape_mismatch():
    with pytest.raises(ValueError):
        global_feature(np.ones((4, 3)), np.ones(5))


def test_novelty_feature_hand_computed():
    # Background [0, 1] (the "scene") and a two-snippet action [4, 1]: mean [4/3, 1], centred
    # distances [4/3, 4/3, 8/3, 8/3, 4/3, 4/3], smoothed over 3: [8/9, 16/9, 20/9, 20/9, 16/9, 8/9];
    # k = floor(6 / 3) = 2 picks snippets 2 and 3, whose centred mean is [8/3, 0] -> [1, 0].
    x = np.array([[0, 1], [0, 1], [4, 1], [4, 1], [0, 1], [0, 1]], dtype=np.float32)
    f = novelty_feature(x, gamma=3)
    assert f.dtype == np.float32
    np.testing.assert_allclose(f, [1.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(mean_feature(x), [0.8, 0.6], rtol=1e-6)  # the scene pulls the mean
    assert initial_feature(x, "novelty", 3) == pytest.approx(f)
    assert initial_feature(x, "mean", 3) == pytest.approx(mean_feature(x))


def test_novelty_feature_ignores_the_scene():
    # The same action in two different scenes: the mean features differ, the novelty ones agree.
    rng = np.random.default_rng(3)
    action = rng.normal(size=8)
    mask = np.zeros(40, dtype=bool)
    mask[10:16] = True
    feats = []
    for scene in (rng.normal(size=8) * 5, rng.normal(size=8) * 5):
        x = np.tile(scene, (40, 1)) + np.where(mask[:, None], action, 0)
        feats.append((novelty_feature(x, gamma=8), mean_feature(x)))
    np.testing.assert_allclose(feats[0][0], feats[1][0], atol=1e-6)
    assert float(feats[0][1] @ feats[1][1]) < 0.99


def test_novelty_feature_window_and_degenerate_cases():
    x = np.zeros((5, 3))
    x[2] = [0, 3, 0]
    # window 1: the lone spike itself (k = 1)
    np.testing.assert_allclose(novelty_feature(x, gamma=5, window=1), [0, 1, 0], atol=1e-7)
    flat = np.ones((4, 3))  # nothing stands out: falls back to the mean feature
    np.testing.assert_allclose(novelty_feature(flat, gamma=2), mean_feature(flat))
    with pytest.raises(ValueError):
        novelty_feature(np.ones(3), gamma=2)
    with pytest.raises(ValueError):
        initial_feature(x, "median", 2)


def test_global_feature_centred_on_the_video_mean():
    # Scene [0, 1] everywhere, action [4, 1] at snippets 2-3, HAS votes on those two: the video mean is
    # [2, 1]; centred, each voted snippet is [2, 0], pooled [4, 0] -> [1, 0]; plain Eq. 5 pools
    # [8, 2] -> [4, 1] / sqrt(17), the scene still in it.
    x = np.array([[0, 1], [0, 1], [4, 1], [4, 1]], dtype=np.float32)
    v = np.array([0.0, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(global_feature(x, v, centre=True), [1.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(global_feature(x, v), np.array([4.0, 1.0]) / np.sqrt(17), rtol=1e-6)
    # votes on every snippet equally: centred, nothing is left, so the mean feature stands in
    np.testing.assert_allclose(global_feature(x, np.ones(4), centre=True), mean_feature(x))
