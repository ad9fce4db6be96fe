"""Post-processing of `copl tune`: raw teacher predictions cached once, inference thresholds searched
on the cache with localization and mAP only (no training)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from copl_dist.common.atomic import atomic_path
from copl_dist.common.seeding import derive_seed
from copl_dist.config import PRESET_TIOUS, CoplConfig
from copl_dist.method.engine import infer_video
from copl_dist.method.localize import localize_video
from copl_dist.method.metrics import detection_map
from copl_dist.tune.space import get_key, in_space, sample_spec, with_values

RAW_FILE = "raw_predictions.npz"
_STREAM_POSTPROCESS = 102


# ---------------------------------------------------------------------------------------------
# Raw predictions and the post-processing search (no training anywhere here)
# ---------------------------------------------------------------------------------------------


@dataclass
class RawPredictions:
    """Teacher outputs on one subset, everything post-processing needs."""

    subset: str
    video_ids: list[str]
    h_cs: list[np.ndarray]  # per video (T, C) selection scores
    class_scores: np.ndarray  # (N, C)
    durations_s: np.ndarray  # (N,)
    cluster_to_class: np.ndarray  # (C,) cluster id -> class index
    classes: list[str] = field(default_factory=list)


def raw_predictions(
    cfg: CoplConfig, corpus: Any, teacher: Any, cluster_to_class: dict[int, int], num_classes: int, subset: str,
    class_names: list[str] | None = None,
) -> RawPredictions:
    """The teacher's outputs on `subset`; labels are `class_names[cluster_to_class[c]]` (the run's
    RunResult.class_names; default the corpus classes)."""
    vids = corpus.video_ids(subset)
    outs = [infer_video(teacher, corpus.features(v), cfg.train.beta, cfg.train.topl_ratio) for v in vids]
    return RawPredictions(
        subset=subset,
        video_ids=list(vids),
        h_cs=[o.h_cs.astype(np.float32) for o in outs],
        class_scores=np.stack([o.class_scores for o in outs]).astype(np.float32),
        durations_s=np.array([corpus.record(v).duration_s for v in vids], dtype=np.float64),
        cluster_to_class=np.array([cluster_to_class[c] for c in range(num_classes)], dtype=np.int64),
        classes=list(corpus.classes if class_names is None else class_names),
    )


def save_raw(path: str | Path, raw: RawPredictions) -> None:
    """One .npz with no object arrays (loads with allow_pickle=False): ragged h_cs as rows + offsets."""
    offsets = np.concatenate([[0], np.cumsum([h.shape[0] for h in raw.h_cs])]).astype(np.int64)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            subset=np.array(raw.subset),
            video_ids=np.array(raw.video_ids, dtype=str),
            h_cs=np.concatenate(raw.h_cs, axis=0),
            offsets=offsets,
            class_scores=raw.class_scores,
            durations_s=raw.durations_s,
            cluster_to_class=raw.cluster_to_class,
            classes=np.array(raw.classes, dtype=str),
        )


def load_raw(path: str | Path) -> RawPredictions:
    with np.load(path, allow_pickle=False) as z:
        offsets = z["offsets"]
        h = z["h_cs"]
        return RawPredictions(
            subset=str(z["subset"]),
            video_ids=[str(v) for v in z["video_ids"]],
            h_cs=[h[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)],
            class_scores=z["class_scores"],
            durations_s=z["durations_s"],
            cluster_to_class=z["cluster_to_class"],
            classes=[str(c) for c in z["classes"]],
        )


def detections_from_raw(raw: RawPredictions, inference: Any) -> dict[str, Any]:
    """driver.localize_all on the cache: the same detections the trial evaluated."""
    results: dict[str, list[dict[str, Any]]] = {}
    for i, vid in enumerate(raw.video_ids):
        dets = localize_video(raw.h_cs[i], raw.class_scores[i], float(raw.durations_s[i]), inference)
        results[vid] = [
            {
                "segment": [round(float(s), 3), round(float(e), 3)],
                "label": raw.classes[int(raw.cluster_to_class[int(c)])],
                "score": float(score),
            }
            for s, e, c, score in dets
        ]
    return {"version": "copl_dist", "results": results}


def search_postprocess(
    raw: RawPredictions, ground_truth: dict[str, Any], cfg: CoplConfig, specs: dict[str, dict[str, Any]], samples: int, source: str
) -> dict[str, Any]:
    """Random search of the postprocess space by map@avg on the cached predictions.

    The config's own values are one candidate when they lie inside the space (so the search never
    returns something worse on the validation set than not searching); the rest are draws from a
    stream of the root seed. Ties keep the earlier candidate.
    """
    tious = [f"{t:g}" for t in PRESET_TIOUS[cfg.preset]]

    def score(values: dict[str, Any]) -> float:
        inference = with_values(cfg, values, source=source).inference
        return float(detection_map(ground_truth, detections_from_raw(raw, inference), tious, subset=raw.subset)["avg"])

    defaults = {k: get_key(cfg, k) for k in specs}
    rng = np.random.default_rng(derive_seed(cfg.seed, _STREAM_POSTPROCESS))
    candidates = [defaults] if all(in_space(specs[k], defaults[k]) for k in specs) else []
    while len(candidates) < max(1, samples):
        candidates.append({k: sample_spec(spec, rng) for k, spec in specs.items()})
    evaluated = [{"values": c, "objective": score(c)} for c in candidates]
    best = max(evaluated, key=lambda e: e["objective"])  # first of equals
    return {
        "searched": True,
        "subset": raw.subset,
        "default_values": defaults,
        "default_objective": score({}),
        "best_values": best["values"],
        "best_objective": best["objective"],
        "candidates": evaluated,
    }
