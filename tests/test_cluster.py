"""Affinity, spectral clustering and PLRI (Eqs. 6-10) on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from copl_dist.cluster.exact import (
    canonical_labels,
    gaussian_affinity,
    pairwise_distances,
    plri_scores,
    plri_split,
    spectral_clustering,
)
from copl_dist.cluster.videos import cluster_videos

TRIANGLE = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # distances 3, 4, 5


def test_pairwise_distances_by_hand():
    np.testing.assert_allclose(pairwise_distances(TRIANGLE), [[0, 3, 4], [3, 0, 5], [4, 5, 0]], atol=1e-12)


def test_pairwise_distances_numerically_safe():
    big = np.full((4, 64), 1e4) + np.arange(4)[:, None] * 1e-9  # near-identical, large norms
    d = pairwise_distances(big)
    assert np.all(np.isfinite(d)) and np.all(d >= 0)
    assert np.all(np.diag(d) == 0.0)
    np.testing.assert_array_equal(d, d.T)


def test_gaussian_affinity_by_hand():
    sigma = 2 * (3 + 4 + 5) / 9  # mean over all 9 pairs, zero diagonal included
    w = lambda d: np.exp(-(d**2) / (2 * sigma**2))  # noqa: E731
    expected = [[1, w(3), w(4)], [w(3), 1, w(5)], [w(4), w(5), 1]]
    np.testing.assert_allclose(gaussian_affinity(TRIANGLE), expected, rtol=1e-12)
    np.testing.assert_array_equal(gaussian_affinity(np.ones((3, 2))), np.ones((3, 3)))


def _block_affinity(sizes, within=1.0, between=0.01):
    truth = np.repeat(np.arange(len(sizes)), sizes)
    W = np.where(truth[:, None] == truth[None, :], within, between)
    return W, truth


def test_spectral_recovers_blocks_and_is_deterministic():
    W, truth = _block_affinity([4, 3, 5])
    perm = np.random.default_rng(0).permutation(len(truth))
    W, truth = W[np.ix_(perm, perm)], truth[perm]
    labels = spectral_clustering(W, 3, seed=0)
    assert adjusted_rand_score(truth, labels) == 1.0
    np.testing.assert_array_equal(labels, spectral_clustering(W, 3, seed=0))
    # canonical: clusters numbered in order of first appearance
    np.testing.assert_array_equal(labels, canonical_labels(labels))
    assert labels[0] == 0 and set(labels.tolist()) == {0, 1, 2}


def test_canonical_labels():
    np.testing.assert_array_equal(canonical_labels(np.array([2, 2, 0, 1, 0])), [0, 0, 1, 2, 1])


def test_spectral_edge_cases():
    W, _ = _block_affinity([2, 2])
    np.testing.assert_array_equal(spectral_clustering(W, 1, seed=0), [0, 0, 0, 0])
    np.testing.assert_array_equal(spectral_clustering(W, 4, seed=0), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="exceeds the number of videos"):
        spectral_clustering(W, 5, seed=0)


# two clusters {0,1} and {2,3}
W4 = np.array(
    [
        [1.0, 0.8, 0.2, 0.4],
        [0.8, 1.0, 0.1, 0.3],
        [0.2, 0.1, 1.0, 0.6],
        [0.4, 0.3, 0.6, 1.0],
    ]
)


def test_plri_scores_by_hand():
    # a = w to the other member; b = mean w to the other cluster; s = (a - b) / max(a, b)
    expected = [(0.8 - 0.3) / 0.8, (0.8 - 0.2) / 0.8, (0.6 - 0.15) / 0.6, (0.6 - 0.35) / 0.6]
    s = plri_scores(W4, np.array([0, 0, 1, 1]))
    np.testing.assert_allclose(s, expected)
    # label names carry no meaning
    np.testing.assert_allclose(plri_scores(W4, np.array([7, 7, 3, 3])), expected)


def test_plri_nearest_cluster_is_max_and_singleton_is_zero():
    W = np.eye(5)
    W[:4, :4] = W4
    W[4, :4] = W[:4, 4] = [0.9, 0.1, 0.2, 0.2]  # video 4 alone in cluster 2
    s = plri_scores(W, np.array([0, 0, 1, 1, 2]))
    expected = [
        (0.8 - 0.9) / 0.9,  # b = max(0.3, 0.9): the singleton cluster is the nearest
        (0.8 - 0.2) / 0.8,  # b = max(0.2, 0.1)
        (0.6 - 0.2) / 0.6,  # b = max(0.15, 0.2)
        (0.6 - 0.35) / 0.6,  # b = max(0.35, 0.2)
        0.0,  # singleton
    ]
    np.testing.assert_allclose(s, expected)


def test_plri_degenerate_cases_are_zero():
    np.testing.assert_array_equal(plri_scores(W4, np.zeros(4, dtype=int)), np.zeros(4))  # one cluster
    np.testing.assert_array_equal(plri_scores(np.eye(2), np.array([0, 0])), [0.0, 0.0])


def test_plri_split_by_delta():
    s = np.array([0.625, 0.75, -0.1, 5 / 12])
    np.testing.assert_array_equal(plri_split(s, 0.5), [True, True, False, False])
    np.testing.assert_array_equal(plri_split(s, 0.0), [True, True, False, True])
    np.testing.assert_array_equal(plri_split(s, 0.625), [True, True, False, False])  # >= delta


def _blobs(n_per=6, k=3, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim)) * 5
    truth = np.repeat(np.arange(k), n_per)
    return centers[truth] + rng.normal(scale=0.1, size=(len(truth), dim)), truth


def test_cluster_videos_end_to_end():
    F, truth = _blobs()
    labels, scores, mask = cluster_videos(F, 3, seed=0, delta=0.0)
    assert adjusted_rand_score(truth, labels) == 1.0
    assert scores.shape == (len(truth),) and np.all(scores > 0) and mask.all()
    _, _, mask_strict = cluster_videos(F, 3, seed=0, delta=1.0)
    assert not mask_strict.any()
    _, _, mask_off = cluster_videos(F, 3, seed=0, delta=1.0, plri=False)
    assert mask_off.all()


def test_cluster_videos_too_many_clusters():
    F, _ = _blobs(n_per=1)
    with pytest.raises(ValueError, match="n_clusters=4 exceeds the number of videos \\(3\\)"):
        cluster_videos(F, 4, seed=0, delta=0.0)


def test_plri_matches_loop_reference():
    rng = np.random.default_rng(3)
    F = rng.normal(size=(12, 4))
    W = gaussian_affinity(F)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 1, 0])
    ref = []
    for i in range(12):
        own = [j for j in range(12) if labels[j] == labels[i] and j != i]
        if not own:  # video 9 is a singleton
            ref.append(0.0)
            continue
        a = W[i, own].mean()
        b = max(W[i, labels == c].mean() for c in set(labels.tolist()) - {labels[i]})
        ref.append((a - b) / max(a, b))
    np.testing.assert_allclose(plri_scores(W, labels), ref, rtol=1e-12)


def test_exact_path_labels_do_not_depend_on_the_seed_on_overlapping_clusters():
    from copl_dist.bench.cluster import make_cluster_features

    F, _ = make_cluster_features(1000, 64, 20, seed=0, separation=1.0)
    W = gaussian_affinity(F)
    labels = [spectral_clustering(W, 20, seed) for seed in range(4)]
    assert min(adjusted_rand_score(labels[0], other) for other in labels[1:]) >= 0.98
