"""`copl predict`: detections for new videos from a registered teacher or a teacher.pt."""

from __future__ import annotations

import argparse

from copl_dist.run.predict import plan_predict, predict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or a teacher.pt")
    parser.add_argument("--data", required=True, help="dataset root (as for `copl run`) or a converted corpus")
    parser.add_argument("--out", required=True, help="output folder: detections.json (and corpus/ when data is imported)")
    parser.add_argument("--subset", help="only this subset's videos (default: every video)")
    parser.add_argument("--tracking-uri", help="tracking store of a models:/ URI (default $MLFLOW_TRACKING_URI)")
    parser.add_argument("--allow-pickle", action="store_true", help="allow loading pickled W-TALC object arrays (runs code from the file)")


def handle(args: argparse.Namespace) -> int:
    plan = plan_predict(args.model, args.data, args.out, args.subset, args.tracking_uri, args.allow_pickle)
    path, results = predict(plan)
    count = sum(len(d) for d in results.values())
    print(f"{count} detections for {len(results)} videos: {path.resolve()}")
    return 0
