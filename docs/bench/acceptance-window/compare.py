"""The acceptance corpora's COPL (UTAL) runs with every default (run.sh beside this script) against
the acceptance check's runs (`--workers 0 --set has.vote_last=10`, docs/bench/acceptance-seed*-utal-
metrics.json), with the weakly supervised runs' avg mAP for UTAL / WTAL.

    .venv/bin/python docs/bench/acceptance-window/compare.py [RUNS]   # RUNS: run.sh's WORK folder
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def per_iteration(path: Path) -> tuple[list[float], list[float]]:
    doc = json.loads(path.read_text())
    its = doc["iterations"]
    return [it["map@avg"] for it in its], [it["nmi"] for it in its]


def main() -> None:
    runs = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    print("| corpus | settings | avg mAP per iteration | UTAL / WTAL | NMI per iteration |")
    print("|---|---|---|---|---|")
    for seed in (2029, 2030):
        wtal = json.loads((BENCH / f"acceptance-seed{seed}-wtal-metrics.json").read_text())["final"]["map@avg"]
        new = HERE / f"seed{seed}-utal-metrics.json"
        if runs is not None and (runs / f"utal-{seed}" / "metrics.json").exists():
            new.write_text((runs / f"utal-{seed}" / "metrics.json").read_text())
        rows = [("`--workers 0 --set has.vote_last=10`", BENCH / f"acceptance-seed{seed}-utal-metrics.json"),
                ("defaults (window of 22 epochs)", new)]
        for name, path in rows:
            if not path.exists():
                continue
            maps, nmis = per_iteration(path)
            print(f"| seed {seed} | {name} | {' / '.join(f'{m:.2f}' for m in maps)} | {maps[-1] / wtal:.1%} | "
                  f"{' / '.join(f'{n:.3f}' for n in nmis)} |")


if __name__ == "__main__":
    main()
