"""k-nearest neighbours of video features for the kNN-graph affinity of the scale path, behind one
function (`knn_search`): FAISS (exact IndexFlatL2 for moderate N; PCA + IVF-Flat or HNSW with exact
re-ranking for large N; on GPUs when FAISS sees any), a blocked torch matmul + top-k (on CUDA when
available: the GPU machines of this project have torch but no FAISS), or a numpy reference.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from copl_dist.cluster.knobs import (  # the scale path's knobs and helpers
    BLOCK_BYTES,
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    IVF_LISTS_PER_SQRT_N,
    IVF_NPROBE,
    IVF_TRAIN_PER_LIST,
    KNN_FLAT_MAX_N,
    PCA_DIM,
    PCA_TRAIN_MAX,
    RERANK_FACTOR,
    SEARCH_BLOCK_ROWS,
    STREAM_PCA,
    as_features32,
    block_rows,
    faiss_or_none,
    stream_rng,
    torch_cuda,
)


def resolve_backend(backend: str = "auto") -> str:
    """'auto' -> 'faiss' when FAISS sees a GPU; else 'torch' when torch sees CUDA; else 'faiss' when
    FAISS is installed; else 'torch' (CPU). Explicit: 'faiss', 'torch', 'numpy' (float64 reference).
    'auto' imports torch to ask about CUDA (a few seconds the first time on a loaded machine)."""
    if backend not in ("auto", "faiss", "torch", "numpy"):
        raise ValueError(f"unknown kNN backend {backend!r}: expected auto, faiss, torch or numpy")
    if backend != "auto":
        if backend == "faiss" and faiss_or_none() is None:
            raise ValueError("kNN backend 'faiss' requested but faiss is not installed")
        return backend
    faiss = faiss_or_none()
    if faiss is not None and faiss.get_num_gpus() > 0:
        return "faiss"
    if torch_cuda():
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


def _exact_rerank(X: np.ndarray, cand: np.ndarray, k: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Candidates (rows, kk) of the videos start ... start + rows - 1 -> the k nearest of them by
    exact distance in X's space, ascending.

    Distances from differences (not the |a|^2 + |b|^2 - 2ab expansion: no cancellation error), by
    FAISS's fvec_L2sqr_by_idx when installed (C++, no gathered copy: 0.5 s where a numpy gather
    took 5.3 s for 20,000 x 61 candidates at 2048 dims), else numpy in blocks. Invalid candidates
    (-1) and the query itself get +inf; a row left with fewer than k valid candidates is searched
    exactly.
    """
    n, kk = cand.shape
    rows_ix = np.arange(start, start + n)[:, None]
    bad = (cand < 0) | (cand == rows_ix)
    safe = np.ascontiguousarray(np.where(cand < 0, rows_ix, cand), dtype=np.int64)
    faiss = faiss_or_none()
    Xq = X[start : start + n]
    if faiss is not None:
        d2 = np.empty((n, kk), dtype=np.float32)
        faiss.fvec_L2sqr_by_idx(faiss.swig_ptr(d2), faiss.swig_ptr(Xq), faiss.swig_ptr(X), faiss.swig_ptr(safe), X.shape[1], n, kk)
        dist = np.sqrt(np.maximum(d2, 0.0))
    else:
        dist = np.empty((n, kk), dtype=np.float32)
        step = block_rows(kk * X.shape[1], 4, BLOCK_BYTES // 2)
        for s in range(0, n, step):
            e = min(n, s + step)
            diff = X[safe[s:e]] - Xq[s:e, None, :]
            dist[s:e] = np.sqrt(np.einsum("bkd,bkd->bk", diff, diff))
    dist[bad] = np.inf
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    dist, idx = np.take_along_axis(dist, order, 1), np.take_along_axis(safe, order, 1)
    short = np.nonzero(~np.isfinite(dist).all(axis=1))[0]
    if len(short):
        X64 = X.astype(np.float64)
        sq = np.einsum("ij,ij->i", X64, X64)
        d2 = sq[short + start, None] + sq[None, :] - 2.0 * (X64[short + start] @ X64.T)
        d2[np.arange(len(short)), short + start] = np.inf
        part = np.argsort(d2, axis=1, kind="stable")[:, :k]
        idx[short] = part
        dist[short] = np.linalg.norm(X[part] - X[short + start, None, :], axis=2)
    return dist, idx


def pca_project(X: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Project onto the top `dim` principal components, fitted on at most PCA_TRAIN_MAX random rows
    (float64 covariance, scipy's eigh for the top eigenvectors only). (N, dim) float32.

    numpy rather than faiss.PCAMatrix: its training took 99 s on 20,000 x 2048 here, this 5 s."""
    from scipy.linalg import eigh  # noqa: PLC0415

    n, d = X.shape
    rows = np.arange(n) if n <= PCA_TRAIN_MAX else np.sort(stream_rng(seed, STREAM_PCA).choice(n, PCA_TRAIN_MAX, replace=False))
    S = X[rows].astype(np.float64)
    mu = S.mean(axis=0)
    S -= mu
    cov = S.T @ S
    _, V = eigh(cov, subset_by_index=[d - dim, d - 1], driver="evr")
    V = np.ascontiguousarray(V[:, ::-1], dtype=np.float32)
    Y = np.empty((n, dim), dtype=np.float32)
    step = block_rows(d, 4)
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
    rows = block_rows(n)
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
    rows = block_rows(n, 4, budget)
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
            sub = block_rows(k * X.shape[1], 4, budget // 2)
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
    faiss = faiss_or_none()
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

    # Approximate: (PCA to pca_dim) + IVF-Flat (CPU or all GPUs) or HNSW (CPU). After a PCA,
    # RERANK_FACTOR * k candidates are re-ranked by the exact distance in the original space;
    # without one, the flat indexes' own distances are exact and k candidates are all it takes.
    Y = X
    desc = []
    if d > pca_dim:
        Y = pca_project(X, pca_dim, seed)
        desc.append(f"PCA {d}->{pca_dim}")
    kk = min(n - 1, k if Y is X else RERANK_FACTOR * k) + 1
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
        index.train(Y if ntrain == n else Y[np.sort(stream_rng(seed, STREAM_PCA + 100).choice(n, ntrain, replace=False))])
        if gpus > 0:
            index = faiss.index_cpu_to_all_gpus(index)
            index.add(Y)
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", IVF_NPROBE)
        else:
            index.add(Y)
            index.nprobe = IVF_NPROBE
        desc.append(f"IVF{nlist},Flat nprobe {IVF_NPROBE}" + (f" on {gpus} GPU(s)" if gpus else ""))
    desc.append(f"{kk - 1} candidates re-ranked exactly" if Y is not X else "distances re-computed from differences")
    info["knn_index"] = "faiss " + ", ".join(desc)
    # Searched and re-ranked in blocks of rows: the (N, kk) candidates and their int64 / float
    # copies at once were 1.5 GB at N = 1,000,000.
    dist = np.empty((n, k), dtype=np.float32)
    idx = np.empty((n, k), dtype=np.int64)
    step = max(1, SEARCH_BLOCK_ROWS)
    for s in range(0, n, step):
        e = min(n, s + step)
        _, cand = index.search(Y[s:e], kk)
        dist[s:e], idx[s:e] = _exact_rerank(X, cand.astype(np.int64), k, start=s)
    return dist, idx


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
      then IVF-Flat (2 sqrt(N) lists, nprobe 4; on all GPUs when FAISS sees any) or, with
      approx='hnsw' on CPU, HNSW32, searched in blocks of rows; after a PCA, 2k candidates are
      re-ranked by the exact distance in the original space. Recall@k (`knn_recall`): >= 0.95 without PCA on the tests' features; with
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
    X = as_features32(F)
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
        info["knn_index"] = "torch blocked matmul + top-k (exact)" + (" on CUDA" if torch_cuda() else "")
        return _knn_torch(X, int(k))
    info["knn_index"] = "numpy brute force (exact, float64)"
    return _knn_numpy(X, int(k))


def knn_recall(F: Any, idx: np.ndarray, n_queries: int = 500, seed: int = 0) -> float:
    """recall@k of a kNN result against brute force on a random sample of query rows."""
    X = as_features32(F)
    n, k = idx.shape
    q = np.sort(stream_rng(seed, 99).choice(n, min(n, n_queries), replace=False))
    X64 = X.astype(np.float64)
    d2 = np.einsum("ij,ij->i", X64[q], X64[q])[:, None] + np.einsum("ij,ij->i", X64, X64)[None, :] - 2.0 * (X64[q] @ X64.T)
    d2[np.arange(len(q)), q] = np.inf
    truth = np.argpartition(d2, k - 1, axis=1)[:, :k]
    hits = sum(len(np.intersect1d(truth[r], idx[i])) for r, i in enumerate(q))
    return hits / (len(q) * k)
