import numpy as np

from copl_dist.baseline import assign_to_centroids, cluster_centroids, novelty
from copl_dist.engine import ema_decay_at, sample_indices
from copl_dist.seeding import derive_seed


def test_sample_indices_long_video_one_per_bin():
    rng = np.random.default_rng(0)
    idx = sample_indices(100, 10, rng)
    assert idx.shape == (10,)
    assert np.all((idx >= np.arange(10) * 10) & (idx < np.arange(1, 11) * 10))
    assert np.array_equal(sample_indices(100, 10, None), np.arange(0, 100, 10))


def test_sample_indices_short_video_repeats_uniformly():
    assert sample_indices(3, 6, np.random.default_rng(0)).tolist() == [0, 0, 1, 1, 2, 2]
    assert sample_indices(4, 4, None).tolist() == [0, 1, 2, 3]


def test_ema_warmup_ramps_to_decay():
    assert ema_decay_at(0, 0.999) == 0.1
    assert ema_decay_at(90, 0.999) == 0.91
    assert ema_decay_at(10**6, 0.999) == 0.999


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    assert len({derive_seed(0, 1, i) for i in range(50)}) == 50
    assert derive_seed(1, 1, 2) != derive_seed(0, 1, 2)


def test_novelty_by_hand():
    x = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    # mean (0.75, 1); distances 1.25, 1.25, 3.75, 1.25 -> scaled 0, 0, 1, 0
    assert np.allclose(novelty(x), [0, 0, 1, 0])
    assert np.allclose(novelty(np.ones((4, 3))), 0)


def test_centroid_assignment():
    f = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    cents = cluster_centroids(f, np.array([0, 0, 1]), 3)
    assert np.allclose(cents[2], 0)
    assert assign_to_centroids(np.array([[0.1, 0.99], [1.0, 0.0]]), cents).tolist() == [1, 0]
