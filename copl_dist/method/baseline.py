"""The plain baseline: no network at all.

Videos are clustered by their mean features (COPL's iteration 0); a test video joins the cluster of
the nearest centroid; a snippet's actionness is its novelty, the distance of its feature from the
video's mean feature (background dominates the mean, so what differs from it is likely action).
"""

from __future__ import annotations

import numpy as np


def novelty(features: np.ndarray) -> np.ndarray:
    """(T,) distance of each snippet from the video's mean feature, min-max scaled to [0, 1]."""
    x = np.asarray(features, dtype=np.float64)
    d = np.linalg.norm(x - x.mean(axis=0, keepdims=True), axis=1)
    span = d.max() - d.min()
    return (d - d.min()) / span if span > 0 else np.zeros_like(d)


def cluster_centroids(global_features: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """(n_clusters, D) L2-normalised centroids; an empty cluster gets a zero row (never nearest)."""
    centroids = np.zeros((n_clusters, global_features.shape[1]))
    for c in range(n_clusters):
        members = global_features[labels == c]
        if len(members):
            mean = members.mean(axis=0)
            centroids[c] = mean / max(np.linalg.norm(mean), 1e-12)
    return centroids


def assign_to_centroids(global_features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(N,) index of the most cosine-similar centroid for each (L2-normalised) feature."""
    return np.argmax(global_features @ centroids.T, axis=1)
