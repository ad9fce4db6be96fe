"""Side figures on the kNN graph in docs/scale.md (data seed 0, the exact path as reference): more
neighbours on the raw features at N = 10,000 (k = 100), the graph on 32-256 principal components at
N = 10,000, and the uncapped k = 30 at N = 1,000 (graph_neighbours caps it at 12 there)."""
import warnings

import numpy as np
from sklearn.metrics import adjusted_rand_score as ari

from copl_dist.cluster import scale as cluster_scale
from copl_dist.bench.cluster import make_cluster_features
from copl_dist.cluster.videos import cluster_videos
from copl_dist.cluster.scale import cluster_videos_scale

warnings.simplefilter("ignore")


def row(n, label, exact, **kw):
    X, el, em = exact
    l, _, m = cluster_videos_scale(X, 20, 0, 0.0, **kw)
    print(n, label, f"ARI vs exact {ari(el, l):.3f}, same side {np.mean(m == em) * 100:.1f}%", flush=True)


for n in (10000, 1000):
    X, truth = make_cluster_features(n, 2048, n_clusters=20, seed=0)
    el, _, em = cluster_videos(X, 20, seed=0, delta=0.0)
    exact = (X, el, em)
    if n == 10000:
        row(n, "raw k=30", exact, knn_pca=0)
        row(n, "raw k=100", exact, knn_pca=0, knn=100)
        for dims in (32, 64, 128, 256):
            row(n, f"pca{dims} k=30", exact, knn_pca=dims)
    else:
        row(n, "pca256 k=30 capped to 12", exact)
        capped = cluster_scale.graph_neighbours
        cluster_scale.graph_neighbours = lambda knn, n, c: min(knn, n - 1)
        row(n, "pca256 k=30 uncapped", exact)
        cluster_scale.graph_neighbours = capped
