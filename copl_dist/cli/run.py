"""`copl run`: its flags, and the run in four steps (plan, prepare the corpus, execute, report)."""

from __future__ import annotations

import argparse

from copl_dist.run.plan import RunRequest, execute, plan_run, prepare
from copl_dist.run.report import results_table


def add_arguments(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--workers", type=int, metavar="N", help="train IOCNet on N Ray Train workers (DDP); 0: in this process; -1 (default, or $COPL_WORKERS): fit the machine, or the cluster at $RAY_ADDRESS (a fit of one CPU worker on this machine trains in this process, the faster path)")
    p.add_argument("--resume", action="store_true", help="continue a killed run in --out after its last completed iteration")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in an --out that holds another run's saved iterations (deletes them and its outputs)")
    p.add_argument("--init-from", metavar="MODEL", help="start the first training from a teacher: models:/NAME@ALIAS, models:/NAME/VERSION or a teacher.pt")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow store the run logs to and --init-from models:/ URIs are read from: a URI, a run folder or an mlflow.db "
                        "(default tracking.tracking_uri, else $MLFLOW_TRACKING_URI, else OUT/mlflow.db)")


def run_request(args: argparse.Namespace) -> RunRequest:
    """`copl run`'s flags as a run request (checked by plan_run)."""
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
        workers=args.workers, tracking_uri=args.tracking_uri, init_from=args.init_from, resume=args.resume, overwrite=args.overwrite,
        allow_pickle=args.allow_pickle, progress=not args.no_progress,
    )


def handle(args: argparse.Namespace) -> int:
    plan = plan_run(run_request(args))  # every check that writes nothing
    prepared = prepare(plan)  # the corpus in OUT/corpus, checked against the config
    outcome = execute(prepared)  # the iterations and every output
    print(results_table(outcome.result, plan.cfg))  # the report
    print(f"outputs: {plan.out.resolve()}" + (f"  (MLflow: {plan.tracking_uri})" if plan.tracking_uri else ""))
    if outcome.registered:
        print(f"registered: {outcome.registered}")
    return 0
