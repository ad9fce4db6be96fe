"""The kNN graph's knobs on the two raw 256-dim sets where it stays under 98% (scan256.out):
neighbours k in {30, 100} and the uniform term SPECTRAL_REG in {0.1, 1, 3, 10}, each against the
exact path (ARI / same P/U side / ARI against the generating labels).

    PYTHONPATH=. python docs/bench/knn-pca/graph_knobs.py > docs/bench/knn-pca/graph_knobs.out
"""

import numpy as np
from sklearn.metrics import adjusted_rand_score as ari

from copl_dist.cluster import scale as cluster_scale
from copl_dist.bench.cluster import make_cluster_features
from copl_dist.cluster.videos import cluster_videos

for seed in (0, 2):
    X, truth = make_cluster_features(5000, 256, n_clusters=20, seed=seed, separation=1.0)
    exact, _, exact_mask = cluster_videos(X, 20, seed=0, delta=0.0)
    row = []
    for reg in (0.1, 1.0, 3.0, 10.0):
        for k in (30, 100):
            cluster_scale.SPECTRAL_REG = reg
            labels, _, mask = cluster_scale.cluster_videos_scale(X, 20, seed=0, delta=0.0, knn=k)
            row.append(f"reg {reg} k {k}: {ari(exact, labels):.3f} / {100 * np.mean(exact_mask == mask):.1f}% / {ari(truth, labels):.3f}")
    print(f"data seed {seed}: " + " | ".join(row), flush=True)
