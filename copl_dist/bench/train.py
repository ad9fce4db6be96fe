"""`copl bench train`: IOCNet training throughput in-process and on 1 and 2 Ray Train workers.

Each mode runs in a fresh Python process (so no mode inherits another's warm caches, threads or
Ray), on the same synthetic corpus and config (the THUMOS preset's model: hidden 512, batch 16),
trained as `copl run` trains iteration 0: the targets and the P / U split come from iteration 0's
clustering with PLRI, and every step runs the student forward and backward, the EMA teacher forward
and all of Eq. 22's losses (no HAS voting, which is inference). Two cases (`--case`): `small` (48
short videos x 128 snippets, 6 classes) and `acceptance` (the acceptance check's corpus: the THUMOS
preset's 200 training videos of synthetic seed 2029, 20 classes, 256 snippets). Figures per mode:

- snippets/s: videos x snippets per epoch over the median wall time of the epochs after the first
  (steady state; with Ray this includes rank 0's per-epoch checkpoint);
- end-to-end s: the whole train_fn call, so a Ray Train fit's start-up (controller, workers,
  process group) and teardown show; `ray.init` itself is timed apart (ray_init_s in the JSON);
- peak memory: the driver's own peak RSS (ru_maxrss), the peak over time of the summed RSS of the
  driver's whole process tree (driver + Ray's GCS, raylet, agents, controller and workers), and of
  the Ray Train workers alone, sampled from /proc every 0.25 s. Summed RSS counts shared pages (torch
  libraries, the memory-mapped corpus) once per process, so it overstates the physical total;
- step GFLOP: one training step on a global batch (engine.train_step), counted by torch's
  FlopCounterMode from the shapes of the matmuls and convolutions it runs, forward and backward;
  counted in the mode's own process, not in Ray workers (the count depends on shapes only);
- achieved GFLOP/s: the FLOPs of an epoch (step FLOPs x the videos trained per epoch / the step's
  videos: they are linear in the batch) over the epoch's wall time;
- voting: one HAS vote (engine.LocalVoter.vote: the trained teacher on every snippet of every
  training video, Eqs. 1-4) timed in the mode's process at a rank's torch threads, the median of 3;
  its share of the training time is K x vote s / (E x epoch s) for the K voting epochs of an
  E-epoch training: every epoch (the paper, has.vote_last 0) and the default window
  (has.vote_last -1) at the preset's 300 epochs and at the acceptance check's 40;
- GEMM peak GFLOP/s: float32 torch.matmul on the model's own shapes (its widest convolutions
  unfolded, forward and weight gradient), the median of 5 repeats after a warm-up, the best shape,
  at the training's total torch threads, timed in the same process after training; peak ratio is
  achieved / peak.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from copl_dist.common.errors import InputError
from copl_dist.config import CoplConfig, resolve, to_dict
from copl_dist.data.corpus import Corpus
from copl_dist.data.formats import import_dataset
from copl_dist.data.synth import make_synthetic
from copl_dist.distributed.ray_runtime import ensure_ray
from copl_dist.method.engine import LocalVoter, build_models, epoch_batches, form_batch, train_step
from copl_dist.method.has import vote_window, voting_epochs
from copl_dist.run.driver import (
    cluster_iteration,
    default_train_fn,
    initial_features,
    pseudo_targets,
)

MODES = {"in-process": 0, "ray-1": 1, "ray-2": 2}
# The synthetic corpus and schedule of each case; --videos / --classes / --snippets override them.
# videos None: the preset's subsets (200 training / 210 test videos), as `copl synth` writes them.
CASES = {
    "small": {"videos": 48, "classes": 6, "snippets": 128, "seed": 0, "duration_scale": 0.5},
    "acceptance": {"videos": None, "classes": 20, "snippets": 256, "seed": 2029, "duration_scale": 1.0},
}
GEMM_REPEATS = 5


def run(args: argparse.Namespace) -> int:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise InputError(f"--modes: unknown mode(s) {unknown} (choose from {list(MODES)})")
    if args.epochs < 2:
        raise InputError(f"--epochs: needs at least 2 (the first is warm-up), got {args.epochs}")
    case = {**CASES[args.case]}
    for key in ("videos", "classes", "snippets"):
        if getattr(args, key) is not None:
            case[key] = getattr(args, key)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{args.case}-{case['videos'] or 'preset'}v-{case['classes']}c-seed{case['seed']}"
    data = out / f"synthetic-{name}"
    if not (data / "annotations.json").exists():
        make_synthetic(data, preset="thumos14", videos=case["videos"], classes=case["classes"], seed=case["seed"],
                       duration_scale=case["duration_scale"])
    corpus = import_dataset(data, out / f"corpus-{name}")
    split = out / f"split-{name}.npz"
    mask = _write_split(corpus, case["snippets"], split)

    rows = []
    for mode in modes:
        print(f"bench train: {mode} ...", file=sys.stderr, flush=True)
        rows.append(_measure(mode, corpus.root, split, case["snippets"], args, out))
    doc = {"machine": _machine(), "case": args.case, "videos": int(mask.size), "classes": len(corpus.classes),
           "pseudo_labelled": int(mask.sum()), "unlabelled": int((~mask).sum()), "epochs": args.epochs,
           "snippets": case["snippets"], "results": rows,
           "voting": voting_doc(rows, bench_config(case["snippets"]))}
    (out / "bench_train.json").write_text(json.dumps(doc, indent=2))
    print(format_table(rows))
    print()
    print(format_voting(rows, bench_config(case["snippets"])))
    print(f"written: {(out / 'bench_train.json').resolve()}")
    return 0


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'mode':<11} {'workers':>7} {'snippets/s':>10} {'epoch s':>8} {'end-to-end s':>12} " \
           f"{'step GFLOP':>10} {'GFLOP/s':>8} {'peak GFLOP/s':>12} {'of peak':>7} " \
           f"{'driver MB':>9} {'tree MB':>8} {'workers MB':>10} {'load':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['mode']:<11} {r['workers']:>7} {r['snippets_per_s']:>10.0f} {r['epoch_s']:>8.2f} "
            f"{r['end_to_end_s']:>12.1f} {r['step_gflop']:>10.2f} {r['achieved_gflops']:>8.1f} "
            f"{r['gemm_peak_gflops']:>12.1f} {r['peak_ratio']:>7.1%} "
            f"{r['driver_peak_mb']:>9.0f} {r['tree_peak_mb']:>8.0f} "
            f"{r['workers_peak_mb']:>10.0f} {r['load_avg_1min'][0]:>4.1f}-{r['load_avg_1min'][1]:<4.1f}"
        )
    return "\n".join(lines)


# Training lengths the voting share is shown for: the THUMOS preset's (the paper's) and the
# acceptance check's.
VOTING_SCHEDULES = (300, 40)


def voting_share(vote_s: float, epoch_s: float, epochs: int, voting: range) -> float:
    """Voting time over training time for an `epochs`-epoch training whose epochs `voting` vote."""
    return len(voting) * vote_s / (epochs * epoch_s)


def format_voting(rows: list[dict[str, Any]], cfg: CoplConfig) -> str:
    doc = voting_doc(rows, cfg)
    window = doc["window"]
    cols = [f"{'vote s':>7}", f"{'every epoch':>11}"] + [
        f"{f'window {window} @{e} ep':>16}" for e in VOTING_SCHEDULES
    ]
    head = f"{'voting':<11} " + " ".join(cols)
    lines = [f"HAS voting: one vote's time and its share of the training time (alpha {cfg.has.alpha}, "
             f"vote_tol {cfg.has.vote_tol})", head, "-" * len(head)]
    for r in rows:
        share = doc["share"][r["mode"]]
        lines.append(f"{r['mode']:<11} {r['vote_s']:>7.2f} {share['every_epoch']:>11.1%} "
                     + " ".join(f"{share[f'window_at_{e}_epochs']:>16.1%}" for e in VOTING_SCHEDULES))
    return "\n".join(lines)


def voting_doc(rows: list[dict[str, Any]], cfg: CoplConfig) -> dict[str, Any]:
    """Each mode's voting share: every epoch votes, or the default window at each of VOTING_SCHEDULES."""
    doc: dict[str, Any] = {"alpha": cfg.has.alpha, "vote_tol": cfg.has.vote_tol,
                           "window": vote_window(cfg.has.alpha, cfg.has.vote_tol), "share": {}}
    for r in rows:
        doc["share"][r["mode"]] = {"every_epoch": voting_share(r["vote_s"], r["epoch_s"], 1, range(1)), **{
            f"window_at_{e}_epochs": voting_share(r["vote_s"], r["epoch_s"], e,
                                                  voting_epochs(e, cfg.has.alpha, -1, cfg.has.vote_tol))
            for e in VOTING_SCHEDULES}}
    return doc


def vote_seconds(cfg: CoplConfig, corpus: Corpus, video_ids: list[str], teacher_state: dict[str, Any],
                 num_classes: int, threads: int, repeats: int = 3) -> float:
    """One HAS vote over the training videos with the trained teacher, at `threads` torch threads:
    the median of `repeats` after a warm-up."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _, teacher, _ = build_models(cfg, num_classes, 0, torch.device("cpu"))
        teacher.load_state_dict(teacher_state)
        voter = LocalVoter(corpus, video_ids, cfg)
        voter.vote(0, teacher)
        times = []
        for epoch in range(1, repeats + 1):
            t0 = time.perf_counter()
            voter.vote(epoch, teacher)
            times.append(time.perf_counter() - t0)
        return float(np.median(times))
    finally:
        torch.set_num_threads(before)


def bench_config(snippets: int, epochs: int = 2, workers: int = 0) -> CoplConfig:
    """The config every mode trains with: the THUMOS preset, as `copl run` resolves it."""
    return resolve("thumos14", overrides={"train.epochs": epochs, "data.snippets": snippets,
                                          "distributed.workers": workers, "distributed.max_failures": 0,
                                          "tracking.enabled": False})


def _write_split(corpus: Corpus, snippets: int, path: Path) -> np.ndarray:
    """Iteration 0's pseudo-labels as `copl run` makes them (initial features, clustering, PLRI),
    saved for the modes' processes; returns the P mask."""
    cfg = bench_config(snippets)
    video_ids = corpus.video_ids(cfg.data.train_subset)
    classes = cfg.num_classes or len(corpus.classes)
    features = initial_features(corpus, video_ids, cfg.has.init, cfg.has.gamma)
    _, labels, _, mask = cluster_iteration(features, None, cfg, classes, 0)
    np.savez(path, targets=pseudo_targets(labels, mask, classes), labelled=mask)
    return mask


# -- FLOPs and the GEMM peak -----------------------------------------------------------------------
def step_flops(
    cfg: CoplConfig, corpus: Corpus, video_ids: list[str], targets: np.ndarray, labelled: np.ndarray
) -> dict[str, Any]:
    """The FLOPs of one training step as the engine takes it: the first global batch of iteration 0's
    first epoch, formed by engine.form_batch, through engine.train_step on fresh models, under torch's
    FlopCounterMode (matmuls and convolutions, forward and backward, counted from their shapes;
    elementwise work is not counted). On the CPU: the count depends on shapes only."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device("cpu")
    num_classes = targets.shape[1]
    student, teacher, optimizer = build_models(cfg, num_classes, 0, device)
    student.train()
    batch = min(cfg.train.batch_size, len(video_ids))
    idx = epoch_batches(len(video_ids), batch, 1, cfg.seed, 0, 0)[0]
    x, x_student = form_batch(corpus, video_ids, idx, cfg, 0, 0, 0, device)
    counter = FlopCounterMode(display=False)
    with counter:
        train_step(student, teacher, optimizer, x, x_student, torch.as_tensor(targets[idx]),
                   torch.as_tensor(labelled[idx]), cfg, 0)
    by_op = {str(op).removeprefix("aten."): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return {"flops": int(counter.get_total_flops()), "by_op": by_op, "videos": len(idx),
            "pseudo_labelled": int(labelled[idx].sum()), "snippets": int(x.shape[1])}


def gemm_shapes(rows: int, feature_dim: int, hidden_dim: int) -> dict[str, tuple[int, int, int]]:
    """(m, k, n) of IOCNet's widest GEMMs on `rows` = videos x snippets: the class-specific k=3
    convolution unfolded (forward and weight gradient) and an agnostic head's k=3 convolution."""
    return {
        "cs_conv": (rows, 3 * feature_dim, hidden_dim),
        "cs_conv_weight_grad": (3 * feature_dim, rows, hidden_dim),
        "ca_conv": (rows, 3 * (feature_dim // 2), hidden_dim),
    }


def gemm_peak(shapes: dict[str, tuple[int, int, int]], threads: int, repeats: int = GEMM_REPEATS) -> dict[str, float]:
    """GFLOP/s of float32 torch.matmul per (m, k, n) shape at `threads` torch threads: the median of
    `repeats` timings after one warm-up."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        rates = {}
        for name, (m, k, n) in shapes.items():
            a = torch.randn(m, k, generator=gen)
            b = torch.randn(k, n, generator=gen)
            torch.matmul(a, b)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                torch.matmul(a, b)
                times.append(time.perf_counter() - t0)
            rates[name] = 2.0 * m * k * n / float(np.median(times)) / 1e9
        return rates
    finally:
        torch.set_num_threads(before)


def _machine() -> dict[str, Any]:
    import platform

    import torch

    return {"cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "gpus": torch.cuda.device_count()}


# -- the parent: one child per mode, its process tree sampled ----------------------------------------
def _measure(
    mode: str, corpus_root: Path, split: Path, snippets: int, args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    result_file = out / f"{mode}.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "copl_dist.bench.train", "--child", mode, "--corpus", str(corpus_root),
           "--split", str(split),
           "--epochs", str(args.epochs), "--snippets", str(snippets), "--result", str(result_file),
           "--scratch", str(out / "scratch")]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": "ignore"}
    log = (out / f"{mode}.log").open("w")
    child = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    tree_peak = workers_peak = 0
    load_before = os.getloadavg()[0]
    while child.poll() is None:
        tree, workers = _tree_rss(child.pid)
        tree_peak, workers_peak = max(tree_peak, tree), max(workers_peak, workers)
        time.sleep(0.25)
    log.close()
    if child.returncode != 0 or not result_file.exists():
        raise RuntimeError(f"bench train: mode {mode} failed (exit {child.returncode}); see {out / f'{mode}.log'}")
    row = json.loads(result_file.read_text())
    row["tree_peak_mb"] = tree_peak / 2**20
    row["workers_peak_mb"] = workers_peak / 2**20
    row["load_avg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]  # before, after: others' work
    return row


def _tree_rss(root: int) -> tuple[int, int]:
    """(summed RSS bytes of `root` and all its descendants, of those that are Ray Train workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total = workers = 0
    stack = [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        rss, name = _rss_and_name(pid)
        total += rss
        if "RayTrainWorker" in name:
            workers += rss
    return total, workers


def _rss_and_name(pid: int) -> tuple[int, str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")), 0)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            name = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return 0, ""
    return rss, name


# -- the child: one mode ----------------------------------------------------------------------------
def _child(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--child", required=True, choices=list(MODES))
    p.add_argument("--corpus", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--snippets", type=int, required=True)
    p.add_argument("--result", required=True)
    p.add_argument("--scratch", required=True)
    a = p.parse_args(argv)

    workers = MODES[a.child]
    cfg = bench_config(a.snippets, a.epochs, workers)
    corpus = Corpus.open(a.corpus)
    video_ids = corpus.video_ids(cfg.data.train_subset)
    with np.load(a.split) as split:
        targets, labelled = split["targets"], split["labelled"]
    n, classes = len(video_ids), targets.shape[1]
    counted = step_flops(cfg, corpus, video_ids, targets, labelled)
    scratch = Path(a.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    clock = scratch / f"{a.child}.clock"
    clock.unlink(missing_ok=True)
    config = {"cfg": to_dict(cfg), "corpus": str(corpus.root), "video_ids": video_ids, "targets": targets,
              "labelled": labelled, "num_classes": classes, "iteration": 0, "collect_votes": False,
              "clock": str(clock)}
    ends: list[float] = []

    def report(metrics: dict[str, float], _checkpoint: Any = None) -> None:
        if workers == 0:
            ends.append(time.time())

    train_fn = default_train_fn(cfg, scratch)
    ray_init_s = 0.0
    if workers:
        t0 = time.time()
        ensure_ray(cfg.distributed)  # timed apart: a run pays it once, not per training
        ray_init_s = time.time() - t0
    started = time.time()
    trained = train_fn(config, report=report)
    end_to_end = time.time() - started
    if workers:
        ends = [float(line.split()[1]) for line in clock.read_text().splitlines()]
    intervals = np.diff(ends)
    snippets_per_epoch = n * a.snippets
    epoch_s = float(np.median(intervals))  # robust to a neighbour's burst on a shared machine
    threads = _torch_threads(workers)
    world = max(1, workers)
    batch = min(cfg.train.batch_size, n)
    # Videos trained per epoch (a last batch too small for every rank is dropped); FLOPs are linear in them.
    trained_videos = sum(len(b) for b in epoch_batches(n, batch, world, cfg.seed, 0, 0))
    epoch_flops = counted["flops"] * trained_videos / counted["videos"]
    rows_per_rank = -(-batch // world) * a.snippets  # the largest rank's share of a batch, x snippets
    rates = gemm_peak(gemm_shapes(rows_per_rank, cfg.model.feature_dim, cfg.model.hidden_dim), threads * world)
    vote_s = vote_seconds(cfg, corpus, video_ids, trained["teacher"], classes, threads)
    achieved = epoch_flops / epoch_s / 1e9
    peak = max(rates.values())
    row = {
        "mode": a.child,
        "workers": workers,
        "torch_threads": threads,
        "step_gflop": counted["flops"] / 1e9,
        "step_videos": counted["videos"],
        "step_pseudo_labelled": counted["pseudo_labelled"],
        "step_gflop_by_op": {op: f / 1e9 for op, f in counted["by_op"].items()},
        "epoch_gflop": epoch_flops / 1e9,
        "achieved_gflops": achieved,
        "gemm_peak_gflops": peak,
        "gemm_gflops_by_shape": rates,
        "gemm_threads": threads * world,
        "peak_ratio": achieved / peak,
        "snippets_per_s": snippets_per_epoch / epoch_s,
        "epoch_s": epoch_s,
        "epoch_intervals_s": [float(x) for x in intervals],
        "vote_s": vote_s,
        "end_to_end_s": end_to_end,
        "ray_init_s": ray_init_s,
        "end_to_end_snippets_per_s": snippets_per_epoch * a.epochs / end_to_end,
        "final_loss": trained["history"][-1]["loss"],
        "driver_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(a.result).write_text(json.dumps(row))
    return 0


def _torch_threads(workers: int) -> int:
    import torch

    if workers == 0:
        return torch.get_num_threads()
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, cpus // workers)


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
