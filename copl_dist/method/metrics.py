"""Evaluation: temporal IoU, ActivityNet detection mAP, clustering quality, cluster-to-class matching.

Detection mAP follows the official ActivityNet protocol (activitynet/ActivityNet,
Evaluation/eval_detection.py and utils.py), METHOD.md section 6: per class, predictions in decreasing
score order are greedily matched to the not yet matched ground truth of highest tIoU (falling through
to the next one when the best is taken), each ground truth once per threshold, and AP is the
all-point interpolated area under precision/recall. mAP is the mean over the classes that have
ground truth. Two deliberate differences from the official script: predictions on videos outside the
evaluated ground truth are ignored (the official one counts them as false positives, which would
penalise a detections file that covers several subsets), and tied scores keep their input order
(the official `argsort()[::-1]` leaves ties to numpy's unstable sort).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from copl_dist.common.errors import InputError, parse_number
from copl_dist.common.user_json import read_json

# The one class of class-agnostic mAP (detection_map(class_agnostic=True)).
AGNOSTIC_LABEL = "action"

__all__ = [
    "tiou",
    "average_precision",
    "detection_map",
    "purity",
    "nmi",
    "ari",
    "hungarian_mapping",
    "evaluate_files",
    "format_table",
]


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------


def tiou(
    segment: Sequence[float] | np.ndarray, segments: Sequence[Sequence[float]] | np.ndarray
) -> np.ndarray:
    """Temporal IoU of one [start, end] `segment` (2,) with each row of `segments` (K, 2) -> (K,)."""
    seg = np.asarray(segment, dtype=np.float64)
    segs = np.asarray(segments, dtype=np.float64).reshape(-1, 2)
    inter = (np.minimum(seg[1], segs[:, 1]) - np.maximum(seg[0], segs[:, 0])).clip(min=0.0)
    # Same operation order as the official segment_iou, so results agree to the last bit.
    union = (segs[:, 1] - segs[:, 0]) + (seg[1] - seg[0]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        # Two zero-length segments: 0 rather than the official NaN.
        return np.where(union > 0, inter / union, 0.0)


def _interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """All-point interpolated AP, as ActivityNet's `interpolated_prec_rec` (VOC 2011)."""
    mprec = np.concatenate([[0.0], precision, [0.0]])
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mprec = np.maximum.accumulate(mprec[::-1])[::-1]
    idx = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


def average_precision(
    gt_segments: Sequence[Sequence[float]] | np.ndarray,
    gt_video_ids: Sequence[Hashable],
    pred_segments: Sequence[Sequence[float]] | np.ndarray,
    pred_video_ids: Sequence[Hashable],
    pred_scores: Sequence[float] | np.ndarray,
    tiou_thresholds: Sequence[float] | np.ndarray,
) -> np.ndarray:
    """AP of one class at each tIoU threshold (ActivityNet `compute_average_precision_detection`).

    gt_segments (G, 2) with their video ids (G,); pred_segments (P, 2) with video ids and scores (P,).
    Returns (len(tiou_thresholds),) in [0, 1]; all zeros without ground truth or predictions.
    """
    thresholds = np.asarray(tiou_thresholds, dtype=np.float64).reshape(-1)
    gt = np.asarray(gt_segments, dtype=np.float64).reshape(-1, 2)
    pred = np.asarray(pred_segments, dtype=np.float64).reshape(-1, 2)
    scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    if len(gt_video_ids) != len(gt) or len(pred_video_ids) != len(pred) or len(scores) != len(pred):
        raise ValueError("average_precision: segments, video ids and scores differ in length")
    n_thr = len(thresholds)
    if len(gt) == 0 or len(pred) == 0:
        return np.zeros(n_thr)

    gt_rows: dict[Hashable, list[int]] = {}
    for i, vid in enumerate(gt_video_ids):
        gt_rows.setdefault(vid, []).append(i)
    gt_by_video = {vid: np.asarray(rows) for vid, rows in gt_rows.items()}

    order = np.argsort(-scores, kind="stable")
    locked = np.zeros((n_thr, len(gt)), dtype=bool)  # ground truth already matched, per threshold
    tp = np.zeros((n_thr, len(pred)))
    for rank, p in enumerate(order):
        rows = gt_by_video.get(pred_video_ids[p])
        if rows is None:
            continue  # no ground truth in this video: a false positive at every threshold
        overlaps = tiou(pred[p], gt[rows])
        # Official order: argsort()[::-1], which for equal tIoU puts the later ground truth first.
        by_overlap = np.argsort(overlaps, kind="stable")[::-1]
        candidates = rows[by_overlap]
        # The official loop skips matched ground truths and stops at the first tIoU below the
        # threshold; with tIoU sorted descending that is the first eligible candidate, if any.
        eligible = (overlaps[by_overlap][None, :] >= thresholds[:, None]) & ~locked[:, candidates]
        hit = eligible.any(axis=1)
        first = eligible.argmax(axis=1)
        tp[hit, rank] = 1.0
        locked[hit, candidates[first[hit]]] = True

    tp_cum = np.cumsum(tp, axis=1)
    fp_cum = np.cumsum(1.0 - tp, axis=1)
    recall = tp_cum / len(gt)
    precision = tp_cum / (tp_cum + fp_cum)
    return np.array([_interpolated_ap(precision[t], recall[t]) for t in range(n_thr)])


def _parse_thresholds(tiou_thresholds: Iterable[str | float]) -> list[tuple[str, float]]:
    """(result key, value) per threshold; strings keep their spelling as the key."""
    parsed = []
    for t in tiou_thresholds:
        try:
            value = float(t)
        except (TypeError, ValueError):
            raise InputError(f"tIoU threshold {t!r} is not a number") from None
        key = t.strip() if isinstance(t, str) else f"{value:g}"
        if not 0.0 < value <= 1.0:
            raise InputError(f"tIoU threshold {t!r} must be in (0, 1]")
        parsed.append((key, value))
    if not parsed:
        raise InputError("no tIoU thresholds given")
    return parsed


def _segment(value: Any, label: str, where: str, ground_truth: bool) -> tuple[float, float]:
    """[start, end] (numbers or numeric strings) -> floats; InputError naming `where` otherwise.

    Both must not end before they start (swapped columns); a ground-truth segment must not start
    before 0 s. A zero-length segment is taken, as the official ActivityNet scorer takes it: the
    ActivityNet 1.2 annotations hold a few ([0, 0]; three in `validation`), which count as
    instances no detection can match. A prediction may start before 0 s (a regressed boundary; tIoU
    is still defined, the official script takes it).
    """
    # A list or tuple only: iterating the string "12" would read it as [1, 2].
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise InputError(f"{where}: segment {value!r} ({label}) is not [start, end]")
    start, end = (parse_number(v, f"{where}: segment value") for v in value)
    seg = f"{where}: segment [{start}, {end}] ({label})"
    if not (math.isfinite(start) and math.isfinite(end)):
        raise InputError(f"{seg} is not finite")
    if end < start:
        raise InputError(f"{seg} ends before it starts")
    if ground_truth and start < 0:
        raise InputError(f"{seg} starts before 0 s")
    return start, end


def _label(value: Any, where: str) -> str:
    """A class name (an integer class id read as its digits); InputError naming `where` otherwise:
    str() would make a null label the class "None"."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: label {value!r} is not a class name")
    return value


def _require_dict(data: Any, key: str, name: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping) or key not in data:
        raise InputError(f"{name}: missing '{key}' key")
    if not isinstance(data[key], Mapping):
        raise InputError(f"{name}: '{key}' is not an object")
    return data[key]


def _detection_map(
    ground_truth: Mapping[str, Any],
    detections: Mapping[str, Any],
    tiou_thresholds: Iterable[str | float],
    subset: str | None,
    gt_name: str,
    pred_name: str,
    class_agnostic: bool = False,
) -> tuple[dict[str, float], int]:
    """(detection_map's result, how many of the predicted videos are among the evaluated ones)."""
    thresholds = _parse_thresholds(tiou_thresholds)
    database = _require_dict(ground_truth, "database", gt_name)
    results = _require_dict(detections, "results", pred_name)

    subsets = sorted(
        {str(v["subset"]) for v in database.values() if isinstance(v, Mapping) and "subset" in v}
    )
    if subset is not None and subset not in subsets:
        raise InputError(f"{gt_name}: no subset {subset!r} (it has: {', '.join(subsets) or 'none'})")

    videos: set[str] = set()
    gt: dict[str, tuple[list[tuple[float, float]], list[str]]] = {}  # label -> (segments, video ids)
    for vid, info in database.items():
        where = f"{gt_name}: video '{vid}'"
        if not isinstance(info, Mapping):
            raise InputError(f"{where}: entry is not an object")
        if subset is not None and info.get("subset") != subset:
            continue
        videos.add(vid)
        annotations = info.get("annotations", [])
        if not isinstance(annotations, list):  # null included, as the importer has it
            raise InputError(f"{where}: 'annotations' is not a list")
        for ann in annotations:
            if not isinstance(ann, Mapping) or "label" not in ann or "segment" not in ann:
                raise InputError(f"{where}: annotation {ann!r} lacks 'segment': [start, end] or 'label'")
            label = _label(ann["label"], where)
            segment = _segment(ann["segment"], label, where, ground_truth=True)
            label = AGNOSTIC_LABEL if class_agnostic else label
            segs, vids = gt.setdefault(label, ([], []))
            segs.append(segment)
            vids.append(vid)
    if not gt:
        where = f" in subset {subset!r}" if subset is not None else ""
        raise InputError(f"{gt_name}: no annotated segments{where}")

    preds: dict[str, tuple[list[tuple[float, float]], list[str], list[float]]] = {c: ([], [], []) for c in gt}
    covered = 0
    for vid, dets in results.items():
        if vid not in videos:
            continue  # outside the evaluated ground truth (see module docstring)
        covered += 1
        where = f"{pred_name}: video '{vid}'"
        if not isinstance(dets, list):
            raise InputError(f"{where}: detections are not a list")
        for det in dets:
            if not isinstance(det, Mapping) or not {"segment", "label", "score"} <= det.keys():
                raise InputError(f"{where}: detection {det!r} lacks 'segment', 'label' or 'score'")
            label = _label(det["label"], where)
            # Checked before the label is looked at: a bad line is an error whatever its class.
            segment = _segment(det["segment"], label, where, ground_truth=False)
            score = parse_number(det["score"], f"{where}: score")
            if not math.isfinite(score):
                raise InputError(f"{where}: score {det['score']!r} is not finite")
            label = AGNOSTIC_LABEL if class_agnostic else label
            if label not in preds:
                continue  # a class without ground truth cannot change any counted AP
            segs, vids, scores = preds[label]
            segs.append(segment)
            vids.append(vid)
            scores.append(score)

    values = [t for _, t in thresholds]
    ap = np.stack([average_precision(*gt[c], *preds[c], values) for c in sorted(gt)])  # (C, n_thr)
    map_pct = 100.0 * ap.mean(axis=0)
    out = {key: float(m) for (key, _), m in zip(thresholds, map_pct)}
    out["avg"] = float(map_pct.mean())
    return out, covered


def detection_map(
    ground_truth: Mapping[str, Any],
    detections: Mapping[str, Any],
    tiou_thresholds: Iterable[str | float],
    subset: str | None = None,
    class_agnostic: bool = False,
) -> dict[str, float]:
    """Detection mAP in percent per tIoU threshold, plus "avg" (their mean).

    ground_truth: {"database": {vid: {"subset", "duration", "annotations": [{"segment", "label"}]}}};
    detections: {"results": {vid: [{"segment", "label", "score"}]}}. Only videos of `subset` (all if
    None) count; keys are the thresholds as given (strings kept, numbers as f"{t:g}").
    `class_agnostic`: every label, true and predicted, is one class: the AP of localization alone,
    whatever the clusters are named (two detections of one action under two labels are then a
    duplicate, a false positive, as any duplicate).
    """
    return _detection_map(ground_truth, detections, tiou_thresholds, subset, "ground truth", "detections", class_agnostic)[0]


def evaluate_files(
    gt_path: str | Path, pred_path: str | Path, subset: str | None, tious: Sequence[str | float], class_agnostic: bool = False
) -> dict[str, float]:
    """`copl eval`: mAP of a detections JSON against an ActivityNet ground-truth JSON.

    A detections file with no video of the evaluated ground truth scores 0 and is not an error (a
    detector may find nothing), but it is more often the wrong file or subset: one line on stderr.
    """
    thresholds = [key for key, _ in _parse_thresholds(tious)]  # bad arguments before file errors
    gt, pred = read_json(gt_path), read_json(pred_path)
    result, covered = _detection_map(gt, pred, thresholds, subset, str(gt_path), str(pred_path), class_agnostic)
    if not covered:
        scope = f"subset {subset!r} of {gt_path}" if subset is not None else str(gt_path)
        print(f"copl: warning: {pred_path}: no predicted video is in {scope}; mAP is 0",
              file=sys.stderr)
    return result


def format_table(result: Mapping[str, float]) -> str:
    """Aligned two-column text table, tIoU | mAP%, with the average last."""
    rows = [(k, f"{v:.2f}") for k, v in result.items() if k != "avg"]
    if "avg" in result:
        rows.append(("Avg", f"{result['avg']:.2f}"))
    header = ("tIoU", "mAP%")
    w0 = max(len(r[0]) for r in [header, *rows])
    w1 = max(len(r[1]) for r in [header, *rows])
    lines = [f"{header[0]:<{w0}} | {header[1]:>{w1}}", f"{'-' * w0}-+-{'-' * w1}"]
    lines += [f"{a:<{w0}} | {b:>{w1}}" for a, b in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Clustering
# ---------------------------------------------------------------------------------------------


def _check_pair(labels_true: Sequence[Any], labels_pred: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(labels_true).ravel(), np.asarray(labels_pred).ravel()
    if len(t) != len(p) or len(t) == 0:
        raise ValueError(f"need two non-empty label arrays of one length, got {len(t)} and {len(p)}")
    return t, p


def purity(labels_true: Sequence[Any], labels_pred: Sequence[Any]) -> float:
    """Share of items whose cluster's majority class is their own class."""
    t, p = _check_pair(labels_true, labels_pred)
    _, ti = np.unique(t, return_inverse=True)
    _, pi = np.unique(p, return_inverse=True)
    counts = np.zeros((pi.max() + 1, ti.max() + 1), dtype=np.int64)  # (clusters, classes)
    np.add.at(counts, (pi, ti), 1)
    return float(counts.max(axis=1).sum() / len(t))


def nmi(labels_true: Sequence[Any], labels_pred: Sequence[Any]) -> float:
    """Normalised mutual information (arithmetic-mean normalisation, sklearn's default)."""
    t, p = _check_pair(labels_true, labels_pred)
    return float(normalized_mutual_info_score(t, p))


def ari(labels_true: Sequence[Any], labels_pred: Sequence[Any]) -> float:
    """Adjusted Rand index."""
    t, p = _check_pair(labels_true, labels_pred)
    return float(adjusted_rand_score(t, p))


def hungarian_mapping(
    cluster_labels: Sequence[int],
    true_labels: Sequence[int],
    n_clusters: int,
    *,
    n_classes: int | None = None,
) -> dict[int, int]:
    """Cluster id -> class index maximising the number of agreeing videos (one-to-one).

    true_labels are class indices (a multi-label video passes its primary label). With more clusters
    than classes the unassigned clusters map to their majority class (class 0 if empty).
    """
    clusters = np.asarray(cluster_labels, dtype=np.int64).ravel()
    classes = np.asarray(true_labels, dtype=np.int64).ravel()
    if len(clusters) != len(classes) or len(clusters) == 0:
        raise ValueError(f"need non-empty label arrays of one length, got {len(clusters)} and {len(classes)}")
    if clusters.min() < 0 or clusters.max() >= n_clusters:
        raise ValueError(f"cluster labels must lie in [0, {n_clusters})")
    if classes.min() < 0:
        raise ValueError("class indices must be non-negative")
    n_cls = max(int(classes.max()) + 1, n_classes or 0)
    counts = np.zeros((n_clusters, n_cls), dtype=np.int64)
    np.add.at(counts, (clusters, classes), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    mapping = {int(r): int(c) for r, c in zip(rows, cols)}
    for k in range(n_clusters):
        mapping.setdefault(k, int(counts[k].argmax()))
    return dict(sorted(mapping.items()))


def snippet_mask(segments: list[tuple[float, float]], duration_s: float, num_snippets: int) -> np.ndarray:
    """(T,) 1 for snippets that overlap a ground-truth segment (snippet i covers [i, i+1] * d / T)."""
    mask = np.zeros(num_snippets, dtype=np.int8)
    for start, end in segments:
        lo = int(np.floor(start / duration_s * num_snippets))
        hi = int(np.ceil(end / duration_s * num_snippets))
        mask[max(0, lo) : min(num_snippets, hi)] = 1
    return mask


def snippet_auc(scores: np.ndarray, mask: np.ndarray) -> float | None:
    """ROC AUC of snippet scores against the action mask; None when only one class is present.
    A diagnostic of the attention branches (0.5 = chance, < 0.5 = firing on background): it reads
    labels, so it is reported, never used to select anything."""
    from sklearn.metrics import roc_auc_score

    mask = np.asarray(mask)
    if mask.min() == mask.max():
        return None
    return float(roc_auc_score(mask, np.asarray(scores, dtype=np.float64)))
