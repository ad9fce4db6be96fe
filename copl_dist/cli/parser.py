"""The `copl` argument parser: one sub-command per module of this package."""

from __future__ import annotations

import argparse

from copl_dist.cli import bench, data, predict, registry, run, tune
from copl_dist.common.arg_types import OneLineParser


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="copl", description="Unsupervised temporal action localization (COPL) at scale")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    run.add_arguments(sub.add_parser("run", help="run COPL (or the wtal / baseline modes) and evaluate"))
    data.add_synth_arguments(sub.add_parser("synth", help="write a synthetic corpus (ActivityNet JSON + .npy)"))
    data.add_import_arguments(sub.add_parser("import", help="convert a dataset into a corpus (Arrow IPC features, Parquet tables)"))
    data.add_eval_arguments(sub.add_parser("eval", help="detection mAP of a results file against ground truth"))
    registry.add_arguments(sub.add_parser("registry", help="the MLflow model registry: list versions, promote the best"))
    predict.add_arguments(sub.add_parser("predict", help="detections for new videos from a registered teacher or a teacher.pt"))
    tune.add_arguments(sub.add_parser("tune", help="Ray Tune search of COPL's hyper-parameters (space YAML), then post-processing on cached predictions"))
    bench.add_arguments(sub.add_parser("bench", help="benchmarks"))
    return parser


# What each command runs, by the name the parser gives it.
HANDLERS = {
    "run": run.handle, "synth": data.handle_synth, "import": data.handle_import, "eval": data.handle_eval,
    "registry": registry.handle, "predict": predict.handle, "tune": tune.handle, "bench": bench.handle,
}
