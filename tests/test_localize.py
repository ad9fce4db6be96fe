"""Proposals, outer-inner scoring, NMS, times and localize_video on hand-computed cases."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from copl_dist.config import InferenceConfig
from copl_dist.method.localize import (
    localize_video,
    nms,
    outer_inner_score,
    proposals_from_scores,
    snippet_times,
    soft_nms,
    upsample,
)


def test_snippet_times_by_hand():
    np.testing.assert_allclose(snippet_times(4, 10.0), [[0, 2.5], [2.5, 5], [5, 7.5], [7.5, 10]])
    with pytest.raises(ValueError):
        snippet_times(0, 10.0)


def test_proposals_runs_by_hand():
    score = np.array([0.2, 0.6, 0.7, 0.1, 0.8, 0.3])
    # theta 0.5: [1,3) and [4,5); theta 0.65: [2,3) and [4,5) (duplicate dropped)
    assert proposals_from_scores(score, [0.5, 0.65]) == [(1, 3), (4, 5), (2, 3)]
    assert proposals_from_scores(score, [0.8]) == []  # strict '>'
    assert proposals_from_scores(np.ones(3), [0.5]) == [(0, 3)]  # run touching both borders


def test_outer_inner_by_hand():
    score = np.array([0, 0, 1, 1, 1, 1, 0.5, 0])
    # margin round(0.25*4)=1: outer = [0, 0.5]
    assert outer_inner_score(score, 2, 6, 0.25) == pytest.approx(1 - 0.25)
    # margin 2: outer = [0, 0, 0.5, 0]
    assert outer_inner_score(score, 2, 6, 0.5) == pytest.approx(1 - 0.125)
    # clipped at the left border, margin 2: outer = [1, 1]
    assert outer_inner_score(score, 0, 2, 1.0) == pytest.approx(0 - 1)
    # margin is at least 1 snippet
    assert outer_inner_score(score, 6, 7, 0.1) == pytest.approx(0.5 - 0.5)
    # whole video: no margin, outer mean 0
    assert outer_inner_score(score, 0, 8, 0.25) == pytest.approx(4.5 / 8)
    with pytest.raises(ValueError):
        outer_inner_score(score, 3, 3, 0.25)


def test_nms_by_hand():
    segs = np.array([[5.0, 15.0], [0.0, 10.0], [8.0, 18.0]])
    scores = np.array([0.8, 0.9, 0.7])
    # tIoU: [0,10]-[5,15] = 5/15; [0,10]-[8,18] = 2/18; [5,15]-[8,18] = 7/13 > 0.5
    np.testing.assert_array_equal(nms(segs, scores, 0.5), [1, 0])
    # 0.3: [5,15] is suppressed by [0,10] (1/3 > 0.3), so it no longer suppresses [8,18]
    np.testing.assert_array_equal(nms(segs, scores, 0.3), [1, 2])
    np.testing.assert_array_equal(nms(segs, scores, 0.1), [1])  # 2/18 > 0.1
    np.testing.assert_array_equal(nms(segs, scores, 0.6), [1, 0, 2])
    assert nms(np.zeros((0, 2)), np.zeros(0), 0.5).size == 0


def _bump(T=20, C=2):
    h = np.full((T, C), 0.1)
    h[5:10, 0] = 0.9  # one clear action on snippets [5, 10)
    return h


def test_soft_nms_by_hand():
    segs = np.array([[0.0, 10.0], [5.0, 15.0], [20.0, 30.0]])
    scores = np.array([0.9, 0.8, 0.7])
    idx, out = soft_nms(segs, scores, 0.3, 0.35)
    # [5,15] overlaps [0,10] at 1/3 > 0.3: kept, decayed by exp(-(1/3)^2 / 0.35), out of the pool
    np.testing.assert_array_equal(idx, [0, 1, 2])
    np.testing.assert_allclose(out, [0.9, 0.8 * np.exp(-(1 / 9) / 0.35), 0.7])
    np.testing.assert_array_equal(nms(segs, scores, 0.3), [0, 2])  # hard NMS drops it
    idx, out = soft_nms(segs, scores, 0.5, 0.35)  # below the threshold: untouched
    np.testing.assert_allclose(out, scores)
    with pytest.raises(ValueError):
        soft_nms(segs, scores, 0.3, 0.0)


def test_upsample_by_hand():
    h = np.array([[0.0, 2.0], [1.0, 0.0]])
    # parts of each snippet sampled at 0.25, 0.75, 1.25, 1.75; snippet centres at 0.5 and 1.5
    np.testing.assert_allclose(upsample(h, 2), [[0, 2], [0.25, 1.5], [0.75, 0.5], [1, 0]])
    np.testing.assert_array_equal(upsample(h, 1), h)


def test_localize_video_single_bump():
    cfg = InferenceConfig(nms="hard", upsample=1)
    dets = localize_video(_bump(), np.array([0.9, 0.1]), 40.0, cfg)  # 2 s per snippet
    assert len(dets) == 1
    start_s, end_s, c, score = dets[0]
    assert (start_s, end_s, c) == (10.0, 20.0, 0)
    # inner 0.9 - outer 0.1 (margin round(0.25*5)=1 each side) + 0.25 * class score 0.9
    assert score == pytest.approx(0.8 + 0.25 * 0.9)


def test_localize_video_class_selection():
    cfg = InferenceConfig(class_threshold=0.2)
    h = _bump()
    h[12:15, 1] = 0.8
    classes = lambda p: sorted({d[2] for d in localize_video(h, np.array(p), 20.0, cfg)})  # noqa: E731
    assert classes([0.5, 0.5]) == [0, 1]
    assert classes([0.1, 0.15]) == [1]  # none over the threshold: the best one is kept
    capped = localize_video(h, np.array([0.5, 0.5]), 20.0, dataclasses.replace(cfg, max_detections=1))
    assert len(capped) == 1


def test_localize_video_detections_sorted_and_flat_score():
    rng = np.random.default_rng(0)
    dets = localize_video(rng.random((50, 3)), np.array([0.4, 0.3, 0.3]), 100.0, InferenceConfig())
    scores = [d[3] for d in dets]
    assert len(dets) > 1 and {c for _, _, c, _ in dets} <= {0, 1, 2}
    assert scores == sorted(scores, reverse=True)
    assert all(0 <= s < e <= 100.0 for s, e, _, _ in dets)
    # a flat score has no boundary: one whole-video proposal
    flat = localize_video(np.full((6, 1), 0.3), np.array([1.0]), 12.0, InferenceConfig())
    assert [(s, e, c) for s, e, c, _ in flat] == [(0.0, 12.0, 0)]


def test_localize_video_upsampled_bump_soft_nms():
    p = np.array([0.9, 0.1])
    hard = localize_video(_bump(), p, 40.0, InferenceConfig(nms="hard", upsample=24))
    soft = localize_video(_bump(), p, 40.0, InferenceConfig(nms="soft", upsample=24))
    # One proposal per theta, nested around the bump's centre (15 s); theta 0.5 crosses halfway between
    # snippet centres, i.e. on the bump's own edges 10 s and 20 s.
    assert len(soft) == 9 and len(hard) == 1
    assert all(abs((s + e) / 2 - 15.0) < 2 / 24 + 1e-9 for s, e, _, _ in soft)
    assert any(abs(s - 10.0) < 2 / 24 and abs(e - 20.0) < 2 / 24 for s, e, _, _ in soft)
    assert soft[0] == hard[0]  # the best is kept as it is; the others are ranked lower, not dropped


def test_upsampling_finds_boundaries_inside_snippets():
    # An action on [10.7, 19.3] s with 2 s snippets: the score of each snippet is the share of it the
    # action covers. At snippet edges the best detection is [10, 20] or [12, 18]; between snippet
    # centres the boundaries land within a fraction of a snippet of the truth.
    T, truth = 20, (10.7, 19.3)
    edges = np.arange(T + 1) * 2.0
    cover = np.clip(np.minimum(edges[1:], truth[1]) - np.maximum(edges[:-1], truth[0]), 0, None) / 2.0
    h = np.stack([0.1 + 0.8 * cover, np.full(T, 0.1)], axis=1)
    p = np.array([0.9, 0.1])

    def best_tiou(factor):
        dets = localize_video(h, p, 40.0, InferenceConfig(upsample=factor))
        return max((min(e, truth[1]) - max(s, truth[0])) / (max(e, truth[1]) - min(s, truth[0])) for s, e, _, _ in dets)

    assert best_tiou(1) < 0.87 and best_tiou(24) > 0.95
