"""PLRI (Eqs. 6-8) without the N x N matrix: cohesion a_i and separation b_i are means of the full
Gaussian kernel over cluster members, computed from the features, exactly in row blocks
(`plri_scores_blocked`, O(block * N) memory) or from per-cluster samples with a standard error per
video, re-computing exactly the videos whose P/U side the sampling error could flip
(`plri_scores_sampled`). Part of the scale path of `cluster_scale.py`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from copl_dist.cluster_scale import (
    BLOCK_BYTES,
    PLRI_REFINE_MAX_FRAC,
    PLRI_REFINE_Z,
    PLRI_SAMPLE,
    _STREAM_PLRI,
    _as_features32,
    _block_rows,
    _kernel_rows,
    _rng,
)


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
