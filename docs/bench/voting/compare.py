"""HAS voting over every epoch (the paper, has.vote_last=0) against the default window from alpha
(has.vote_last=-1: the last 22 epochs at alpha 0.9, vote_tol 0.1), side by side on the same corpora.

Each seed makes its own synthetic THUMOS-like corpus (`copl synth --seed S`); both settings run
`copl run` in-process on it with the same flags. Printed: avg mAP and NMI per iteration, and the run's
wall time, per seed and as mean ± std. Usage (from the repository root, with the project installed):

    python docs/bench/voting/compare.py --out runs/bench-voting [--seeds 0,1,2] [--epochs 40]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SETTINGS = {"every epoch (vote_last 0)": "0", "window from alpha (vote_last -1)": "-1"}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/bench-voting")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--videos", type=int, default=48)
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--snippets", type=int, default=128)
    a = p.parse_args()
    copl = str(Path(sys.executable).parent / "copl")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for seed in (int(s) for s in a.seeds.split(",")):
        data = out / f"data-seed{seed}"
        if not (data / "annotations.json").exists():
            subprocess.run([copl, "synth", str(data), "--videos", str(a.videos), "--classes", str(a.classes),
                            "--seed", str(seed), "--duration-scale", "0.5"], check=True, stdout=subprocess.DEVNULL)
        for name, vote_last in SETTINGS.items():
            run = out / f"seed{seed}-vote_last{vote_last}"
            t0 = time.perf_counter()
            subprocess.run([copl, "run", "--data", str(data), "--out", str(run), "--overwrite", "--workers", "0",
                            "--iterations", str(a.iterations), "--epochs", str(a.epochs), "--snippets", str(a.snippets),
                            "--seed", str(seed), "--no-progress", "--set", "tracking.enabled=false",
                            "--set", f"has.vote_last={vote_last}"], check=True, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - t0
            its = json.loads((run / "metrics.json").read_text())["iterations"]
            row = {"seed": seed, "seconds": seconds, "map": [it.get("map@avg") for it in its],
                   "nmi": [it.get("nmi") for it in its]}
            results[name].append(row)
            print(f"seed {seed} {name:34s} avg mAP {' '.join(f'{m:5.2f}' for m in row['map'])}  "
                  f"NMI {' '.join(f'{v:.3f}' for v in row['nmi'])}  {seconds:.0f} s", flush=True)
    print()
    print(f"{a.videos} videos, {a.classes} classes, {a.snippets} snippets, {a.epochs} epochs, {a.iterations} iterations; "
          f"seeds {a.seeds}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    head = f"{'setting':<34} " + " ".join(f"{f'mAP it{i}':>13}" for i in range(a.iterations)) + \
           " " + " ".join(f"{f'NMI it{i}':>13}" for i in range(a.iterations)) + f" {'wall s':>11}"
    print(head)
    print("-" * len(head))
    for name, rows in results.items():
        cells = []
        for key, scale in (("map", 1.0), ("nmi", 100.0)):
            for i in range(a.iterations):
                v = scale * np.array([r[key][i] for r in rows], dtype=float)
                cells.append(f"{v.mean():6.2f} ± {v.std(ddof=1) if v.size > 1 else 0:4.2f}")
        t = np.array([r["seconds"] for r in rows])
        print(f"{name:<34} " + " ".join(f"{c:>13}" for c in cells) + f" {t.mean():5.0f} ± {t.std(ddof=1) if t.size > 1 else 0:3.0f}")
    (out / "compare.json").write_text(json.dumps({"args": vars(a), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
