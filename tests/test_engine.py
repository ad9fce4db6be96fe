import numpy as np
import pytest

from copl_dist.common.seeding import derive_seed
from copl_dist.method.baseline import assign_to_centroids, cluster_centroids, novelty
from copl_dist.method.engine import (
    LOSS_KEYS,
    LocalVoter,
    batch_scales,
    ema_decay_at,
    epoch_batches,
    rank_share,
    sample_indices,
    train_loop_per_worker,
)


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


def test_epoch_batches_drop_only_a_short_last_batch():
    batches = epoch_batches(5, 2, 2, seed=0, iteration=0, epoch=0)
    assert [len(b) for b in batches] == [2, 2]  # the last batch of 1 cannot feed 2 ranks
    assert len({int(i) for b in batches for i in b}) == 4
    assert [len(b) for b in epoch_batches(5, 2, 1, seed=0, iteration=0, epoch=0)] == [2, 2, 1]


def test_epoch_batches_refuse_a_batch_smaller_than_the_world():
    # 17 workers on a batch of 16 would drop every batch: nothing trained, losses 0, no error.
    with pytest.raises(ValueError, match="global batch of 16 videos.*smaller than the 17 workers"):
        epoch_batches(200, 16, 17, seed=0, iteration=0, epoch=0)
    with pytest.raises(ValueError, match="global batch of 3 videos"):
        epoch_batches(3, 16, 4, seed=0, iteration=0, epoch=0)  # fewer videos than workers


def test_logged_terms_are_the_global_batch_mean():
    """Labelled per-video values [1, 2, 3] split 2 + 1 over 2 ranks: rank means 1.5 and 3, whose plain
    mean 2.25 is what was logged; weighted by each rank's share (4/3, 2/3) the mean is 2.0, the global
    batch's mean. L_un terms over all videos [4, 6, 8, 10] split 3 + 1: rank means 6 and 10 -> 7."""
    labelled = np.array([True, True, True, False])
    global_idx = np.array([0, 1, 2, 3])
    shards = [np.array([0, 1, 3]), np.array([2])]
    scales = [batch_scales(labelled, global_idx, idx, 2) for idx in shards]
    assert scales[0] == pytest.approx((4 / 3, 3 / 2)) and scales[1] == pytest.approx((2 / 3, 1 / 2))
    rank_terms = [
        {"loss": 0.0, "cls": 1.5, "asl": 3.0, "ci": 6.0, "contrastive": 0.0, "co": 12.0},
        {"loss": 0.0, "cls": 3.0, "asl": 6.0, "ci": 10.0, "contrastive": 0.0, "co": 20.0},
    ]
    losses = [1.5 * 4 / 3 + 6.0 * 3 / 2, 3.0 * 2 / 3 + 10.0 / 2]  # what total_loss returns: sup * s + un * u
    shares = [rank_share(t, loss, *sc) for t, loss, sc in zip(rank_terms, losses, scales)]
    mean = {k: (shares[0][k] + shares[1][k]) / 2 for k in LOSS_KEYS}  # what the all-reduce gives
    assert mean == pytest.approx({"loss": 9.0, "cls": 2.0, "asl": 4.0, "ci": 7.0, "contrastive": 0.0, "co": 14.0})
    # One worker: the scales are 1 and the terms pass through unchanged.
    assert batch_scales(labelled, global_idx, global_idx, 1) == (1.0, 1.0)
    assert rank_share(rank_terms[0], 2.5, 1.0, 1.0) == {**rank_terms[0], "loss": 2.5}


def test_training_clears_a_voters_stale_votes(tmp_path):
    """A voter that outlives a failed attempt (HAS actors) must not carry its votes into the restart:
    training with a voter holding stale votes ends with the votes of a fresh one."""
    from tiny_corpus import tiny_synthetic

    from copl_dist.config import resolve, to_dict
    from copl_dist.data.formats import import_dataset

    cfg = resolve("thumos14", overrides={"train.epochs": 1, "train.batch_size": 4, "data.snippets": 32,
                                         "model.hidden_dim": 32, "train.shift_channels": 64})
    corpus = import_dataset(tiny_synthetic(tmp_path / "synth", videos=4), tmp_path / "corpus")
    ids = corpus.video_ids(cfg.data.train_subset)
    config = {"cfg": to_dict(cfg), "corpus": str(corpus.root), "video_ids": ids,
              "targets": np.eye(3, dtype=np.float32)[np.arange(len(ids)) % 3], "labelled": np.ones(len(ids), bool),
              "num_classes": 3, "iteration": 0, "collect_votes": True}
    fresh = train_loop_per_worker(config)["votes"]
    stale = LocalVoter(corpus, ids, cfg)
    stale.votes = {ids[0]: np.full(len(fresh[ids[0]]), 9.0), "from-a-dead-attempt": np.ones(3)}
    votes = train_loop_per_worker({**config, "voter": stale})["votes"]
    assert sorted(votes) == sorted(ids)
    assert all(np.array_equal(votes[v], fresh[v]) for v in ids)
    # ... and those are the passed voter's own votes (a run that ignored it would leave it stale)
    held = stale.state()
    assert sorted(held) == sorted(ids) and all(np.array_equal(held[v], fresh[v]) for v in ids)
