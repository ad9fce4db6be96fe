"""Synthetic corpora: format, determinism, real-dataset statistics, and the difficulty HAS exploits."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from sklearn.cluster import SpectralClustering
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import normalized_mutual_info_score

from copl_dist.common.errors import InputError
from copl_dist.data import synth
from copl_dist.data.synth import make_synthetic


def _load(root):
    return json.loads((root / "annotations.json").read_text())["database"]


def _digest(root):
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _action_mask(num_snippets, video):
    """Snippets whose centre lies inside an annotated segment."""
    centres = (np.arange(num_snippets) + 0.5) * video["duration"] / num_snippets
    mask = np.zeros(num_snippets, bool)
    for a in video["annotations"]:
        mask |= (centres >= a["segment"][0]) & (centres < a["segment"][1])
    return mask


def _primary(video):
    labels = [a["label"] for a in video["annotations"]]
    return max(sorted(set(labels)), key=labels.count)


def _stats(db):
    counts = np.array([len(v["annotations"]) for v in db.values()])
    lengths = np.array([a["segment"][1] - a["segment"][0] for v in db.values() for a in v["annotations"]])
    durations = np.array([v["duration"] for v in db.values()])
    fractions = np.array([sum(a["segment"][1] - a["segment"][0] for a in v["annotations"]) / v["duration"]
                          for v in db.values()])
    single = np.mean([len({a["label"] for a in v["annotations"]}) == 1 for v in db.values()])
    return counts, lengths, durations, fractions, single


def _spectral_nmi(features, labels, n_clusters):
    """NMI of spectral clustering (Gaussian affinity, sigma = mean distance) of L2-normalised rows."""
    f = np.asarray(features, dtype=np.float64)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    d2 = np.maximum(((f[:, None] - f[None]) ** 2).sum(-1), 0.0)
    w = np.exp(-d2 / (2 * np.sqrt(d2).mean() ** 2))
    pred = SpectralClustering(n_clusters, affinity="precomputed", random_state=0).fit_predict(w)
    return normalized_mutual_info_score(labels, pred)


def test_format_shapes_and_segments(tmp_path):
    root = make_synthetic(tmp_path / "c", videos=3, classes=5, duration_scale=0.3, seed=3)
    assert root == tmp_path / "c"
    db = _load(root)
    assert sorted(db) == sorted(f"video_{s}_{i:07d}" for s in ("validation", "test") for i in (1, 2, 3))
    assert sorted({v["subset"] for v in db.values()}) == ["test", "validation"]
    assert sorted(p.name for p in (root / "features").iterdir()) == sorted(f"{k}.npy" for k in db)
    assert not [p for p in tmp_path.iterdir() if p.name != "c"]  # no temporary left behind
    for vid, v in db.items():
        x = np.load(root / "features" / f"{vid}.npy")
        assert x.dtype == np.float32 and x.shape == (max(8, round(v["duration"] * 25 / 16)), 2048)
        assert np.isfinite(x).all()
        assert v["annotations"], vid
        segs = np.array([a["segment"] for a in v["annotations"]])
        assert all(isinstance(t, float) for t in segs.ravel().tolist())
        assert (segs[:, 0] >= 0).all() and (segs[:, 1] <= v["duration"]).all()
        assert (segs[:, 1] > segs[:, 0]).all()
        assert (segs[1:, 0] >= segs[:-1, 1]).all()  # sorted, never overlapping
        assert {a["label"] for a in v["annotations"]} <= {f"class_{c:02d}" for c in range(5)}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kwargs = dict(videos=4, classes=4, duration_scale=0.2, feature_dim=64)
    a = _digest(make_synthetic(tmp_path / "a", seed=7, **kwargs))
    b = _digest(make_synthetic(tmp_path / "b", seed=7, **kwargs))
    c = _digest(make_synthetic(tmp_path / "c", seed=8, **kwargs))
    assert a == b
    assert a["annotations.json"] != c["annotations.json"]


def test_snippets_per_second_and_anet_subsets(tmp_path):
    root = make_synthetic(tmp_path / "a", preset="anet12", videos=2, classes=3, feature_dim=8,
                          snippets_per_second=0.5)
    db = _load(root)
    assert sorted({v["subset"] for v in db.values()}) == ["training", "validation"]
    for vid, v in db.items():
        assert np.load(root / "features" / f"{vid}.npy").shape == (max(8, round(v["duration"] * 0.5)), 8)


def test_thumos_statistics_near_the_real_dataset(tmp_path):
    db = _load(make_synthetic(tmp_path / "t", videos=150, feature_dim=8, seed=1))
    counts, lengths, durations, fractions, single = _stats(db)
    assert 12.0 <= counts.mean() <= 19.0  # real 15.4
    assert 6 <= np.median(counts) <= 11  # real 8
    assert 2.6 <= np.median(lengths) <= 3.4  # real 3.0
    assert 7.0 <= np.percentile(lengths, 90) <= 10.5  # real 8.5
    assert 125 <= np.median(durations) <= 190  # real 155
    assert 0.25 <= fractions.mean() <= 0.35  # real 0.29
    assert 0.80 <= single <= 0.93  # real 0.85-0.87


def test_anet_statistics_near_the_real_dataset(tmp_path):
    db = _load(make_synthetic(tmp_path / "a", preset="anet12", videos=300, classes=20, feature_dim=8))
    counts, lengths, durations, fractions, single = _stats(db)
    assert 1.3 <= counts.mean() <= 1.75  # real 1.49
    assert 20 <= np.median(lengths) <= 36  # real 28
    assert 100 <= durations.mean() <= 130  # real 115
    assert 0.55 <= fractions.mean() <= 0.72  # real 0.64
    assert single >= 0.98


def test_duration_scale_shrinks_the_timeline(tmp_path):
    full = _load(make_synthetic(tmp_path / "f", videos=5, feature_dim=8))
    half = _load(make_synthetic(tmp_path / "h", videos=5, feature_dim=8, duration_scale=0.5))
    for vid in full:
        assert half[vid]["duration"] == pytest.approx(full[vid]["duration"] / 2, abs=0.01)


def test_mean_features_cluster_poorly_action_features_well(tmp_path):
    """The gap HAS exploits: background rules the mean feature, the action snippets carry the class."""
    n_classes = 12
    root = make_synthetic(tmp_path / "n", videos=100, classes=n_classes, duration_scale=0.5, seed=0)
    db = _load(root)
    mean_f, action_f, labels, xs, ys = [], [], [], [], []
    for vid, v in db.items():
        x = np.load(root / "features" / f"{vid}.npy")
        m = _action_mask(len(x), v)
        mean_f.append(x.mean(0))
        action_f.append(x[m].mean(0) if m.any() else x.mean(0))
        labels.append(_primary(v))
        if v["subset"] == "validation":
            xs.append(x)
            ys.append(m)
    nmi_mean = _spectral_nmi(mean_f, labels, n_classes)
    nmi_action = _spectral_nmi(action_f, labels, n_classes)
    assert nmi_mean < 0.35, nmi_mean
    assert nmi_action > 0.8, nmi_action

    # Action vs background per snippet: linearly separable, but not trivially.
    x, y = np.concatenate(xs), np.concatenate(ys)
    order = np.random.default_rng(0).permutation(len(x))[:8000]
    train, test = order[:4000], order[4000:]
    probe = LogisticRegression(max_iter=500).fit(x[train], y[train])
    assert 0.8 <= probe.score(x[test], y[test]) <= 0.97


def _one_action_video(seed, feature_dim=512):
    """Features of a 300 s video with one class-0 action at [150, 156) s, and the corpus vectors."""
    basis = synth._corpus_vectors(np.random.default_rng(0), 4, feature_dim // 2)
    x = synth._features(np.random.default_rng(seed), basis, 300.0, [(150.0, 156.0, 0)], 600, 3.0)
    return x.astype(np.float64), basis


def test_context_carries_class_in_rgb_outside_the_annotation():
    d = 256
    near, far, inside = [], [], []
    for seed in range(10):
        x, basis = _one_action_video(seed)
        rgb_class = x[:, :d] @ basis["u"][0, :d]
        inside.append(rgb_class[300:312].mean())
        near.append(np.r_[rgb_class[296:300], rgb_class[312:316]].mean())  # 2 s either side
        far.append(np.r_[rgb_class[:200], rgb_class[-200:]].mean())
    assert np.mean(far) < np.mean(near) < np.mean(inside)
    assert np.mean(near) - np.mean(far) > 0.5


def test_unrelated_motion_looks_like_action_in_flow_but_not_in_rgb():
    d = 256
    hits = 0
    for seed in range(10):
        x, basis = _one_action_video(seed)
        flow_act = x[:, d:] @ basis["e"][d:]
        rgb_act = x[:, :d] @ basis["e"][:d]
        background = np.r_[0:280, 330:600]  # far from the action and its context
        level = flow_act[300:312].mean()
        moving = background[flow_act[background] > 0.5 * level]
        hits += len(moving)
        if len(moving):
            assert rgb_act[moving].mean() < 0.5 * rgb_act[300:312].mean()
    assert hits > 0


def test_bad_input(tmp_path):
    with pytest.raises(InputError, match="unknown synthetic preset 'kinetics'"):
        make_synthetic(tmp_path / "x", preset="kinetics")
    with pytest.raises(InputError, match="feature_dim"):
        make_synthetic(tmp_path / "x", feature_dim=7)
    with pytest.raises(InputError, match="videos"):
        make_synthetic(tmp_path / "x", videos=0)
    with pytest.raises(InputError, match="seed"):
        make_synthetic(tmp_path / "x", seed=-1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not an empty directory"):
        make_synthetic(tmp_path / "full", videos=1)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"duration_scale": float("inf")}, "duration_scale must be a finite number > 0, got inf"),
        ({"duration_scale": float("nan")}, "duration_scale must be a finite number > 0, got nan"),
        ({"duration_scale": 0.0}, "duration_scale must be a finite number > 0, got 0.0"),
        ({"duration_scale": -1.0}, "duration_scale must be a finite number > 0, got -1.0"),
        ({"duration_scale": "1"}, "duration_scale must be a finite number > 0, got '1'"),
        # The shortest THUMOS video is 20 s: 20 * 1e-4 = 0.002 s rounds to a 0 s duration.
        ({"duration_scale": 1e-4}, "the shortest thumos14 video (20 s) would last 0.002 s, under 0.01 s"),
        # The longest is 1200 s: 1200 * 1e4 s * 25/16 snippets/s = 1.875e7 snippets.
        ({"duration_scale": 1e4}, "would have 1.88e+07 snippets (at most 1,000,000)"),
        ({"duration_scale": 1e300}, "too large"),
        ({"snippets_per_second": float("inf")}, "snippets_per_second must be a finite number > 0"),
        ({"videos": 1.5}, "videos per subset must be an integer >= 1, got 1.5"),
        ({"videos": True}, "videos per subset must be an integer >= 1, got True"),
        ({"classes": 0}, "classes must be an integer >= 1, got 0"),
        ({"classes": "3"}, "classes must be an integer >= 1, got '3'"),
        ({"feature_dim": 0}, "feature_dim must be an integer >= 2, got 0"),
        ({"seed": 1.0}, "seed must be an integer >= 0, got 1.0"),
    ],
)
def test_bad_numbers_are_input_errors(tmp_path, kwargs, match):
    with pytest.raises(InputError) as e:
        make_synthetic(tmp_path / "x", **{"videos": 1, **kwargs})
    assert match in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_smallest_scales_still_give_importable_corpora(tmp_path):
    # 20 s * 0.0005 = 0.01 s, the shortest duration rounding keeps; anet12's shortest is 6 s.
    from copl_dist.data.formats import import_dataset

    for preset, scale in (("thumos14", 0.0005), ("anet12", 0.002)):
        root = make_synthetic(tmp_path / preset, preset=preset, videos=2, classes=2, feature_dim=8,
                              duration_scale=scale)
        assert all(v["duration"] >= 0.01 for v in _load(root).values())
        assert len(import_dataset(root, tmp_path / f"{preset}-corpus")) == 4


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth, "_features", boom)
    with pytest.raises(RuntimeError):
        make_synthetic(tmp_path / "c", videos=2, feature_dim=8)
    assert list(tmp_path.iterdir()) == []


def test_empty_existing_directory_is_filled(tmp_path):
    (tmp_path / "c").mkdir()
    root = make_synthetic(tmp_path / "c", videos=1, feature_dim=8)
    assert (root / "annotations.json").is_file()
