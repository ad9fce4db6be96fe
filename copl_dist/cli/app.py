"""The `copl` command: run, synth, import, eval, tune, registry, predict, bench.

Bad input ends in one line on stderr and exit status 2 (no traceback); `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import threading
from typing import Any

from copl_dist.common.arg_types import (
    OneLineParser,
    nonnegative_int,
    positive_float,
    positive_int,
)
from copl_dist.common.errors import InputError, first_line
from copl_dist.common.interrupts import reset_terminated, sigterm_unwinds, terminated


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="dataset root (ActivityNet JSON + .npy, rgb/flow folders, W-TALC bundle) or a converted corpus")
    p.add_argument("--out", help="output folder (default runs/<preset>-<mode>-seed<seed>)")
    p.add_argument("--preset", help="thumos14 or anet12 (the paper's settings; default: the --config file's, else thumos14)")
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
    p.add_argument("--has-actors", type=int, metavar="N", help="HAS voting and global features in N Ray actors (0: in this process)")
    p.add_argument("--workers", type=int, metavar="N", help="train IOCNet on N Ray Train workers (DDP); 0: in this process; -1 (default, or $COPL_WORKERS): fit the machine, or the cluster at $RAY_ADDRESS")
    p.add_argument("--resume", action="store_true", help="continue a killed run in --out after its last completed iteration")
    p.add_argument("--init-from", metavar="MODEL", help="start the first training from a teacher: models:/NAME@ALIAS, models:/NAME/VERSION or a teacher.pt")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow store the run logs to and --init-from models:/ URIs are read from: a URI, a run folder or an mlflow.db "
                        "(default tracking.tracking_uri, else $MLFLOW_TRACKING_URI, else OUT/mlflow.db)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="copl", description="Unsupervised temporal action localization (COPL) at scale")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_run_args(sub.add_parser("run", help="run COPL (or the wtal / baseline modes) and evaluate"))

    p = sub.add_parser("synth", help="write a synthetic corpus (ActivityNet JSON + .npy)")
    p.add_argument("out")
    p.add_argument("--preset", default="thumos14", choices=["thumos14", "anet12"])
    p.add_argument("--videos", type=positive_int, help="videos per subset (default: the real dataset's counts)")
    p.add_argument("--classes", type=positive_int)
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--duration-scale", type=positive_float, default=1.0, help="shrink video durations (quick runs)")
    p.add_argument("--no-annotations", action="store_true",
                   help="leave every video's annotation list empty (the same features as without this flag)")

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
    p.add_argument("--class-agnostic", action="store_true",
                   help="every label as one class: localization alone (detections of unnamed clusters, cluster_00..)")

    from copl_dist.run import predict
    from copl_dist.tracking import registry

    registry.add_arguments(sub.add_parser("registry", help="the MLflow model registry: list versions, promote the best"))
    predict.add_arguments(sub.add_parser("predict", help="detections for new videos from a registered teacher or a teacher.pt"))

    from copl_dist.tune import search as tune

    tune.add_arguments(sub.add_parser("tune", help="Ray Tune search of COPL's hyper-parameters (space YAML), then post-processing on cached predictions"))

    p = sub.add_parser("bench", help="benchmarks")
    bench = p.add_subparsers(dest="bench", required=True)
    q = bench.add_parser("quality", help="the paper's ablations on a synthetic THUMOS-like corpus")
    q.add_argument("--seeds", type=positive_int, default=3)
    q.add_argument("--first-seed", type=nonnegative_int, default=0, help="seeds run: first-seed ... first-seed + seeds - 1")
    q.add_argument("--merge", nargs="+", metavar="DIR", help="only merge earlier outputs (seeds split over processes) into --out")
    q.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every variant (repeatable), e.g. train.device=cpu")
    q.add_argument("--out", default="runs/bench-quality")
    q.add_argument("--videos", type=positive_int, default=48)
    q.add_argument("--classes", type=positive_int, default=6)
    q.add_argument("--epochs", type=positive_int, default=12)
    q.add_argument("--snippets", type=positive_int, default=128)
    q.add_argument("--iterations", type=positive_int, default=3)
    q.add_argument("--duration-scale", type=positive_float, default=0.5)
    from copl_dist.bench import cluster as bench_cluster
    from copl_dist.bench import has as bench_has
    from copl_dist.bench import train as bench_train

    bench_cluster.add_arguments(bench.add_parser("cluster", help="exact vs FAISS clustering: seconds and peak memory per N"))
    bench_train.add_arguments(bench.add_parser("train", help="training throughput in-process and over 1 and 2 Ray workers"))
    bench_has.add_arguments(bench.add_parser("has", help="HAS voting throughput in-process and over Ray actors"))
    return parser


def run_request(args: argparse.Namespace) -> Any:
    """`copl run`'s flags as a run request (checked by plan_run)."""
    from copl_dist.run.plan import RunRequest

    overrides = {
        "mode": args.mode,
        "iterations": args.iterations,
        "train.epochs": args.epochs,
        "data.snippets": args.snippets,
        "seed": args.seed,
        "data.train_subset": args.train_subset,
        "data.test_subset": args.test_subset,
        "distributed.has_actors": args.has_actors,
    }
    return RunRequest(
        data=args.data, out=args.out, preset=args.preset, config=args.config, sets=tuple(args.sets), overrides=overrides,
        workers=args.workers, tracking_uri=args.tracking_uri, init_from=args.init_from, resume=args.resume,
        allow_pickle=args.allow_pickle, progress=not args.no_progress,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from copl_dist.run.plan import execute, plan_run, prepare
    from copl_dist.run.report import results_table

    plan = plan_run(run_request(args))  # every check that writes nothing
    prepared = prepare(plan)  # the corpus in OUT/corpus, checked against the config
    outcome = execute(prepared)  # the iterations and every output
    print(results_table(outcome.result, plan.cfg))  # the report
    print(f"outputs: {plan.out.resolve()}" + (f"  (MLflow: {plan.tracking_uri})" if plan.tracking_uri else ""))
    if outcome.registered:
        print(f"registered: {outcome.registered}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from copl_dist.data.synth import make_synthetic

    path = make_synthetic(
        args.out, preset=args.preset, videos=args.videos, classes=args.classes, seed=args.seed,
        duration_scale=args.duration_scale, progress=True, annotated=not args.no_annotations,
    )
    print(f"synthetic corpus: {path}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from copl_dist.data.formats import import_dataset

    corpus = import_dataset(args.src, args.out, allow_pickle=args.allow_pickle, open_corpus=False)
    print(f"corpus: {corpus.root} ({sum(len(corpus.video_ids(s)) for s in corpus.subsets())} videos, {len(corpus.classes)} classes)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from copl_dist.config import PRESET_TIOUS
    from copl_dist.method.metrics import evaluate_files, format_table

    tious = [t.strip() for t in args.tiou.split(",") if t.strip()] if args.tiou is not None else [f"{t:g}" for t in PRESET_TIOUS["thumos14"]]
    result = evaluate_files(args.gt, args.pred, args.subset, tious, class_agnostic=args.class_agnostic)
    print(json.dumps(result) if args.json else format_table(result))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from copl_dist.bench import (
        cluster as bench_cluster,
    )
    from copl_dist.bench import (
        has as bench_has,
    )
    from copl_dist.bench import (
        quality as bench_quality,
    )
    from copl_dist.bench import (
        train as bench_train,
    )

    runners = {"quality": bench_quality.run_quality_bench, "cluster": bench_cluster.run, "train": bench_train.run, "has": bench_has.run}
    return runners[args.bench](args)


def _os_error_line(exc: OSError) -> str:
    if exc.filename is not None:
        target = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
        return f"{target}: {exc.strerror or first_line(exc)}"
    return first_line(exc)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from copl_dist.run import predict
    from copl_dist.tracking import registry
    from copl_dist.tune import search as tune

    handlers = {
        "run": cmd_run, "synth": cmd_synth, "import": cmd_import, "eval": cmd_eval, "bench": cmd_bench,
        "registry": registry.run, "predict": predict.run,
        "tune": tune.run,
    }
    # SIGTERM (`ray job stop`, an evicted pod) unwinds, so that the MLflow runs end KILLED (interrupts.py).
    sigterm_before = signal.getsignal(signal.SIGTERM)
    reset_terminated()
    sigterm_unwinds()
    try:
        return handlers[args.command](args)
    except InputError as exc:
        if args.debug:
            raise
        print(f"copl: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # The file system or the network refused (an output path that is a file, no permission, a
        # full disk, a server that is down): the user's environment, not a bug, so one line too.
        if args.debug:
            raise
        print(f"copl: error: {_os_error_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        # MLflow refusing a store, a name or an alias (checked by MLflow itself): one line, naming it.
        if args.debug or not type(exc).__module__.startswith("mlflow"):
            raise
        print(f"copl: error: MLflow: {first_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("copl: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        if not terminated():
            raise
        print("copl: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if sigterm_before is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, sigterm_before)  # a library caller's process keeps its own


def entry() -> None:
    """The `copl` script and `python -m copl_dist`: main(), then the process's exit."""
    code = main()
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        # Stopped by a signal: skip the interpreter's final garbage collection of a heap holding
        # torch, Ray and MLflow (2 s here, measured), so that `ray job stop`'s 3 s before its SIGKILL
        # cover Ray's disconnect. Only here, at the process's end: the cycle collector never visits
        # frozen objects again. atexit handlers (ray.shutdown, MLflow's) still run.
        gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
