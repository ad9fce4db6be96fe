"""The inference settings side by side on trained teachers: each run's teacher runs once over its test
subset, and its outputs are localized and scored under each setting (nothing is retrained):

    python docs/bench/inference/rescore.py RUN_DIR [RUN_DIR ...]

RUN_DIR is a `copl run --out` folder (teacher.pt and corpus/). Rows: hard NMS at snippet edges (the
paper's description), each of soft NMS and upsampling alone, both (the default), and the default with
ASL's NMS IoU 0.4 or no cap on detections. `rescore.txt` holds its output on the 2-core machine.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

from copl_dist.config import PRESET_TIOUS, InferenceConfig
from copl_dist.data.corpus import Corpus
from copl_dist.method.engine import infer_video
from copl_dist.method.localize import localize_video
from copl_dist.run.driver import evaluate
from copl_dist.run.predict import Teacher

SETTINGS = {
    "hard NMS, snippet edges": {"nms": "hard", "upsample": 1},
    "soft NMS, snippet edges": {"nms": "soft", "upsample": 1},
    "hard NMS, upsampled 24x": {"nms": "hard", "upsample": 24},
    "soft NMS, upsampled 24x (default)": {},
    "default, NMS IoU 0.4": {"nms_iou": 0.4},
    "default, no cap on detections": {"max_detections": 0},
    "default, NMS IoU 0.4, no cap": {"nms_iou": 0.4, "max_detections": 0},
    "hard NMS IoU 0.4, snippet edges": {"nms": "hard", "upsample": 1, "nms_iou": 0.4},
}


def rescore(run: Path) -> list[tuple[str, dict[str, float], float]]:
    teacher = Teacher(torch.load(run / "teacher.pt", weights_only=False), str(run))
    cfg = teacher.config
    corpus = Corpus.open(run / "corpus")
    subset = cfg.data.test_subset
    test = corpus.video_ids(subset)
    outputs = {v: infer_video(teacher.model, corpus.features(v), cfg.train.beta, cfg.train.topl_ratio) for v in test}
    default = InferenceConfig()
    rows = []
    for name, change in SETTINGS.items():
        # The run's own inference settings, but NMS and upsampling as this row sets them.
        inference = dataclasses.replace(cfg.inference, **{"nms": default.nms, "upsample": default.upsample,
                                                          "soft_nms_alpha": default.soft_nms_alpha, **change})
        t0 = time.perf_counter()
        results = {}
        for v in test:
            dets = localize_video(outputs[v].h_cs, outputs[v].class_scores, corpus.record(v).duration_s, inference)
            results[v] = [{"segment": [round(s, 3), round(e, 3)], "label": teacher.labels[c], "score": sc}
                          for s, e, c, sc in dets]
        seconds = time.perf_counter() - t0
        rows.append((name, evaluate(corpus, subset, {"results": results}, PRESET_TIOUS[cfg.preset]), seconds))
    return rows


def main() -> None:
    torch.set_num_threads(2)
    for arg in sys.argv[1:]:
        run = Path(arg)
        rows = rescore(run)
        print(f"\n{run.name}: avg mAP (class-agnostic avg mAP), mAP at tIoU 0.1 / 0.5 / 0.7, seconds to localize the test subset")
        for name, m, sec in rows:
            print(f"  {name:36s} {m['map@avg']:6.2f} ({m['agnostic_map@avg']:6.2f})   "
                  f"{m.get('map@0.1', np.nan):6.2f} {m.get('map@0.5', np.nan):6.2f} {m.get('map@0.7', np.nan):6.2f}   {sec:5.1f} s",
                  flush=True)


if __name__ == "__main__":
    main()
