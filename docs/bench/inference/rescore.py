"""The inference settings side by side on trained teachers: each run's teacher runs once over its test
subset, and its outputs are localized and scored under each setting (nothing is retrained):

    python docs/bench/inference/rescore.py RUN_DIR [RUN_DIR ...]

RUN_DIR is a `copl run --out` folder (teacher.pt and corpus/). Rows: hard NMS at tIoU 0.6 at snippet
edges (the former default), soft NMS (ASL's), its tIoU 0.4 and upsampling each alone and together (the
default), and the default with no cap on detections; for a UTAL run, the former and the default
inference on each iteration's teacher too (from its state/). `rescore.txt` holds its output on the 2-core
machine (load: the robustness grid beside it).
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
    "hard NMS 0.6, snippet edges (former)": {"nms": "hard", "nms_iou": 0.6, "upsample": 1},
    "hard NMS 0.4, snippet edges": {"nms": "hard", "nms_iou": 0.4, "upsample": 1},
    "soft NMS 0.6, snippet edges": {"nms": "soft", "nms_iou": 0.6, "upsample": 1},
    "soft NMS 0.4, snippet edges": {"nms": "soft", "nms_iou": 0.4, "upsample": 1},
    "hard NMS 0.4, upsampled 24x": {"nms": "hard", "nms_iou": 0.4, "upsample": 24},
    "soft NMS 0.6, upsampled 24x": {"nms": "soft", "nms_iou": 0.6, "upsample": 24},
    "soft NMS 0.4, upsampled 24x (default)": {"nms": "soft", "nms_iou": 0.4, "upsample": 24},
    "default, no cap on detections": {"nms": "soft", "nms_iou": 0.4, "upsample": 24, "max_detections": 0},
}


def rescore(run: Path, ckpt: dict, settings: dict = SETTINGS) -> list[tuple[str, dict[str, float], float]]:
    teacher = Teacher(ckpt, str(run))
    cfg = teacher.config
    corpus = Corpus.open(run / "corpus")
    subset = cfg.data.test_subset
    test = corpus.video_ids(subset)
    outputs = {v: infer_video(teacher.model, corpus.features(v), cfg.train.beta, cfg.train.topl_ratio) for v in test}
    rows = []
    for name, change in settings.items():
        # The run's own inference settings (class threshold, thetas, ...) with NMS and upsampling as the row sets them.
        inference = dataclasses.replace(cfg.inference, soft_nms_alpha=InferenceConfig().soft_nms_alpha, **change)
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
    table: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for arg in sys.argv[1:]:
        run = Path(arg)
        final = torch.load(run / "teacher.pt", weights_only=False)
        rows = rescore(run, final)
        print(f"\n{run.name}: avg mAP (class-agnostic avg mAP), mAP at tIoU 0.1 / 0.5 / 0.7, seconds to localize the test subset")
        for name, m, sec in rows:
            table[name].append(m["map@avg"])
            print(f"  {name:40s} {m['map@avg']:6.2f} ({m['agnostic_map@avg']:6.2f})   "
                  f"{m.get('map@0.1', np.nan):6.2f} {m.get('map@0.5', np.nan):6.2f} {m.get('map@0.7', np.nan):6.2f}   {sec:5.1f} s",
                  flush=True)
        # A UTAL run's earlier iterations, from the teacher and cluster mapping its state kept.
        states = sorted((run / "state").glob("iteration-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
        if len(states) > 1:
            former, default = list(SETTINGS)[0], "soft NMS 0.4, upsampled 24x (default)"
            per = {former: [], default: []}
            for path in states:
                state = torch.load(path, weights_only=False)
                mapping = [int(state["mapping"][str(c)]) for c in range(int(final["num_classes"]))]
                ckpt = {**final, "state_dict": state["teacher"], "cluster_to_class": mapping}
                for name, m, _ in rescore(run, ckpt, {k: SETTINGS[k] for k in per}):
                    per[name].append(f"{m['map@avg']:.2f}")
            for name, values in per.items():
                print(f"  per iteration, {name:26s} " + " / ".join(values))
    print(f"\nmean avg mAP over the {len(sys.argv) - 1} runs (change against the first row)")
    first = float(np.mean(table[next(iter(SETTINGS))]))
    for name, values in table.items():
        print(f"  {name:40s} {np.mean(values):6.2f} ({np.mean(values) - first:+.2f})")


if __name__ == "__main__":
    main()
