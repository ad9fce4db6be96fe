"""`copl tune`: Ray Tune search of COPL's hyper-parameters, then post-processing on cached predictions."""

from __future__ import annotations

import argparse

from copl_dist.tune import search
from copl_dist.tune.search import OBJECTIVES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", required=True, help="search space YAML (tune_spaces/thumos14.yaml, tune_spaces/anet12.yaml)")
    p.add_argument("--data", help="dataset root or converted corpus (default: the embedded synthetic corpus of `copl run`)")
    p.add_argument("--out", help="output folder (default runs/tune-<space name>)")
    p.add_argument("--samples", type=int, default=8, help="trials to sample (default 8)")
    p.add_argument("--objective", choices=OBJECTIVES, default="silhouette",
                   help="silhouette / agreement: label-free; map: map@avg on --val-subset (default silhouette)")
    p.add_argument("--val-subset", help="labelled validation subset for --objective map (never the test subset)")
    p.add_argument("--preset", help="thumos14 or anet12 (default: the space's preset)")
    p.add_argument("--config", help="YAML config applied before the space's base")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="fixed override, e.g. train.batch_size=8")
    p.add_argument("--iterations", type=int, help="COPL iterations per trial (ASHA's time axis)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--snippets", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--train-subset")
    p.add_argument("--test-subset", help="the subset `copl run` reports on; trials never evaluate on it")
    p.add_argument("--max-concurrent", type=int, default=1, help="trials at once (default 1)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--grace-period", type=int, default=1, help="ASHA: iterations before a trial can be stopped")
    p.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA reduction factor")
    p.add_argument("--pp-samples", type=int, default=64, help="post-processing candidates scored on the cache (objective map)")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickled W-TALC object arrays")


def handle(args: argparse.Namespace) -> int:
    return search.run(args)
