"""Video clustering at scale: spectral clustering and PLRI without an N x N matrix.

The exact path in `cluster.py` holds several dense (N, N) float64 matrices (0.8 GB each at N = 10,000,
80 GB at N = 100,000). This module computes the same quantities (paper §3.3, Eqs. 6-10) in
O(N m) memory (m landmarks or k neighbours):

1. sigma = the mean pairwise distance, estimated on a random sample (`estimate_sigma`), with the
   dense path's convention (the mean over all N^2 ordered pairs, the N zero self-distances included).
2. The spectral embedding, two ways (`cluster_videos_scale(affinity=...)`):
   - 'nystrom' (default): `nystrom_embedding`, a landmark (Nystroem) approximation of the *full*
     Gaussian kernel, which is what the dense path clusters; k-means on it as the dense path does.
   - 'knn': the k-nearest-neighbour graph (`knn_search`: FAISS flat exact index for moderate N,
     PCA + IVF-Flat (or HNSW) with exact re-ranking for large N, on GPUs when FAISS sees any; or a
     blocked torch matmul + top-k on CUDA), the Gaussian kernel on its edges
     (`sparse_gaussian_affinity`, symmetric, zero diagonal), the top eigenvectors of the
     normalised adjacency D^-1/2 W D^-1/2 by scipy's `eigsh` with a small uniform term that
     connects the graph (`spectral_embedding`), k-means on the row-normalised embedding (NJW).
   Why two: sigma = the mean pairwise distance makes the kernel wide, so the dense path's clusters
   come from every pair's weight; a kNN graph keeps only local structure and, where clusters
   overlap, parts from the dense path (N = 5,000, 20 clusters, a quarter overlapping: ARI 0.94 and
   96.3% same P/U side against the exact path, where Nystroem gave 1.000 and 99.98%).
3. k-means: FAISS Lloyd iterations from greedy k-means++ seeds, best of 10, seeded.
4. PLRI (`plri_scores_blocked`, `plri_scores_sampled`): cohesion a_i and separation b_i are means of
   the *full* Gaussian kernel (every pair, as in the dense path, not only the graph's edges), so
   they are computed from the features: exactly in row blocks (O(block * N) memory, O(N^2 D) time)
   or from per-cluster random samples with a standard error per video, re-computing exactly the
   videos whose P/U side the sampling error could flip.

Labels are canonical (clusters numbered in order of first appearance), as in `cluster.py`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import LinearOperator, eigsh
from threadpoolctl import threadpool_limits

# Default knobs of the scale path (documented where they are used).
KNN_FLAT_MAX_N = 50_000  # FAISS on CPU: exact IndexFlatL2 up to this N, PCA + HNSW above
PCA_DIM = 256  # PCA target dimension for the approximate kNN (features of more dims only)
PCA_TRAIN_MAX = 10_000  # rows the PCA is fitted on
IVF_LISTS_PER_SQRT_N = 4  # IVF lists: 4 sqrt(N) (1264 at N = 100,000)
IVF_TRAIN_PER_LIST = 40  # rows the IVF quantizer is trained on, per list
IVF_NPROBE = 16
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
RERANK_FACTOR = 2  # the approximate index returns RERANK_FACTOR * k candidates, re-ranked exactly
SIGMA_SAMPLE = 4096
NYSTROM_LANDMARKS = 1000  # landmarks of the Nystroem approximation of the full kernel
NYSTROM_RCOND = 1e-6  # landmark-kernel eigenvalues below this * the largest are dropped
SPECTRAL_REG = 0.1  # uniform term: tau = SPECTRAL_REG * mean degree (see spectral_embedding)
KMEANS_N_INIT = 10  # as cluster.KMEANS_N_INIT
KMEANS_NITER = 50
KMEANS_ONE_THREAD_MAX = 4_000_000  # N * dims up to which FAISS k-means runs on one thread
PLRI_EXACT_MAX_N = 20_000  # "auto" PLRI: exact blocked sums up to this N, per-cluster samples above
PLRI_SAMPLE = 128  # members sampled per cluster (cost N C m D; see plri_scores_sampled)
PLRI_REFINE_Z = 3.0  # re-compute exactly every video with |s_i - delta| <= z * se(s_i)
PLRI_REFINE_MAX_FRAC = 0.1  # ... but at most this fraction of the videos (closest to delta first)
BLOCK_BYTES = 1 << 27  # 128 MB working block for the blocked kernels

# Independent random streams of one seed.
_STREAM_SIGMA, _STREAM_EIGEN, _STREAM_KMEANS, _STREAM_PLRI, _STREAM_PCA, _STREAM_LANDMARKS = range(6)


@contextmanager
def _stage(info: dict[str, Any], name: str) -> Iterator[None]:
    """Record a stage's seconds in info["seconds"][name] and its (name, start, end) perf_counter
    interval in info["intervals"] (the benchmark maps memory samples to stages with them)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        t1 = time.perf_counter()
        info.setdefault("seconds", {})[name] = info.get("seconds", {}).get(name, 0.0) + (t1 - t0)
        info.setdefault("intervals", []).append((name, t0, t1))


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, stream])


def _as_features32(F: Any) -> np.ndarray:
    """(N, D) float32, C-contiguous, finite. float32 halves the memory of the big arrays; the
    kernel's rounding error from it is about 1e-7 relative (see plri_scores_sampled)."""
    arr = np.ascontiguousarray(F, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (N, D) array, got shape {arr.shape}")
    for s in range(0, arr.shape[0], 65536):
        if not np.all(np.isfinite(arr[s : s + 65536])):
            raise ValueError("features contain NaN or Inf")
    return arr


def _block_rows(n_cols: int, itemsize: int = 8, budget: int = BLOCK_BYTES) -> int:
    return max(1, budget // max(1, n_cols * itemsize))


# --------------------------------------------------------------------------------------------
# kNN back ends


def _faiss():
    try:
        import faiss  # noqa: PLC0415
    except ImportError:
        return None
    return faiss


def _torch_cuda() -> bool:
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_backend(backend: str = "auto") -> str:
    """'auto' -> 'faiss' when FAISS sees a GPU; else 'torch' when torch sees CUDA; else 'faiss' when
    FAISS is installed; else 'torch' (CPU). Explicit: 'faiss', 'torch', 'numpy' (float64 reference).
    'auto' imports torch to ask about CUDA (a few seconds the first time on a loaded machine)."""
    if backend not in ("auto", "faiss", "torch", "numpy"):
        raise ValueError(f"unknown kNN backend {backend!r}: expected auto, faiss, torch or numpy")
    if backend != "auto":
        if backend == "faiss" and _faiss() is None:
            raise ValueError("kNN backend 'faiss' requested but faiss is not installed")
        return backend
    faiss = _faiss()
    if faiss is not None and faiss.get_num_gpus() > 0:
        return "faiss"
    if _torch_cuda():
        return "torch"
    return "faiss" if faiss is not None else "torch"


def _drop_self(dist: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, k+1) results of a self-search -> (N, k) without the query itself.

    A row may miss itself (an exact duplicate of the query tied with it, or an approximate index):
    then its last (farthest) entry is dropped instead.
    """
    n = idx.shape[0]
    drop = idx == np.arange(n)[:, None]
    missing = ~drop.any(axis=1)
    drop[missing, -1] = True
    keep = ~drop
    return dist[keep].reshape(n, k), idx[keep].reshape(n, k)


def _exact_rerank(X: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidates (N, kk) -> the k nearest of them by exact distance in X's space, ascending.

    Distances from differences (not the |a|^2 + |b|^2 - 2ab expansion: no cancellation error), by
    FAISS's fvec_L2sqr_by_idx when installed (C++, no gathered copy: 0.5 s where a numpy gather
    took 5.3 s for 20,000 x 61 candidates at 2048 dims), else numpy in blocks. Invalid candidates
    (-1) and the query itself get +inf; a row left with fewer than k valid candidates is searched
    exactly.
    """
    n, kk = cand.shape
    rows_ix = np.arange(n)[:, None]
    bad = (cand < 0) | (cand == rows_ix)
    safe = np.ascontiguousarray(np.where(cand < 0, rows_ix, cand), dtype=np.int64)
    faiss = _faiss()
    if faiss is not None:
        d2 = np.empty((n, kk), dtype=np.float32)
        faiss.fvec_L2sqr_by_idx(faiss.swig_ptr(d2), faiss.swig_ptr(X), faiss.swig_ptr(X), faiss.swig_ptr(safe), X.shape[1], n, kk)
        dist = np.sqrt(np.maximum(d2, 0.0))
    else:
        dist = np.empty((n, kk), dtype=np.float32)
        step = _block_rows(kk * X.shape[1], 4, BLOCK_BYTES // 2)
        for s in range(0, n, step):
            e = min(n, s + step)
            diff = X[safe[s:e]] - X[s:e, None, :]
            dist[s:e] = np.sqrt(np.einsum("bkd,bkd->bk", diff, diff))
    dist[bad] = np.inf
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    dist, idx = np.take_along_axis(dist, order, 1), np.take_along_axis(safe, order, 1)
    short = np.nonzero(~np.isfinite(dist).all(axis=1))[0]
    if len(short):
        X64 = X.astype(np.float64)
        sq = np.einsum("ij,ij->i", X64, X64)
        d2 = sq[short, None] + sq[None, :] - 2.0 * (X64[short] @ X64.T)
        d2[np.arange(len(short)), short] = np.inf
        part = np.argsort(d2, axis=1, kind="stable")[:, :k]
        idx[short] = part
        dist[short] = np.linalg.norm(X[part] - X[short, None, :], axis=2)
    return dist, idx


def _pca(X: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Project onto the top `dim` principal components, fitted on at most PCA_TRAIN_MAX random rows
    (float64 covariance, scipy's eigh for the top eigenvectors only). (N, dim) float32.

    numpy rather than faiss.PCAMatrix: its training took 99 s on 20,000 x 2048 here, this 5 s."""
    from scipy.linalg import eigh  # noqa: PLC0415

    n, d = X.shape
    rows = np.arange(n) if n <= PCA_TRAIN_MAX else np.sort(_rng(seed, _STREAM_PCA).choice(n, PCA_TRAIN_MAX, replace=False))
    S = X[rows].astype(np.float64)
    mu = S.mean(axis=0)
    S -= mu
    cov = S.T @ S
    _, V = eigh(cov, subset_by_index=[d - dim, d - 1], driver="evr")
    V = np.ascontiguousarray(V[:, ::-1], dtype=np.float32)
    Y = np.empty((n, dim), dtype=np.float32)
    step = _block_rows(d, 4)
    mu32 = mu.astype(np.float32)
    for s in range(0, n, step):
        Y[s : s + step] = (X[s : s + step] - mu32) @ V
    return Y


def _knn_numpy(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force in float64, blocked: the reference the others are tested against."""
    X64 = X.astype(np.float64)
    n = X64.shape[0]
    sq = np.einsum("ij,ij->i", X64, X64)
    dist = np.empty((n, k), dtype=np.float32)
    idx = np.empty((n, k), dtype=np.int64)
    rows = _block_rows(n)
    for s in range(0, n, rows):
        e = min(n, s + rows)
        d2 = sq[s:e, None] + sq[None, :] - 2.0 * (X64[s:e] @ X64.T)
        np.maximum(d2, 0.0, out=d2)
        d2[np.arange(e - s), np.arange(s, e)] = np.inf
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]
        pd = np.take_along_axis(d2, part, 1)
        order = np.lexsort((part, pd), axis=1)  # by distance, ties by index
        idx[s:e] = np.take_along_axis(part, order, 1)
        dist[s:e] = np.sqrt(np.take_along_axis(pd, order, 1))
    return dist, idx


def _knn_torch(X: np.ndarray, k: int, device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN by blocked matmul + top-k in torch, on CUDA when available (float32)."""
    import torch  # noqa: PLC0415

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n = X.shape[0]
    Xt = torch.from_numpy(X).to(dev)
    sq = (Xt * Xt).sum(1)
    dist = np.empty((n, k), dtype=np.float32)
    idx = np.empty((n, k), dtype=np.int64)
    budget = (1 << 30) if dev.type == "cuda" else BLOCK_BYTES
    rows = _block_rows(n, 4, budget)
    with torch.no_grad():
        for s in range(0, n, rows):
            e = min(n, s + rows)
            d2 = sq[s:e, None] + sq[None, :] - 2.0 * (Xt[s:e] @ Xt.T)
            d2.clamp_(min=0.0)
            ar = torch.arange(e - s, device=dev)
            d2[ar, ar + s] = float("inf")
            _, ids = torch.topk(d2, k, dim=1, largest=False, sorted=True)
            del d2
            # Distances of the chosen pairs from differences: the expansion above loses about
            # sqrt(1e-7) |x| to cancellation near 0 (0.0014 for identical unit vectors).
            vals = torch.empty(ids.shape, dtype=Xt.dtype, device=dev)
            sub = _block_rows(k * X.shape[1], 4, budget // 2)
            for a in range(0, e - s, sub):
                b = min(e - s, a + sub)
                diff = Xt[ids[a:b]] - Xt[s + a : s + b, None, :]
                vals[a:b] = torch.linalg.vector_norm(diff, dim=2)
            vals, order = torch.sort(vals, dim=1, stable=True)
            dist[s:e] = vals.cpu().numpy()
            idx[s:e] = torch.gather(ids, 1, order).cpu().numpy()
    return dist, idx


def _knn_faiss(
    X: np.ndarray, k: int, flat_max_n: int, pca_dim: int, approx: str, seed: int, info: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    faiss = _faiss()
    n, d = X.shape
    gpus = faiss.get_num_gpus()
    if n <= flat_max_n:
        index = faiss.IndexFlatL2(d)
        if gpus > 0:
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(X)
        d2, idx = index.search(X, k + 1)
        info["knn_index"] = f"faiss IndexFlatL2 (exact){' on %d GPU(s)' % gpus if gpus else ''}"
        _, idx = _drop_self(d2, idx.astype(np.int64), k)
        # FAISS's distances come from the |a|^2 + |b|^2 - 2ab expansion in float32; recompute the
        # chosen pairs from differences (and re-sort) as the torch back end does.
        return _exact_rerank(X, idx, k)

    # Approximate: (PCA to pca_dim) + IVF-Flat (CPU or all GPUs) or HNSW (CPU), RERANK_FACTOR * k
    # candidates re-ranked by the exact distance in the original space.
    kk = min(n - 1, RERANK_FACTOR * k) + 1
    Y = X
    desc = []
    if d > pca_dim:
        Y = _pca(X, pca_dim, seed)
        desc.append(f"PCA {d}->{pca_dim}")
    dy = Y.shape[1]
    if approx == "hnsw" and gpus == 0:
        index = faiss.IndexHNSWFlat(dy, HNSW_M)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.add(Y)
        index.hnsw.efSearch = max(2 * kk, 64)
        desc.append(f"HNSW{HNSW_M} efSearch {index.hnsw.efSearch}")
    else:
        nlist = max(1, min(int(IVF_LISTS_PER_SQRT_N * math.sqrt(n)), n // 39))  # FAISS wants >= 39 rows a list
        quantizer = faiss.IndexFlatL2(dy)
        index = faiss.IndexIVFFlat(quantizer, dy, nlist)
        ntrain = min(n, IVF_TRAIN_PER_LIST * nlist)
        index.train(Y if ntrain == n else Y[np.sort(_rng(seed, _STREAM_PCA + 100).choice(n, ntrain, replace=False))])
        if gpus > 0:
            index = faiss.index_cpu_to_all_gpus(index)
            index.add(Y)
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", IVF_NPROBE)
        else:
            index.add(Y)
            index.nprobe = IVF_NPROBE
        desc.append(f"IVF{nlist},Flat nprobe {IVF_NPROBE}" + (f" on {gpus} GPU(s)" if gpus else ""))
    _, cand = index.search(Y, kk)
    desc.append(f"{kk - 1} candidates re-ranked exactly")
    info["knn_index"] = "faiss " + ", ".join(desc)
    return _exact_rerank(X, cand.astype(np.int64), k)


def knn_search(
    F: Any,
    k: int,
    backend: str = "auto",
    *,
    flat_max_n: int = KNN_FLAT_MAX_N,
    pca_dim: int = PCA_DIM,
    approx: str = "ivf",
    seed: int = 0,
    info: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest neighbours of every row of F among the other rows (self excluded).

    Returns (distances (N, k) float32, Euclidean, ascending; indices (N, k) int64).
    Back ends (`resolve_backend`):
    - 'faiss': exact (IndexFlatL2, on all GPUs when FAISS sees any) up to `flat_max_n` rows; above,
      approximate: PCA to `pca_dim` dims (features with more dims; numpy, fitted on 10,000 rows),
      then IVF-Flat (4 sqrt(N) lists, nprobe 16; on all GPUs when FAISS sees any) or, with
      approx='hnsw' on CPU, HNSW32; 2k candidates are re-ranked by the exact distance in the
      original space. Recall@k (`knn_recall`): >= 0.95 without PCA on the tests' features; with
      PCA the recall is what the projection keeps of the within-cluster order: 2048->256 on the
      benchmark's features, whose within-cluster spread is isotropic noise, gave 0.72 at
      N = 20,000 and 0.53 at N = 100,000, while the clustering stayed at ARI 0.998 against the
      generating labels (the neighbours stay in the right cluster); `copl bench cluster` reports
      it per run. pca_dim >= D skips the projection (recall 0.96 at N = 20,000, 3.4x slower).
    - 'torch': exact, blocked matmul + top-k, on CUDA when available (the GPU check machine has
      torch but no FAISS).
    - 'numpy': exact in float64 (the reference of the tests).
    Distances of the returned pairs are always computed from differences (no cancellation).
    """
    X = _as_features32(F)
    n = X.shape[0]
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k >= n:
        raise ValueError(f"k={k} needs at least k + 1 = {k + 1} rows, got {n}")
    name = resolve_backend(backend)
    info = info if info is not None else {}
    info["knn_backend"] = name
    if name == "faiss":
        if approx not in ("ivf", "hnsw"):
            raise ValueError(f"approx must be 'ivf' or 'hnsw', got {approx!r}")
        return _knn_faiss(X, int(k), flat_max_n, pca_dim, approx, seed, info)
    if name == "torch":
        info["knn_index"] = "torch blocked matmul + top-k (exact)" + (" on CUDA" if _torch_cuda() else "")
        return _knn_torch(X, int(k))
    info["knn_index"] = "numpy brute force (exact, float64)"
    return _knn_numpy(X, int(k))


def knn_recall(F: Any, idx: np.ndarray, n_queries: int = 500, seed: int = 0) -> float:
    """recall@k of a kNN result against brute force on a random sample of query rows."""
    X = _as_features32(F)
    n, k = idx.shape
    q = np.sort(_rng(seed, 99).choice(n, min(n, n_queries), replace=False))
    X64 = X.astype(np.float64)
    d2 = np.einsum("ij,ij->i", X64[q], X64[q])[:, None] + np.einsum("ij,ij->i", X64, X64)[None, :] - 2.0 * (X64[q] @ X64.T)
    d2[np.arange(len(q)), q] = np.inf
    truth = np.argpartition(d2, k - 1, axis=1)[:, :k]
    hits = sum(len(np.intersect1d(truth[r], idx[i])) for r, i in enumerate(q))
    return hits / (len(q) * k)


# --------------------------------------------------------------------------------------------
# sigma and the sparse affinity


def mean_pairwise_distance(F: Any) -> float:
    """The dense path's sigma exactly, in row blocks: (1/N^2) sum_ij d_ij, O(N^2 D) time."""
    X = np.asarray(F, dtype=np.float64)
    n = X.shape[0]
    sq = np.einsum("ij,ij->i", X, X)
    total = 0.0
    rows = _block_rows(n)
    for s in range(0, n, rows):
        e = min(n, s + rows)
        d2 = sq[s:e, None] + sq[None, :] - 2.0 * (X[s:e] @ X.T)
        np.maximum(d2, 0.0, out=d2)
        d2[np.arange(e - s), np.arange(s, e)] = 0.0
        total += float(np.sqrt(d2).sum())
    return total / (n * n)


def estimate_sigma(F: Any, sample: int = SIGMA_SAMPLE, seed: int = 0) -> float:
    """sigma = mean pairwise distance with the dense path's convention (mean over all N^2 ordered
    pairs, zero self-distances included), from `sample` random rows.

    N <= sample: exact. Else the mean over the sample's distinct pairs (an unbiased U-statistic of
    the mean distance between distinct videos) times (N - 1) / N for the diagonal. Its error is
    measured in tests/test_cluster_scale.py: within 0.5% of the exact sigma at sample = 4096.
    """
    X = _as_features32(F)
    n = X.shape[0]
    if n <= sample:
        return mean_pairwise_distance(X)
    rows = np.sort(_rng(seed, _STREAM_SIGMA).choice(n, sample, replace=False))
    S = X[rows].astype(np.float64)
    off_diag_mean = mean_pairwise_distance(S) * sample / (sample - 1)
    return off_diag_mean * (n - 1) / n


def sparse_gaussian_affinity(dist: np.ndarray, idx: np.ndarray, sigma: float, symmetrize: str = "max") -> sp.csr_matrix:
    """kNN graph -> (N, N) csr float64 W with w_ij = exp(-d_ij^2 / (2 sigma^2)) on its edges.

    Symmetric: 'max' keeps an edge when either end has the other among its k nearest (the union of
    the two directions; w depends only on d_ij, so both directions carry the same weight and max is
    simply "the edge exists"); 'mean' halves one-directional edges. Zero diagonal (no self-loops),
    as in the dense path's spectral step (scipy's Laplacian ignores the diagonal of W); PLRI does not
    use this matrix (it uses the full kernel, with w_ii = 1 excluded as in cluster.plri_scores).
    sigma = 0 (all features equal) gives weights 1.
    """
    if symmetrize not in ("max", "mean"):
        raise ValueError(f"symmetrize must be 'max' or 'mean', got {symmetrize!r}")
    n, k = idx.shape
    d = np.asarray(dist, dtype=np.float64).ravel()
    w = np.ones_like(d) if sigma == 0.0 else np.exp(-(d**2) / (2.0 * float(sigma) ** 2))
    rows = np.repeat(np.arange(n), k)
    cols = np.asarray(idx, dtype=np.int64).ravel()
    ok = (cols >= 0) & (cols != rows)
    W = sp.csr_matrix((w[ok], (rows[ok], cols[ok])), shape=(n, n))
    W = W.maximum(W.T) if symmetrize == "max" else (W + W.T) * 0.5
    W = sp.csr_matrix(W)
    W.sort_indices()
    return W


# --------------------------------------------------------------------------------------------
# spectral embedding and k-means


def spectral_embedding(
    W: sp.spmatrix, n_components: int, seed: int, reg: float | None = None, info: dict[str, Any] | None = None
) -> np.ndarray:
    """The top `n_components` eigenvectors of the normalised adjacency D^-1/2 W_tau D^-1/2, (N, n_components).

    W_tau = W + (tau / N) 1 1^T with tau = reg * mean degree of W ("regularised spectral
    clustering", Amini et al. 2013 / Qin & Rohe 2013): a uniform term, never materialised (a rank-one
    update inside the LinearOperator), that connects every component of the kNN graph. Without it a
    kNN graph with more components than clusters puts an eigenvalue 1 on every small component and
    the embedding collapses onto them; with it a small isolated group gets an eigenvalue near
    1 / (1 + reg) instead. It also stands in for the dense kernel's far-field (every pair of videos
    has a weight there). Eigenvectors by ARPACK (`eigsh`, which='LA', seeded start vector), signs
    fixed so that each vector's largest-magnitude entry is positive (deterministic output).
    """
    n = W.shape[0]
    info = info if info is not None else {}
    n_cc, _ = connected_components(W, directed=False)
    info["graph_components"] = int(n_cc)
    info["graph_edges"] = int(W.nnz)
    deg = np.asarray(W.sum(axis=1)).ravel()
    tau = float(SPECTRAL_REG if reg is None else reg) * float(deg.mean())
    d_tau = deg + tau
    if np.any(d_tau <= 0):
        # Isolated vertices and no regulariser: give them a self-weight so D^-1/2 exists.
        d_tau = np.where(d_tau <= 0, 1.0, d_tau)
    inv_sqrt = 1.0 / np.sqrt(d_tau)
    Wc = sp.csr_matrix(W)

    def matmat(x: np.ndarray) -> np.ndarray:
        x2 = x.reshape(n, -1)
        y = inv_sqrt[:, None] * x2
        out = Wc @ y + (tau / n) * y.sum(axis=0, keepdims=True)
        return (inv_sqrt[:, None] * out).reshape(x.shape)

    op = LinearOperator((n, n), matvec=matmat, matmat=matmat, dtype=np.float64)
    k = int(n_components)
    v0 = _rng(seed, _STREAM_EIGEN).uniform(-1.0, 1.0, n)
    if k >= n - 1 or n <= 200:
        # ARPACK needs k < N - 1; small problems go through the dense eigensolver.
        M = matmat(np.eye(n))
        with threadpool_limits(1):
            vals, vecs = np.linalg.eigh((M + M.T) / 2)
        vals, vecs = vals[::-1][:k], vecs[:, ::-1][:, :k]
    else:
        ncv = min(n - 1, max(2 * k + 1, 4 * k, 40))
        vals, vecs = eigsh(op, k=k, which="LA", v0=v0, ncv=ncv, tol=1e-8, maxiter=max(1000, 20 * n))
        order = np.argsort(-vals)
        vals, vecs = vals[order], vecs[:, order]
    info["eigenvalues"] = [float(v) for v in vals]
    info["spectral_tau"] = tau
    return _fix_signs(vecs)


def _fix_signs(vecs: np.ndarray) -> np.ndarray:
    """Each column's largest-magnitude entry made positive: deterministic eigenvector signs."""
    pivot = np.argmax(np.abs(vecs), axis=0)
    signs = np.sign(vecs[pivot, np.arange(vecs.shape[1])])
    signs[signs == 0] = 1.0
    return vecs * signs


def nystrom_embedding(
    F: Any, n_components: int, sigma: float, seed: int, landmarks: int = NYSTROM_LANDMARKS, info: dict[str, Any] | None = None
) -> np.ndarray:
    """The dense path's spectral embedding from a Nystroem approximation of the *full* Gaussian kernel.

    m random landmarks L: W ~ Z Z^T with Z = K(X, L) K(L, L)^-1/2 ((N, r), r <= m after dropping
    the landmark kernel's eigenvalues under NYSTROM_RCOND * the largest). Degrees d = Z (Z^T 1) minus
    the self-weights |Z_i|^2 (scipy's Laplacian, used by the dense path, ignores W's diagonal).
    With Q = D^-1/2 Z, the top eigenvectors of D^-1/2 W D^-1/2 = Q Q^T are U = Q V S^-1/2 from the
    (r, r) eigenproblem Q^T Q = V S V^T (Fowlkes et al. 2004, one-shot). Returned as scikit-learn's
    spectral_embedding returns it, U / sqrt(d) (the dense path's k-means input), (N, n_components).

    Why: with sigma = the mean pairwise distance the kernel is wide (a typical pair weighs about
    exp(-1/2)); the dense path's clusters come from the far field of every row, which a kNN graph
    drops. The kernel is smooth, hence numerically low-rank, and m = 1000 landmarks reproduce the
    dense path's labels (ARI 0.999 on the overlapping 20-cluster test set, where the kNN graph gave
    0.94). Memory O(N m), time O(N m D + N m^2). The two (m, m) eigenproblems run on one BLAS thread:
    on a loaded 2-core machine a 1000 x 1000 eigh took 9.4 s with two OpenBLAS threads, 0.4 s with one.
    """
    X = _as_features32(F)
    n = X.shape[0]
    info = info if info is not None else {}
    m = min(n, int(landmarks))
    land = np.arange(n) if m == n else np.sort(_rng(seed, _STREAM_LANDMARKS).choice(n, m, replace=False))
    sq = np.einsum("ij,ij->i", X, X)
    XL, sqL = X[land], sq[land]
    K = _kernel_rows(XL, sqL, XL, sqL, float(sigma), (np.arange(m), np.arange(m)))
    with threadpool_limits(1):  # see _small_eigh
        ev, V = np.linalg.eigh((K + K.T) / 2)
    keep = ev > NYSTROM_RCOND * ev.max()
    Kih = V[:, keep] / np.sqrt(ev[keep])  # (m, r): K^+ = Kih Kih^T
    r = Kih.shape[1]
    pos = np.full(n, -1, dtype=np.int64)
    pos[land] = np.arange(m)
    Z = np.empty((n, r), dtype=np.float64)
    step = _block_rows(m, 8 * 3)
    for s in range(0, n, step):
        e = min(n, s + step)
        p = pos[s:e]
        hit = np.nonzero(p >= 0)[0]
        Z[s:e] = _kernel_rows(X[s:e], sq[s:e], XL, sqL, float(sigma), (hit, p[hit])) @ Kih
    d = Z @ Z.sum(axis=0) - np.einsum("ij,ij->i", Z, Z)
    d = np.maximum(d, np.finfo(np.float64).tiny)
    inv_sqrt = 1.0 / np.sqrt(d)
    Z *= inv_sqrt[:, None]  # Z is Q from here on
    G = Z.T @ Z
    with threadpool_limits(1):
        ev2, V2 = np.linalg.eigh(G)
    k = min(int(n_components), r)
    top = np.argsort(-ev2)[:k]
    U = (Z @ V2[:, top]) / np.sqrt(np.maximum(ev2[top], np.finfo(np.float64).tiny))
    info["eigenvalues"] = [float(v) for v in ev2[top]]
    info["nystrom_landmarks"] = m
    info["nystrom_rank"] = r
    return _fix_signs(U * inv_sqrt[:, None])


def _kmeans_pp(X: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding (as scikit-learn's: 2 + ln k candidates per step, the one that lowers
    the potential most is kept). (k, d) float32."""
    n = X.shape[0]
    n_local = 2 + int(np.log(k))
    X64 = X.astype(np.float64)
    sq = np.einsum("ij,ij->i", X64, X64)
    centers = np.empty((k, X.shape[1]), dtype=np.float64)
    first = int(rng.integers(n))
    centers[0] = X64[first]
    closest = np.maximum(sq + sq[first] - 2.0 * (X64 @ X64[first]), 0.0)
    pot = closest.sum()
    for c in range(1, k):
        if pot <= 0:  # fewer distinct points than clusters: any remaining point will do
            centers[c] = X64[int(rng.integers(n))]
            continue
        cand = np.searchsorted(np.cumsum(closest), rng.uniform(size=n_local) * pot)
        cand = np.minimum(cand, n - 1)
        d_c = np.maximum(sq[None, :] + sq[cand][:, None] - 2.0 * (X64[cand] @ X64.T), 0.0)
        new = np.minimum(closest[None, :], d_c)
        pots = new.sum(axis=1)
        best = int(np.argmin(pots))
        centers[c] = X64[cand[best]]
        closest, pot = new[best], pots[best]
    return centers.astype(np.float32)


def kmeans(X: np.ndarray, n_clusters: int, seed: int, n_init: int = KMEANS_N_INIT) -> np.ndarray:
    """Seeded k-means: `n_init` restarts from greedy k-means++ seeds, the lowest objective kept;
    Lloyd iterations by FAISS (on GPU when FAISS sees one), else scikit-learn. (N,) int64.

    FAISS's own initialisation (random rows) often lands two seeds in one cluster and none in
    another with 20 clusters, and ten restarts did not repair it (ARI 0.67 where scikit-learn's
    k-means++ gave 1.0 on the same embedding), hence the k-means++ seeds. FAISS's training set is not
    subsampled (max_points_per_centroid = N): the embedding has few dims, so all rows are cheap.
    Up to KMEANS_ONE_THREAD_MAX values FAISS runs on one OpenMP thread: tiny Lloyd steps are
    dominated by OpenMP barriers, and on a loaded 2-core machine 5000 x 20 took 12.8 s with two
    threads and 1.1 s with one.
    """
    X32 = np.ascontiguousarray(X, dtype=np.float32)
    n, d = X32.shape
    k = int(n_clusters)
    faiss = _faiss()
    if faiss is None:
        from sklearn.cluster import k_means  # noqa: PLC0415

        _, labels, _ = k_means(X32, k, random_state=int(seed) & 0x7FFFFFFF, n_init=n_init)
        return labels.astype(np.int64)
    rng = _rng(seed, _STREAM_KMEANS)
    best_obj, best_labels = np.inf, None
    threads = faiss.omp_get_max_threads()
    if n * d <= KMEANS_ONE_THREAD_MAX:
        faiss.omp_set_num_threads(1)
    try:
        best_obj, best_labels = _kmeans_restarts(faiss, X32, k, rng, int(n_init))
    finally:
        faiss.omp_set_num_threads(threads)
    return best_labels


def _kmeans_restarts(faiss: Any, X32: np.ndarray, k: int, rng: np.random.Generator, n_init: int) -> tuple[float, np.ndarray]:
    n, d = X32.shape
    best_obj, best_labels = np.inf, None
    for _ in range(n_init):
        init = _kmeans_pp(X32, k, rng)
        km = faiss.Kmeans(
            d, k, niter=KMEANS_NITER, nredo=1, seed=int(rng.integers(1, 2**31 - 1)),
            max_points_per_centroid=n, min_points_per_centroid=1, verbose=False, gpu=faiss.get_num_gpus() > 0,
        )
        km.train(X32, init_centroids=init)
        dist, labels = km.index.search(X32, 1)
        obj = float(dist.astype(np.float64).sum())
        if obj < best_obj:
            best_obj, best_labels = obj, labels.ravel().astype(np.int64)
    return best_obj, best_labels


def spectral_labels(W: sp.spmatrix, n_clusters: int, seed: int, info: dict[str, Any] | None = None) -> np.ndarray:
    """Ng-Jordan-Weiss on a sparse affinity: embedding, rows normalised to unit length, k-means;
    canonical labels."""
    from copl_dist.cluster import canonical_labels  # noqa: PLC0415

    info = info if info is not None else {}
    with _stage(info, "eigen"):
        U = spectral_embedding(W, n_clusters, seed, info=info)
        norms = np.linalg.norm(U, axis=1, keepdims=True)
        U = U / np.where(norms > 0, norms, 1.0)
    with _stage(info, "kmeans"):
        labels = kmeans(U, n_clusters, seed)
    return canonical_labels(labels)


# --------------------------------------------------------------------------------------------
# PLRI without the N x N matrix


def _kernel_rows(
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


def _scores_from_means(a: np.ndarray, means_other: np.ndarray, own_size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 8 with the dense path's conventions. means_other has -inf at the own cluster.
    Returns (scores, argmax cluster of b)."""
    b_arg = np.argmax(means_other, axis=1)
    b = means_other[np.arange(len(a)), b_arg]
    scores = np.zeros(len(a), dtype=np.float64)
    denom = np.maximum(a, b)
    ok = (own_size > 1) & (denom > 0) & np.isfinite(b)
    scores[ok] = (a[ok] - b[ok]) / denom[ok]
    return scores, b_arg


def _label_index(labels: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    lab = np.asarray(labels)
    if lab.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {lab.shape}")
    _, idx = np.unique(lab, return_inverse=True)
    idx = idx.reshape(-1).astype(np.int64)
    return idx, np.bincount(idx).astype(np.float64)


def plri_scores_blocked(
    F: Any, labels: Any, sigma: float, rows: np.ndarray | None = None, dtype: Any = np.float64, block_bytes: int = BLOCK_BYTES
) -> np.ndarray:
    """Exact PLRI (cluster.plri_scores on the full Gaussian kernel of bandwidth `sigma`) without the
    N x N matrix: blocks of rows x all columns, O(block * N) memory, O(N^2 D) time.

    `rows`: score only these videos (their a_i, b_i still run over all N). `dtype`: the Gram
    product's precision (float64 reproduces the dense path to about 1e-12; float32 is about twice
    as fast with kernel errors about 1e-7). Returns (len(rows),) or (N,) scores.
    """
    X = np.ascontiguousarray(F, dtype=dtype)
    n = X.shape[0]
    idx, counts = _label_index(labels, n)
    m = len(counts)
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.zeros(len(rows), dtype=np.float64)
    if m < 2:
        return out
    sq = np.einsum("ij,ij->i", X, X)
    onehot = np.zeros((n, m), dtype=np.float64)
    onehot[np.arange(n), idx] = 1.0
    step = _block_rows(n, 8 * 3, block_bytes)
    for s in range(0, len(rows), step):
        r = rows[s : s + step]
        same = (np.arange(len(r)), r)
        w = _kernel_rows(X[r], sq[r], X, sq, float(sigma), same)
        sums = w @ onehot  # (b, m)
        own = idx[r]
        own_size = counts[own]
        with np.errstate(divide="ignore", invalid="ignore"):
            a = (sums[np.arange(len(r)), own] - 1.0) / (own_size - 1)
        means = sums / counts[None, :]
        means[np.arange(len(r)), own] = -np.inf
        out[s : s + step], _ = _scores_from_means(a, means, own_size)
    return out


def plri_scores_sampled(
    F: Any,
    labels: Any,
    sigma: float,
    sample: int = PLRI_SAMPLE,
    seed: int = 0,
    delta: float | None = None,
    refine_z: float = PLRI_REFINE_Z,
    refine_max_frac: float = PLRI_REFINE_MAX_FRAC,
    info: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """PLRI from per-cluster random samples: returns (scores (N,), standard errors (N,)).

    Every cluster c contributes m_c = min(sample, |c|) members drawn without replacement (one draw,
    shared by all videos). a_i is the mean kernel over the sample of i's cluster (i itself left out),
    each candidate mean for b_i over the sample of that cluster; both are unbiased. Standard error of
    each mean: sd / sqrt(m) * sqrt(1 - m / population) (finite-population correction; 0 where the
    whole cluster is in the sample), and of s_i, to first order, se(s) <= sqrt(se_a^2 + se_b^2) /
    max(a, b). The max over clusters in b_i adds a small upward bias where two clusters tie.

    `delta` given: videos with |s_i - delta| <= refine_z * se(s_i) (those whose P/U side the
    sampling error could flip, closest first, at most refine_max_frac * N of them) are re-computed
    exactly over all N columns (se 0). Cost: N * C * sample + n_refined * N kernel entries.
    The Gram products are float32 (kernel error about 1e-7, far below the sampling error).
    """
    X = _as_features32(F)
    n = X.shape[0]
    idx, counts = _label_index(labels, n)
    m = len(counts)
    info = info if info is not None else {}
    scores = np.zeros(n, dtype=np.float64)
    se_s = np.zeros(n, dtype=np.float64)
    if m < 2:
        info["plri_refined"] = 0
        return scores, se_s
    rng = _rng(seed, _STREAM_PLRI)
    members = np.argsort(idx, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts.astype(np.int64))])
    picks, col_cluster = [], []
    for c in range(m):
        mem = members[starts[c] : starts[c + 1]]
        take = mem if len(mem) <= sample else np.sort(rng.choice(mem, sample, replace=False))
        picks.append(take)
        col_cluster.append(np.full(len(take), c))
    S = np.concatenate(picks)
    col_c = np.concatenate(col_cluster)
    m_c = np.bincount(col_c, minlength=m).astype(np.float64)
    pos = np.full(n, -1, dtype=np.int64)  # column of each sampled video in S
    pos[S] = np.arange(len(S))
    onehot = np.zeros((len(S), m), dtype=np.float64)
    onehot[np.arange(len(S)), col_c] = 1.0
    sq = np.einsum("ij,ij->i", X, X)
    XS, sqS = X[S], sq[S]
    step = _block_rows(len(S), 8 * 4)
    for s in range(0, n, step):
        e = min(n, s + step)
        r = np.arange(s, e)
        in_s = pos[r] >= 0
        same = (np.nonzero(in_s)[0], pos[r][in_s])
        w = _kernel_rows(X[s:e], sq[s:e], XS, sqS, float(sigma), same)
        sums, sums2 = w @ onehot, (w * w) @ onehot  # (b, m)
        own = idx[r]
        ar = np.arange(e - s)
        # Leave i out of its own cluster's sample (w_ii = 1, w_ii^2 = 1).
        sums[ar[in_s], own[in_s]] -= 1.0
        sums2[ar[in_s], own[in_s]] -= 1.0
        cnt = np.broadcast_to(m_c, sums.shape).copy()
        cnt[ar[in_s], own[in_s]] -= 1.0
        pop = np.broadcast_to(counts, sums.shape).copy()
        pop[ar, own] -= 1.0  # the own cluster's population excludes i
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = sums / cnt
            var = np.maximum(sums2 / cnt - mean**2, 0.0) * cnt / np.maximum(cnt - 1.0, 1.0)
            se = np.sqrt(var / cnt * np.clip(1.0 - cnt / pop, 0.0, 1.0))
        se = np.where(cnt > 0, se, 0.0)
        a = mean[ar, own]
        se_a = se[ar, own]
        means = mean.copy()
        means[ar, own] = -np.inf
        sc, b_arg = _scores_from_means(a, means, counts[own])
        b = means[ar, b_arg]
        with np.errstate(divide="ignore", invalid="ignore"):
            ses = np.sqrt(se_a**2 + se[ar, b_arg] ** 2) / np.maximum(a, b)
        scores[s:e] = sc
        se_s[s:e] = np.where(counts[own] > 1, np.nan_to_num(ses, nan=0.0, posinf=0.0), 0.0)
    refined = np.zeros(0, dtype=np.int64)
    if delta is not None:
        margin = np.abs(scores - float(delta))
        cand = np.nonzero((margin <= refine_z * se_s) & (se_s > 0))[0]
        cap = int(refine_max_frac * n)
        if len(cand) > cap:
            cand = cand[np.argsort(margin[cand] / se_s[cand], kind="stable")[:cap]]
        refined = np.sort(cand)
        if len(refined):
            scores[refined] = plri_scores_blocked(X, idx, sigma, rows=refined, dtype=np.float32)
            se_s[refined] = 0.0
    info["plri_sample"] = int(sample)
    info["plri_refined"] = int(len(refined))
    info["plri_se_max"] = float(se_s.max())
    info["plri_se_mean"] = float(se_s.mean())
    return scores, se_s


# --------------------------------------------------------------------------------------------
# the whole scale path


def cluster_videos_scale(
    F: Any,
    n_clusters: int,
    seed: int,
    delta: float,
    plri: bool = True,
    *,
    affinity: str = "nystrom",
    knn: int = 30,
    backend: str = "auto",
    landmarks: int = NYSTROM_LANDMARKS,
    plri_method: str = "auto",
    plri_exact_max_n: int = PLRI_EXACT_MAX_N,
    plri_sample: int = PLRI_SAMPLE,
    info: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cluster.cluster_videos without N x N matrices: (labels (N,) int64, PLRI scores (N,), mask (N,) bool).

    affinity: 'nystrom' (default: `nystrom_embedding` of the full kernel, then k-means on the
    embedding as the dense path does) or 'knn' (the `knn`-nearest-neighbour graph from `knn_search`
    with `backend`, `sparse_gaussian_affinity`, `spectral_labels`: NJW on the sparse graph). Both
    use sigma from `estimate_sigma`. The kNN graph keeps only local structure and parts from the
    dense path where clusters overlap (see tests/test_cluster_scale.py and bench_cluster.py).
    plri_method: 'exact' (blocked sums, O(N^2 D) time), 'sampled' (per-cluster samples of
    `plri_sample`, with the borderline videos re-computed exactly), or 'auto' (exact up to
    `plri_exact_max_n` videos). `info` (a dict, optional) receives per-stage seconds and diagnostics
    (sigma, kNN index, graph components, eigenvalues, PLRI error estimates); with
    info["keep_knn"] = True the kNN indices are kept in info["knn_indices"] (for a recall check).
    """
    from copl_dist.cluster import canonical_labels, check_n_clusters, plri_split  # noqa: PLC0415

    if affinity not in ("nystrom", "knn"):
        raise ValueError(f"affinity must be 'nystrom' or 'knn', got {affinity!r}")
    if plri_method not in ("auto", "exact", "sampled"):
        raise ValueError(f"plri_method must be auto, exact or sampled, got {plri_method!r}")
    info = info if info is not None else {}
    X = _as_features32(F)
    n = X.shape[0]
    check_n_clusters(n_clusters, n)
    info["affinity"] = affinity
    with _stage(info, "sigma"):
        sigma = estimate_sigma(X, seed=seed)
    info["sigma"] = sigma
    if n_clusters == 1:
        labels = np.zeros(n, dtype=np.int64)
    elif n_clusters == n:
        labels = np.arange(n, dtype=np.int64)
    elif affinity == "knn":
        with _stage(info, "knn"):
            dist, idx = knn_search(X, min(int(knn), n - 1), backend, seed=seed, info=info)
        if info.get("keep_knn"):
            info["knn_indices"] = idx
        with _stage(info, "affinity"):
            W = sparse_gaussian_affinity(dist, idx, sigma)
        del dist, idx
        labels = spectral_labels(W, int(n_clusters), seed, info=info)
    else:
        with _stage(info, "eigen"):
            E = nystrom_embedding(X, int(n_clusters), sigma, seed, landmarks=landmarks, info=info)
        with _stage(info, "kmeans"):
            labels = canonical_labels(kmeans(E, int(n_clusters), seed))
    method = plri_method if plri_method != "auto" else ("exact" if n <= plri_exact_max_n else "sampled")
    info["plri_method"] = method
    with _stage(info, "plri"):
        if method == "exact":
            scores = plri_scores_blocked(X, labels, sigma, dtype=np.float32)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                scores, _ = plri_scores_sampled(X, labels, sigma, sample=plri_sample, seed=seed, delta=delta, info=info)
    mask = plri_split(scores, delta) if plri else np.ones(n, dtype=bool)
    return labels, scores, mask
