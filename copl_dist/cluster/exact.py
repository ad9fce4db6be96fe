"""Video clustering: Gaussian affinity, spectral clustering and PLRI (paper §3.3, Eqs. 6-10).

Pure numpy/scikit-learn functions on the (N, D) global features of N videos. This is the exact
O(N^2) path; above `exact_max_n` videos cluster_videos hands over to cluster/scale.py.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.cluster import spectral_clustering as _sk_spectral_clustering

# k-means restarts on the spectral embedding; fixed so that a seed fully determines the labels.
# On overlapping clusters 10 restarts left the result seed-dependent (4 seeds on 1,000 videos in 20
# clusters: pairwise ARI down to 0.82); 50 found the same partition (>= 0.995) for < 1 s more there.
KMEANS_N_INIT = 50


def check_features(F: np.ndarray) -> np.ndarray:
    arr = np.asarray(F, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (N, D) array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("features contain NaN or Inf")
    return arr


def _check_affinity(W: np.ndarray) -> np.ndarray:
    arr = np.asarray(W, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] == 0:
        raise ValueError(f"affinity must be a non-empty square (N, N) matrix, got shape {arr.shape}")
    return arr


def pairwise_distances(F: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, N) Euclidean distances, symmetric with exact zeros on the diagonal.

    Uses |a|^2 + |b|^2 - 2ab (one matrix product); rounding can make that slightly negative for
    near-identical rows, so it is clipped at 0 before the square root.
    """
    X = check_features(F)
    sq = np.einsum("ij,ij->i", X, X)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (X @ X.T)
    d2 = (d2 + d2.T) / 2  # exact symmetry despite rounding
    np.maximum(d2, 0.0, out=d2)
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(d2)


def gaussian_affinity(F: np.ndarray) -> np.ndarray:
    """w_ij = exp(-d_ij^2 / (2 sigma^2)), sigma = (1/N^2) sum_ij d_ij (diagonal zeros included).

    w_ii = 1. If every video has the same feature (sigma = 0) all affinities are 1.
    """
    d = pairwise_distances(F)
    sigma = float(d.mean())
    if sigma == 0.0:
        return np.ones_like(d)
    W = np.exp(-(d**2) / (2.0 * sigma**2))
    np.fill_diagonal(W, 1.0)
    return W


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Relabel clusters 0, 1, ... in order of first appearance (label names carry no meaning)."""
    arr = np.asarray(labels)
    _, first, inverse = np.unique(arr, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def check_n_clusters(n_clusters: int, n: int) -> None:
    """n_clusters must be a positive integer no larger than the number of videos."""
    if not isinstance(n_clusters, (int, np.integer)) or n_clusters < 1:
        raise ValueError(f"n_clusters must be a positive integer, got {n_clusters!r}")
    if n_clusters > n:
        raise ValueError(f"n_clusters={n_clusters} exceeds the number of videos ({n})")


def spectral_clustering(W: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """Spectral clustering of a precomputed affinity into n_clusters, as in [10].

    scikit-learn's `spectral_clustering`: the top eigenvectors x of the normalised Laplacian,
    rescaled to u = D^-1/2 x (the random-walk / Shi-Malik embedding), then k-means on u with no row
    normalisation, so not Ng-Jordan-Weiss (the scale path, scale.spectral_labels, is NJW:
    it normalises the rows to unit length). random_state=seed and n_init=KMEANS_N_INIT, so the
    labels are deterministic for a seed; they are relabelled in order of first appearance. (N,) int64.
    """
    A = _check_affinity(W)
    n = A.shape[0]
    check_n_clusters(n_clusters, n)
    if n_clusters == 1:
        return np.zeros(n, dtype=np.int64)
    if n_clusters == n:
        # One video per cluster is the only partition into N non-empty clusters.
        return np.arange(n, dtype=np.int64)
    with warnings.catch_warnings():
        # A near-disconnected graph is fine here: its components are exactly the clusters we want.
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        labels = _sk_spectral_clustering(
            A,
            n_clusters=int(n_clusters),
            random_state=int(seed),
            n_init=KMEANS_N_INIT,
            assign_labels="kmeans",
        )
    return canonical_labels(labels)


def plri_scores(W: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Eqs. 6-8 with similarities: silhouette-style confidence of each video's cluster.

    a_i = mean w_ij over the other members of i's cluster (Eq. 6, divided by |Y_I| - 1 as in the
    silhouette [34]); b_i = max over other clusters J of mean_{j in J} w_ij (Eq. 7: with
    similarities the nearest cluster is the most similar one, hence max, see METHOD.md);
    s_i = (a_i - b_i) / max(a_i, b_i) (Eq. 8). A singleton cluster, a single cluster overall, or
    max(a_i, b_i) = 0 gives s_i = 0 (undefined, as in scikit-learn's silhouette). O(N^2 C).
    """
    A = _check_affinity(W)
    n = A.shape[0]
    lab = np.asarray(labels)
    if lab.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {lab.shape}")
    _, idx = np.unique(lab, return_inverse=True)
    idx = idx.reshape(-1)
    m = int(idx.max()) + 1
    onehot = np.zeros((n, m), dtype=np.float64)
    onehot[np.arange(n), idx] = 1.0
    counts = onehot.sum(axis=0)  # (m,)
    sums = A @ onehot  # (N, m): sum of w_ij over each cluster
    own_size = counts[idx]
    own_sum = sums[np.arange(n), idx] - np.diag(A)  # exclude w_ii
    scores = np.zeros(n, dtype=np.float64)
    if m < 2:
        return scores
    with np.errstate(divide="ignore", invalid="ignore"):
        a = own_sum / (own_size - 1)
    means = sums / counts[None, :]
    means[np.arange(n), idx] = -np.inf
    b = means.max(axis=1)
    denom = np.maximum(a, b)
    ok = (own_size > 1) & (denom > 0)
    scores[ok] = (a[ok] - b[ok]) / denom[ok]
    return scores


def plri_split(scores: np.ndarray, delta: float) -> np.ndarray:
    """Eqs. 9-10: True for the pseudo-labelled set P (s_i >= delta), False for U."""
    return np.asarray(scores) >= delta
