"""`copl bench embedded|quality|cluster|train|has`: the benchmarks' flags; each benchmark lives in copl_dist/bench/."""

from __future__ import annotations

import argparse

from copl_dist.bench import cluster as bench_cluster
from copl_dist.bench import embedded as bench_embedded
from copl_dist.bench import has as bench_has
from copl_dist.bench import quality as bench_quality
from copl_dist.bench import robustness as bench_robustness
from copl_dist.bench import train as bench_train
from copl_dist.common.arg_types import (
    bounded_int,
    finite_float,
    nonnegative_int,
    positive_float,
    positive_int,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    bench = parser.add_subparsers(dest="bench", required=True)
    _add_embedded(bench.add_parser("embedded", help="the embedded default of `copl run` over seeds: UTAL beside WTAL and the plain baseline"))
    _add_quality(bench.add_parser("quality", help="the paper's ablations on a synthetic THUMOS-like corpus"))
    _add_cluster(bench.add_parser("cluster", help="exact vs FAISS clustering: seconds and peak memory per N"))
    _add_train(bench.add_parser("train", help="training throughput in-process and over 1 and 2 Ray workers"))
    _add_has(bench.add_parser("has", help="HAS voting throughput in-process and over Ray actors"))
    _add_robustness(bench.add_parser("robustness", help="UTAL, WTAL, ASL and the plain baseline on a grid of corpora from a second generator"))


def _add_embedded(p: argparse.ArgumentParser) -> None:
    # No size flags: the runs are sized where `copl run` sizes its embedded default (run/plan.py).
    p.add_argument("--seeds", type=positive_int, default=3)
    p.add_argument("--first-seed", type=nonnegative_int, default=0, help="seeds run: first-seed ... first-seed + seeds - 1")
    p.add_argument("--modes", default=",".join(bench_embedded.MODES),
                   help=f"comma-separated: utal and any of {','.join(bench_embedded.MODES[1:])}")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every run (repeatable), as `copl run --set` takes it")
    p.add_argument("--out", default="runs/bench-embedded")


def _add_quality(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=positive_int, default=3)
    p.add_argument("--first-seed", type=nonnegative_int, default=0, help="seeds run: first-seed ... first-seed + seeds - 1")
    p.add_argument("--merge", nargs="+", metavar="DIR", help="only merge earlier outputs (seeds split over processes) into --out")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every variant (repeatable), e.g. train.device=cpu")
    p.add_argument("--out", default="runs/bench-quality")
    p.add_argument("--videos", type=positive_int, default=48)
    p.add_argument("--classes", type=positive_int, default=6)
    p.add_argument("--epochs", type=positive_int, default=12)
    p.add_argument("--snippets", type=positive_int, default=128)
    p.add_argument("--iterations", type=positive_int, default=3)
    p.add_argument("--duration-scale", type=positive_float, default=0.5)


def _add_cluster(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", default="1000,10000,100000", help="comma-separated numbers of videos")
    parser.add_argument("--dim", type=positive_int, default=2048, help="feature dimension")
    parser.add_argument("--clusters", type=positive_int, default=20)
    parser.add_argument("--knn", type=positive_int, default=30, help="neighbours of the kNN path")
    parser.add_argument("--knn-pca", type=bounded_int(-1, 1 << 20), default=-1,
                        help="principal components the kNN graph is built on (0: raw; -1: twice the clusters, 32-256)")
    parser.add_argument("--backend", default="auto", choices=["auto", "faiss", "torch", "numpy"], help="kNN back end")
    parser.add_argument("--paths", default=",".join(bench_cluster.PATHS), help=f"comma-separated subset of {','.join(bench_cluster.PATHS)}")
    parser.add_argument("--separation", type=positive_float, default=1.0, help="latent cluster separation (smaller: more overlap)")
    parser.add_argument("--delta", type=finite_float, default=0.0, help="PLRI threshold")
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--exact-max-gb", type=positive_float, default=12.0,
                        help="run the exact path only if its estimated peak is below this and 60%% of free memory")
    parser.add_argument("--threads", type=nonnegative_int, default=0, help="BLAS/OpenMP threads per worker (0: library default)")
    parser.add_argument("--out", default="runs/bench-cluster")


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--case", default="small", choices=list(bench_train.CASES),
                   help="small: 48 videos x 128 snippets, 6 classes; acceptance: the acceptance check's corpus "
                        "(synthetic seed 2029, 200 training videos, 20 classes, 256 snippets)")
    p.add_argument("--videos", type=positive_int, help="videos per subset of the synthetic THUMOS-like corpus (default: the case's)")
    p.add_argument("--classes", type=positive_int, help="default: the case's")
    p.add_argument("--epochs", type=positive_int, default=3, help="at least 2: the first epoch is warm-up")
    p.add_argument("--snippets", type=positive_int, help="snippets sampled per training video (default: the case's)")
    p.add_argument("--modes", default=",".join(bench_train.MODES), help=f"comma-separated subset of {','.join(bench_train.MODES)}")
    p.add_argument("--out", default="runs/bench-train")


def _add_has(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--videos", type=positive_int, default=100, help="videos per subset of the synthetic corpus")
    parser.add_argument(
        "--actors", default="1,2",
        help="comma-separated actor counts; N:T = N actors with T torch threads each; 0:T = in-process with T threads",
    )
    parser.add_argument("--epochs", type=positive_int, default=2, help="voting epochs per configuration (the first is reported apart)")
    parser.add_argument("--classes", type=positive_int, default=20)
    parser.add_argument("--hidden-dim", type=positive_int, default=512, help="IOCNet width of the teacher (paper: 512)")
    parser.add_argument("--duration-scale", type=positive_float, default=1.0)
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--out", default="runs/bench-has")


def _add_robustness(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cells", default="all", help="'all' or a comma-separated subset of " + ",".join(bench_robustness.CELLS))
    p.add_argument("--seeds", type=positive_int, default=3)
    p.add_argument("--first-seed", type=nonnegative_int, default=0, help="seeds run: first-seed ... first-seed + seeds - 1")
    p.add_argument("--modes", default="all", help="'all' or a comma-separated subset of " + ",".join(bench_robustness.MODES))
    p.add_argument("--size", default="acceptance", choices=list(bench_robustness.SIZES),
                   help="acceptance: 150 training / 100 test videos of 10 classes, 3 iterations of 40 epochs at 256 "
                        "snippets; smoke: seconds per run (CI)")
    p.add_argument("--train-videos", type=positive_int, help="default: the size's")
    p.add_argument("--test-videos", type=positive_int, help="default: the size's")
    p.add_argument("--classes", type=positive_int, help="default: the size's")
    p.add_argument("--epochs", type=positive_int, help="default: the size's")
    p.add_argument("--snippets", type=positive_int, help="default: the size's")
    p.add_argument("--iterations", type=positive_int, help="UTAL iterations (default: the size's)")
    p.add_argument("--duration-scale", type=positive_float, help="default: the size's")
    p.add_argument("--feature-dim", type=bounded_int(2, 65536), help="default: the size's")
    p.add_argument("--asl-lr", type=positive_float, default=1e-4, help="the reference's learning rate (ASL's published 1e-4)")
    p.add_argument("--curve-every", type=nonnegative_int, default=10,
                   help="score ASL and the weakly supervised mode every this many epochs (training curves; 0: only at the end)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for the UTAL, WTAL and plain runs (repeatable)")
    p.add_argument("--merge", nargs="+", metavar="DIR", help="only merge outputs of the same settings (cells or seeds split over machines) into --out")
    p.add_argument("--out", default="runs/bench-robustness")


def handle(args: argparse.Namespace) -> int:
    runners = {"embedded": bench_embedded.run, "quality": bench_quality.run_quality_bench, "cluster": bench_cluster.run,
               "train": bench_train.run, "has": bench_has.run,
               "robustness": bench_robustness.run}
    return runners[args.bench](args)
