"""Where the weakly supervised mode loses against ASL: the network or the inference?

One corpus of the robustness grid (default: the `confusable` cell, seed 0, acceptance size). The
project's weakly supervised teacher (`--mode wtal`, trained as `copl bench robustness` trains it) and
ASL (method/asl.py) are each scored with both inferences, and with one inference step of ASL's
changed at a time:

    python docs/bench/robustness/inference_swap.py [--cell confusable] [--seed 0] [--size acceptance] [--out DIR]

Trained networks are kept in OUT (a second call only re-scores). Writes nothing else; prints a table
(inference_swap.txt holds its output on the 2-core machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from copl_dist.bench.robustness import SIZES, _config, asl_training_set
from copl_dist.config import PRESET_TIOUS
from copl_dist.data.corpus import MANIFEST, Corpus
from copl_dist.data.formats import import_dataset
from copl_dist.data.synth_i3d import make_i3d_like
from copl_dist.method import asl
from copl_dist.method.engine import infer_video, train_loop_per_worker
from copl_dist.method.localize import localize_video
from copl_dist.run.driver import CoplRun, evaluate, load_teacher
from copl_dist.run.plan import check_run_inputs


def _corpus(out: Path, cell: str, seed: int, s: dict) -> Corpus:
    data, stored = out / f"{cell}-seed{seed}", out / f"{cell}-seed{seed}-corpus"
    if not (data / "annotations.json").exists():
        make_i3d_like(data, cell, train_videos=s["train_videos"], test_videos=s["test_videos"], classes=s["classes"],
                      seed=seed, duration_scale=s["duration_scale"], feature_dim=s["feature_dim"])
    return Corpus.open(stored) if (stored / MANIFEST).is_file() else import_dataset(data, stored)


def _wtal_teacher(corpus: Corpus, s: dict, seed: int, path: Path):
    cfg = _config(s, "wtal", seed)
    if not path.exists():
        last: dict = {}

        def keep_last(config, report=None, **kwargs):
            def hooked(metrics, checkpoint=None):
                if report is not None:
                    report(metrics, checkpoint)
                if checkpoint is not None:
                    last["teacher"] = checkpoint["teacher"]
            return train_loop_per_worker(config, report=hooked, **kwargs)

        check_run_inputs(cfg, corpus)
        run = CoplRun(cfg, corpus, tracker=None, progress=False)
        run.train_fn = keep_last
        t0 = time.perf_counter()
        result = run.execute()
        print(f"wtal trained in {time.perf_counter() - t0:.0f} s; the run's own avg mAP {result.iterations[-1]['map@avg']:.2f}")
        torch.save(last["teacher"], path)
    return cfg, load_teacher(torch.load(path), len(corpus.classes), cfg)


def _asl_net(corpus: Corpus, s: dict, seed: int, path: Path) -> asl.ASLNet:
    net = asl.ASLNet(s["feature_dim"], len(corpus.classes))
    if path.exists():
        net.load_state_dict(torch.load(path))
        return net.eval()
    features, labels = asl_training_set(corpus)
    t0 = time.perf_counter()
    net = asl.train_asl(features, labels, s["epochs"], lr=1e-4, snippets=s["snippets"], seed=seed)
    print(f"asl trained in {time.perf_counter() - t0:.0f} s")
    torch.save(net.state_dict(), path)
    return net


def _variant(minmax=False, upscale=asl.UPSCALE, soft=True, class_threshold=asl.CLASS_THRESHOLD, gamma=asl.GAMMA):
    """ASL's inference with one step changed (the defaults are ASL's own: checked against asl_localize)."""
    def localize(h, p, duration):
        h = np.asarray(h)
        if minmax:
            lo, hi = h.min(0, keepdims=True), h.max(0, keepdims=True)
            h = (h - lo) / np.where(hi > lo, hi - lo, 1.0)
        saved = (asl.UPSCALE, asl.CLASS_THRESHOLD, asl.GAMMA, asl._soft_nms)
        asl.UPSCALE, asl.CLASS_THRESHOLD, asl.GAMMA = upscale, class_threshold, gamma
        if not soft:
            asl._soft_nms = _hard_nms
        try:
            return asl.asl_localize(h, p, duration)
        finally:
            asl.UPSCALE, asl.CLASS_THRESHOLD, asl.GAMMA, asl._soft_nms = saved
    return localize


def _hard_nms(props, iou_threshold=0.6):
    """Plain NMS over (score, start, end) at the project's IoU (what localize_video does per class)."""
    p = np.asarray(props, dtype=np.float64)
    order = p[:, 0].argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(tuple(p[i]))
        rest = order[1:]
        inter = np.maximum(0.0, np.minimum(p[i, 2], p[rest, 2]) - np.maximum(p[i, 1], p[rest, 1]))
        iou = inter / ((p[i, 2] - p[i, 1]) + (p[rest, 2] - p[rest, 1]) - inter)
        order = rest[iou < iou_threshold]
    return keep


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cell", default="confusable")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", default="acceptance", choices=list(SIZES))
    ap.add_argument("--out", default="runs/inference-swap")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    s = {**SIZES[args.size], "sets": [], "asl_lr": 1e-4, "curve_every": 0}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = _corpus(out, args.cell, args.seed, s)
    cfg, teacher = _wtal_teacher(corpus, s, args.seed, out / f"wtal-{args.cell}-seed{args.seed}.pt")
    net = _asl_net(corpus, s, args.seed, out / f"asl-{args.cell}-seed{args.seed}.pt")
    test = corpus.video_ids("test")
    outputs = {"project WTAL": {}, "ASL": {}}
    for vid in test:
        x = corpus.features(vid)
        o = infer_video(teacher, x, cfg.train.beta, cfg.train.topl_ratio)
        outputs["project WTAL"][vid] = (o.h_cs, o.class_scores)
        outputs["ASL"][vid] = asl.asl_outputs(net, x)
    # The harness reproduces ASL's own inference exactly before it is trusted with the variants.
    for vid in test[:5]:
        assert _variant()(*outputs["ASL"][vid], corpus.record(vid).duration_s) == \
            asl.asl_localize(*outputs["ASL"][vid], corpus.record(vid).duration_s)

    inf = cfg.inference
    before = dataclasses.replace(inf, nms="hard", nms_iou=0.6, upsample=1)
    inferences = {
        "project default (soft NMS 0.4, upsampled 24x)": lambda h, p, d: localize_video(h, p, d, inf),
        "project, hard NMS 0.6 at snippet edges": lambda h, p, d: localize_video(h, p, d, before),
        "project, soft NMS 0.4 at snippet edges": lambda h, p, d: localize_video(h, p, d, dataclasses.replace(inf, upsample=1)),
        "project, hard NMS 0.4 upsampled 24x": lambda h, p, d: localize_video(h, p, d, dataclasses.replace(inf, nms="hard")),
        "ASL (asl_localize)": _variant(),
        "ASL, scores min-max per class": _variant(minmax=True),
        "ASL, no upsampling": _variant(upscale=1),
        "ASL, hard NMS 0.6": _variant(soft=False),
        "ASL, class threshold 0.2, weight 0.25": _variant(class_threshold=0.2, gamma=0.25),
        "ASL, min-max + no upsampling + hard NMS": _variant(minmax=True, upscale=1, soft=False),
    }
    tious = PRESET_TIOUS["thumos14"]
    print(f"cell {args.cell}, seed {args.seed}: {len(test)} test videos; avg mAP over tIoU 0.1:0.7 (class-agnostic in brackets)\n")
    print(f"{'inference':48s} " + "  ".join(f"{n:>20s}" for n in outputs))
    for name, fn in inferences.items():
        row = []
        for nets in outputs.values():
            results = {vid: [{"segment": [round(a, 3), round(b, 3)], "label": corpus.classes[c], "score": sc}
                             for a, b, c, sc in fn(*nets[vid], corpus.record(vid).duration_s)] for vid in test}
            m = evaluate(corpus, "test", {"results": results}, tious)
            row.append(f"{m['map@avg']:6.2f} [{m['agnostic_map@avg']:6.2f}]")
        print(f"{name:48s} " + "  ".join(f"{r:>20s}" for r in row), flush=True)


if __name__ == "__main__":
    main()
