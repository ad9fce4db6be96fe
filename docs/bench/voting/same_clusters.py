"""The last clustering of each pair of runs compare.py made: cluster and P / U side per video, and the
largest difference of a PLRI score. Usage: python docs/bench/voting/same_clusters.py runs/bench-voting"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def main(out: Path) -> int:
    for every in sorted(out.glob("seed*-vote_last0")):
        seed = every.name.split("-")[0]
        a = pq.read_table(every / "pseudo_labels.parquet").to_pydict()
        b = pq.read_table(out / f"{seed}-vote_last-1" / "pseudo_labels.parquet").to_pydict()
        assert a["video_id"] == b["video_id"]
        same_cluster = sum(x == y for x, y in zip(a["cluster"], b["cluster"]))
        same_side = sum(x == y for x, y in zip(a["pseudo_labelled"], b["pseudo_labelled"]))
        diff = float(np.abs(np.array(a["plri_score"]) - np.array(b["plri_score"])).max())
        print(f"{seed}: same cluster {same_cluster}/{len(a['video_id'])} videos, same P/U side "
              f"{same_side}/{len(a['video_id'])}, largest PLRI score difference {diff:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
