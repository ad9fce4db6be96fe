"""Video clustering at scale: spectral clustering and PLRI without an N x N matrix.

The exact path in `cluster/exact.py` holds several dense (N, N) float64 matrices (0.8 GB each at N = 10,000,
80 GB at N = 100,000). This module computes the same quantities (paper §3.3, Eqs. 6-10) in
O(N m) memory (m landmarks or k neighbours):

1. sigma = the mean pairwise distance, estimated on a random sample (`estimate_sigma`), with the
   dense path's convention (the mean over all N^2 ordered pairs, the N zero self-distances included).
2. The spectral embedding, two ways (`cluster_videos_scale(affinity=...)`):
   - 'knn' (default): the k-nearest-neighbour graph (k = 30, at most N / (4 C): `graph_neighbours`)
     of the features' top principal components (`knn_pca`; by default twice the clusters, 32-256:
     `graph_dims`; `knn.pca_project`;
     `knn.knn_search`: FAISS flat exact index for moderate N, IVF-Flat (or HNSW) for large N, on GPUs when FAISS sees any; or a blocked torch matmul + top-k on
     CUDA), the Gaussian kernel on its edges with sigma of the same space
     (`sparse_gaussian_affinity`, symmetric, zero diagonal), the top eigenvectors of the normalised
     adjacency D^-1/2 W D^-1/2 by scipy's `eigsh` with a small uniform term that connects the graph
     (`spectral_embedding`), k-means on the row-normalised embedding (NJW).
   - 'nystrom': `nystrom_embedding`, a landmark (Nystroem) approximation of the *full* Gaussian
     kernel, which is what the dense path clusters; k-means on it as the dense path does.
   Why the principal components: in 2048 raw dimensions the isotropic part of the features (noise,
   for clustering) is most of every distance, so near the border of two overlapping clusters it
   decides which neighbours are nearest and the graph links the two; the dense path's wide kernel
   (sigma = the mean pairwise distance) averages that noise out over all N columns of a row. On the
   benchmark's features (`copl bench cluster`, 20 clusters, a quarter overlapping) the kNN graph of
   the raw features agreed with the exact path at ARI 0.957 (96.6% same P/U side, N = 10,000), that
   of 256 components at 0.993 (99.6%); 32-128 components gave 0.99-0.996, so the choice is not
   sharp. Nystroem agrees at 0.999 and is kept as the alternative. The graph's sigma is the mean
   pairwise distance of the components (as the dense path's, in the space the graph lives in).
3. k-means: FAISS Lloyd iterations from greedy k-means++ seeds, best of 10, seeded (above 100,000
   videos the restarts run on a sample of that size, the best one refined on all videos).
4. PLRI (`plri_scale.plri_scores_blocked`, `plri_scale.plri_scores_sampled`): cohesion a_i and separation b_i are means of
   the *full* Gaussian kernel (every pair, as in the dense path, not only the graph's edges), so
   they are computed from the features: exactly in row blocks (O(block * N) memory, O(N^2 D) time)
   or from per-cluster random samples with a standard error per video, refining the videos whose
   P/U side the sampling error could flip in stages; the kernel sums on the GPU when torch
   sees one (`plri_device`).

Labels are canonical (clusters numbered in order of first appearance), as in `cluster/exact.py`.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import LinearOperator, eigsh
from threadpoolctl import threadpool_limits

from copl_dist.cluster.exact import canonical_labels, check_n_clusters, plri_split
from copl_dist.cluster.knn import knn_search, pca_project
from copl_dist.cluster.knobs import (
    KMEANS_N_INIT,
    KMEANS_FINAL_NITER,
    KMEANS_NITER,
    KMEANS_ONE_THREAD_MAX,
    KMEANS_SAMPLE,
    NYSTROM_LANDMARKS,
    NYSTROM_RCOND,
    PCA_DIM,
    PCA_MIN_DIM,
    PLRI_EXACT_MAX_N,
    PLRI_SAMPLE,
    SIGMA_SAMPLE,
    SPECTRAL_REG,
    STREAM_EIGEN,
    STREAM_KMEANS,
    STREAM_LANDMARKS,
    STREAM_SIGMA,
    as_features32,
    block_rows,
    faiss_or_none,
    kernel_rows,
    stage,
    stream_rng,
    torch_cuda,
)
from copl_dist.cluster.plri_scale import plri_scores_blocked, plri_scores_sampled

# --------------------------------------------------------------------------------------------
# sigma and the sparse affinity


def mean_pairwise_distance(F: Any) -> float:
    """The dense path's sigma exactly, in row blocks: (1/N^2) sum_ij d_ij, O(N^2 D) time."""
    X = np.asarray(F, dtype=np.float64)
    n = X.shape[0]
    sq = np.einsum("ij,ij->i", X, X)
    total = 0.0
    rows = block_rows(n)
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
    measured in tests/test_cluster/scale.py: within 0.5% of the exact sigma at sample = 4096.
    """
    X = as_features32(F)
    n = X.shape[0]
    if n <= sample:
        return mean_pairwise_distance(X)
    rows = np.sort(stream_rng(seed, STREAM_SIGMA).choice(n, sample, replace=False))
    S = X[rows].astype(np.float64)
    off_diag_mean = mean_pairwise_distance(S) * sample / (sample - 1)
    return off_diag_mean * (n - 1) / n


def sparse_gaussian_affinity(dist: np.ndarray, idx: np.ndarray, sigma: float, symmetrize: str = "max") -> sp.csr_matrix:
    """kNN graph -> (N, N) csr float64 W with w_ij = exp(-d_ij^2 / (2 sigma^2)) on its edges.

    Symmetric: 'max' keeps an edge when either end has the other among its k nearest (the union of
    the two directions; w depends only on d_ij, so both directions carry the same weight and max is
    simply "the edge exists"); 'mean' halves one-directional edges. Zero diagonal (no self-loops),
    as in the dense path's spectral step (scipy's Laplacian ignores the diagonal of W); PLRI does not
    use this matrix (it uses the full kernel, with w_ii = 1 excluded as in exact.plri_scores).
    sigma = 0 (all features equal) gives weights 1.
    """
    if symmetrize not in ("max", "mean"):
        raise ValueError(f"symmetrize must be 'max' or 'mean', got {symmetrize!r}")
    n, k = idx.shape
    # Built as CSR directly, int32 indices where N allows: at N = 1,000,000 the COO route held
    # about 2.7 GB of temporaries (int64 row and column arrays, their masked copies).
    itype = np.int32 if n * k < 2**31 - 1 else np.int64  # indptr holds up to N k
    cols = np.asarray(idx).astype(itype, copy=False)
    w = np.array(dist, dtype=np.float64)  # the weights computed in place in this copy
    if sigma == 0.0:
        w[:] = 1.0
    else:
        w *= w
        w *= -1.0 / (2.0 * float(sigma) ** 2)
        np.exp(w, out=w)
    ok = (cols >= 0) & (cols != np.arange(n, dtype=itype)[:, None])
    indptr = np.zeros(n + 1, dtype=itype)
    np.cumsum(ok.sum(axis=1), out=indptr[1:])
    W = sp.csr_matrix((w[ok], cols[ok], indptr), shape=(n, n))
    del cols, w, ok
    W.sum_duplicates()
    W = sp.csr_matrix(W.maximum(W.T.tocsr()) if symmetrize == "max" else (W + W.T) * 0.5)
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
    v0 = stream_rng(seed, STREAM_EIGEN).uniform(-1.0, 1.0, n)
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
    """Each column's largest-magnitude entry made positive, in place: deterministic eigenvector signs."""
    pivot = np.argmax(np.abs(vecs), axis=0)
    signs = np.sign(vecs[pivot, np.arange(vecs.shape[1])])
    signs[signs == 0] = 1.0
    vecs *= signs
    return vecs


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
    X = as_features32(F)
    n = X.shape[0]
    info = info if info is not None else {}
    m = min(n, int(landmarks))
    land = np.arange(n) if m == n else np.sort(stream_rng(seed, STREAM_LANDMARKS).choice(n, m, replace=False))
    sq = np.einsum("ij,ij->i", X, X)
    XL, sqL = X[land], sq[land]
    K = kernel_rows(XL, sqL, XL, sqL, float(sigma), (np.arange(m), np.arange(m)))
    with threadpool_limits(1):  # see _small_eigh
        ev, V = np.linalg.eigh((K + K.T) / 2)
    keep = ev > NYSTROM_RCOND * ev.max()
    Kih = V[:, keep] / np.sqrt(ev[keep])  # (m, r): K^+ = Kih Kih^T
    r = Kih.shape[1]
    pos = np.full(n, -1, dtype=np.int64)
    pos[land] = np.arange(m)
    Z = np.empty((n, r), dtype=np.float64)
    step = block_rows(m, 8 * 3)
    for s in range(0, n, step):
        e = min(n, s + step)
        p = pos[s:e]
        hit = np.nonzero(p >= 0)[0]
        Z[s:e] = kernel_rows(X[s:e], sq[s:e], XL, sqL, float(sigma), (hit, p[hit])) @ Kih
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
    subsampled (max_points_per_centroid = N): the embedding has few dims, so all rows are cheap
    (above KMEANS_SAMPLE rows the restarts run on a sample: `_kmeans_restarts`).
    Up to KMEANS_ONE_THREAD_MAX values FAISS runs on one OpenMP thread: tiny Lloyd steps are
    dominated by OpenMP barriers, and on a loaded 2-core machine 5000 x 20 took 12.8 s with two
    threads and 1.1 s with one.
    """
    X32 = np.ascontiguousarray(X, dtype=np.float32)
    n, d = X32.shape
    k = int(n_clusters)
    faiss = faiss_or_none()
    if faiss is None:
        from sklearn.cluster import k_means  # noqa: PLC0415

        _, labels, _ = k_means(X32, k, random_state=int(seed) & 0x7FFFFFFF, n_init=n_init)
        return labels.astype(np.int64)
    rng = stream_rng(seed, STREAM_KMEANS)
    _, best_labels = _kmeans_restarts(faiss, X32, k, rng, int(n_init))
    return best_labels


def _lloyd(faiss: Any, X32: np.ndarray, init: np.ndarray, seed: int, niter: int = KMEANS_NITER) -> tuple[float, np.ndarray, np.ndarray]:
    """`niter` FAISS Lloyd iterations from `init`: (objective, labels, centroids)."""
    n, d = X32.shape
    threads = faiss.omp_get_max_threads()
    if n * d <= KMEANS_ONE_THREAD_MAX:
        faiss.omp_set_num_threads(1)
    try:
        km = faiss.Kmeans(
            d, len(init), niter=niter, nredo=1, seed=seed,
            max_points_per_centroid=n, min_points_per_centroid=1, verbose=False, gpu=faiss.get_num_gpus() > 0,
        )
        km.train(X32, init_centroids=init)
        dist, labels = km.index.search(X32, 1)
    finally:
        faiss.omp_set_num_threads(threads)
    return float(dist.astype(np.float64).sum()), labels.ravel().astype(np.int64), km.centroids


def _kmeans_restarts(faiss: Any, X32: np.ndarray, k: int, rng: np.random.Generator, n_init: int) -> tuple[float, np.ndarray]:
    """The best of `n_init` restarts. Above KMEANS_SAMPLE rows the restarts run on that many random
    rows and the best one's centroids start KMEANS_FINAL_NITER Lloyd iterations on all of them: at
    N = 1,000,000 ten restarts on every row took 53-68 s on 2 loaded cores, this 7 s, with the same
    partition (ARI 0.9985 against the generating labels either way; the spectral embedding's
    clusters are compact, so a sample of 100,000 places the centroids as well)."""
    n = X32.shape[0]
    S = X32 if n <= KMEANS_SAMPLE else X32[np.sort(rng.choice(n, KMEANS_SAMPLE, replace=False))]
    best_obj, best_labels, best_centroids = np.inf, None, None
    for _ in range(n_init):
        obj, labels, centroids = _lloyd(faiss, S, _kmeans_pp(S, k, rng), int(rng.integers(1, 2**31 - 1)))
        if obj < best_obj:
            best_obj, best_labels, best_centroids = obj, labels, centroids
    if S is not X32:
        best_obj, best_labels, _ = _lloyd(faiss, X32, best_centroids, int(rng.integers(1, 2**31 - 1)), KMEANS_FINAL_NITER)
    return best_obj, best_labels


def njw_embedding(W: sp.spmatrix, n_clusters: int, seed: int, info: dict[str, Any] | None = None) -> np.ndarray:
    """Ng-Jordan-Weiss's embedding of a sparse affinity: `spectral_embedding`, rows normalised to
    unit length."""
    info = info if info is not None else {}
    with stage(info, "eigen"):
        U = spectral_embedding(W, n_clusters, seed, info=info)
        norms = np.linalg.norm(U, axis=1, keepdims=True)
        U /= np.where(norms > 0, norms, 1.0)
        return U


def spectral_labels(W: sp.spmatrix, n_clusters: int, seed: int, info: dict[str, Any] | None = None) -> np.ndarray:
    """Ng-Jordan-Weiss on a sparse affinity: `njw_embedding`, k-means; canonical labels."""
    info = info if info is not None else {}
    return _embedding_labels(njw_embedding(W, n_clusters, seed, info=info), n_clusters, seed, info)


def _embedding_labels(U: np.ndarray, n_clusters: int, seed: int, info: dict[str, Any]) -> np.ndarray:
    with stage(info, "kmeans"):
        labels = kmeans(U, n_clusters, seed)
    return canonical_labels(labels)


# --------------------------------------------------------------------------------------------
# the whole scale path


def graph_neighbours(knn: int, n: int, n_clusters: int) -> int:
    """Neighbours per video in the kNN graph: `knn`, but at most a quarter of the mean cluster size
    N / C (and at least 5, at most N - 1). A neighbour list longer than a small cluster must reach
    into other clusters: at N = 1,000 in 20 clusters (the smallest of 14 videos) k = 30 agreed with
    the exact path at ARI 0.955 (96.6% same P/U side), k = 12 at 0.978 (98.1%); from N = 2,000 on
    the cap is 25 or more and k barely matters (0.978-0.987 for k = 8...30)."""
    return max(1, min(int(knn), max(5, n // (4 * max(1, n_clusters))), n - 1))


def graph_dims(knn_pca: int, n_clusters: int) -> int:
    """Principal components the kNN graph is built on: `knn_pca`, or with -1 twice the clusters,
    within PCA_MIN_DIM (32) and PCA_DIM (256). The clusters' centres span at most C - 1 dimensions
    (LDA's space from iteration 1 on); the components past them are what the noise adds, and they
    cost kNN time in proportion (at N = 1,000,000 in 2048 dims: 32 components made the IVF search
    about 2.4x faster than 64, with 99.9% of the neighbours in their video's cluster either way).
    On the benchmark's 20 clusters, 32 to 256 components agreed with the exact path alike
    (docs/bench/knn-pca/k-and-dims.out)."""
    if int(knn_pca) >= 0:
        return int(knn_pca)
    return min(PCA_DIM, max(PCA_MIN_DIM, 2 * int(n_clusters)))


def cluster_videos_scale(
    F: Any,
    n_clusters: int,
    seed: int,
    delta: float,
    plri: bool = True,
    *,
    affinity: str = "knn",
    knn: int = 30,
    knn_pca: int = -1,
    backend: str = "auto",
    landmarks: int = NYSTROM_LANDMARKS,
    plri_method: str = "auto",
    plri_exact_max_n: int = PLRI_EXACT_MAX_N,
    plri_sample: int = PLRI_SAMPLE,
    plri_device: str | None = "auto",
    info: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """videos.cluster_videos without N x N matrices: (labels (N,) int64, PLRI scores (N,), mask (N,) bool).

    affinity: 'knn' (default: the `graph_neighbours(knn, ...)`-nearest-neighbour graph from `knn_search` with `backend` on
    the top `graph_dims(knn_pca, n_clusters)` principal components (0 or >= D: the raw features), `sparse_gaussian_affinity`
    with sigma of that space, `spectral_labels`: NJW on the sparse graph) or 'nystrom'
    (`nystrom_embedding` of the full kernel, then k-means on the embedding as the dense path does).
    Sigma from `estimate_sigma` in each path's space; PLRI always on the full features.
    plri_method: 'exact' (blocked sums, O(N^2 D) time), 'sampled' (per-cluster samples of
    `plri_sample`, with the borderline videos refined in stages), or 'auto' (exact up to
    `plri_exact_max_n` videos). plri_device: the torch device of PLRI's kernel sums, None for numpy,
    'auto' for 'cuda' when torch sees a GPU (else numpy). `info` (a dict, optional) receives per-stage seconds and diagnostics
    (sigma, kNN index, graph components, eigenvalues, PLRI error estimates); with
    info["keep_knn"] = True the kNN indices are kept in info["knn_indices"] (int32 where N allows,
    for a recall check; the space they were searched in is `pca_project(F, info["knn_dims"], seed)`
    where knn_dims < D, else F: kept, it would count in the path's peak memory).
    """
    if affinity not in ("nystrom", "knn"):
        raise ValueError(f"affinity must be 'nystrom' or 'knn', got {affinity!r}")
    if plri_method not in ("auto", "exact", "sampled"):
        raise ValueError(f"plri_method must be auto, exact or sampled, got {plri_method!r}")
    info = info if info is not None else {}
    X = as_features32(F)
    n = X.shape[0]
    check_n_clusters(n_clusters, n)
    info["affinity"] = affinity
    with stage(info, "sigma"):
        sigma = estimate_sigma(X, seed=seed)
    info["sigma"] = sigma
    if n_clusters == 1:
        labels = np.zeros(n, dtype=np.int64)
    elif n_clusters == n:
        labels = np.arange(n, dtype=np.int64)
    elif affinity == "knn":
        Y, graph_sigma = X, sigma
        dims = graph_dims(knn_pca, n_clusters)
        if 0 < dims < X.shape[1]:
            with stage(info, "pca"):
                Y = pca_project(X, dims, seed)
                graph_sigma = estimate_sigma(Y, seed=seed)
        info["knn_dims"] = int(Y.shape[1])
        info["graph_sigma"] = graph_sigma
        k_graph = graph_neighbours(int(knn), n, int(n_clusters))
        info["knn_k"] = k_graph
        with stage(info, "knn"):
            dist, idx = knn_search(Y, k_graph, backend, seed=seed, info=info)
            if n < 2**31 - 1:
                idx = idx.astype(np.int32)  # half the memory of the graph's inputs
        if info.get("keep_knn"):
            info["knn_indices"] = idx
        with stage(info, "affinity"):
            W = sparse_gaussian_affinity(dist, idx, graph_sigma)
        del dist, idx, Y
        U = njw_embedding(W, int(n_clusters), seed, info=info)
        del W  # 0.5 GB at N = 1,000,000, not needed by k-means or PLRI
        labels = _embedding_labels(U, int(n_clusters), seed, info)
    else:
        with stage(info, "eigen"):
            E = nystrom_embedding(X, int(n_clusters), sigma, seed, landmarks=landmarks, info=info)
        with stage(info, "kmeans"):
            labels = canonical_labels(kmeans(E, int(n_clusters), seed))
    method = plri_method if plri_method != "auto" else ("exact" if n <= plri_exact_max_n else "sampled")
    info["plri_method"] = method
    if plri_device == "auto":
        plri_device = "cuda" if torch_cuda() else None
    info["plri_device"] = plri_device or "numpy"
    with stage(info, "plri"):
        if method == "exact":
            scores = plri_scores_blocked(X, labels, sigma, dtype=np.float32, device=plri_device)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                scores, _ = plri_scores_sampled(
                    X, labels, sigma, sample=plri_sample, seed=seed, delta=delta, info=info, device=plri_device
                )
    mask = plri_split(scores, delta) if plri else np.ones(n, dtype=bool)
    return labels, scores, mask
