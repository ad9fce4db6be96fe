"""`copl predict`: detections for new videos from a trained teacher (registered or a teacher.pt).

The data is imported as `copl run` imports it (into OUT/corpus); the teacher runs on every snippet of
each video; localization uses the inference settings the teacher was trained with; cluster ids become
class names through the checkpoint's cluster_to_class (an unmapped cluster is named as runs name it,
`cluster_07`).
New videos need no annotations: their ground truth, if any, is not read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from copl_dist.cluster.naming import cluster_names
from copl_dist.common.atomic import locked_folder, output_folder
from copl_dist.common.errors import InputError
from copl_dist.config import CoplConfig, from_dict
from copl_dist.data.formats import write_detections
from copl_dist.method.engine import infer_video
from copl_dist.method.localize import localize_video
from copl_dist.method.model import IOCNet
from copl_dist.run.driver import load_teacher
from copl_dist.run.plan import import_reporting
from copl_dist.tracking.registry import load_teacher_checkpoint


def output_labels(ckpt: dict[str, Any]) -> list[str]:
    """Label of each of the teacher's outputs (an unmapped one: its name in cluster.naming.cluster_names)."""
    names = list(ckpt["class_names"])
    own = cluster_names(len(ckpt["cluster_to_class"]))
    return [names[int(k)] if 0 <= int(k) < len(names) else own[c] for c, k in enumerate(ckpt["cluster_to_class"])]


class Teacher:
    """A trained teacher with its config and output labels: detections for new features."""

    def __init__(self, ckpt: dict[str, Any], source: str = "teacher"):
        self.source = source
        self.config: CoplConfig = from_dict(ckpt["config"], source=f"{source}: config")
        self.labels = output_labels(ckpt)
        self.model: IOCNet = load_teacher(ckpt["state_dict"], int(ckpt["num_classes"]), self.config)

    @property
    def feature_dim(self) -> int:
        return self.config.model.feature_dim

    def detect(self, features: np.ndarray, duration_s: float) -> list[dict[str, Any]]:
        """Detections of one video from its (T, D) snippet features: [{"segment": [s, e], "label",
        "score"}], best first, localized with the inference settings the teacher was trained with."""
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != self.feature_dim:
            raise InputError(f"features of shape {x.shape}: the teacher {self.source} expects (T, {self.feature_dim})")
        cfg = self.config
        out = infer_video(self.model, x, cfg.train.beta, cfg.train.topl_ratio)
        dets = localize_video(out.h_cs, out.class_scores, float(duration_s), cfg.inference)
        return [
            {"segment": [round(float(s), 3), round(float(e), 3)], "label": self.labels[int(c)], "score": float(score)}
            for s, e, c, score in dets
        ]


def predict_corpus(
    ckpt: dict[str, Any], corpus: Any, video_ids: list[str], source: str = "teacher", where: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """{video_id: [{"segment": [s, e], "label", "score"}]} for each video, best first."""
    teacher = Teacher(ckpt, source)
    if corpus.feature_dim != teacher.feature_dim:
        raise InputError(
            f"{where or corpus.root}: features have {corpus.feature_dim} dimensions, the teacher {source} expects {teacher.feature_dim}"
        )
    return {vid: teacher.detect(corpus.features(vid), corpus.record(vid).duration_s) for vid in video_ids}


@dataclass(frozen=True)
class PredictPlan:
    """A checked `copl predict`: the teacher loaded and checked, the data and output folder checked."""

    checkpoint: dict[str, Any]
    model: str
    data: str | Path  # as the user named it (messages quote it so)
    out: Path
    subset: str | None
    allow_pickle: bool


def plan_predict(
    model: str, data: str | Path, out: str | Path, subset: str | None = None, tracking_uri: str | None = None,
    allow_pickle: bool = False,
) -> PredictPlan:
    """Every check of a prediction that writes nothing."""
    ckpt = load_teacher_checkpoint(model, tracking_uri)
    if not Path(data).exists():
        raise InputError(f"{data}: data folder not found")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    if (out / "metrics.json").exists() or (out / "state").is_dir():
        # Its detections.json and corpus/ are the run's own outputs.
        raise InputError(f"--out {out}: holds a copl run's outputs, which predict would replace: choose another --out")
    return PredictPlan(ckpt, model, data, out, subset, allow_pickle)


def predict(plan: PredictPlan) -> tuple[Path, dict[str, list[dict[str, Any]]]]:
    """Import the data into OUT/corpus, detect in every video (of the subset), write OUT/detections.json."""
    with locked_folder(plan.out, "--out"), output_folder(plan.out):
        min_snippets = int(plan.checkpoint["config"].get("data", {}).get("min_snippets", 4))
        corpus = import_reporting(plan.data, plan.out / "corpus", plan.allow_pickle, min_snippets)
        if plan.subset is not None and plan.subset not in corpus.subsets():
            raise InputError(f"--subset {plan.subset}: no such subset in {plan.data} (it has: {', '.join(corpus.subsets()) or 'none'})")
        video_ids = corpus.video_ids(plan.subset)
        if not video_ids:
            raise InputError(f"{plan.data}: no videos to predict")
        results = predict_corpus(plan.checkpoint, corpus, video_ids, source=plan.model, where=str(plan.data))
        path = plan.out / "detections.json"
        write_detections(path, results)
    return path, results
