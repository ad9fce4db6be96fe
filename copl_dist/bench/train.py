"""`copl bench train`: IOCNet training throughput in-process and on 1 and 2 Ray Train workers.

Each mode runs in a fresh Python process (so no mode inherits another's warm caches, threads or
Ray), on the same synthetic corpus and config (the `copl run` demo's model: THUMOS preset,
hidden 512, batch 16; no HAS voting, which is inference). Figures per mode:

- snippets/s: videos x snippets per epoch over the median wall time of the epochs after the first
  (steady state; with Ray this includes rank 0's per-epoch checkpoint);
- end-to-end s: the whole train_fn call, so a Ray Train fit's start-up (controller, workers,
  process group) and teardown show; `ray.init` itself is timed apart (ray_init_s in the JSON);
- peak memory: the driver's own peak RSS (ru_maxrss), the peak over time of the summed RSS of the
  driver's whole process tree (driver + Ray's GCS, raylet, agents, controller and workers), and of
  the Ray Train workers alone, sampled from /proc every 0.25 s. Summed RSS counts shared pages (torch
  libraries, the memory-mapped corpus) once per process, so it overstates the physical total.
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

from copl_dist.common.errors import InputError
from copl_dist.config import resolve, to_dict
from copl_dist.data.corpus import Corpus
from copl_dist.data.formats import import_dataset
from copl_dist.data.synth import make_synthetic
from copl_dist.distributed.ray_runtime import ensure_ray
from copl_dist.run.driver import default_train_fn

MODES = {"in-process": 0, "ray-1": 1, "ray-2": 2}


def run(args: argparse.Namespace) -> int:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise InputError(f"--modes: unknown mode(s) {unknown} (choose from {list(MODES)})")
    if args.epochs < 2:
        raise InputError(f"--epochs: needs at least 2 (the first is warm-up), got {args.epochs}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"synthetic-{args.videos}v-{args.classes}c"
    if not (data / "annotations.json").exists():
        make_synthetic(data, preset="thumos14", videos=args.videos, classes=args.classes, seed=0, duration_scale=0.5)
    corpus = import_dataset(data, out / f"corpus-{args.videos}v-{args.classes}c")

    rows = []
    for mode in modes:
        print(f"bench train: {mode} ...", file=sys.stderr, flush=True)
        rows.append(_measure(mode, corpus.root, args, out))
    doc = {"machine": _machine(), "videos": args.videos, "epochs": args.epochs, "snippets": args.snippets,
           "results": rows}
    (out / "bench_train.json").write_text(json.dumps(doc, indent=2))
    print(format_table(rows))
    print(f"written: {(out / 'bench_train.json').resolve()}")
    return 0


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'mode':<11} {'workers':>7} {'snippets/s':>10} {'epoch s':>8} {'end-to-end s':>12} " \
           f"{'driver MB':>9} {'tree MB':>8} {'workers MB':>10} {'load':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['mode']:<11} {r['workers']:>7} {r['snippets_per_s']:>10.0f} {r['epoch_s']:>8.2f} "
            f"{r['end_to_end_s']:>12.1f} {r['driver_peak_mb']:>9.0f} {r['tree_peak_mb']:>8.0f} "
            f"{r['workers_peak_mb']:>10.0f} {r['load_avg_1min'][0]:>4.1f}-{r['load_avg_1min'][1]:<4.1f}"
        )
    return "\n".join(lines)


def _machine() -> dict[str, Any]:
    import platform

    import torch

    return {"cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "gpus": torch.cuda.device_count()}


# -- the parent: one child per mode, its process tree sampled ----------------------------------------
def _measure(mode: str, corpus_root: Path, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    result_file = out / f"{mode}.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "copl_dist.bench.train", "--child", mode, "--corpus", str(corpus_root),
           "--epochs", str(args.epochs), "--snippets", str(args.snippets), "--result", str(result_file),
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
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--snippets", type=int, required=True)
    p.add_argument("--result", required=True)
    p.add_argument("--scratch", required=True)
    a = p.parse_args(argv)

    import numpy as np


    workers = MODES[a.child]
    cfg = resolve("thumos14", overrides={"train.epochs": a.epochs, "data.snippets": a.snippets,
                                         "distributed.workers": workers, "distributed.max_failures": 0,
                                         "tracking.enabled": False})
    corpus = Corpus.open(a.corpus)
    video_ids = corpus.video_ids(cfg.data.train_subset)
    n, classes = len(video_ids), len(corpus.classes)
    targets = np.eye(classes, dtype=np.float32)[np.random.default_rng(0).integers(0, classes, n)]
    scratch = Path(a.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    clock = scratch / f"{a.child}.clock"
    clock.unlink(missing_ok=True)
    config = {"cfg": to_dict(cfg), "corpus": str(corpus.root), "video_ids": video_ids, "targets": targets,
              "labelled": np.ones(n, dtype=bool), "num_classes": classes, "iteration": 0, "collect_votes": False,
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
    row = {
        "mode": a.child,
        "workers": workers,
        "torch_threads": _torch_threads(workers),
        "snippets_per_s": snippets_per_epoch / epoch_s,
        "epoch_s": epoch_s,
        "epoch_intervals_s": [float(x) for x in intervals],
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
