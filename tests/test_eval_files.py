"""`copl eval`'s two files: reading them, checking them as the importer checks annotations (one line
naming the file and the video), and the warning when no predicted video is in the subset."""

from __future__ import annotations

import json

import pytest
from test_metrics import _toy

from copl_dist.common.errors import InputError
from copl_dist.method.metrics import detection_map, evaluate_files, format_table


def _write(path, obj):
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_evaluate_files_roundtrip_and_table(tmp_path):
    gt, perfect = _toy()
    g, p = _write(tmp_path / "gt.json", gt), _write(tmp_path / "pred.json", perfect)
    result = evaluate_files(g, p, "test", ["0.3", "0.5"])
    assert result == detection_map(gt, perfect, ["0.3", "0.5"], subset="test")
    table = format_table(result)
    lines = table.splitlines()
    assert lines[0].split("|")[0].strip() == "tIoU" and lines[-1].startswith("Avg")
    assert [ln.split("|")[0].strip() for ln in lines[2:]] == ["0.3", "0.5", "Avg"]
    assert "100.00" in lines[-1] and len({len(ln) for ln in lines}) == 1


def test_evaluate_files_errors(tmp_path):
    gt, perfect = _toy()
    g, p = _write(tmp_path / "gt.json", gt), _write(tmp_path / "pred.json", perfect)
    cases = [
        ((tmp_path / "missing.json", p, "test", ["0.5"]), "missing.json: no such file"),
        ((_write(tmp_path / "bad.json", "{not json"), p, "test", ["0.5"]), "bad.json: not valid JSON"),
        ((_write(tmp_path / "nodb.json", {"x": 1}), p, "test", ["0.5"]), "nodb.json: missing 'database'"),
        ((g, _write(tmp_path / "nores.json", {"x": 1}), "test", ["0.5"]), "nores.json: missing 'results'"),
        ((g, p, "training", ["0.5"]), "no subset 'training' \\(it has: test, validation\\)"),
        ((g, p, "test", ["half"]), "tIoU threshold 'half' is not a number"),
    ]
    for args, message in cases:
        with pytest.raises(InputError, match=message) as info:
            evaluate_files(*args)
        assert "\n" not in str(info.value)


def _files(tmp_path, gt, pred):
    return _write(tmp_path / "gt.json", gt), _write(tmp_path / "pred.json", pred)


@pytest.mark.parametrize("annotations", [None, 5, "x", {}])
def test_gt_annotations_not_a_list(tmp_path, annotations):
    gt, perfect = _toy()
    gt["database"]["v2"]["annotations"] = annotations
    g, p = _files(tmp_path, gt, perfect)
    with pytest.raises(InputError) as info:
        evaluate_files(g, p, "test", ["0.5"])
    assert str(info.value) == f"{g}: video 'v2': 'annotations' is not a list"


GT_SEGMENT_ERRORS = [
    ("12", "segment '12' (Jump) is not [start, end]"),  # was read as [1, 2]
    ([1, 2, 3], "segment [1, 2, 3] (Jump) is not [start, end]"),
    ({"start": 1}, "segment {'start': 1} (Jump) is not [start, end]"),
    ([True, 3], "segment value True is not a number"),
    (["1.x", 3], "segment value '1.x' is not a number"),
    (["nan", 3], "segment [nan, 3.0] (Jump) is not finite"),
    ([-1, 3], "segment [-1.0, 3.0] (Jump) starts before 0 s"),
    ([4, 3], "segment [4.0, 3.0] (Jump) ends before it starts"),
]


@pytest.mark.parametrize("segment, message", GT_SEGMENT_ERRORS)
def test_bad_gt_segment_names_gt_file_and_video(tmp_path, segment, message):
    gt, perfect = _toy()
    gt["database"]["v2"]["annotations"][0]["segment"] = segment
    g, p = _files(tmp_path, gt, perfect)
    with pytest.raises(InputError) as info:
        evaluate_files(g, p, "test", ["0.5"])
    assert str(info.value) == f"{g}: video 'v2': {message}"


@pytest.mark.parametrize(
    "segment, message",
    [
        ("12", "segment '12' (Jump) is not [start, end]"),
        ([5], "segment [5] (Jump) is not [start, end]"),
        (["inf", 3], "segment [inf, 3.0] (Jump) is not finite"),
        ([40, 30], "segment [40.0, 30.0] (Jump) ends before it starts"),
    ],
)
def test_bad_predicted_segment_names_prediction_file_and_video(tmp_path, segment, message):
    gt, perfect = _toy()
    perfect["results"]["v2"][0]["segment"] = segment
    g, p = _files(tmp_path, gt, perfect)
    with pytest.raises(InputError) as info:
        evaluate_files(g, p, "test", ["0.5"])
    assert str(info.value) == f"{p}: video 'v2': {message}"


def test_bad_prediction_of_a_class_without_ground_truth_is_still_an_error(tmp_path):
    gt, perfect = _toy()
    perfect["results"]["v2"].append({"segment": [5, 1], "label": "Swim", "score": 0.5})  # no test Swim
    g, p = _files(tmp_path, gt, perfect)
    with pytest.raises(InputError, match=r"pred.json: video 'v2': segment \[5.0, 1.0\] \(Swim\) ends before"):
        evaluate_files(g, p, "test", ["0.5"])


def test_prediction_may_start_before_zero(tmp_path, capsys):
    gt, perfect = _toy()
    perfect["results"]["v1"][0]["segment"] = ["-1", 5]  # Jump [1, 5]: tIoU 4 / 6
    g, p = _files(tmp_path, gt, perfect)
    result = evaluate_files(g, p, "test", ["0.5", "0.7"])
    # 0.5: everything matches. 0.7: Jump ranks v1 (miss) then v2 (hit): precision 1/2 at recall
    # 1/2, AP 1/4; Run AP 1; mean 62.5.
    assert result == {"0.5": pytest.approx(100.0), "0.7": pytest.approx(62.5), "avg": pytest.approx(81.25)}
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("results", [{}, {"t1": [{"segment": [0, 9], "label": "Swim", "score": 1.0}]}])
def test_predictions_outside_the_subset_warn_once(tmp_path, capsys, results):
    gt, _ = _toy()
    g, p = _files(tmp_path, gt, {"results": results})
    assert evaluate_files(g, p, "test", ["0.5"]) == {"0.5": 0.0, "avg": 0.0}
    assert capsys.readouterr().err == (
        f"copl: warning: {p}: no predicted video is in subset 'test' of {g}; mAP is 0\n"
    )


def test_class_agnostic_map_by_hand(tmp_path, capsys):
    """Unnamed clusters against two classes: 0 by class; class-agnostic, localization alone."""
    gt = {"database": {"v": {"subset": "test", "duration": 60.0, "annotations": [
        {"segment": [0, 10], "label": "a"}, {"segment": [20, 30], "label": "b"}]}}}
    dets = [{"segment": [0, 10], "label": "cluster_00", "score": 0.9},
            {"segment": [20, 30], "label": "cluster_01", "score": 0.8},
            {"segment": [40, 50], "label": "cluster_00", "score": 0.7}]
    assert detection_map(gt, {"results": {"v": dets}}, ["0.5"], subset="test")["avg"] == 0.0
    # TP, TP, FP: precision 1 up to recall 1, AP 1.
    assert detection_map(gt, {"results": {"v": dets}}, ["0.5"], subset="test", class_agnostic=True)["avg"] == 100.0
    # One action found under two clusters: the second is a duplicate, a false positive. Ranked TP (0.9),
    # FP (0.85), TP (0.8): AP = 0.5 * 1 + 0.5 * 2/3.
    dup = [*dets, {"segment": [0, 10], "label": "cluster_01", "score": 0.85}]
    got = detection_map(gt, {"results": {"v": dup}}, ["0.5"], subset="test", class_agnostic=True)["avg"]
    assert got == pytest.approx(100 * (0.5 + 0.5 * 2 / 3))
    from copl_dist.cli import main

    g, p = _files(tmp_path, gt, {"results": {"v": dup}})
    assert main(["eval", "--gt", str(g), "--pred", str(p), "--subset", "test", "--tiou", "0.5", "--json", "--class-agnostic"]) == 0
    assert json.loads(capsys.readouterr().out) == {"0.5": pytest.approx(got), "avg": pytest.approx(got)}
