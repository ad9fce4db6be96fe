"""`copl registry list|promote`: the MLflow model registry of teachers."""

from __future__ import annotations

import argparse
import json

from copl_dist.common.arg_types import positive_int
from copl_dist.common.errors import InputError
from copl_dist.tracking.registry import (
    DEFAULT_ALIAS,
    DEFAULT_MODEL,
    check_registry_names,
    format_versions,
    list_versions,
    promote,
    set_alias,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="registry_command", required=True)
    p = sub.add_parser("promote", help="point an alias (champion) at the version with the best metric")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"registered model name (default {DEFAULT_MODEL})")
    p.add_argument("--metric", help="metric to rank by, e.g. map@avg, map@0.5 (default map@avg)")
    p.add_argument("--version", type=positive_int,
                   help="point the alias at this version instead of ranking (e.g. runs on data without annotations: no mAP)")
    p.add_argument("--alias", default=DEFAULT_ALIAS, help=f"alias to move (default {DEFAULT_ALIAS})")
    p.add_argument("--lower-is-better", action="store_true", help="pick the smallest value instead")
    p.add_argument("--mode", default="utal", choices=["utal", "wtal"],
                   help="compare only versions trained in this mode (tag 'mode'; default utal: a wtal teacher saw labels)")
    p.add_argument("--dataset", help="compare only versions of this dataset: its tag 'dataset' (the run's absolute --data "
                                      "path, or synthetic:PRESET:seedS) or 'dataset_digest', exactly")
    p.add_argument("--tracking-uri", help="tracking store: a URI, a run folder or an mlflow.db (default $MLFLOW_TRACKING_URI)")
    p = sub.add_parser("list", help="versions of a registered model with their tags and aliases")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--tracking-uri", help="tracking store: a URI, a run folder or an mlflow.db (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--json", action="store_true", help="print a JSON list")


def handle(args: argparse.Namespace) -> int:
    check_registry_names(args.model, source="--model")
    if args.registry_command == "promote":
        check_registry_names(alias=args.alias, source="--alias")
    if args.registry_command == "promote" and args.version is not None:
        if args.metric is not None or args.lower_is_better or args.dataset is not None:
            raise InputError("--version: names the version itself; --metric, --lower-is-better and --dataset rank versions")
        set_alias(args.model, str(args.version), args.alias, args.tracking_uri, mode=args.mode)
        print(f"models:/{args.model}@{args.alias} -> version {args.version} (as named)")
        return 0
    if args.registry_command == "promote":
        args.metric = args.metric or "map@avg"
        p = promote(
            args.model, args.metric, args.alias, higher_is_better=not args.lower_is_better, tracking_uri=args.tracking_uri,
            mode=args.mode, dataset=args.dataset,
        )
        of = f" of dataset {args.dataset}" if args.dataset is not None else ""
        print(f"models:/{args.model}@{args.alias} -> version {p.version} ({args.metric} = {p.value:g}; "
              f"{p.compared} {args.mode} version(s){of} compared)")
        return 0
    rows = list_versions(args.model, args.tracking_uri)
    print(json.dumps(rows, indent=1) if args.json else format_versions(args.model, rows))
    return 0
