"""Pseudo-label discriminant projection (projection.py) and where the pipeline applies it."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from copl_dist.cluster.videos import cluster_videos
from copl_dist.config import resolve
from copl_dist.method.projection import discriminant_projection, fit_rows
from copl_dist.run.driver import project_features


def test_fit_rows_keeps_p_clusters_with_two_members():
    labels = np.array([0, 0, 1, 1, 1, 2, 2])
    mask = np.array([True, True, True, True, False, True, False])
    # cluster 1: rows 2, 3 in P (row 4 is U); cluster 2 has one P video and cannot give a covariance
    assert fit_rows(labels, mask, max_per_cluster=10, seed=0).tolist() == [0, 1, 2, 3]


def test_fit_rows_caps_each_cluster_with_a_seeded_sample():
    labels = np.array([0] * 6 + [1] * 2)
    mask = np.ones(8, dtype=bool)
    rows = fit_rows(labels, mask, max_per_cluster=3, seed=5)
    assert rows.tolist() == sorted(rows.tolist()) and len(rows) == 5
    assert set(rows.tolist()) >= {6, 7} and len(set(rows.tolist()) & set(range(6))) == 3
    assert rows.tolist() == fit_rows(labels, mask, max_per_cluster=3, seed=5).tolist()
    with pytest.raises(ValueError, match="max_per_cluster"):
        fit_rows(labels, mask, max_per_cluster=1, seed=0)


def _two_classes(seed: int = 0, n: int = 40, d: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Class in dimension 0 (+-1), noise of spread 3 in every other dimension: the raw distances
    follow the noise, the discriminant direction is dimension 0."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    X = rng.normal(0, 3.0, size=(n, d))
    X[:, 0] = np.where(y == 0, -1.0, 1.0) + rng.normal(0, 0.1, size=n)
    return X.astype(np.float32), y


def test_two_clusters_project_to_the_sign_of_the_discriminant_direction_for_p_and_u():
    X, y = _two_classes()
    mask = np.arange(len(y)) % 4 != 0  # a quarter of the videos are U: never seen by the fit
    Z = discriminant_projection(X, y, mask)
    assert Z.shape == (len(y), 1) and Z.dtype == np.float32
    # One dimension, rows of norm 1: every video is +1 or -1, and the sign is its class, U included.
    np.testing.assert_allclose(np.abs(Z[:, 0]), 1.0, rtol=1e-6)
    side = Z[:, 0] > 0
    assert np.all(side == (y == 1)) or np.all(side == (y == 0))
    # What that buys the clustering: the raw features cluster by their noise, the projection by class.
    assert adjusted_rand_score(y, cluster_videos(X, 2, seed=0, delta=0.0)[0]) < 0.5
    assert adjusted_rand_score(y, cluster_videos(Z, 2, seed=0, delta=0.0)[0]) == 1.0


def test_dimension_is_fitted_clusters_minus_one_and_rows_have_norm_one():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(5), 6)
    X = rng.normal(size=(30, 20)) + 3 * np.eye(20)[labels]
    mask = np.ones(30, dtype=bool)
    mask[labels == 4] = False  # cluster 4 has nothing in P: 4 clusters fitted
    Z = discriminant_projection(X, labels, mask)
    assert Z.shape == (30, 3)
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1.0, rtol=1e-5)


def test_nothing_to_separate_gives_none():
    X, y = _two_classes()
    assert discriminant_projection(X, np.zeros_like(y), np.ones(len(y), dtype=bool)) is None
    only_one = np.zeros(len(y), dtype=bool)
    only_one[[0, 1, 30]] = True  # cluster 0 has two P videos, cluster 1 one
    assert discriminant_projection(X, y, only_one) is None
    # Every member of a cluster at one point: no within-cluster covariance to invert.
    y3 = np.repeat(np.arange(3), 4)
    assert discriminant_projection(np.eye(5, dtype=np.float32)[y3], y3, np.ones(12, dtype=bool)) is None
    with pytest.raises(ValueError, match="N = len"):
        discriminant_projection(X, y[:-1], np.ones(len(y) - 1, dtype=bool))


def test_pipeline_projects_from_iteration_one_unless_switched_off():
    X, y = _two_classes()
    cfg = resolve("thumos14")
    mask = np.ones(len(y), dtype=bool)
    assert project_features(X, None, cfg, seed=0) is X  # iteration 0: no clustering yet
    assert project_features(X, (y, mask), cfg, seed=0).shape == (len(y), 1)
    off = resolve("thumos14", sets=["cluster.project=none"])
    assert project_features(X, (y, mask), off, seed=0) is X
    # Without PLRI there is no reliable subset to fit on: the features as they are.
    no_plri = resolve("thumos14", sets=["cluster.plri=false"])
    assert project_features(X, (y, mask), no_plri, seed=0) is X
    # Nothing to fit: the features as they are.
    assert project_features(X, (np.zeros_like(y), mask), cfg, seed=0) is X
