"""Importers against the real annotation files (trimmed copies in tests/data, see its README; small
generated features), every bad input, determinism, and the detections JSON."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from copl_dist.common.errors import InputError
from copl_dist.data.corpus import Corpus, Segment
from copl_dist.data.formats import (
    clip_segments,
    import_dataset,
    load_ground_truth,
    load_npy,
    load_wtalc_annotations,
    read_detections,
    write_detections,
)

# Real annotation files, trimmed to a few videos (rows copied verbatim, formats kept): tests/data/README.md
DATASETS = Path(__file__).parent / "data"
GT_JSON = DATASETS / "thumos14_gt" / "gt.json"
THUMOS_WTALC = DATASETS / "Thumos14reduced-Annotations"
ANET_WTALC = DATASETS / "ActivityNet1.2-Annotations"

D = 16  # feature width where the layout allows any; W-TALC bundles are 2048 wide
RATE = 0.5  # snippets per second of the generated features (low, to keep tests fast)


def _features(video_id: str, t: int, d: int = D, dtype=np.float32) -> np.ndarray:
    seed = int(hashlib.sha256(video_id.encode()).hexdigest()[:8], 16)
    return np.random.default_rng(seed).standard_normal((t, d)).astype(dtype)


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _nothing_written(parent: Path, out: Path) -> bool:
    return not out.exists() and not [p for p in parent.iterdir() if p.name.startswith(f".{out.name}")]


# ---------------------------------------------------------------------------------------------
# real annotation files


def _reduce_wtalc(src: Path, dst: Path, per_subset: int, extra: tuple[str, ...] = ()) -> list[int]:
    """Copy a W-TALC annotation folder keeping the first videos of each subset (and `extra`)."""
    names = [n.decode() for n in np.load(src / "videoname.npy")]
    subsets = [s.decode() for s in np.load(src / "subset.npy")]
    keep = []
    for subset in sorted(set(subsets)):
        keep += [i for i, s in enumerate(subsets) if s == subset][:per_subset]
    keep = sorted(set(keep) | {names.index(v) for v in extra})
    dst.mkdir(parents=True)
    for f in src.glob("*.npy"):
        a = np.load(f, allow_pickle=True)
        np.save(dst / f.name, a[keep] if len(a) == len(names) else a)  # classlist is not per video
    return keep


def _wtalc_bundle(root: Path, ann: Path, prefix: str, per_subset: int, extra=()) -> Path:
    keep = _reduce_wtalc(ann, root / f"{prefix}-Annotations", per_subset, extra)
    durations = np.load(ann / "duration.npy").reshape(-1)[keep]
    names = [n.decode() for n in np.load(ann / "videoname.npy")[keep]]
    features = np.empty(len(keep), dtype=object)
    for i, (vid, duration) in enumerate(zip(names, durations)):
        features[i] = _features(vid, max(4, math.ceil(duration * 0.1)), 2048)
    np.save(root / f"{prefix}-I3D-JOINTFeatures.npy", features)
    return root


@pytest.fixture(scope="module")
def thumos_wtalc(tmp_path_factory) -> Path:
    # video_test_0000814 has 3 segments past its recorded duration (the real quirk). The trimmed
    # file holds the first 4 videos of each subset and the 3 test videos with such segments
    # (0000270, 0000814, 0001081): this bundle takes the first 4 of each subset and 0000814 only.
    root = tmp_path_factory.mktemp("wtalc") / "src"
    return _wtalc_bundle(root, THUMOS_WTALC, "Thumos14reduced", 4, ("video_test_0000814",))


@pytest.fixture(scope="module")
def thumos_gt(tmp_path_factory) -> Path:
    """The trimmed gt.json (its first 4 videos of each subset) as it is, features/VIDEO.npy long
    enough for its actions."""
    root = tmp_path_factory.mktemp("gt") / "src"
    (root / "features").mkdir(parents=True)
    shutil.copyfile(GT_JSON, root / "gt.json")
    for vid, entry in json.loads(GT_JSON.read_text())["database"].items():
        end = max(float(a["segment"][1]) for a in entry["annotations"])
        np.save(root / "features" / f"{vid}.npy", _features(vid, math.ceil(end * RATE) + 2))
    return root


def test_thumos_gt_json_with_string_segments(thumos_gt, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to clip here
        corpus = import_dataset(thumos_gt, tmp_path / "c", snippets_per_second=RATE)
    database = json.loads((thumos_gt / "gt.json").read_text())["database"]
    assert corpus.subsets() == ["test", "train"] and len(corpus.video_ids("train")) == 4
    labels = {a["label"] for e in database.values() for a in e["annotations"]}
    assert corpus.classes == sorted(labels)
    for vid, entry in database.items():
        x = np.load(thumos_gt / "features" / f"{vid}.npy")
        np.testing.assert_array_equal(corpus.features(vid), x)
        record = corpus.record(vid)
        assert record.duration_s == x.shape[0] / RATE and record.num_snippets == x.shape[0]
        assert record.labels == tuple(sorted({a["label"] for a in entry["annotations"]}))
        expected = sorted((float(a["segment"][0]), float(a["segment"][1]), a["label"])
                          for a in entry["annotations"])
        assert [(s.start_s, s.end_s, s.label) for s in corpus.segments(vid)] == expected


def test_load_ground_truth_of_real_gt_json():
    # The real file has 410 videos and 6318 annotations and lacks video_test_0000270; the trimmed
    # copy keeps its first 4 videos of each subset (8 videos, 96 annotations), in file order.
    gt = load_ground_truth(GT_JSON)["database"]
    assert len(gt) == 8 and "video_test_0000270" not in gt
    assert next(iter(gt)) == "video_test_0000896"  # file order kept
    first = gt["video_test_0000896"]
    assert first["subset"] == "test" and "duration" not in first
    assert first["annotations"][0] == {"segment": [18.6, 24.8], "label": "HighJump"}
    assert sum(len(e["annotations"]) for e in gt.values()) == 96


def test_wtalc_thumos_bundle(thumos_wtalc, tmp_path):
    with pytest.warns(UserWarning, match=r"clipped 3 segments that end after their video's duration"):
        corpus = import_dataset(thumos_wtalc, tmp_path / "c", allow_pickle=True)
    ann = load_wtalc_annotations(thumos_wtalc / "Thumos14reduced-Annotations", allow_pickle=True)
    features = np.load(thumos_wtalc / "Thumos14reduced-I3D-JOINTFeatures.npy", allow_pickle=True)
    assert corpus.subsets() == ["test", "validation"] and len(corpus.video_ids("validation")) == 4
    assert corpus.feature_dim == 2048
    classlist = [c.decode() for c in np.load(THUMOS_WTALC / "classlist.npy")]
    assert set(corpus.classes) <= set(classlist) and corpus.classes == sorted(corpus.classes)
    for video, x in zip(ann, features):
        np.testing.assert_array_equal(corpus.features(video.video_id), x)
        assert corpus.record(video.video_id).duration_s == video.duration_s
    # The quirk: 3 of the video's 11 segments lie past its recorded end, so they are dropped.
    assert len(corpus.segments("video_test_0000814")) == 8
    first = corpus.segments("video_validation_0000051")[0]
    assert (first.start_s, first.end_s, first.label) == (67.5, 75.9, "Billiards")


def test_wtalc_anet_bundle(tmp_path):
    src = _wtalc_bundle(tmp_path / "src", ANET_WTALC, "ActivityNet1.2", 4)
    corpus = import_dataset(src, tmp_path / "c", allow_pickle=True)
    assert corpus.subsets() == ["training", "validation"] and len(corpus.video_ids()) == 8
    assert corpus.segments("video_4")[0] == Segment("video_4", 5.46484, 86.71838, "Dodgeball")


def test_wtalc_thumos_test_set_clips_26_segments():
    # All 26 late segments of the real test set (3358 segments) are in the trimmed copy: 22 of
    # video_test_0000270, 3 of 0000814, 1 of 0001081, beside 4 test videos without any (68 in all).
    videos = [v for v in load_wtalc_annotations(THUMOS_WTALC, allow_pickle=True) if v.subset == "test"]
    segments = [s for v in videos for s in v.segments]
    with pytest.warns(UserWarning) as record:
        kept = clip_segments(segments, {v.video_id: v.duration_s for v in videos}, "test", strict=False)
    assert len(record) == 1
    assert "clipped 26 segments that end after their video's duration" in str(record[0].message)
    assert len(segments) == 68 and len(kept) == 68 - 26


def test_anet_annotations_load():
    # The real file: 7202 videos, labels of all 100 classes, 185 segments past their video's end and
    # 10 zero-length ones. The trimmed copy: the first 4 videos of each subset, video_68 and
    # video_128 (a segment past the end, one per subset), video_887 ([0, 0], stored as ints) and
    # video_8129 (a zero-length segment beside a normal one): 12 videos, 11 labels.
    videos = load_wtalc_annotations(ANET_WTALC, allow_pickle=True)
    assert len(videos) == 12 and {v.subset for v in videos} == {"training", "validation"}
    classlist = {c.decode() for c in load_npy(ANET_WTALC / "classlist.npy")}
    labels = {s.label for v in videos for s in v.segments}
    assert len(classlist) == 100 and len(labels) == 11 and labels <= classlist
    with pytest.warns(UserWarning) as record:
        clip_segments([s for v in videos for s in v.segments], {v.video_id: v.duration_s for v in videos}, "anet", strict=False)
    assert [str(w.message) for w in record] == [
        "anet: clipped 2 segments that end after their video's duration",
        "anet: dropped 2 zero-length segments",
    ]


def test_real_wtalc_files_need_pickle_only_where_they_store_objects():
    # classlist, videoname, subset are plain byte-string arrays; segments and labels are pickled.
    assert load_npy(THUMOS_WTALC / "classlist.npy").dtype.kind == "S"
    assert load_npy(THUMOS_WTALC / "videoname.npy").shape == (11,)  # 412 in the real file
    with pytest.raises(InputError) as e:
        load_wtalc_annotations(THUMOS_WTALC)
    assert str(e.value) == (
        f"{THUMOS_WTALC / 'segments.npy'}: stores pickled Python objects; loading it runs code "
        "from the file. Pass --allow-pickle if you trust it"
    )


def test_wtalc_without_allow_pickle_writes_nothing(thumos_wtalc, tmp_path):
    with pytest.raises(InputError, match=r"segments.npy: stores pickled Python objects.*--allow-pickle"):
        import_dataset(thumos_wtalc, tmp_path / "c")
    assert _nothing_written(tmp_path, tmp_path / "c")


def test_reconversion_is_byte_identical(thumos_wtalc, thumos_gt, tmp_path):
    for name, src, kwargs in (("w", thumos_wtalc, {"allow_pickle": True}),
                              ("g", thumos_gt, {"snippets_per_second": RATE})):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import_dataset(src, tmp_path / f"{name}1", **kwargs)
            import_dataset(src, tmp_path / f"{name}2", **kwargs)
        assert _hashes(tmp_path / f"{name}1") == _hashes(tmp_path / f"{name}2")


# ---------------------------------------------------------------------------------------------
# small hand-made datasets: layouts and every bad input

VIDEOS = {
    "v1": {"subset": "train", "duration": 10.0, "annotations": [{"segment": [1, 3], "label": "jump"}]},
    "v2": {"subset": "train", "duration": "8.0", "annotations": [{"segment": ["2", "5.5"], "label": "run"}]},
    "v3": {"subset": "test", "duration": 6.0, "annotations": []},
}


def _dataset(root: Path, layout: str = "features", videos=None, features=None) -> Path:
    """ActivityNet-style JSON + features of 10 snippets per video, in one of the three layouts."""
    videos = VIDEOS if videos is None else videos
    features = {v: _features(v, 10) for v in videos} | (features or {})
    root.mkdir(parents=True, exist_ok=True)
    (root / "annotations.json").write_text(json.dumps({"database": videos}))
    for vid, x in features.items():
        if layout == "rgbflow":
            for d, half in (("rgb", x[:, : x.shape[1] // 2]), ("flow", x[:, x.shape[1] // 2:])):
                (root / d).mkdir(exist_ok=True)
                np.save(root / d / f"{vid}.npy", half)
        else:
            (root / layout).mkdir(exist_ok=True)
            np.save(root / layout / f"{vid}.npy", x)
    return root


@pytest.mark.parametrize("layout", ["features", "rgbflow", "."])
def test_activitynet_layouts(tmp_path, layout):
    src = _dataset(tmp_path / "src", layout)
    corpus = import_dataset(src, tmp_path / "c")
    assert corpus.video_ids() == ["v1", "v2", "v3"] and corpus.feature_dim == D
    for vid in corpus.video_ids():
        np.testing.assert_array_equal(corpus.features(vid), _features(vid, 10))  # [RGB | Flow]
    assert corpus.record("v2").duration_s == 8.0 and corpus.record("v3").labels == ()
    assert corpus.segments("v2") == [Segment("v2", 2.0, 5.5, "run")]
    assert corpus.classes == ["jump", "run"]


def test_src_may_be_the_json_file_or_a_corpus(tmp_path):
    src = _dataset(tmp_path / "src")
    corpus = import_dataset(src / "annotations.json", tmp_path / "c")
    again = import_dataset(tmp_path / "c", tmp_path / "unused")
    assert isinstance(again, Corpus) and again.root == corpus.root and not (tmp_path / "unused").exists()


def test_a_corpus_is_refused_where_a_new_one_is_promised(tmp_path):
    # `copl import CORPUS OUT` would otherwise succeed and leave OUT empty.
    import_dataset(_dataset(tmp_path / "src"), tmp_path / "c")
    with pytest.raises(InputError) as e:
        import_dataset(tmp_path / "c", tmp_path / "out", open_corpus=False)
    assert str(e.value) == (
        f"{tmp_path / 'c'}: already a corpus (made by `copl import`), nothing to import; "
        f"`copl run --data {tmp_path / 'c'}` takes it as it is"
    )
    assert _nothing_written(tmp_path, tmp_path / "out")


def test_non_finite_duration_is_named_with_file_and_video(tmp_path):
    videos = {**VIDEOS, "v2": {**VIDEOS["v2"], "duration": "nan"}}
    src = _dataset(tmp_path / "src", videos=videos)
    with pytest.raises(InputError) as e:
        import_dataset(src, tmp_path / "c")
    assert str(e.value) == f"{src / 'annotations.json'}: video 'v2': duration nan is not finite"
    assert _nothing_written(tmp_path, tmp_path / "c")


def test_half_and_double_precision_become_float32(tmp_path):
    f16, f64 = _features("v1", 10, dtype=np.float16), _features("v2", 10, dtype=np.float64)
    corpus = import_dataset(_dataset(tmp_path / "src", features={"v1": f16, "v2": f64}), tmp_path / "c")
    assert corpus.features("v1").dtype == np.float32 and corpus.features("v2").dtype == np.float32
    np.testing.assert_array_equal(corpus.features("v1"), f16.astype(np.float32))
    np.testing.assert_array_equal(corpus.features("v2"), f64.astype(np.float32))


def test_features_without_annotations_are_ignored(tmp_path):
    src = _dataset(tmp_path / "src", features={"stray": _features("stray", 10)})
    assert import_dataset(src, tmp_path / "c").video_ids() == ["v1", "v2", "v3"]


def test_segment_past_the_end_is_clipped_with_one_warning(tmp_path):
    videos = {**VIDEOS, "v3": {"subset": "test", "duration": 6.0, "annotations": [
        {"segment": [4, 7], "label": "run"}, {"segment": [5, 9], "label": "run"},
        {"segment": [1, 2], "label": "jump"}]}}
    with pytest.warns(UserWarning) as record:
        corpus = import_dataset(_dataset(tmp_path / "src", videos=videos), tmp_path / "c")
    assert len(record) == 1
    assert str(record[0].message).endswith("clipped 2 segments that end after their video's duration")
    assert [(s.start_s, s.end_s) for s in corpus.segments("v3")] == [(1.0, 2.0), (4.0, 6.0), (5.0, 6.0)]


def test_segment_starting_after_the_end_is_an_error_in_json(tmp_path):
    videos = {**VIDEOS, "v3": {"subset": "test", "duration": 6.0, "annotations": [{"segment": [6, 8], "label": "jump"}]}}
    _bad(_dataset(tmp_path / "src", videos=videos), tmp_path, r"video 'v3': segment \[6.0, 8.0\] \(jump\) starts after the video ends \(6 s\)")


def test_lenient_clipping_drops_late_and_empty_segments_but_keeps_labels():
    segs = [Segment("a", 4, 7, "run"), Segment("a", 6, 8, "jump"), Segment("a", 1, 1, "walk")]
    with pytest.warns(UserWarning) as record:
        kept = clip_segments(segs, {"a": 6.0}, "w", strict=False)
    assert kept == [Segment("a", 4, 6.0, "run")]
    assert [str(w.message) for w in record] == [
        "w: clipped 2 segments that end after their video's duration (1 of them start after it and were dropped)",
        "w: dropped 1 zero-length segments",
    ]


def test_duration_defaults_to_snippets_over_rate(tmp_path):
    videos = {"v1": {"subset": "train", "annotations": [{"segment": [1, 3], "label": "jump"}]}}
    corpus = import_dataset(_dataset(tmp_path / "src", videos=videos), tmp_path / "c")
    assert corpus.record("v1").duration_s == pytest.approx(10 * 16 / 25)


def _bad(src: Path, tmp_path: Path, match: str, **kwargs) -> None:
    with pytest.raises(InputError, match=match) as e:
        import_dataset(src, tmp_path / "c", **kwargs)
    assert "\n" not in str(e.value)
    assert _nothing_written(tmp_path, tmp_path / "c")


BAD_FEATURES = {
    "3-d": (np.zeros((10, D, 1), np.float32), r"v2.npy: features of shape \(10, 16, 1\)"),
    "1-d": (np.zeros(10, np.float32), r"v2.npy: features of shape \(10,\), expected \(T, D\)"),
    "width": (np.zeros((10, 2 * D), np.float32), "v2.npy: features 32 wide, expected 16"),
    "dtype": (np.zeros((10, D), np.int64), "v2.npy: features of dtype int64, expected floating"),
    "nan": (np.where(np.eye(10, D), np.nan, 0).astype(np.float32), "v2.npy: contains NaN or Inf"),
    "inf": (np.full((10, D), np.inf, np.float32), "v2.npy: contains NaN or Inf"),
    "overflow": (np.full((10, D), 1e300), "v2.npy: contains NaN or Inf"),  # inf as float32
    "short": (np.zeros((3, D), np.float32), "v2.npy: video 'v2' has 3 snippets, fewer than min_snippets=4"),
}


@pytest.mark.parametrize("case", sorted(BAD_FEATURES))
def test_bad_features(tmp_path, case):
    x, match = BAD_FEATURES[case]
    _bad(_dataset(tmp_path / "src", features={"v2": x}), tmp_path, match)


def test_odd_width(tmp_path):
    features = {v: _features(v, 10, 15) for v in VIDEOS}
    _bad(_dataset(tmp_path / "src", features=features), tmp_path, "15 wide, expected an even width")


def test_missing_feature_file(tmp_path):
    src = _dataset(tmp_path / "src")
    os.remove(src / "features" / "v2.npy")
    _bad(src, tmp_path, f"^{src / 'features' / 'v2.npy'}: missing feature file$")


def test_rgb_and_flow_of_different_lengths(tmp_path):
    src = _dataset(tmp_path / "src", "rgbflow")
    np.save(src / "flow" / "v2.npy", np.zeros((9, D // 2), np.float32))
    _bad(src, tmp_path, r"video 'v2': .*rgb/v2.npy has shape \(10, 8\) but .*flow/v2.npy has \(9, 8\)")


def test_rgb_without_flow(tmp_path):
    src = _dataset(tmp_path / "src", "rgbflow")
    for f in (src / "flow").iterdir():
        f.unlink()
    (src / "flow").rmdir()
    _bad(src, tmp_path, "flow: missing feature folder")


@pytest.mark.parametrize(
    "segment, match",
    [
        ([3, 3], r"video 'v1': segment \[3.0, 3.0\] \(jump\) ends where it starts"),
        ([4, 2], r"video 'v1': segment \[4.0, 2.0\] \(jump\) ends before it starts"),
        ([-1, 2], "starts before 0 s"),
        (["nan", 2], "is not finite"),
        (["1.x", 2], "segment value '1.x' is not a number"),
        ([1], "lacks 'segment': \\[start, end\\]"),
    ],
)
def test_bad_segments(tmp_path, segment, match):
    videos = {**VIDEOS, "v1": {"subset": "train", "annotations": [{"segment": segment, "label": "jump"}]}}
    _bad(_dataset(tmp_path / "src", videos=videos), tmp_path, match)


@pytest.mark.parametrize(
    "text, match",
    [
        ("{\"database\": {", "annotations.json: not valid JSON"),
        ("[1, 2]", "annotations.json: no 'database' object"),
        ('{"database": {"v1": 3}}', "video 'v1': entry is not an object"),
        ('{"database": {"v1": {"annotations": []}}}', "video 'v1': no 'subset' string"),
        ('{"database": {"v1": {"subset": "a", "duration": "long"}}}', "duration 'long' is not a number"),
        ('{"database": {"v1": {"subset": "a", "duration": 0}}}', "duration 0.0 is not positive"),
        ('{"database": {"v1": {"subset": "a", "duration": -2.5}}}', "duration -2.5 is not positive"),
        ('{"database": {"v1": {"subset": "a", "duration": "nan"}}}', "video 'v1': duration nan is not finite"),
        ('{"database": {"v1": {"subset": "a", "duration": "inf"}}}', "video 'v1': duration inf is not finite"),
        ('{"database": {"v1": {"subset": "a", "duration": "-inf"}}}', "video 'v1': duration -inf is not finite"),
        ('{"database": {}}', "annotations.json: 'database' has no videos; nothing to import"),
        ('{"database": {"v1": {"subset": "a", "annotations": {}}}}', "'annotations' is not a list"),
        ('{"database": {"v1": {"subset": "a", "annotations": [{"segment": [1, 2]}]}}}', "or 'label'"),
    ],
)
def test_malformed_annotation_json(tmp_path, text, match):
    src = _dataset(tmp_path / "src")
    (src / "annotations.json").write_text(text)
    _bad(src, tmp_path, match)


def test_unknown_layouts(tmp_path):
    (tmp_path / "empty").mkdir()
    _bad(tmp_path / "empty", tmp_path, "empty: unknown layout")
    _bad(tmp_path / "absent", tmp_path, "absent: no such file or directory")
    src = _dataset(tmp_path / "two")
    (src / "other.json").write_text("{}")
    _bad(src, tmp_path, r"2 annotation files \(annotations.json, other.json\); expected one")


class _RunsCode:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (str(self.path),))


def test_pickled_features_are_refused_before_unpickling(tmp_path):
    sentinel = tmp_path / "code_ran"
    src = _dataset(tmp_path / "src")
    np.save(src / "features" / "v2.npy", np.array([_RunsCode(sentinel)], dtype=object))
    _bad(src, tmp_path, "v2.npy: stores pickled Python objects; loading it runs code from the file. "
                        "Pass --allow-pickle if you trust it")
    assert not sentinel.exists()
    _bad(src, tmp_path, r"v2.npy: features of shape \(1,\)", allow_pickle=True)
    assert sentinel.exists()  # what allow_pickle means


def test_wtalc_bundle_errors(tmp_path):
    ann = tmp_path / "src" / "Mini-Annotations"
    ann.mkdir(parents=True)
    _bad(tmp_path / "src", tmp_path, "Mini-I3D-JOINTFeatures.npy: missing feature file")
    np.save(ann / "videoname.npy", np.array([b"a", b"b"]))
    np.save(ann / "subset.npy", np.array([b"test", b"test"]))
    np.save(ann / "duration.npy", np.array([[9.0], [9.0]]))
    segments = np.empty(2, dtype=object)
    segments[:] = [[[1.0, 2.0]], []]
    np.save(ann / "segments.npy", segments)
    labels = np.empty(2, dtype=object)
    labels[:] = [["jump"], []]
    np.save(ann / "labels.npy", labels)
    features = np.empty(1, dtype=object)
    features[0] = np.zeros((10, 4), np.float32)
    np.save(tmp_path / "src" / "Mini-I3D-JOINTFeatures.npy", features)
    _bad(tmp_path / "src", tmp_path, r"JOINTFeatures.npy: 1 videos, .*videoname.npy has 2", allow_pickle=True)
    np.save(ann / "classlist.npy", np.array([b"run"]))
    _bad(tmp_path / "src", tmp_path, "video 'a': label 'jump' is not in classlist.npy", allow_pickle=True)
    np.save(ann / "duration.npy", np.array([9.0]))
    _bad(tmp_path / "src", tmp_path, "duration.npy: 1 entries, videoname.npy has 2", allow_pickle=True)


def _objects(*entries) -> np.ndarray:
    a = np.empty(len(entries), dtype=object)
    a[:] = list(entries)
    return a


def _mini_wtalc(root: Path, **arrays) -> Path:
    """A W-TALC bundle of videos 'a' (segment [1, 2] jump) and 'b' (none), 9 s, 10 snippets each;
    `arrays` replaces annotation files by name."""
    ann = root / "Mini-Annotations"
    ann.mkdir(parents=True)
    files = {
        "videoname": np.array([b"a", b"b"]),
        "subset": np.array([b"test", b"test"]),
        "duration": np.array([[9.0], [9.0]]),
        "segments": _objects([[1.0, 2.0]], []),
        "labels": _objects(["jump"], []),
    } | arrays
    for name, a in files.items():
        np.save(ann / f"{name}.npy", a)
    n = len(files["videoname"].reshape(-1))
    np.save(root / "Mini-I3D-JOINTFeatures.npy", _objects(*(_features(f"{i}", 10, 4) for i in range(n))))
    return root


def test_mini_wtalc_bundle_imports_numeric_strings_as_numbers(tmp_path):
    src = _mini_wtalc(tmp_path / "src", duration=np.array([b"9.0", b"7.5"]))
    corpus = import_dataset(src, tmp_path / "c", allow_pickle=True)
    assert [corpus.record(v).duration_s for v in ("a", "b")] == [9.0, 7.5]
    assert corpus.segments("a") == [Segment("a", 1.0, 2.0, "jump")]


@pytest.mark.parametrize(
    "arrays, match",
    [
        # A scalar where a video's list of segments belongs: was a TypeError from list().
        ({"segments": _objects([[1.0, 2.0]], 5.0)},
         "segments.npy: video 'b': entry 5.0 is not a list of [start, end] segments"),
        ({"segments": np.array([1.0, 2.0])},
         "segments.npy: video 'a': entry 1.0 is not a list of [start, end] segments"),
        ({"segments": np.array(3.0)}, "segments.npy: a single value, expected one entry per video"),
        # Text durations: was a ValueError from numpy.
        ({"duration": np.array(["9.0", "long"])}, "duration.npy: video 'b': duration 'long' is not a number"),
        ({"duration": np.array([9.0, np.inf])}, "duration.npy: video 'b': duration inf is not finite"),
        ({"duration": np.array([np.nan, 9.0])}, "duration.npy: video 'a': duration nan is not finite"),
        ({"duration": np.array([9.0, 0.0])}, "duration.npy: video 'b': duration 0.0 is not positive"),
        ({"segments": _objects([[1.0, [2.0, 3.0]]], [])}, "video 'a': segment value [2.0, 3.0] is not a number"),
    ],
)
def test_wtalc_bad_entries(tmp_path, arrays, match):
    src = _mini_wtalc(tmp_path / "src", **arrays)
    with pytest.raises(InputError) as e:
        import_dataset(src, tmp_path / "c", allow_pickle=True)
    message = str(e.value)
    assert match in message and "\n" not in message
    assert message.startswith(str(src / "Mini-Annotations"))
    assert _nothing_written(tmp_path, tmp_path / "c")


def test_wtalc_without_videos(tmp_path):
    empty = {name: np.array([], dtype="S1") for name in ("videoname", "subset")}
    src = _mini_wtalc(tmp_path / "src", **empty, duration=np.zeros(0), segments=_objects(), labels=_objects())
    _bad(src, tmp_path, f"^{src / 'Mini-Annotations' / 'videoname.npy'}: no videos; nothing to import$",
         allow_pickle=True)


# ---------------------------------------------------------------------------------------------
# detections


def test_detections_round_trip(tmp_path):
    path = tmp_path / "out" / "detections.json"
    results = {"v1": [{"segment": [np.float32(1.5), 3], "label": "jump", "score": np.float64(0.25)}], "v2": []}
    write_detections(path, results)
    assert read_detections(path) == {
        "results": {"v1": [{"segment": [1.5, 3.0], "label": "jump", "score": 0.25}], "v2": []}
    }
    assert [p.name for p in path.parent.iterdir()] == ["detections.json"]  # no temporary left
    path.write_text('{"results": {"v1": [{"segment": ["1", "2"], "label": "x", "score": "0.5"}]}}')
    assert read_detections(path)["results"]["v1"][0] == {"segment": [1.0, 2.0], "label": "x", "score": 0.5}


@pytest.mark.parametrize(
    "text, match",
    [
        ("nope", "not valid JSON"),
        ('{"database": {}}', "no 'results' object"),
        ('{"results": {"v1": {}}}', "video 'v1': detections are not a list"),
        ('{"results": {"v1": [{"segment": [1, 2], "score": 1}]}}', "lacks 'segment'"),
        ('{"results": {"v1": [{"segment": [1, 2], "label": "x"}]}}', "score None is not a number"),
    ],
)
def test_malformed_detections(tmp_path, text, match):
    path = tmp_path / "d.json"
    path.write_text(text)
    with pytest.raises(InputError, match=match):
        read_detections(path)


def test_a_video_listed_twice_is_refused(tmp_path):
    """json keeps the last of two equal keys: the video would silently move to the second subset."""
    src = _dataset(tmp_path / "src")
    text = (src / "annotations.json").read_text()
    entry = json.dumps(VIDEOS["v3"])
    (src / "annotations.json").write_text(text.replace('"database": {', '"database": {"v3": ' + entry + ", ", 1))
    _bad(src, tmp_path, r"annotations.json: key 'v3' appears twice in one object")


@pytest.mark.parametrize("vid", ["../evil", "a/b", "..", ""])
def test_video_ids_that_would_name_files_elsewhere_are_refused(tmp_path, vid):
    src = _dataset(tmp_path / "src")  # features of v1-v3 only: the bad id's file is never written
    ann = json.loads((src / "annotations.json").read_text())
    ann["database"][vid] = {"subset": "test", "duration": 6.0, "annotations": []}
    (src / "annotations.json").write_text(json.dumps(ann))
    _bad(src, tmp_path, "not a usable video id")


def test_an_empty_label_is_refused(tmp_path):
    videos = {**VIDEOS, "v1": {"subset": "train", "duration": 10.0, "annotations": [{"segment": [1, 3], "label": " "}]}}
    _bad(_dataset(tmp_path / "src", videos=videos), tmp_path, r"video 'v1': annotation .* has an empty label")
