"""The `copl` command: run, synth, import, eval, bench.

Bad input ends in one line on stderr and exit status 2 (no traceback); `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

from copl_dist.errors import InputError

# With no --data, `copl run` sizes a synthetic THUMOS-like corpus and the schedule to finish within
# 10 minutes on two CPU cores (measured: see README). Explicit flags still win.
EMBEDDED_SYNTH = {"videos": 48, "classes": 6, "duration_scale": 0.5}
EMBEDDED_OVERRIDES = {"iterations": 3, "train.epochs": 12, "data.snippets": 128, "has.vote_last": 6}


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="dataset root (ActivityNet JSON + .npy, rgb/flow folders, W-TALC bundle) or a converted corpus")
    p.add_argument("--out", help="output folder (default runs/<preset>-<mode>-seed<seed>)")
    p.add_argument("--preset", default="thumos14", help="thumos14 or anet12 (the paper's settings)")
    p.add_argument("--config", help="YAML config file (e.g. a tuned config)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. has.gamma=10")
    p.add_argument("--mode", choices=["utal", "wtal", "baseline"])
    p.add_argument("--iterations", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--snippets", type=int, help="snippets sampled per training video (paper: 750 THUMOS, 50 ActivityNet)")
    p.add_argument("--seed", type=int)
    p.add_argument("--train-subset")
    p.add_argument("--test-subset")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickled W-TALC object arrays (runs code from the file)")
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="copl", description="Unsupervised temporal action localization (COPL) at scale")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_run_args(sub.add_parser("run", help="run COPL (or the wtal / baseline modes) and evaluate"))

    p = sub.add_parser("synth", help="write a synthetic corpus (ActivityNet JSON + .npy)")
    p.add_argument("out")
    p.add_argument("--preset", default="thumos14", choices=["thumos14", "anet12"])
    p.add_argument("--videos", type=int, help="videos per subset (default: the real dataset's counts)")
    p.add_argument("--classes", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration-scale", type=float, default=1.0, help="shrink video durations (quick runs)")

    p = sub.add_parser("import", help="convert a dataset into a corpus (Arrow IPC features, Parquet tables)")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--allow-pickle", action="store_true")

    p = sub.add_parser("eval", help="detection mAP of a results file against ground truth")
    p.add_argument("--gt", required=True)
    p.add_argument("--pred", required=True)
    p.add_argument("--subset", required=True)
    p.add_argument("--tiou", help="comma-separated tIoU thresholds (default THUMOS 0.1-0.7)")
    p.add_argument("--json", action="store_true", help="print one JSON object: tIoU -> mAP (%%) and avg")

    p = sub.add_parser("bench", help="benchmarks")
    bench = p.add_subparsers(dest="bench", required=True)
    q = bench.add_parser("quality", help="the paper's ablations on a synthetic THUMOS-like corpus")
    q.add_argument("--seeds", type=int, default=3)
    q.add_argument("--out", default="runs/bench-quality")
    q.add_argument("--videos", type=int, default=60)
    q.add_argument("--classes", type=int, default=8)
    q.add_argument("--epochs", type=int, default=15)
    q.add_argument("--snippets", type=int, default=128)
    q.add_argument("--iterations", type=int, default=3)
    q.add_argument("--duration-scale", type=float, default=0.5)
    return parser


def _run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "mode": args.mode,
        "iterations": args.iterations,
        "train.epochs": args.epochs,
        "data.snippets": args.snippets,
        "seed": args.seed,
        "data.train_subset": args.train_subset,
        "data.test_subset": args.test_subset,
    }


def cmd_run(args: argparse.Namespace) -> int:
    from copl_dist.config import resolve
    from copl_dist.formats import import_dataset
    from copl_dist.synth import make_synthetic

    overrides = _run_overrides(args)
    synthetic = args.data is None
    if synthetic:
        for key, value in EMBEDDED_OVERRIDES.items():
            if overrides.get(key) is None and not any(s.startswith(f"{key}=") for s in args.sets):
                overrides[key] = value
    cfg = resolve(args.preset, args.config, args.sets, overrides)
    out = Path(args.out or f"runs/{cfg.preset}-{cfg.mode}-seed{cfg.seed}")
    if args.data is not None and not Path(args.data).exists():
        raise InputError(f"{args.data}: data folder not found")

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        if synthetic:
            src = out / "synthetic-data"
            print(
                f"copl: no --data given: running on a synthetic {cfg.preset} corpus "
                f"({EMBEDDED_SYNTH['videos']} videos per subset, {EMBEDDED_SYNTH['classes']} classes) in {src}",
                file=sys.stderr,
            )
            if not (src / "annotations.json").exists():
                make_synthetic(src, preset=cfg.preset, seed=cfg.seed, **EMBEDDED_SYNTH)
        else:
            src = Path(args.data)
        corpus_dir = out / "corpus"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            corpus = import_dataset(src, corpus_dir, allow_pickle=args.allow_pickle, min_snippets=cfg.data.min_snippets)
        for w in caught:
            print(f"copl: warning: {w.message}", file=sys.stderr)
        return _execute(cfg, corpus, out, progress=not args.no_progress)
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()
        raise


def _execute(cfg: Any, corpus: Any, out: Path, progress: bool) -> int:
    from copl_dist.config import config_hash, to_dict
    from copl_dist.outputs import write_metrics, write_run_outputs
    from copl_dist.pipeline import CoplRun
    from copl_dist.report import results_table
    from copl_dist.tracking import Tracker

    tracker = Tracker(cfg.tracking, out)
    run = CoplRun(cfg, corpus, tracker, progress=progress, on_iteration=lambda its: write_metrics(out / "metrics.json", cfg, its))
    tags = {"dataset": str(corpus.root), "seed": str(cfg.seed), "config_hash": config_hash(cfg), "mode": cfg.mode}
    with tracker.parent_run(f"{cfg.preset}-{cfg.mode}-seed{cfg.seed}", to_dict(cfg), tags):
        result = run.execute()
        paths = write_run_outputs(out, cfg, result, corpus.classes)
        tracker.log_metrics({k: v for k, v in result.final.items()})
        for key in ("detections", "metrics", "config", "plot_iterations", "plot_actionness"):
            if key in paths:
                tracker.log_artifact(paths[key], "plots" if key.startswith("plot") else None)
        if result.teacher_state is not None and tracker.enabled:
            import torch

            from copl_dist.pipeline import load_teacher

            teacher = load_teacher(result.teacher_state, result.num_classes, cfg)
            example = torch.zeros(1, 16, cfg.model.feature_dim).numpy()
            tracker.log_teacher(teacher, example)
    print(results_table(result, cfg))
    print(f"outputs: {out.resolve()}" + (f"  (MLflow: {tracker.uri})" if tracker.enabled else ""))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from copl_dist.synth import make_synthetic

    path = make_synthetic(
        args.out, preset=args.preset, videos=args.videos, classes=args.classes, seed=args.seed,
        duration_scale=args.duration_scale, progress=True,
    )
    print(f"synthetic corpus: {path}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from copl_dist.formats import import_dataset

    corpus = import_dataset(args.src, args.out, allow_pickle=args.allow_pickle)
    print(f"corpus: {corpus.root} ({sum(len(corpus.video_ids(s)) for s in corpus.subsets())} videos, {len(corpus.classes)} classes)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from copl_dist.config import PRESET_TIOUS
    from copl_dist.metrics import evaluate_files, format_table

    tious = [t.strip() for t in args.tiou.split(",") if t.strip()] if args.tiou else [f"{t:g}" for t in PRESET_TIOUS["thumos14"]]
    result = evaluate_files(args.gt, args.pred, args.subset, tious)
    print(json.dumps(result) if args.json else format_table(result))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from copl_dist.bench_quality import run_quality_bench

    return run_quality_bench(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    handlers = {"run": cmd_run, "synth": cmd_synth, "import": cmd_import, "eval": cmd_eval, "bench": cmd_bench}
    try:
        return handlers[args.command](args)
    except InputError as exc:
        if args.debug:
            raise
        print(f"copl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("copl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
