"""The second generator (data/synth_i3d.py): I3D-like feature statistics, and each difficulty axis
moves what it names."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from copl_dist.common.errors import InputError
from copl_dist.data.formats import import_dataset
from copl_dist.data.synth_i3d import CELLS, Cell, make_i3d_like


def _load(folder):
    db = json.loads((folder / "annotations.json").read_text())["database"]
    out = {}
    for vid, info in db.items():
        x = np.load(folder / "features" / f"{vid}.npy")
        t = len(x)
        centres = (np.arange(t) + 0.5) * info["duration"] / t
        mask = np.zeros(t, bool)
        for a in info["annotations"]:
            mask |= (centres >= a["segment"][0]) & (centres < a["segment"][1])
        out[vid] = (x, mask, info)
    return out


def _make(tmp_path, cell, seed=0, n=24, **kw):
    return _load(make_i3d_like(tmp_path / f"{cell if isinstance(cell, str) else cell.name}-{seed}", cell,
                               train_videos=n, test_videos=4, classes=4, seed=seed, **kw))


def test_a_seed_fixes_every_byte_and_the_corpus_imports(tmp_path):
    a = make_i3d_like(tmp_path / "a", "base", train_videos=3, test_videos=2, classes=2, seed=5, duration_scale=0.3)
    b = make_i3d_like(tmp_path / "b", "base", train_videos=3, test_videos=2, classes=2, seed=5, duration_scale=0.3)
    c = make_i3d_like(tmp_path / "c", "base", train_videos=3, test_videos=2, classes=2, seed=6, duration_scale=0.3)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "annotations.json").read_bytes() != (c / "annotations.json").read_bytes()
    corpus = import_dataset(a, tmp_path / "corpus")
    assert sorted(corpus.subsets()) == ["test", "validation"]
    assert corpus.feature_dim == 2048 and len(corpus.video_ids("validation")) == 3


def test_features_look_like_pooled_i3d(tmp_path):
    videos = _make(tmp_path, "base", n=12)
    x = np.concatenate([v[0] for v in videos.values()])
    assert x.dtype == np.float32 and x.shape[1] == 2048
    assert x.min() >= 0.0  # after a ReLU
    sd = x.std(0)
    assert np.percentile(sd, 90) / np.percentile(sd, 10) > 3  # uneven scale across dimensions
    # Temporally smooth: neighbouring snippets correlate, far more than snippets in shuffled order.
    lag1, shuffled = [], []
    rng = np.random.default_rng(0)
    for f, _, _ in videos.values():
        c = f - f.mean(0)
        lag1.append((c[1:] * c[:-1]).sum() / (c * c).sum())
        s = c[rng.permutation(len(c))]
        shuffled.append((s[1:] * s[:-1]).sum() / (s * s).sum())
    assert np.mean(lag1) > 0.35 and abs(np.mean(shuffled)) < 0.1


def test_the_layout_axes_move_the_share_and_the_count_of_actions(tmp_path):
    def stats(cell):
        videos = _make(tmp_path, cell)
        return (np.mean([m.mean() for _, m, _ in videos.values()]),
                np.mean([len(i["annotations"]) for _, _, i in videos.values()]),
                np.std([np.log(i["duration"]) for _, _, i in videos.values()]))

    sparse, dense, base = stats("sparse"), stats("dense"), stats("base")
    assert abs(sparse[0] - 0.12) < 0.05 and abs(dense[0] - 0.5) < 0.08 and abs(base[0] - 0.33) < 0.07
    assert stats("few-long")[1] < 2.5 < base[1] < stats("many-short")[1]
    assert stats("duration-spread")[2] > base[2] + 0.2


def _class_means(videos):
    """Each video's mean over its action snippets, L2-normalised, and the video's class."""
    rows, labels = [], []
    for x, m, info in videos.values():
        v = x[m].mean(0)
        rows.append(v / np.linalg.norm(v))
        labels.append(info["annotations"][0]["label"])
    return np.array(rows), np.array(labels)


def test_confusion_brings_the_classes_of_a_group_together(tmp_path):
    """classes 0-3 form one group: the gap between same-class and other-class similarity shrinks."""
    def gap(cell):
        f, y = _class_means(_make(tmp_path, cell, n=32))
        sim = f @ f.T
        same = y[:, None] == y[None, :]
        off = ~np.eye(len(y), dtype=bool)
        return sim[same & off].mean() - sim[~same].mean()

    assert gap("confusable") < 0.6 * gap("base")


def test_context_puts_class_signal_next_to_the_actions(tmp_path):
    """Background a few snippets from actions moves towards the action (from far background) with
    context on."""
    def towards_action(cell):
        videos = _make(tmp_path, cell, seed=3)
        cos = []
        for x, m, _ in videos.values():
            def within(width):
                return np.convolve(m.astype(float), np.ones(width), "same") > 0
            edge, far = within(13) & ~within(3), ~within(31)  # 2-6 snippets from an action; 15+ away
            if edge.any() and far.sum() > 3:
                a, b = x[m].mean(0) - x[far].mean(0), x[edge].mean(0) - x[far].mean(0)
                cos.append(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        return np.mean(cos)

    off = dataclasses.replace(CELLS["base"], name="no-context", context=0.0)
    assert towards_action(CELLS["context-strong"]) > towards_action(off) + 0.1


def test_motion_moves_the_background_flow_and_grows_with_its_axis(tmp_path, monkeypatch):
    """The same corpus with the motion amplitude zeroed draws every other number alike, so the
    difference is the motion alone: it lands on background Flow snippets, more in motion-heavy."""
    import copl_dist.data.synth_i3d as synth

    def motion_part(cell):
        moved = _make(tmp_path, cell, seed=4)
        monkeypatch.setattr(synth, "A_MOTION", (0.0, 0.0))
        still = _make(tmp_path / "still", cell, seed=4)
        monkeypatch.undo()
        bg_flow, action_flow = [], []
        for vid, (x, m, _) in moved.items():
            diff = np.abs(x - still[vid][0])[:, 1024:]
            bg_flow.append(diff[~m].sum())
            action_flow.append(diff[m].sum())
        return sum(bg_flow), sum(action_flow)

    heavy_bg, heavy_action = motion_part(CELLS["motion-heavy"])
    base_bg, _ = motion_part(CELLS["base"])
    assert heavy_bg > 5 * heavy_action  # outside the actions (the smoothing leaks a little)
    assert heavy_bg > 2 * base_bg  # 0.45 of the background against 0.15


@pytest.mark.parametrize("cell, fragment", [
    ("nowhere", "unknown robustness cell 'nowhere'"),
    (Cell("bad", action_share=1.5), "action_share must be a number in [0.02, 0.9]"),
    (Cell("bad", motion=float("nan")), "motion must be a number"),
])
def test_bad_cells_are_refused_before_anything_is_written(tmp_path, cell, fragment):
    with pytest.raises(InputError, match=fragment.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        make_i3d_like(tmp_path / "out", cell, train_videos=2, test_videos=1)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_a_folder_with_files_is_not_overwritten(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="already exists and is not an empty directory"):
        make_i3d_like(tmp_path / "out", "base", train_videos=2, test_videos=1)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["keep.txt"]
