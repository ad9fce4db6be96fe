"""The scale paths against the exact path on 256-dim sets (N = 5,000, the tests' `_make_5000`).

For data seeds 0 ... SEEDS-1: the exact dense path, the default kNN graph and Nystrom, each on
(a) the raw 256-dim features and (b) the features projected as iteration 1 projects them
(`projection.discriminant_projection` fitted on the exact path's labels and P: 19 dims). Prints
each scale path's ARI against the exact labels, the share of videos on the same PLRI P/U side
(delta 0), and both paths' ARI against the generating labels.

    PYTHONPATH=. python docs/bench/knn-pca/scan256.py 6 > docs/bench/knn-pca/scan256.out
"""

import sys
import time

import numpy as np
from sklearn.metrics import adjusted_rand_score as ari

from copl_dist.bench.cluster import make_cluster_features
from copl_dist.cluster.videos import cluster_videos
from copl_dist.cluster.scale import cluster_videos_scale
from copl_dist.method.projection import discriminant_projection


def compare(name: str, X: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    el, _, em = cluster_videos(X, 20, seed=0, delta=0.0)
    row = [f"{name:<22} {X.shape[1]:>4} dims  exact vs truth {ari(truth, el):.3f}"]
    for affinity in ("knn", "nystrom"):
        sl, _, sm = cluster_videos_scale(X, 20, seed=0, delta=0.0, affinity=affinity)
        row.append(f"{affinity:<7} vs exact {ari(el, sl):.3f} / {100 * np.mean(em == sm):5.1f}% same side, vs truth {ari(truth, sl):.3f}")
    print(" | ".join(row), flush=True)
    return el, em


def main() -> None:
    seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    t0 = time.perf_counter()
    for s in range(seeds):
        X, truth = make_cluster_features(5000, 256, n_clusters=20, seed=s, separation=1.0)
        el, em = compare(f"seed {s} raw", X, truth)
        Z = discriminant_projection(X, el, em, seed=0)
        compare(f"seed {s} projected", Z, truth)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
