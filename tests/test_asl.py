"""The reference weakly supervised model (method/asl.py): it learns from video labels, and its
inference follows ASL's recipe."""

from __future__ import annotations

import numpy as np
import pytest

from copl_dist.config import PRESET_TIOUS
from copl_dist.data.formats import import_dataset
from copl_dist.data.synth import make_synthetic
from copl_dist.method.asl import NMS_ALPHA, _soft_nms, detect_asl, train_asl
from copl_dist.method.metrics import detection_map


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("asl")
    # The first generator: its actions stand out from the background more than the second's, where
    # ASL's selection loop can settle on the background for some initialisations (docs/robustness.md).
    data = make_synthetic(root / "data", videos=40, classes=4, seed=2, duration_scale=0.4)
    return import_dataset(data, root / "corpus")


def _train(corpus, epochs, lr):
    train = corpus.video_ids("validation")
    labels = np.zeros((len(train), len(corpus.classes)), dtype=np.float32)
    for i, vid in enumerate(train):
        for seg in corpus.segments(vid):
            labels[i, corpus.classes.index(seg.label)] = 1
    return train_asl([corpus.features(v) for v in train], labels, epochs, lr=lr, snippets=64, batch=8, seed=0)


def _map(corpus, net):
    results = {}
    for vid in corpus.video_ids("test"):
        duration = corpus.record(vid).duration_s
        dets = detect_asl(net, corpus.features(vid), duration)
        assert all(0 <= a < b <= duration + 1e-9 for a, b, _, _ in dets)
        results[vid] = [{"segment": [a, b], "label": corpus.classes[c], "score": s} for a, b, c, s in dets]
    keys = [f"{t:g}" for t in PRESET_TIOUS["thumos14"]]
    return detection_map(corpus.ground_truth("test"), {"results": results}, keys, subset="test")["avg"]


def test_training_on_video_labels_localizes_the_actions(corpus):
    """Switched off (lr 0: the initial weights after the same epochs) the mAP stays far below."""
    trained = _map(corpus, _train(corpus, 15, 1e-3))
    frozen = _map(corpus, _train(corpus, 15, 0.0))
    assert trained > frozen + 10, (trained, frozen)


def test_soft_nms_keeps_the_best_and_decays_what_overlaps_it():
    props = [(0.9, 0.0, 10.0), (0.8, 1.0, 10.0), (0.5, 50.0, 60.0)]
    out = _soft_nms(props)
    assert out[0] == (0.9, 0.0, 10.0) and out[1] == (0.5, 50.0, 60.0)  # kept, in score order
    iou = (10.0 - 1.0 + 1) / ((10.0 - 0.0 + 1) + (10.0 - 1.0 + 1) - (10.0 - 1.0 + 1))
    assert out[2][1:] == (1.0, 10.0) and out[2][0] == pytest.approx(0.8 * np.exp(-iou**2 / NMS_ALPHA))


def test_detections_of_a_known_score_land_on_its_step_in_seconds():
    """A hand-set net whose actionness is a step over snippets 10-19 of 40 in a 80 s video, and whose
    class 1 wins the video: the best detection is class 1 over [20 s, 40 s], up to the upsampling."""
    import torch

    from copl_dist.method.asl import ASLNet

    net = ASLNet(feature_dim=4, num_classes=3, hidden=1)
    with torch.no_grad():
        for head, channel in ((net.rgb, 0), (net.flow, 0)):  # channel 0 of each stream
            head[0].weight.zero_()
            head[0].weight[0, channel] = 1.0
            head[0].bias.zero_()
            head[2].weight.fill_(40.0)
            head[2].bias.fill_(-20.0)
        net.base[0].weight.zero_()
        net.base[0].bias.fill_(1.0)
        net.base[2].weight.zero_()
        net.base[2].bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    x = np.zeros((40, 4), dtype=np.float32)
    x[10:20, 0] = x[10:20, 2] = 1.0
    dets = detect_asl(net.eval(), x, duration_s=80.0)
    assert {c for _, _, c, _ in dets} == {1}  # the other classes' softmax scores are under 0.25
    start, end, _, _ = max(dets, key=lambda d: d[3])
    assert start == pytest.approx(20.0, abs=2.0) and end == pytest.approx(40.0, abs=2.0)
    assert all(0.0 <= a < b <= 80.0 for a, b, _, _ in dets)
