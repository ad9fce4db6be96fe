"""`copl bench train`'s FLOP count of one training step, against a hand count from IOCNet's layer
shapes; and its GEMM timing. CPU, a tiny model, a few seconds."""

from __future__ import annotations

import numpy as np
import pytest

from copl_dist.bench.train import format_voting, gemm_peak, gemm_shapes, step_flops, vote_seconds
from copl_dist.config import resolve
from copl_dist.data.formats import import_dataset
from copl_dist.method.engine import epoch_batches

HIDDEN, CLASSES, SNIPPETS, BATCH = 32, 3, 16, 4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from tiny_corpus import tiny_synthetic

    root = tmp_path_factory.mktemp("flops")
    return import_dataset(tiny_synthetic(root / "data", videos=6), root / "corpus")


def _cfg():
    return resolve("thumos14", overrides={"model.hidden_dim": HIDDEN, "data.snippets": SNIPPETS,
                                          "train.batch_size": BATCH, "train.shift_channels": 64,
                                          "tracking.enabled": False})


def _conv_flops(rows: int, d: int, h: int, c: int) -> tuple[int, int]:
    """(forward, backward) FLOPs of IOCNet's convolutions on `rows` = videos x snippets, by hand.

    A Conv1d forward is 2 * Cin * Cout * k per output step (IOCNet runs them as GEMMs on unfolded
    features, which the counter sees as addmm forward and mm backward: the same FLOPs). Backward: the weight gradient costs a
    forward again, the input gradient another, except for the three convolutions on the features
    (no gradient wanted for the input)."""
    first = 2 * rows * (d * h * 3 + 2 * (d // 2) * h * 3)  # cs_conv; ca_rgb, ca_flow k=3 convolutions
    later = 2 * rows * (h * c + 2 * h * 1)  # cs_classifier; the agnostic heads' 1x1 convolutions
    return first + later, first + 2 * later


def test_step_flops_match_a_hand_count(corpus):
    cfg = _cfg()
    video_ids = corpus.video_ids(cfg.data.train_subset)
    n = len(video_ids)
    labelled = np.arange(n) % 3 != 0  # P and U videos in the batch
    targets = np.eye(CLASSES, dtype=np.float32)[np.arange(n) % CLASSES] * labelled[:, None]
    counted = step_flops(cfg, corpus, video_ids, targets, labelled)

    first_batch = epoch_batches(n, BATCH, 1, cfg.seed, 0, 0)[0]
    assert counted["videos"] == BATCH and counted["snippets"] == SNIPPETS
    assert counted["pseudo_labelled"] == int(labelled[first_batch].sum())
    forward, backward = _conv_flops(BATCH * SNIPPETS, cfg.model.feature_dim, HIDDEN, CLASSES)
    by_op = counted["by_op"]
    # Student and teacher forward; the student's backward.
    assert by_op.get("addmm", 0) == 2 * forward
    assert by_op.get("mm", 0) == backward
    # The rest: the contrastive loss's similarity matmuls (forward and backward), under 5%.
    rest = counted["flops"] - 2 * forward - backward
    assert 0 < rest < 0.05 * counted["flops"]
    assert counted["flops"] == sum(by_op.values())


def test_gemm_peak_times_the_models_shapes():
    shapes = gemm_shapes(64, 32, 16)
    assert shapes["cs_conv"] == (64, 96, 16) and shapes["ca_conv"] == (64, 48, 16)
    rates = gemm_peak(shapes, threads=1, repeats=3)
    assert set(rates) == set(shapes) and all(np.isfinite(r) and r > 0 for r in rates.values())


def test_voting_time_and_its_share_of_training(corpus):
    """One vote is timed with the teacher on every training video; its share of the training time
    counts the voting epochs of each schedule: all of them, or the default window's."""
    import torch

    from copl_dist.method.engine import build_models

    cfg = _cfg()
    video_ids = corpus.video_ids(cfg.data.train_subset)
    _, teacher, _ = build_models(cfg, CLASSES, 0, torch.device("cpu"))
    seconds = vote_seconds(cfg, corpus, video_ids, teacher.state_dict(), CLASSES, threads=1, repeats=1)
    assert np.isfinite(seconds) and seconds > 0
    # A vote as long as half an epoch: every epoch votes -> 50%; the window (22 epochs at alpha 0.9,
    # vote_tol 0.1) in 300 epochs -> 22 x 0.5 / 300, in 40 -> 22 x 0.5 / 40.
    text = format_voting([{"mode": "in-process", "vote_s": 1.0, "epoch_s": 2.0}], cfg)
    assert "window 22 @300 ep" in text and "window 22 @40 ep" in text
    row = text.splitlines()[-1].split()
    assert row[0] == "in-process" and row[2:] == ["50.0%", f"{22 * 0.5 / 300:.1%}", f"{22 * 0.5 / 40:.1%}"]
