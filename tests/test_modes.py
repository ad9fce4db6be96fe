"""The weakly supervised mode (`--mode wtal`) and the plain baseline (`--mode baseline`), checked by
the values they write, each rebuilt here from the corpus and the mode's definition.

wtal: one training on the true video-level labels (as distributions) of every training video, the
classes themselves as clusters (identity mapping, real class names). baseline: spectral clustering
of the L2-normalised mean features, each test video in the cluster of its nearest centroid (cosine),
snippet actionness its novelty (distance from the video's mean feature), no network.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from tiny_corpus import TINY

from copl_dist.cli import main
from copl_dist.cluster.videos import cluster_videos
from copl_dist.common.seeding import STREAM_CLUSTER, derive_seed
from copl_dist.config import resolve, to_dict
from copl_dist.data.corpus import Corpus
from copl_dist.data.synth import make_synthetic
from copl_dist.method.engine import infer_video, resolve_device, train_loop_per_worker
from copl_dist.method.localize import localize_video
from copl_dist.method.model import IOCNet

DIM = 128  # the tiny corpus' layout with narrower features: quicker runs


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("modes") / "synth"
    return make_synthetic(root, preset="thumos14", videos=8, classes=3, seed=0, duration_scale=0.15, feature_dim=DIM)


def _run(data: Path, out: Path, mode: str) -> Path:
    sets = ["--set", "tracking.enabled=false", "--set", f"model.feature_dim={DIM}"]
    assert main(["run", "--data", str(data), "--out", str(out), "--mode", mode, "--workers", "0", *TINY, *sets]) == 0
    return out


@pytest.fixture(scope="module")
def wtal(data, tmp_path_factory) -> Path:
    return _run(data, tmp_path_factory.mktemp("wtal") / "out", "wtal")


@pytest.fixture(scope="module")
def baseline(data, tmp_path_factory) -> Path:
    return _run(data, tmp_path_factory.mktemp("baseline") / "out", "baseline")


def _ground_truth(data: Path) -> dict:
    return json.loads((data / "annotations.json").read_text())["database"]


def _detections(out: Path) -> dict:
    return json.loads((out / "detections.json").read_text())["results"]


def _as_written(dets, names: list[str]) -> list[dict]:
    """localize_video's tuples as detections.json holds them."""
    return [{"segment": [round(s, 3), round(e, 3)], "label": names[c], "score": score} for s, e, c, score in dets]


def _primary(record: dict, classes: list[str]) -> int:
    """The class of a video's longest total annotated time (ties: the first name)."""
    totals: dict[str, float] = {}
    for a in record["annotations"]:
        totals[a["label"]] = totals.get(a["label"], 0.0) + float(a["segment"][1]) - float(a["segment"][0])
    return classes.index(max(sorted(totals), key=lambda k: totals[k]))


# -- wtal ---------------------------------------------------------------------------------------


def test_wtal_classes_are_the_annotated_classes_mapped_to_themselves(wtal, data):
    gt = _ground_truth(data)
    classes = sorted({a["label"] for rec in gt.values() for a in rec["annotations"]})
    ckpt = torch.load(wtal / "teacher.pt", weights_only=True)
    assert ckpt["class_names"] == classes and ckpt["num_classes"] == len(classes)
    assert ckpt["cluster_to_class"] == list(range(len(classes)))
    train = [v for v, rec in gt.items() if rec["subset"] == "validation"]
    record = json.loads((wtal / "metrics.json").read_text())["iterations"]
    assert len(record) == 1
    annotated = sum(bool(gt[v]["annotations"]) for v in train)
    assert (record[0]["num_pseudo_labelled"], record[0]["num_unlabelled"]) == (annotated, len(train) - annotated)


def test_wtal_teacher_is_trained_on_the_true_video_labels(wtal):
    """Training again on targets built here from the annotations gives teacher.pt to the bit: the
    mode trains on the true labels, every annotated training video labelled, no clustering."""
    cfg = resolve("thumos14", wtal / "config.yaml")
    corpus = Corpus.open(wtal / "corpus")
    ids = corpus.video_ids(cfg.data.train_subset)
    targets = np.zeros((len(ids), len(corpus.classes)), dtype=np.float32)
    for n, vid in enumerate(ids):
        names = {s.label for s in corpus.segments(vid)}
        for name in names:
            targets[n, corpus.classes.index(name)] = 1.0 / len(names)
    # Several classes among the training videos: shuffled or constant targets would train another teacher.
    assert len({int(t.argmax()) for t in targets}) > 1
    trained = train_loop_per_worker({
        "cfg": to_dict(cfg), "corpus": str(corpus.root), "video_ids": ids, "targets": targets,
        "labelled": targets.sum(axis=1) > 0, "num_classes": len(corpus.classes), "iteration": 0,
        "collect_votes": False, "device": str(resolve_device(cfg.train.device)),
    })
    state = torch.load(wtal / "teacher.pt", weights_only=True)["state_dict"]
    assert state.keys() == trained["teacher"].keys()
    for name, value in trained["teacher"].items():
        assert torch.equal(state[name].cpu(), value), name


def test_wtal_detections_are_the_teachers_under_the_class_names(wtal):
    """Each test video's detections are the teacher's, labelled with the class of each output (the
    identity mapping): recomputed from teacher.pt."""
    cfg = resolve("thumos14", wtal / "config.yaml")
    corpus = Corpus.open(wtal / "corpus")
    ckpt = torch.load(wtal / "teacher.pt", weights_only=True)
    model = IOCNet(len(corpus.classes), cfg.model.feature_dim, cfg.model.hidden_dim, cfg.model.dropout)
    model.load_state_dict(ckpt["state_dict"])
    results = _detections(wtal)
    test_ids = corpus.video_ids(cfg.data.test_subset)
    assert sorted(results) == sorted(test_ids)
    labels = set()
    for vid in test_ids:
        out = infer_video(model, corpus.features(vid), cfg.train.beta, cfg.train.topl_ratio)
        dets = localize_video(out.h_cs, out.class_scores, corpus.record(vid).duration_s, cfg.inference)
        assert results[vid] == _as_written(dets, corpus.classes), vid
        labels |= {d["label"] for d in results[vid]}
    assert len(labels) > 1  # more than one class detected, so a permuted naming would show


# -- baseline -----------------------------------------------------------------------------------


def _mean_features(corpus: Corpus, ids: list[str]) -> np.ndarray:
    means = np.stack([np.asarray(corpus.features(v), dtype=np.float64).mean(axis=0) for v in ids])
    return means / np.linalg.norm(means, axis=1, keepdims=True)


def _novelty(x: np.ndarray) -> np.ndarray:
    d = np.linalg.norm(np.asarray(x, dtype=np.float64) - np.asarray(x, dtype=np.float64).mean(axis=0), axis=1)
    return (d - d.min()) / (d.max() - d.min())


def test_baseline_detections_follow_the_nearest_centroid_and_novelty(baseline, data):
    cfg = resolve("thumos14", baseline / "config.yaml")
    corpus = Corpus.open(baseline / "corpus")
    gt = _ground_truth(data)
    train, test = corpus.video_ids(cfg.data.train_subset), corpus.video_ids(cfg.data.test_subset)
    k = len(corpus.classes)
    # Training videos clustered by their mean features, every one of them kept (no PLRI).
    features = _mean_features(corpus, train)
    labels, _, mask = cluster_videos(features, k, derive_seed(cfg.seed, STREAM_CLUSTER, 0), cfg.cluster.delta, plri=False)
    assert mask.all()
    primary = np.array([_primary(gt[v], corpus.classes) for v in train])
    record = json.loads((baseline / "metrics.json").read_text())["iterations"]
    assert len(record) == 1
    assert record[0]["nmi"] == pytest.approx(normalized_mutual_info_score(primary, labels), abs=1e-12)
    assert record[0]["ari"] == pytest.approx(adjusted_rand_score(primary, labels), abs=1e-12)
    counts = np.zeros((k, k))
    np.add.at(counts, (labels, primary), 1)
    assert record[0]["purity"] == pytest.approx(counts.max(axis=1).sum() / len(train), abs=1e-12)
    # Clusters named by Hungarian matching against the training videos' primary classes.
    rows, cols = linear_sum_assignment(counts, maximize=True)
    names = {int(r): corpus.classes[int(c)] for r, c in zip(rows, cols)}
    # A test video joins the cluster of the most cosine-similar (L2-normalised) centroid.
    centroids = np.stack([features[labels == c].mean(axis=0) for c in range(k)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    nearest = np.argmax(_mean_features(corpus, test) @ centroids.T, axis=1)
    # The check needs test videos in more than one cluster: a wrong centroid must change a label.
    assert len(set(nearest.tolist())) > 1
    results = _detections(baseline)
    assert sorted(results) == sorted(test)
    for vid, c in zip(test, nearest):
        assert results[vid] and {d["label"] for d in results[vid]} == {names[int(c)]}, vid
        # Actionness = novelty for every class, the video's only class score on its cluster.
        scores = np.zeros(k)
        scores[c] = 1.0
        h = np.repeat(_novelty(corpus.features(vid))[:, None], k, axis=1)
        dets = localize_video(h, scores, corpus.record(vid).duration_s, cfg.inference)
        expected = _as_written(dets, [names[i] for i in range(k)])
        assert len(results[vid]) == len(expected)
        for got, want in zip(results[vid], expected):
            assert got["label"] == want["label"] and got["segment"] == pytest.approx(want["segment"], abs=1e-3)
            assert got["score"] == pytest.approx(want["score"], abs=1e-9)


def test_baseline_trains_no_model(baseline):
    assert not (baseline / "teacher.pt").exists()
    record = json.loads((baseline / "metrics.json").read_text())["iterations"][0]
    assert "losses" not in record
