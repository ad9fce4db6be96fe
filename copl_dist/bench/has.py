"""`copl bench has`: HAS throughput in-process and over Ray actors, and the peak memory of each.

One synthetic THUMOS-like corpus (copl_dist.data.synth, `--videos` per subset); the work is what one
COPL iteration does after training: `--epochs` voting epochs (the teacher, IOCNet at the paper's
width, on every snippet of every training video, Eqs. 1-4) and then the global features (Eq. 5).
Each configuration runs in a fresh subprocess, so its peak memory is its own:

  in-process     engine.LocalVoter + driver.has_features in the driver
  N actors       distributed.has_actors.HASActorPool with N actors (1 CPU each); by default each
                 actor uses the driver's torch thread count (bit-for-bit equal results); "N:T" in
                 --actors gives each actor T threads instead (not bit-equal), "0:T" runs the
                 in-process path with T threads (the fair baseline for "N:T")

Throughput = training videos (snippets) / (warm voting epoch + global features); the first epoch is
reported apart (page cache, actor warm-up). Memory: the driver's peak RSS (ru_maxrss), each actor's
peak RSS (its own ru_maxrss), and the RSS of Ray's other processes (raylet, GCS, ...) at the end.
RSS counts the memory-mapped corpus pages a process touched, which the page cache shares.
A checksum of the votes and features shows whether each configuration equals, bit for bit, the
in-process run with the same torch thread count.
Results are printed and written to OUT/bench_has.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from copl_dist.common.atomic import write_json
from copl_dist.common.errors import InputError
from copl_dist.config import DistributedConfig, resolve
from copl_dist.data.corpus import Corpus
from copl_dist.data.formats import import_dataset
from copl_dist.data.synth import make_synthetic
from copl_dist.distributed.ray_runtime import ensure_ray
from copl_dist.method.engine import LocalVoter
from copl_dist.method.model import IOCNet
from copl_dist.run import driver
from copl_dist.run.report import table

MB = 1 << 20


def parse_actors(spec: str) -> list[tuple[int, int | None]]:
    """'1,2,2:1,0:1' -> [(1, None), (2, None), (2, 1), (0, 1)]: actor count (0: in-process), torch
    threads (None: the driver's default)."""
    out = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        count, _, threads = item.partition(":")
        try:
            n, t = int(count), (int(threads) if threads else None)
        except ValueError:
            raise InputError(f"--actors: expected N or N:THREADS items, got '{item}'") from None
        if n < 0 or (n == 0 and t is None) or (t is not None and t < 1):
            raise InputError(f"--actors: expected N >= 1, N:T or 0:T with T >= 1, got '{item}'")
        out.append((n, t))
    return out


def run(args: argparse.Namespace) -> int:
    if args.videos < 1 or args.epochs < 1:
        raise InputError("--videos and --epochs must be >= 1")
    configs: list[tuple[int, int | None]] = [(0, None), *parse_actors(args.actors)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"v{args.videos}-c{args.classes}-s{args.duration_scale:g}-seed{args.seed}"
    data = out / f"data-{name}"
    if not (data / "annotations.json").exists():
        print(f"bench has: writing a synthetic corpus ({args.videos} videos per subset) to {data}", flush=True)
        make_synthetic(data, preset="thumos14", videos=args.videos, classes=args.classes, seed=args.seed, duration_scale=args.duration_scale)
    corpus = import_dataset(data, out / f"corpus-{name}")

    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    for actors, threads in configs:
        spec = {
            "corpus": str(corpus.root), "actors": actors, "threads": threads, "epochs": args.epochs,
            "classes": args.classes, "hidden_dim": args.hidden_dim, "seed": args.seed,
        }
        label = ("in-process" if actors == 0 else f"{actors} actor{'s' if actors > 1 else ''}") + (f" x {threads} thr" if threads else "")
        print(f"bench has: {label} ...", flush=True)
        proc = subprocess.run(
            [sys.executable, "-m", "copl_dist.bench.has", json.dumps(spec)],
            capture_output=True, text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"},
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_HAS ")]
        if proc.returncode != 0 or not lines:
            sys.stderr.write(proc.stderr[-4000:])
            raise RuntimeError(f"bench has: configuration '{label}' failed (exit {proc.returncode})")
        rows.append({"config": label, **json.loads(lines[-1][len("BENCH_HAS "):])})
    # Bit-equality against the in-process run with the same torch thread count (when one ran): the
    # thread count is part of what the convolutions compute (distributed/has_actors.py).
    in_process = {r["torch_threads"]: r["checksum"] for r in rows if r["actors"] == 0}
    for r in rows:
        ref = in_process.get(r["torch_threads"])
        r["bit_equal_to_in_process"] = None if ref is None else r["checksum"] == ref

    headers = ["config", "torch thr", "startup s", "epoch 1 s", "warm epoch s", "Eq.5 s", "videos/s", "snippets/s",
               "driver peak MB", "actor peak MB (each)", "Ray procs MB", "= in-process (same thr)"]
    body = []
    for r in rows:
        body.append([
            r["config"], str(r["torch_threads"]), f"{r['startup_s']:.1f}", f"{r['epoch_s'][0]:.2f}", f"{r['warm_epoch_s']:.2f}",
            f"{r['global_features_s']:.2f}", f"{r['videos_per_s']:.1f}", f"{r['snippets_per_s']:.0f}",
            f"{r['driver_peak_rss_bytes'] / MB:.0f}",
            "/".join(f"{b / MB:.0f}" for b in r["actor_peak_rss_bytes"]) or "-",
            f"{r['ray_other_rss_bytes'] / MB:.0f}" if r["actors"] else "-",
            {True: "yes", False: "NO", None: "-"}[r["bit_equal_to_in_process"]],
        ])
    first = rows[0]
    print(f"\nHAS throughput: {first['videos']} training videos, {first['snippets']} snippets, D={first['feature_dim']}, "
          f"IOCNet hidden {args.hidden_dim}, {args.epochs} voting epochs + Eq. 5; {os.cpu_count()} CPUs, "
          f"load average {load_before[0]:.1f} before / {os.getloadavg()[0]:.1f} after")
    print(table(headers, body))
    result = {
        "corpus": str(corpus.root), "videos_per_subset": args.videos, "epochs": args.epochs, "hidden_dim": args.hidden_dim,
        "cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg(), "rows": rows,
    }
    write_json(out / "bench_has.json", result)
    print(f"written: {out / 'bench_has.json'}")
    return 0


def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in this (fresh) process."""
    import numpy as np
    import torch


    corpus = Corpus.open(spec["corpus"])
    cfg = resolve("thumos14", overrides={"model.hidden_dim": spec["hidden_dim"], "model.feature_dim": corpus.feature_dim, "tracking.enabled": False})
    ids = corpus.video_ids(cfg.data.train_subset)
    snippets = sum(corpus.record(v).num_snippets for v in ids)
    actors = int(spec["actors"])

    started = time.perf_counter()
    pool = None
    if actors:
        # Deferred: imports ray (the in-process row needs none).
        from copl_dist.distributed.has_actors import HASActorPool

        # A local Ray on 127.0.0.1 only, whatever $RAY_ADDRESS says: the benchmark measures this machine.
        ensure_ray(DistributedConfig(ray_address="local"), num_cpus=max(os.cpu_count() or 1, actors))
        pool = HASActorPool(corpus.root, ids, cfg, actors, torch_threads=spec["threads"])
        info = pool.info()  # returns once every actor is up
        voter: Any = pool
        threads = info[0]["torch_threads"]
    else:
        if spec["threads"]:
            torch.set_num_threads(int(spec["threads"]))
        voter = LocalVoter(corpus, ids, cfg)
        threads = torch.get_num_threads()
    startup_s = time.perf_counter() - started

    epoch_s = []
    for epoch in range(spec["epochs"]):
        torch.manual_seed(spec["seed"] * 1000 + epoch)  # the same teachers in every configuration
        teacher = IOCNet(spec["classes"], corpus.feature_dim, spec["hidden_dim"]).eval()
        t0 = time.perf_counter()
        voter.vote(epoch, teacher)
        epoch_s.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    features = pool.global_features(ids) if pool is not None else driver.has_features(corpus, ids, voter.votes, cfg.has.centre)
    global_s = time.perf_counter() - t0

    digest = hashlib.sha256()
    state = voter.state()
    for v in ids:
        digest.update(np.ascontiguousarray(state[v]).tobytes())
    digest.update(np.ascontiguousarray(features).tobytes())

    actor_peaks: list[int] = []
    ray_other = 0
    if pool is not None:
        info = pool.info()
        actor_peaks = [i["peak_rss_bytes"] for i in info]
        actor_pids = {i["pid"] for i in info}
        try:
            import psutil  # Ray vendors it

            for child in psutil.Process().children(recursive=True):
                if child.pid not in actor_pids:
                    try:
                        ray_other += child.memory_info().rss
                    except psutil.Error:
                        pass
        except ImportError:
            ray_other = -1
        pool.shutdown()
    warm = epoch_s[1:] or epoch_s
    warm_s = float(np.mean(warm))
    per_pass = warm_s + global_s
    return {
        "actors": actors,
        "torch_threads": threads,
        "videos": len(ids),
        "snippets": snippets,
        "feature_dim": corpus.feature_dim,
        "startup_s": startup_s,
        "epoch_s": epoch_s,
        "warm_epoch_s": warm_s,
        "global_features_s": global_s,
        "videos_per_s": len(ids) / per_pass,
        "snippets_per_s": snippets / per_pass,
        "driver_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "actor_peak_rss_bytes": actor_peaks,
        "ray_other_rss_bytes": ray_other,
        "checksum": digest.hexdigest(),
    }


if __name__ == "__main__":
    print("BENCH_HAS " + json.dumps(_measure(json.loads(sys.argv[1]))), flush=True)
