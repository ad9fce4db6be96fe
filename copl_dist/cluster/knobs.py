"""The scale path's shared knobs and helpers: one place for the defaults of the kNN graph, k-means and
PLRI at scale, the random streams of one seed, and the small helpers that `scale`, `knn` and
`plri_scale` all use."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

# Default knobs of the scale path (documented where they are used).
KNN_FLAT_MAX_N = 50_000  # FAISS on CPU: exact IndexFlatL2 up to this N, PCA + HNSW above
PCA_DIM = 256  # the most principal components the kNN graph is built on (features of more dims only)
PCA_MIN_DIM = 32  # ... and the fewest, where knn_pca = -1 asks for twice the clusters (scale.graph_dims)
PCA_TRAIN_MAX = 10_000  # rows the PCA is fitted on
# IVF lists: 2 sqrt(N) (632 at N = 100,000), 4 of them probed: about 2,000 candidates per video at
# N = 1,000,000. The graph needs neighbours in the right cluster more than the nearest ones: at
# recall@30 0.37 there the clustering's ARI was 0.999 (docs/scale.md).
IVF_LISTS_PER_SQRT_N = 2
IVF_TRAIN_PER_LIST = 40  # rows the IVF quantizer is trained on, per list
IVF_NPROBE = 4
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
SEARCH_BLOCK_ROWS = 65_536  # queries per approximate kNN search call (bounds its result arrays)
RERANK_FACTOR = 2  # the approximate index returns RERANK_FACTOR * k candidates, re-ranked exactly
SIGMA_SAMPLE = 4096
NYSTROM_LANDMARKS = 1000  # landmarks of the Nystroem approximation of the full kernel
NYSTROM_RCOND = 1e-6  # landmark-kernel eigenvalues below this * the largest are dropped
SPECTRAL_REG = 0.1  # uniform term: tau = SPECTRAL_REG * mean degree (see spectral_embedding)
# k-means restarts at scale: fewer than the dense path's 50 (exact.KMEANS_N_INIT), since FAISS
# Lloyd steps on the small (N, C) spectral embedding from k-means++ seeds settle the same way on
# it: seeds 0-3 agree at ARI 1.000 with 10 restarts on both the knn and nystrom paths
# (docs/bench/kmeans-seeds/, N = 1,000, the benchmark's features).
KMEANS_N_INIT = 10
KMEANS_NITER = 50
KMEANS_SAMPLE = 100_000  # rows the restarts run on, above it (scale._kmeans_restarts) ...
KMEANS_FINAL_NITER = 10  # ... and Lloyd iterations of the best restart on all rows
KMEANS_ONE_THREAD_MAX = 4_000_000  # N * dims up to which FAISS k-means runs on one thread
PLRI_EXACT_MAX_N = 20_000  # "auto" PLRI: exact blocked sums up to this N, per-cluster samples above
PLRI_SAMPLE = 32  # members sampled per cluster in the first stage (cost N C m D; see plri_scores_sampled)
PLRI_REFINE_Z = 3.0  # refine every video with |s_i - delta| <= z * se(s_i)
# Members per cluster of the refinement stages before the one over all members (plri_scores_sampled):
# at N = 1,000,000 the first stage (32 members) left 63,210 videos borderline, 1,024 members 12,965
# of them, 8,192 members 4,349, computed from all members of the clusters that can matter
# (docs/scale.md).
PLRI_REFINE_SAMPLES = (1024, 8192)
PLRI_REFINE_MAX_FRAC = 0.1  # at most this fraction of the videos re-computed exactly (closest to delta first)
BLOCK_BYTES = 1 << 27  # 128 MB working block for the blocked kernels

# Independent random streams of one seed.
STREAM_SIGMA, STREAM_EIGEN, STREAM_KMEANS, STREAM_PLRI, STREAM_PCA, STREAM_LANDMARKS = range(6)


@contextmanager
def stage(info: dict[str, Any], name: str) -> Iterator[None]:
    """Record a stage's seconds in info["seconds"][name] and its (name, start, end) perf_counter
    interval in info["intervals"] (the benchmark maps memory samples to stages with them)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        t1 = time.perf_counter()
        info.setdefault("seconds", {})[name] = info.get("seconds", {}).get(name, 0.0) + (t1 - t0)
        info.setdefault("intervals", []).append((name, t0, t1))


def stream_rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, stream])


def as_features32(F: Any) -> np.ndarray:
    """(N, D) float32, C-contiguous, finite. float32 halves the memory of the big arrays; the
    kernel's rounding error from it is about 1e-7 relative (see plri_scores_sampled)."""
    arr = np.ascontiguousarray(F, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (N, D) array, got shape {arr.shape}")
    for s in range(0, arr.shape[0], 65536):
        if not np.all(np.isfinite(arr[s : s + 65536])):
            raise ValueError("features contain NaN or Inf")
    return arr


def block_rows(n_cols: int, itemsize: int = 8, budget: int = BLOCK_BYTES) -> int:
    return max(1, budget // max(1, n_cols * itemsize))


# --------------------------------------------------------------------------------------------
# FAISS, when installed (kNN back ends in knn.py, k-means here)


def faiss_or_none():
    try:
        import faiss  # noqa: PLC0415
    except ImportError:
        return None
    return faiss


def kernel_rows(
    Xr: np.ndarray, sq_r: np.ndarray, Xc: np.ndarray, sq_c: np.ndarray, sigma: float, same: np.ndarray | None
) -> np.ndarray:
    """Full Gaussian kernel between row and column sets (float64 out). `same`: (r, c) positions where
    row and column are the same video; their distance is set to exactly 0 (w = 1), as the dense
    path's zero diagonal."""
    g = Xr @ Xc.T
    d2 = sq_r[:, None].astype(np.float64) + sq_c[None, :].astype(np.float64) - 2.0 * g.astype(np.float64)
    np.maximum(d2, 0.0, out=d2)
    if same is not None:
        d2[same] = 0.0
    if sigma == 0.0:
        return np.ones_like(d2)
    return np.exp(d2 * (-1.0 / (2.0 * sigma * sigma)))


def torch_cuda() -> bool:
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
