"""Seed stability of the scale path's k-means (KMEANS_N_INIT restarts, copl_dist/cluster/knobs.py): the labels of
seeds 0-3 compared pairwise (ARI), on the `copl bench cluster` features (N = 1,000, 2048 dims, 20
clusters, data seed 0), for the default kNN-graph path and the Nystrom path, with 10 and 50 restarts.

    PYTHONPATH=. python docs/bench/kmeans-seeds/seeds.py > docs/bench/kmeans-seeds/seeds.out
"""
import functools
import itertools
import warnings

from sklearn.metrics import adjusted_rand_score as ari

from copl_dist.cluster import scale as cluster_scale
from copl_dist.bench.cluster import make_cluster_features
from copl_dist.cluster.scale import cluster_videos_scale

warnings.simplefilter("ignore")
X, _ = make_cluster_features(1000, 2048, n_clusters=20, seed=0)
kmeans = cluster_scale.kmeans
for affinity in ("knn", "nystrom"):
    for n_init in (10, 50):
        cluster_scale.kmeans = functools.partial(kmeans, n_init=n_init)
        labels = [cluster_videos_scale(X, 20, seed, 0.0, affinity=affinity, plri=False)[0] for seed in range(4)]
        pairs = [ari(a, b) for a, b in itertools.combinations(labels, 2)]
        print(f"{affinity:8s} n_init {n_init}: pairwise ARI between seeds 0-3 min {min(pairs):.3f} mean {sum(pairs) / len(pairs):.3f}")
