"""`copl synth`, `copl import` and `copl eval`: corpora in and detections scored."""

from __future__ import annotations

import argparse
import json

from copl_dist.common.arg_types import (
    bounded_int,
    nonnegative_int,
    positive_float,
    positive_int,
)
from copl_dist.config import PRESET_TIOUS
from copl_dist.data.formats import import_dataset
from copl_dist.data.synth import make_synthetic
from copl_dist.method.metrics import evaluate_files, format_table


def add_synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out")
    p.add_argument("--preset", default="thumos14", choices=["thumos14", "anet12"])
    p.add_argument("--videos", type=bounded_int(1, 10_000_000), help="videos per subset (default: the real dataset's counts)")
    p.add_argument("--classes", type=positive_int)
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--duration-scale", type=positive_float, default=1.0, help="shrink video durations (quick runs)")
    p.add_argument("--no-annotations", action="store_true",
                   help="leave every video's annotation list empty (the same features as without this flag)")


def handle_synth(args: argparse.Namespace) -> int:
    path = make_synthetic(
        args.out, preset=args.preset, videos=args.videos, classes=args.classes, seed=args.seed,
        duration_scale=args.duration_scale, progress=True, annotated=not args.no_annotations,
    )
    print(f"synthetic corpus: {path}")
    return 0


def add_import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--allow-pickle", action="store_true")


def handle_import(args: argparse.Namespace) -> int:
    corpus = import_dataset(args.src, args.out, allow_pickle=args.allow_pickle, open_corpus=False)
    print(f"corpus: {corpus.root} ({sum(len(corpus.video_ids(s)) for s in corpus.subsets())} videos, {len(corpus.classes)} classes)")
    return 0


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gt", required=True)
    p.add_argument("--pred", required=True)
    p.add_argument("--subset", required=True)
    p.add_argument("--tiou", help="comma-separated tIoU thresholds (default THUMOS 0.1-0.7)")
    p.add_argument("--json", action="store_true", help="print one JSON object: tIoU -> mAP (%%) and avg")
    p.add_argument("--class-agnostic", action="store_true",
                   help="every label as one class: localization alone (detections of unnamed clusters, cluster_00..)")


def handle_eval(args: argparse.Namespace) -> int:
    tious = [t.strip() for t in args.tiou.split(",") if t.strip()] if args.tiou is not None else [f"{t:g}" for t in PRESET_TIOUS["thumos14"]]
    result = evaluate_files(args.gt, args.pred, args.subset, tious, class_agnostic=args.class_agnostic)
    print(json.dumps(result) if args.json else format_table(result))
    return 0
