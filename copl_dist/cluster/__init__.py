"""Video clustering: the exact spectral + PLRI path, the scale path (PCA, kNN, eigsh, k-means, sampled PLRI) with its knobs, and cluster naming."""
