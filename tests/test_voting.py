"""HAS voting inside training (Eq. 4): the votes a training leaves are the decayed sum of the A_HAS of
its voting epochs' teachers.

The expected votes are rebuilt here from the teacher state that each epoch's report carries: the
teacher is run on every snippet and Eqs. 1-3 are computed in numpy, apart from the engine's own
voting code (LocalVoter, update_votes, has.vote, has.has_attention).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from tiny_corpus import tiny_synthetic

from copl_dist.config import resolve, to_dict
from copl_dist.data.formats import import_dataset
from copl_dist.method.engine import train_loop_per_worker
from copl_dist.method.model import IOCNet

EPOCHS = 3
ALPHA = 0.5  # far from 1, so a wrongly weighted epoch shows
GAMMA = 4.0  # k = T/4 snippets per video: A_HAS moves between epochs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("voting")
    return import_dataset(tiny_synthetic(root / "synth", videos=3), root / "corpus")


def _train(corpus, **has):
    """One training that collects votes: (cfg, video ids, final votes, [(teacher state, votes held)]
    after each epoch)."""
    overrides = {
        "train.epochs": EPOCHS, "train.batch_size": 2, "train.lr": 1e-3, "data.snippets": 32,
        "model.hidden_dim": 32, "train.shift_channels": 64, "has.alpha": ALPHA, "has.gamma": GAMMA,
        **{f"has.{k}": v for k, v in has.items()},
    }
    cfg = resolve("thumos14", overrides=overrides)
    ids = corpus.video_ids(cfg.data.train_subset)
    epochs: list[tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]] = []

    def report(metrics, checkpoint):
        # The checkpoint holds live tensors that later EMA steps overwrite: keep a copy.
        epochs.append(copy.deepcopy((checkpoint["teacher"], checkpoint["votes"])))

    config = {
        "cfg": to_dict(cfg), "corpus": str(corpus.root), "video_ids": ids,
        "targets": np.eye(3, dtype=np.float32)[np.arange(len(ids)) % 3], "labelled": np.ones(len(ids), bool),
        "num_classes": 3, "iteration": 0, "collect_votes": True,
    }
    votes = train_loop_per_worker(config, report=report)["votes"]
    assert len(epochs) == EPOCHS
    return cfg, ids, votes, epochs


def _a_has(a_cs: np.ndarray, a_ca: np.ndarray, gamma: float) -> np.ndarray:
    """Eqs. 1-3 by their definitions: both branches above their own median, A_c = mean, top k."""
    both = (a_cs > np.median(a_cs)) & (a_ca > np.median(a_ca))
    a_f = np.where(both, (a_cs + a_ca) / 2, 0.0)
    k = max(1, math.floor(len(a_f) / gamma))
    out = np.zeros_like(a_f)
    top = np.argsort(-a_f, kind="stable")[:k]
    out[top] = a_f[top]
    return out


def _epoch_attention(state, cfg, corpus, ids) -> dict[str, np.ndarray]:
    """A_HAS of every training video under one epoch's teacher, on all its snippets."""
    model = IOCNet(3, cfg.model.feature_dim, cfg.model.hidden_dim, cfg.model.dropout)
    model.load_state_dict(state)
    model.eval()
    out = {}
    with torch.no_grad():
        for vid in ids:
            y = model(torch.tensor(np.array(corpus.features(vid)))[None])
            out[vid] = _a_has(y["a_cs"][0].double().numpy(), y["a_ca"][0].double().numpy(), cfg.has.gamma)
    return out


def _expected(attention: list[dict[str, np.ndarray]], voted: list[int], vid: str, decayed: bool) -> np.ndarray:
    """Eq. 4 after the epochs `voted`: the newest weighs 1, each older one alpha times the next;
    without voting, the newest alone."""
    last = voted[-1]
    if not decayed:
        return attention[last][vid]
    return sum(ALPHA ** (last - e) * attention[e][vid] for e in voted)


@pytest.mark.parametrize(
    ("has", "first_voting_epoch", "decayed"),
    [
        ({"vote_last": 0}, 0, True),  # the paper: every epoch votes
        ({"vote_last": 2}, EPOCHS - 2, True),  # only the last 2 epochs vote
        # The default window: 0.5^2 = 0.25 <= 0.3 < 0.5^1, the last 2 epochs.
        ({"vote_tol": 0.3}, EPOCHS - 2, True),
        # "w/o voting": the newest epoch's A_HAS alone, so only the last epoch runs the teacher.
        ({"voting": False, "vote_last": 0}, EPOCHS - 1, False),
    ],
    ids=["all-epochs", "vote-last-2", "window-from-alpha", "no-voting"],
)
def test_votes_are_the_decayed_sum_of_the_voting_epochs_teachers(corpus, has, first_voting_epoch, decayed):
    cfg, ids, votes, epochs = _train(corpus, **has)
    attention = [_epoch_attention(teacher, cfg, corpus, ids) for teacher, _ in epochs]
    assert sorted(votes) == sorted(ids)
    for e, (_, held) in enumerate(epochs):
        # The votes held after each epoch (what a checkpoint resumes from) follow Eq. 4 too.
        if e < first_voting_epoch:
            assert held == {}, f"epoch {e} voted before the last has.vote_last epochs"
            continue
        voted = list(range(first_voting_epoch, e + 1))
        assert sorted(held) == sorted(ids)
        for vid in ids:
            np.testing.assert_allclose(held[vid], _expected(attention, voted, vid, decayed), rtol=1e-5, atol=1e-6)
    voted = list(range(first_voting_epoch, EPOCHS))
    for vid in ids:
        np.testing.assert_allclose(votes[vid], _expected(attention, voted, vid, decayed), rtol=1e-5, atol=1e-6)
    # The check has teeth only if the epochs' attentions differ: then neither the plain sum nor the
    # newest epoch alone (nor another set of epochs) equals the decayed sum.
    moved = [vid for vid in ids if not np.allclose(attention[0][vid], attention[-1][vid], atol=1e-3)]
    assert moved, "A_HAS did not change over training; the test could not tell the epochs apart"
    vid = moved[0]
    if decayed:
        assert not np.allclose(votes[vid], sum(attention[e][vid] for e in voted), atol=1e-4)
    assert decayed == (not np.allclose(votes[vid], attention[-1][vid], atol=1e-4))
