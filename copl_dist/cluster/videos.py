"""One entry point for a run's clustering: the exact dense path for moderate N, the scale path above."""

from __future__ import annotations

import numpy as np

from copl_dist.cluster import scale
from copl_dist.cluster.exact import (
    check_features,
    gaussian_affinity,
    plri_scores,
    plri_split,
    spectral_clustering,
)


def cluster_videos(
    F: np.ndarray,
    n_clusters: int,
    seed: int,
    delta: float,
    plri: bool = True,
    *,
    exact_max_n: int = 10000,
    knn: int = 30,
    knn_pca: int = -1,
    backend: str = "auto",
    scale_affinity: str = "knn",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global features (N, D) -> (labels (N,) int64, PLRI scores (N,), pseudo-label mask (N,) bool).

    plri=False (ablation "w/o PLRI") pseudo-labels every video; the scores are still returned.
    ValueError if n_clusters > N. N <= exact_max_n (cfg.cluster.exact_max_n): this module's exact
    dense path (`exact`); above it, scale.cluster_videos_scale (no N x N matrix) with
    affinity=scale_affinity ('knn' or 'nystrom'; the kNN graph takes `knn` neighbours from the
    `backend` kNN search on the top `knn_pca` principal components, cfg.cluster.knn / knn_pca).
    """
    arr = np.asarray(F)
    if arr.ndim == 2 and arr.shape[0] > exact_max_n:
        return scale.cluster_videos_scale(
            arr, n_clusters, seed, delta, plri, knn=knn, knn_pca=knn_pca, backend=backend, affinity=scale_affinity
        )
    X = check_features(arr)
    if isinstance(n_clusters, (int, np.integer)) and n_clusters > X.shape[0]:
        raise ValueError(f"n_clusters={n_clusters} exceeds the number of videos ({X.shape[0]})")
    W = gaussian_affinity(X)
    labels = spectral_clustering(W, n_clusters, seed)
    scores = plri_scores(W, labels)
    mask = plri_split(scores, delta) if plri else np.ones(X.shape[0], dtype=bool)
    return labels, scores, mask
