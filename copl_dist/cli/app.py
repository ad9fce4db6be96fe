"""The `copl` command: run, synth, import, eval, tune, registry, predict, bench.

Bad input ends in one line on stderr and exit status 2 (no traceback); `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

from copl_dist.common.arg_types import OneLineParser, nonnegative_int, positive_float, positive_int
from copl_dist.common.errors import InputError, first_line
from copl_dist.common.interrupts import reset_terminated, sigterm_unwinds, terminated

# With no --data, `copl run` sizes a synthetic THUMOS-like corpus and the schedule to finish within
# 10 minutes on two CPU cores (measured: see README). Explicit flags still win.
EMBEDDED_SYNTH = {"videos": 48, "classes": 6, "duration_scale": 0.5}
EMBEDDED_OVERRIDES = {"iterations": 3, "train.epochs": 12, "data.snippets": 128, "has.vote_last": 6}
# `copl run` trains on Ray Train with workers fitted to the machine (a local Ray started in-process),
# or to the cluster at $RAY_ADDRESS, unless --workers, --set, the config file or $COPL_WORKERS says
# otherwise. The config default stays 0 (in-process): library callers start no Ray, and the test
# suite sets COPL_WORKERS=0 (tests/conftest.py) so its many small runs skip Ray's start-up.
RUN_DEFAULT_WORKERS = -1


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
    from copl_dist.bench import cluster as bench_cluster, has as bench_has, train as bench_train

    bench_cluster.add_arguments(bench.add_parser("cluster", help="exact vs FAISS clustering: seconds and peak memory per N"))
    bench_train.add_arguments(bench.add_parser("train", help="training throughput in-process and over 1 and 2 Ray workers"))
    bench_has.add_arguments(bench.add_parser("has", help="HAS voting throughput in-process and over Ray actors"))
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
        "distributed.has_actors": args.has_actors,
        "distributed.workers": args.workers,
        "tracking.tracking_uri": _run_tracking_uri(args.tracking_uri),
    }


def _run_tracking_uri(value: str | None) -> str | None:
    """--tracking-uri as a URI (checked with the rest of the store before the run writes anything)."""
    if value is None:
        return None
    from copl_dist.tracking.runs import check_sqlite_store, normalize_tracking_uri

    uri = normalize_tracking_uri(value, "--tracking-uri")
    check_sqlite_store(uri, "--tracking-uri", must_exist=False)
    return uri


def _run_workers(args: argparse.Namespace) -> int | None:
    """`copl run`'s distributed.workers override: --workers; else none if --set or the config file
    gives it; else $COPL_WORKERS; else RUN_DEFAULT_WORKERS."""
    if args.workers is not None:
        return args.workers
    if _config_sets(args, "distributed.workers"):
        return None
    return _default_workers()


def _default_workers() -> int:
    raw = os.environ.get("COPL_WORKERS", "").strip()
    if not raw:
        return RUN_DEFAULT_WORKERS
    try:
        workers = int(raw)
    except ValueError:
        workers = -2
    if workers < -1:  # checked here: the config check would blame --workers, which was not given
        raise InputError(f"$COPL_WORKERS: expected -1, 0 or a worker count, got '{raw}'")
    return workers


_ABSENT = object()


def _config_sets(args: argparse.Namespace, key: str) -> bool:
    """Whether --set or the --config file gives `key` (dotted) a value."""
    if any(s.split("=", 1)[0].strip() == key for s in args.sets):
        return True
    return _config_file_value(args, key) is not _ABSENT


def _config_file_value(args: argparse.Namespace, key: str) -> Any:
    """The --config file's value of `key` (dotted), or _ABSENT (no file, no such key, or a file
    resolve() will report as bad)."""
    if not args.config or not Path(args.config).is_file():
        return _ABSENT  # resolve() reports a missing file
    import yaml

    try:
        node: Any = yaml.safe_load(Path(args.config).read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return _ABSENT  # resolve() reports it
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def cmd_run(args: argparse.Namespace) -> int:
    from copl_dist.config import resolve
    from copl_dist.data.formats import import_dataset
    from copl_dist.data.synth import make_synthetic

    overrides = _run_overrides(args)
    overrides["distributed.workers"] = _run_workers(args)
    synthetic = args.data is None
    if synthetic:
        for key, value in EMBEDDED_OVERRIDES.items():
            if overrides.get(key) is None and not any(s.startswith(f"{key}=") for s in args.sets):
                overrides[key] = value
    file_preset = _config_file_value(args, "preset")
    if args.preset is not None and file_preset not in (_ABSENT, None) and file_preset != args.preset:
        # resolve() lets the file's preset win: a tuned THUMOS config must not quietly run as ActivityNet.
        raise InputError(f"--preset {args.preset}: the --config file {args.config} is for preset '{file_preset}'")
    cfg = resolve(args.preset or "thumos14", args.config, args.sets, overrides)
    out = Path(args.out or f"runs/{cfg.preset}-{cfg.mode}-seed{cfg.seed}")
    if args.data is not None and not Path(args.data).exists():
        raise InputError(f"{args.data}: data folder not found")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    if cfg.tracking.enabled:
        from copl_dist.tracking.registry import check_registry_names
        from copl_dist.tracking.runs import resolve_tracking_uri

        from copl_dist.tracking.runs import check_tracking_store

        # The store's checks, before anything is written.
        check_tracking_store(resolve_tracking_uri(cfg.tracking, out), "tracking store")
        if cfg.tracking.log_model:
            check_registry_names(cfg.tracking.registered_model, source="tracking.registered_model")
    if cfg.distributed.workers != 0 or cfg.distributed.has_actors > 0:
        from copl_dist.distributed.ray_runtime import check_ray_address

        check_ray_address(cfg.distributed)  # before anything is written
    init_ckpt = None
    if args.init_from:
        from copl_dist.tracking.registry import load_teacher_checkpoint
        from copl_dist.tracking.runs import resolve_tracking_uri

        if cfg.mode == "baseline":
            raise InputError(f"--init-from {args.init_from}: mode 'baseline' trains no model")
        from copl_dist.tracking.registry import check_init_mode

        init_ckpt = load_teacher_checkpoint(args.init_from, resolve_tracking_uri(cfg.tracking, out))
        check_init_mode(init_ckpt, args.init_from, cfg.mode)  # before anything is written

    from copl_dist.common.atomic import output_folder
    from copl_dist.cluster.naming import naming_note
    from copl_dist.run.driver import check_run_inputs

    with output_folder(out, keep=("state",)):
        if synthetic:
            # One folder per preset and seed: the corpus is generated from both, so another seed in the
            # same --out must not reuse the first one's (its registry tag names the seed).
            src = out / f"synthetic-data-{cfg.preset}-seed{cfg.seed}"
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
        if args.resume and (corpus_dir / "corpus.json").is_file():
            corpus = import_dataset(corpus_dir, corpus_dir)  # converted before the interruption
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                corpus = import_dataset(src, corpus_dir, allow_pickle=args.allow_pickle, min_snippets=cfg.data.min_snippets)
            for w in caught:
                print(f"copl: warning: {w.message}", file=sys.stderr)
        check_run_inputs(cfg, corpus, where=src)
        note = naming_note(cfg, corpus)
        if note is not None:
            print(f"copl: {note}", file=sys.stderr)
        from copl_dist.run.state import files_fingerprint

        data_files = files_fingerprint(src)
        init_state = None
        if init_ckpt is not None:
            from copl_dist.tracking.registry import init_state_for

            clusters = len(corpus.classes) if cfg.mode == "wtal" else (cfg.num_classes or len(corpus.classes))
            init_state = init_state_for(init_ckpt, args.init_from, clusters, cfg)
    # From here the run writes its progress (metrics per iteration, the tracking store, --resume's
    # state): bad input found later (say, by a Ray worker) leaves it in place, as any other failure.
    # What the registry tags as the dataset: what the user named, not the run's converted copy.
    dataset = f"synthetic:{cfg.preset}:seed{cfg.seed}" if synthetic else str(Path(args.data).resolve())
    return _execute(cfg, corpus, out, dataset, progress=not args.no_progress, init_state=init_state, resume=args.resume,
                    data_files=data_files)


def _execute(
    cfg: Any, corpus: Any, out: Path, dataset: str, progress: bool, init_state: Any = None, resume: bool = False,
    data_files: str | None = None,
) -> int:
    from copl_dist.config import config_hash, to_dict
    from copl_dist.run.outputs import write_metrics, write_run_outputs
    from copl_dist.run.driver import CoplRun
    from copl_dist.run.report import results_table
    from copl_dist.tracking.runs import Tracker

    if not resume:  # a fresh run must never continue from another run's state
        shutil.rmtree(out / "state", ignore_errors=True)
    tracker = Tracker(cfg.tracking, out)
    run = CoplRun(
        cfg, corpus, tracker, progress=progress, on_iteration=lambda its: write_metrics(out / "metrics.json", cfg, its),
        init_state=init_state, state_dir=out / "state", resume=resume, data_source=dataset,  # --resume refuses state saved on other data
        data_files=data_files,
    )
    registered = None
    tags = {"dataset": dataset, "dataset_digest": corpus.digest(), "seed": str(cfg.seed),
            "config_hash": config_hash(cfg), "mode": cfg.mode}
    with tracker.parent_run(f"{cfg.preset}-{cfg.mode}-seed{cfg.seed}", to_dict(cfg), tags):
        result = run.execute()
        paths = write_run_outputs(out, cfg, result, result.class_names)
        tracker.log_metrics({k: v for k, v in result.final.items()})
        for key in ("detections", "metrics", "config", "plot_iterations", "plot_actionness"):
            if key in paths:
                tracker.log_artifact(paths[key], "plots" if key.startswith("plot") else None)
        if result.teacher_state is not None and tracker.enabled:
            import torch

            from copl_dist.run.driver import load_teacher

            teacher = load_teacher(result.teacher_state, result.num_classes, cfg)
            example = torch.zeros(1, 16, cfg.model.feature_dim).numpy()
            model_uri = tracker.log_teacher(teacher, example)
            if model_uri is not None and tracker.parent_run_id is not None:
                from copl_dist.common.interrupts import deferred_interrupt
                from copl_dist.tracking.registry import register_teacher

                name = cfg.tracking.registered_model
                with deferred_interrupt():  # the run's end status is written after it (tracking.Tracker._run)
                    version = register_teacher(model_uri, name, tracker.parent_run_id, paths["teacher"], tags, result.final)
                registered = f"models:/{name}/{version}"
    print(results_table(result, cfg))
    print(f"outputs: {out.resolve()}" + (f"  (MLflow: {tracker.uri})" if tracker.enabled else ""))
    if registered:
        print(f"registered: {registered}")
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
        has as bench_has,
        quality as bench_quality,
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
