"""Metrics: hand-computed cases, invariants, and a randomized comparison with a port of the official
ActivityNet detection evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from copl_dist.common.errors import InputError
from copl_dist.method.metrics import (
    ari,
    average_precision,
    detection_map,
    hungarian_mapping,
    nmi,
    purity,
    tiou,
)

# ---------------------------------------------------------------------------------------------
# Reference: a literal port of activitynet/ActivityNet Evaluation/utils.py (segment_iou,
# interpolated_prec_rec) and Evaluation/eval_detection.py (compute_average_precision_detection,
# ANETdetection), to Python 3 and numpy only. The pandas DataFrames become lists of row dicts in the
# same order; `groupby('video-id')` + `reset_index()` becomes a dict of rows carrying their original
# row number as 'index'.
# ---------------------------------------------------------------------------------------------


def ref_segment_iou(target_segment, candidate_segments):
    tt1 = np.maximum(target_segment[0], candidate_segments[:, 0])
    tt2 = np.minimum(target_segment[1], candidate_segments[:, 1])
    # Intersection including Non-negative overlap score.
    segments_intersection = (tt2 - tt1).clip(0)
    # Segment union.
    segments_union = (
        (candidate_segments[:, 1] - candidate_segments[:, 0])
        + (target_segment[1] - target_segment[0])
        - segments_intersection
    )
    tIoU = segments_intersection.astype(float) / segments_union
    return tIoU


def ref_interpolated_prec_rec(prec, rec):
    mprec = np.hstack([[0], prec, [0]])
    mrec = np.hstack([[0], rec, [1]])
    for i in range(len(mprec) - 1)[::-1]:
        mprec[i] = max(mprec[i], mprec[i + 1])
    idx = np.where(mrec[1::] != mrec[0:-1])[0] + 1
    ap = np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx])
    return ap


def ref_compute_average_precision_detection(ground_truth, prediction, tiou_thresholds):
    """ground_truth: rows {'video-id', 't-start', 't-end'}; prediction: the same plus 'score'."""
    ap = np.zeros(len(tiou_thresholds))
    if len(prediction) == 0:  # prediction.empty
        return ap

    npos = float(len(ground_truth))
    lock_gt = np.ones((len(tiou_thresholds), len(ground_truth))) * -1
    # Sort predictions by decreasing score order.
    sort_idx = np.array([p["score"] for p in prediction]).argsort()[::-1]
    prediction = [prediction[i] for i in sort_idx]

    tp = np.zeros((len(tiou_thresholds), len(prediction)))
    fp = np.zeros((len(tiou_thresholds), len(prediction)))

    ground_truth_gbvn = {}
    for index, row in enumerate(ground_truth):
        ground_truth_gbvn.setdefault(row["video-id"], []).append(dict(row, index=index))

    for idx, this_pred in enumerate(prediction):
        try:
            # Check if there is at least one ground truth in the video associated.
            this_gt = ground_truth_gbvn[this_pred["video-id"]]
        except KeyError:
            fp[:, idx] = 1
            continue

        tiou_arr = ref_segment_iou(
            np.array([this_pred["t-start"], this_pred["t-end"]]),
            np.array([[g["t-start"], g["t-end"]] for g in this_gt]),
        )
        # We would like to retrieve the predictions with highest tiou score.
        tiou_sorted_idx = tiou_arr.argsort()[::-1]
        for tidx, tiou_thr in enumerate(tiou_thresholds):
            for jdx in tiou_sorted_idx:
                if tiou_arr[jdx] < tiou_thr:
                    fp[tidx, idx] = 1
                    break
                if lock_gt[tidx, this_gt[jdx]["index"]] >= 0:
                    continue
                # Assign as true positive after the filters above.
                tp[tidx, idx] = 1
                lock_gt[tidx, this_gt[jdx]["index"]] = idx
                break

            if fp[tidx, idx] == 0 and tp[tidx, idx] == 0:
                fp[tidx, idx] = 1

    tp_cumsum = np.cumsum(tp, axis=1).astype(float)
    fp_cumsum = np.cumsum(fp, axis=1).astype(float)
    recall_cumsum = tp_cumsum / npos

    precision_cumsum = tp_cumsum / (tp_cumsum + fp_cumsum)

    for tidx in range(len(tiou_thresholds)):
        ap[tidx] = ref_interpolated_prec_rec(precision_cumsum[tidx, :], recall_cumsum[tidx, :])

    return ap


def ref_anet_detection(gt_data, pred_data, subset, tiou_thresholds):
    """ANETdetection(...).evaluate() without blocked videos; returns (mAP per threshold, average).

    Two adaptations, both the project's documented choices: predictions on videos outside the
    subset's database are dropped (the official script counts them as false positives), and
    predictions of labels without ground truth are dropped (the official script raises KeyError).
    """
    # _import_ground_truth
    activity_index, cidx = {}, 0
    ground_truth = []
    subset_videos = set()
    for videoid, v in gt_data["database"].items():
        if subset != v["subset"]:
            continue
        subset_videos.add(videoid)
        for ann in v["annotations"]:
            if ann["label"] not in activity_index:
                activity_index[ann["label"]] = cidx
                cidx += 1
            ground_truth.append(
                {
                    "video-id": videoid,
                    "t-start": float(ann["segment"][0]),
                    "t-end": float(ann["segment"][1]),
                    "label": activity_index[ann["label"]],
                }
            )
    # _import_prediction
    prediction = []
    for videoid, v in pred_data["results"].items():
        if videoid not in subset_videos:  # adaptation
            continue
        for result in v:
            if result["label"] not in activity_index:  # adaptation
                continue
            prediction.append(
                {
                    "video-id": videoid,
                    "t-start": float(result["segment"][0]),
                    "t-end": float(result["segment"][1]),
                    "label": activity_index[result["label"]],
                    "score": result["score"],
                }
            )
    # wrapper_compute_average_precision
    ap = np.zeros((len(tiou_thresholds), len(activity_index)))
    for cidx in activity_index.values():
        ap[:, cidx] = ref_compute_average_precision_detection(
            [g for g in ground_truth if g["label"] == cidx],
            [p for p in prediction if p["label"] == cidx],
            tiou_thresholds,
        )
    # evaluate
    mAP = ap.mean(axis=1)
    return mAP, mAP.mean()


# ---------------------------------------------------------------------------------------------
# tIoU and AP by hand
# ---------------------------------------------------------------------------------------------


def test_tiou_by_hand():
    got = tiou([0, 10], [[5, 15], [10, 20], [2, 4], [0, 10], [-5, 20], [30, 40]])
    np.testing.assert_allclose(got, [5 / 15, 0.0, 2 / 10, 1.0, 10 / 25, 0.0])
    assert tiou([3, 3], [[3, 3]])[0] == 0.0  # zero-length pair: 0, not NaN


def _ap(gt, preds, thresholds):
    """gt: [(vid, s, e)], preds: [(vid, s, e, score)] -> AP array."""
    return average_precision(
        [g[1:] for g in gt],
        [g[0] for g in gt],
        np.array([p[1:3] for p in preds], dtype=float).reshape(-1, 2),
        [p[0] for p in preds],
        [p[3] for p in preds],
        thresholds,
    )


def test_ap_hand_computed_three_gt_four_predictions():
    gt = [("v", 0, 10), ("v", 20, 30), ("v", 40, 50)]
    preds = [("v", 0, 10, 0.9), ("v", 60, 70, 0.8), ("v", 20, 30, 0.7), ("v", 100, 110, 0.6)]
    # TP, FP, TP, FP: precision 1, 1/2, 2/3, 1/2; recall 1/3, 1/3, 2/3, 2/3.
    # Interpolated: 1/3 * 1 + 1/3 * 2/3 + 1/3 * 0 = 5/9.
    assert _ap(gt, preds, [0.5])[0] == pytest.approx(5 / 9, abs=1e-12)


def test_fall_through_to_next_unmatched_ground_truth():
    gt = [("v", 0, 10), ("v", 1, 11)]
    preds = [("v", 0, 10, 0.9), ("v", 0, 10, 0.8)]
    # The second prediction's best GT (tIoU 1) is taken; it falls through to [1, 11] (tIoU 9/11).
    # At 0.5 both are TP -> AP 1; at 0.9, 9/11 < 0.9 -> FP: precision 1, 1/2, recall 1/2, 1/2 -> 1/2.
    np.testing.assert_allclose(_ap(gt, preds, [0.5, 0.9]), [1.0, 0.5], atol=1e-12)


def test_duplicates_are_false_positives():
    gt = [("v", 0, 10), ("v", 20, 30)]
    preds = [("v", 0, 10, 0.9), ("v", 0, 10, 0.8), ("v", 20, 30, 0.7)]
    # TP, FP (duplicate), TP: precision 1, 1/2, 2/3; recall 1/2, 1/2, 1 -> 1/2 + 1/2 * 2/3 = 5/6.
    assert _ap(gt, preds, [0.5])[0] == pytest.approx(5 / 6, abs=1e-12)


def test_prediction_in_video_without_ground_truth_is_false_positive():
    gt = [("v", 0, 10)]
    preds = [("w", 0, 10, 0.9), ("v", 0, 10, 0.8)]
    assert _ap(gt, preds, [0.5])[0] == pytest.approx(0.5, abs=1e-12)


def test_tied_scores_keep_input_order():
    gt = [("v", 0, 10)]
    assert _ap(gt, [("v", 0, 10, 0.5), ("v", 50, 60, 0.5)], [0.5])[0] == pytest.approx(1.0)
    assert _ap(gt, [("v", 50, 60, 0.5), ("v", 0, 10, 0.5)], [0.5])[0] == pytest.approx(0.5)


def test_equal_tiou_ground_truths_take_the_later_one_first():
    # [0, 10] overlaps both ground truths with tIoU 1/2; like the official argsort()[::-1] on a small
    # array it takes the later one ([5, 10]), leaving [0, 5] for the second prediction -> AP 1.
    gt = [("v", 0, 5), ("v", 5, 10)]
    preds = [("v", 0, 10, 0.9), ("v", 0, 5, 0.8)]
    assert _ap(gt, preds, [0.5])[0] == pytest.approx(1.0)


def test_ap_empty_inputs():
    assert _ap([("v", 0, 10)], [], [0.5, 0.7]).tolist() == [0.0, 0.0]
    assert _ap([], [("v", 0, 10, 1.0)], [0.5]).tolist() == [0.0]


# ---------------------------------------------------------------------------------------------
# Randomized comparison with the reference
# ---------------------------------------------------------------------------------------------

THRESHOLD_GRID = np.round(np.arange(0.1, 0.96, 0.05), 2)


def _random_gt(rng, videos, labels):
    rows = []
    for vid in videos:
        for _ in range(rng.integers(0, 6)):
            start = rng.uniform(0, 90)
            rows.append((vid, start, start + rng.uniform(0.5, 20), str(rng.choice(labels))))
    return rows


def _random_predictions(rng, gt, videos, labels, n):
    """Jittered copies of ground truth (some exact, i.e. duplicates), and random segments."""
    rows = []
    for _ in range(n):
        if gt and rng.random() < 0.6:
            vid, s, e, label = gt[rng.integers(len(gt))]
            if rng.random() < 0.8:
                length = e - s
                s, e = s + rng.normal(0, 0.2 * length), e + rng.normal(0, 0.2 * length)
                e = max(e, s + 0.1)
            if rng.random() < 0.1:
                label = str(rng.choice(labels))
        else:
            vid, s = str(rng.choice(videos)), rng.uniform(0, 95)
            e, label = s + rng.uniform(0.5, 20), str(rng.choice(labels))
        rows.append((vid, s, e, label))
    # Distinct scores: the official unstable argsort and our stable one agree only without ties.
    scores = (rng.permutation(n) + rng.uniform(0.1, 0.9, n)) / n
    return [(*r, float(sc)) for r, sc in zip(rows, scores)]


def test_average_precision_matches_official_reference_randomized():
    rng = np.random.default_rng(1234)
    for _ in range(300):
        videos = [f"v{i}" for i in range(rng.integers(1, 5))]
        gt = _random_gt(rng, videos, ["a"])
        if not gt:
            gt = [("v0", 10.0, 20.0, "a")]
        preds = _random_predictions(rng, gt, [*videos, "extra"], ["a"], int(rng.integers(0, 40)))
        thresholds = np.sort(rng.choice(THRESHOLD_GRID, size=rng.integers(1, 8), replace=False))
        ours = _ap([g[:3] for g in gt], [(p[0], p[1], p[2], p[4]) for p in preds], thresholds)
        ref = ref_compute_average_precision_detection(
            [{"video-id": v, "t-start": s, "t-end": e} for v, s, e, _ in gt],
            [{"video-id": v, "t-start": s, "t-end": e, "score": sc} for v, s, e, _, sc in preds],
            thresholds,
        )
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)


def test_detection_map_matches_official_reference_randomized():
    rng = np.random.default_rng(99)
    labels = ["a", "b", "c"]
    for _ in range(200):
        database = {}
        for i in range(rng.integers(1, 7)):
            vid = f"v{i}"
            subset = "test" if rng.random() < 0.7 else "validation"
            rows = _random_gt(rng, [vid], labels)
            anns = [
                # Segments as strings sometimes, as in the official THUMOS/ActivityNet files.
                {"segment": [f"{s:.3f}", f"{e:.3f}"] if rng.random() < 0.3 else [s, e], "label": lab}
                for _, s, e, lab in rows
            ]
            database[vid] = {"subset": subset, "duration": 120.0, "annotations": anns}
        flat = [
            (vid, float(a["segment"][0]), float(a["segment"][1]), a["label"])
            for vid, v in database.items()
            if v["subset"] == "test"
            for a in v["annotations"]
        ]
        if not flat:
            database["v_extra"] = {"subset": "test", "duration": 50.0, "annotations": [{"segment": [1, 5], "label": "a"}]}
            flat = [("v_extra", 1.0, 5.0, "a")]
        preds = _random_predictions(rng, flat, [*database, "unknown"], [*labels, "zzz"], int(rng.integers(0, 60)))
        results: dict[str, list] = {}
        for vid, s, e, lab, sc in preds:
            results.setdefault(vid, []).append({"segment": [s, e], "label": lab, "score": sc})
        gt_data, pred_data = {"database": database}, {"results": results}
        thresholds = np.sort(rng.choice(THRESHOLD_GRID, size=rng.integers(1, 8), replace=False))

        ours = detection_map(gt_data, pred_data, thresholds, subset="test")
        ref_map, ref_avg = ref_anet_detection(gt_data, pred_data, "test", thresholds)
        got = np.array([ours[f"{t:g}"] for t in thresholds])
        np.testing.assert_allclose(got, 100 * ref_map, rtol=0, atol=1e-9)
        assert ours["avg"] == pytest.approx(100 * ref_avg, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# detection_map / evaluate_files / format_table
# ---------------------------------------------------------------------------------------------


def _toy():
    gt = {
        "database": {
            "v1": {"subset": "test", "duration": 60, "annotations": [
                {"segment": ["1.0", "5.0"], "label": "Jump"}, {"segment": [10, 20], "label": "Run"}]},
            "v2": {"subset": "test", "duration": 60, "annotations": [{"segment": [30, 40], "label": "Jump"}]},
            "t1": {"subset": "validation", "duration": 60, "annotations": [{"segment": [0, 9], "label": "Swim"}]},
        }
    }
    perfect = {
        "results": {
            "v1": [{"segment": [1, 5], "label": "Jump", "score": 0.9}, {"segment": [10, 20], "label": "Run", "score": 0.8}],
            "v2": [{"segment": [30, 40], "label": "Jump", "score": 0.7}],
        }
    }
    return gt, perfect


def test_perfect_predictions_give_100_and_none_give_0():
    gt, perfect = _toy()
    result = detection_map(gt, perfect, ["0.5", 0.7, 0.95], subset="test")
    assert list(result) == ["0.5", "0.7", "0.95", "avg"]
    assert all(v == pytest.approx(100.0) for v in result.values())
    assert detection_map(gt, {"results": {}}, ["0.5"], subset="test") == {"0.5": 0.0, "avg": 0.0}


def test_class_without_predictions_counts_zero_and_outside_videos_are_ignored():
    gt, perfect = _toy()
    del perfect["results"]["v1"][1]  # no "Run" predictions -> AP 0 for Run, 100 for Jump
    perfect["results"]["t1"] = [{"segment": [50, 55], "label": "Jump", "score": 1.0}]  # other subset
    perfect["results"]["nope"] = [{"segment": [0, 1], "label": "Jump", "score": 1.0}]  # unknown video
    result = detection_map(gt, perfect, np.linspace(0.1, 0.7, 7), subset="test")
    assert list(result) == ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "avg"]
    assert all(v == pytest.approx(50.0) for v in result.values())


def test_no_subset_counts_every_video():
    gt, perfect = _toy()  # "Swim" in the validation video has no predictions: 2 of 3 classes
    assert detection_map(gt, perfect, [0.5])["0.5"] == pytest.approx(200 / 3)


def test_avg_is_mean_of_thresholds():
    gt, perfect = _toy()
    perfect["results"]["v2"][0]["segment"] = [30, 45]  # tIoU 2/3
    result = detection_map(gt, perfect, ["0.5", "0.7"], subset="test")
    assert result["0.5"] == pytest.approx(100.0)
    assert result["0.7"] == pytest.approx(100 * (0.5 + 1.0) / 2)  # Jump AP 1/2, Run AP 1
    assert result["avg"] == pytest.approx((result["0.5"] + result["0.7"]) / 2)


@pytest.mark.parametrize("bad", ["abc", "1.5", "0", ""])
def test_bad_threshold(bad):
    gt, perfect = _toy()
    with pytest.raises(InputError, match="tIoU threshold"):
        detection_map(gt, perfect, [bad])


def test_malformed_segment_names_video():
    gt, perfect = _toy()
    gt["database"]["v2"]["annotations"][0]["segment"] = ["x", "3"]
    with pytest.raises(InputError, match="'v2'"):
        detection_map(gt, perfect, ["0.5"])


# ---------------------------------------------------------------------------------------------
# Clustering metrics and Hungarian matching
# ---------------------------------------------------------------------------------------------


def test_purity_by_hand():
    assert purity([0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 1]) == pytest.approx(4 / 6)
    assert purity([0, 0, 1, 1], [5, 5, 7, 7]) == 1.0
    assert purity([0, 1, 2, 3], [0, 0, 0, 0]) == pytest.approx(1 / 4)


def test_nmi_by_hand():
    t, p = [0, 0, 1, 1], [0, 0, 0, 1]
    # MI = sum p(i,j) log(p(i,j) / (p(i) p(j))); NMI = MI / mean(H(t), H(p)).
    mi = 0.5 * math.log(0.5 / (0.5 * 0.75)) + 0.25 * math.log(0.25 / (0.5 * 0.75)) + 0.25 * math.log(0.25 / (0.5 * 0.25))
    h_t = math.log(2)
    h_p = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert nmi(t, p) == pytest.approx(mi / ((h_t + h_p) / 2))
    assert nmi([0, 0, 1, 1], [3, 3, 9, 9]) == pytest.approx(1.0)


def test_ari_by_hand():
    assert ari([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    # Contingency all ones: index 0, expected 2/3, max 2 -> (0 - 2/3) / (2 - 2/3) = -1/2.
    assert ari([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)


def test_clustering_metrics_invariant_to_label_permutation():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 5, 200)
    p = np.where(rng.random(200) < 0.7, t, rng.integers(0, 5, 200))
    perm = rng.permutation(5)
    for metric in (purity, nmi, ari):
        assert metric(t, perm[p]) == pytest.approx(metric(t, p))
        assert metric(perm[t], p) == pytest.approx(metric(t, p))


def test_hungarian_mapping_recovers_permutation():
    rng = np.random.default_rng(3)
    classes = rng.integers(0, 6, 120)
    perm = rng.permutation(6)  # class c is cluster perm[c]
    clusters = perm[classes]
    clusters[:10] = rng.integers(0, 6, 10)  # a little noise
    mapping = hungarian_mapping(clusters, classes, 6)
    assert mapping == {int(perm[c]): c for c in range(6)}


def test_hungarian_mapping_is_one_to_one_then_majority():
    # Clusters 0 and 1 both hold mostly class 0: one-to-one gives cluster 1 -> class 1.
    clusters = [0, 0, 0, 1, 1, 1, 2]
    classes = [0, 0, 0, 0, 0, 1, 0]
    assert hungarian_mapping(clusters, classes, 3, n_classes=2) == {0: 0, 1: 1, 2: 0}
    assert hungarian_mapping([0, 0, 1], [0, 0, 1], 3, n_classes=3)[2] == 2  # empty cluster gets class 2
    with pytest.raises(ValueError):
        hungarian_mapping([0, 5], [0, 1], 3)


def test_snippet_mask_and_auc_by_hand():
    from copl_dist.method.metrics import snippet_auc, snippet_mask

    # 10 snippets over 20 s: [3, 7] s touches snippets 1..3 (2-4, 4-6, 6-8 s)
    assert snippet_mask([(3.0, 7.0)], 20.0, 10).tolist() == [0, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    mask = np.array([0, 1, 1, 0])
    assert snippet_auc(np.array([0.1, 0.9, 0.8, 0.2]), mask) == 1.0
    assert snippet_auc(np.array([0.9, 0.1, 0.2, 0.8]), mask) == 0.0  # fires on background
    assert snippet_auc(np.array([0.1, 0.2, 0.3, 0.4]), np.zeros(4)) is None


def test_zero_length_segments_count_as_the_official_scorer_counts_them():
    """ActivityNet 1.2's validation annotations hold [0, 0] segments: an instance that no detection can
    match (tIoU 0), so with one real instance found the AP is 1/2 (recall 1/2 at precision 1)."""
    gt = {"database": {"v": {"subset": "validation", "annotations": [
        {"segment": [1.0, 3.0], "label": "Jump"}, {"segment": [0, 0], "label": "Jump"}]}}}
    pred = {"results": {"v": [{"segment": [1.0, 3.0], "label": "Jump", "score": 0.9},
                              {"segment": [0.0, 0.0], "label": "Jump", "score": 0.8}]}}
    result = detection_map(gt, pred, [0.5], subset="validation")
    assert result["0.5"] == pytest.approx(50.0)
