"""Inference post-processing for one video: proposals, scoring, NMS, times (paper §3.4.2).

Snippet intervals are half-open [s, e) in snippet indices; times are seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from copl_dist.config import InferenceConfig


def snippet_times(T: int, duration_s: float) -> np.ndarray:
    """(T, 2) [start_s, end_s] of each snippet: snippet i of T covers [i, i+1] * duration / T."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s!r}")
    edges = np.arange(T + 1, dtype=np.float64) * (float(duration_s) / T)
    return np.stack([edges[:-1], edges[1:]], axis=1)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True as [s, e)."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    change = np.flatnonzero(np.diff(padded))
    return [(int(s), int(e)) for s, e in zip(change[0::2], change[1::2])]


def proposals_from_scores(score_1d: np.ndarray, thetas: Sequence[float]) -> list[tuple[int, int]]:
    """Maximal runs [s, e) where score > theta, for each theta in turn; identical runs kept once.

    Order: by theta as given, then by start; a run's first appearance fixes its place.
    """
    score = np.asarray(score_1d, dtype=np.float64)
    if score.ndim != 1:
        raise ValueError(f"score must be 1-D (T,), got shape {score.shape}")
    seen: dict[tuple[int, int], None] = {}
    for theta in thetas:
        for run in _runs(score > theta):
            seen.setdefault(run, None)
    return list(seen)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def outer_inner_score(score_1d: np.ndarray, s: int, e: int, outer_ratio: float) -> float:
    """Inner mean of score over [s, e) minus the mean over the outer margins.

    Each margin is max(1, round_half_up(outer_ratio * (e - s))) samples (snippets, or parts of one
    when upsampled) on either side, clipped at the video borders; a proposal spanning the whole video
    has no margin, and its outer mean is 0.
    """
    score = np.asarray(score_1d, dtype=np.float64)
    T = score.shape[0]
    if not 0 <= s < e <= T:
        raise ValueError(f"proposal [{s}, {e}) is not a non-empty interval inside [0, {T})")
    inner = float(score[s:e].mean())
    margin = max(1, _round_half_up(outer_ratio * (e - s)))
    outer = np.concatenate([score[max(0, s - margin) : s], score[e : min(T, e + margin)]])
    outer_mean = float(outer.mean()) if outer.size else 0.0
    return inner - outer_mean


def segment_iou(segment: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """tIoU of one [start, end] against (K, 2) segments."""
    inter = np.clip(np.minimum(segment[1], segments[:, 1]) - np.maximum(segment[0], segments[:, 0]), 0, None)
    union = (segment[1] - segment[0]) + (segments[:, 1] - segments[:, 0]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def nms(segments: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy 1-D non-maximum suppression: visit by score (desc, ties by index), drop any segment
    whose tIoU with a kept one exceeds iou_threshold. Returns kept indices in score order."""
    seg = np.asarray(segments, dtype=np.float64).reshape(-1, 2)
    sc = np.asarray(scores, dtype=np.float64).reshape(-1)
    if seg.shape[0] != sc.shape[0]:
        raise ValueError(f"{seg.shape[0]} segments but {sc.shape[0]} scores")
    order = np.argsort(-sc, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[segment_iou(seg[i], seg[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def soft_nms(segments: np.ndarray, scores: np.ndarray, iou_threshold: float, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """ASL's (BaSNet's) soft NMS, one pass: visit by score (desc, ties by index); the best segment left
    is kept at its score, and every segment left whose tIoU with it exceeds iou_threshold is kept at
    its score times exp(-tIoU^2 / alpha) and leaves the pool. Returns (indices, scores), every segment
    once: overlapping proposals are ranked lower instead of dropped, so a better boundary that scored
    lower still counts, at a lower rank."""
    seg = np.asarray(segments, dtype=np.float64).reshape(-1, 2)
    sc = np.asarray(scores, dtype=np.float64).reshape(-1)
    if seg.shape[0] != sc.shape[0]:
        raise ValueError(f"{seg.shape[0]} segments but {sc.shape[0]} scores")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    order = np.argsort(-sc, kind="stable")
    idx: list[int] = []
    out: list[float] = []
    while order.size:
        i = int(order[0])
        idx.append(i)
        out.append(float(sc[i]))
        rest = order[1:]
        iou = segment_iou(seg[i], seg[rest])
        over = iou > iou_threshold
        idx += rest[over].tolist()
        out += (sc[rest[over]] * np.exp(-(iou[over] ** 2) / alpha)).tolist()
        order = rest[~over]
    return np.asarray(idx, dtype=np.int64), np.asarray(out, dtype=np.float64)


def upsample(h: np.ndarray, factor: int) -> np.ndarray:
    """(T, C) snippet scores -> (T * factor, C): linear interpolation between snippet centres, each
    snippet cut into `factor` equal parts sampled at their centres (held flat beyond the first and
    last centre). A threshold then crosses between two snippets where the score does, not at the
    nearer snippet edge; factor 1 returns h."""
    h = np.asarray(h, dtype=np.float64)
    if factor == 1:
        return h
    T = h.shape[0]
    fine = (np.arange(T * factor) + 0.5) / factor  # in snippet units; snippet i's centre is i + 0.5
    centres = np.arange(T) + 0.5
    return np.stack([np.interp(fine, centres, h[:, c]) for c in range(h.shape[1])], axis=1)


def _min_max(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 0:
        # A flat score has no boundary: treat the whole video as one proposal.
        return np.ones_like(x)
    return (x - lo) / (hi - lo)


def localize_video(
    h_cs: np.ndarray, class_scores: np.ndarray, duration_s: float, cfg_inference: InferenceConfig
) -> list[tuple[float, float, int, float]]:
    """Detections of one video: (start_s, end_s, class_index, score), best first.

    h_cs (T, C) selection scores (Eq. 14), class_scores (C,) video-level softmax scores.
    Classes with score > class_threshold are kept (at least the best one). For each, h_cs[:, c] is
    upsampled (`upsample` parts per snippet, interpolated between snippet centres) and min-max
    normalised per video and class, so the fixed thetas 0.1..0.9 cut every video at the same
    relative heights whatever the scale of its scores; the runs above each theta are proposals.
    Their score is the outer-inner contrast of the *raw* (upsampled) h_cs[:, c] (comparable across
    videos) plus class_score_weight * class_scores[c]. Per class, soft or hard NMS (`nms`), then the
    top max_detections overall (max_detections <= 0: no cap).
    """
    h = np.asarray(h_cs, dtype=np.float64)
    p = np.asarray(class_scores, dtype=np.float64).reshape(-1)
    if h.ndim != 2 or h.shape[0] == 0:
        raise ValueError(f"h_cs must be a (T, C) array with T >= 1, got shape {h.shape}")
    if p.shape[0] != h.shape[1]:
        raise ValueError(f"class_scores has {p.shape[0]} classes, h_cs has {h.shape[1]}")
    cfg = cfg_inference
    kept = set(np.flatnonzero(p > cfg.class_threshold).tolist()) | {int(np.argmax(p))}
    classes = sorted(kept)
    fine = upsample(h[:, classes], cfg.upsample)
    times = snippet_times(fine.shape[0], duration_s)

    detections: list[tuple[float, float, int, float]] = []
    for k, c in enumerate(classes):
        raw = fine[:, k]
        runs = proposals_from_scores(_min_max(raw), cfg.thetas)
        if not runs:
            continue
        bounds = np.asarray(runs, dtype=np.float64)
        scores = np.array(
            [outer_inner_score(raw, s, e, cfg.outer_ratio) + cfg.class_score_weight * p[c] for s, e in runs]
        )
        if cfg.nms == "soft":
            order, final = soft_nms(bounds, scores, cfg.nms_iou, cfg.soft_nms_alpha)
        else:
            order = nms(bounds, scores, cfg.nms_iou)
            final = scores[order]
        for i, score in zip(order, final):
            s, e = runs[int(i)]
            detections.append((float(times[s, 0]), float(times[e - 1, 1]), int(c), float(score)))

    # Stable sort: equal scores keep class-then-NMS order, so output is deterministic.
    detections.sort(key=lambda d: -d[3])
    if cfg.max_detections > 0:
        detections = detections[: cfg.max_detections]
    return detections
