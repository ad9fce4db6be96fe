"""PLRI (Eqs. 6-8) without the N x N matrix: cohesion a_i and separation b_i are means of the full
Gaussian kernel over cluster members, computed from the features, exactly in row blocks
(`plri_scores_blocked`, O(block * N) memory) or from per-cluster samples with an error estimate per
video that covers both a_i's sampling error and which cluster is b_i's nearest, refining the videos
whose P/U side that error could flip from larger samples and then from every member of the
clusters that can matter to them, up to a cap that `info` reports (`plri_scores_sampled`). Part of
the scale path of `cluster/scale.py`.

The kernel sums are the whole cost (N x columns x D multiply-adds): with `device` (a torch device
such as "cuda") they run there, the column features held on the device once and only the (rows,
clusters) sums coming back; without it, in numpy. Both compute the squared distances and the kernel
in float64 from a Gram product in the features' dtype, so they agree to rounding (tests).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from copl_dist.cluster.knobs import (
    BLOCK_BYTES,
    PLRI_REFINE_MAX_FRAC,
    PLRI_REFINE_SAMPLES,
    PLRI_REFINE_Z,
    PLRI_SAMPLE,
    STREAM_PLRI,
    as_features32,
    block_rows,
    kernel_rows,
    stream_rng,
)

# On a device, blocks this many times larger: fewer, fuller kernel launches (1 GB of float64 kernel).
_DEVICE_BLOCK_FACTOR = 8
# Rows per kernel-sum call of the blocked sums. The columns are blocked inside the call, so a block of
# rows reads the column features once: with rows sized to fit all N columns in the budget (5 rows at
# N = 1,000,000) every 5 rows re-read 8 GB of features, and a 2-core run was stopped after 33 minutes
# still re-computing the 35,908 borderline videos (now 873 s for all of PLRI).
ROW_BLOCK = 1024


class _KernelSums:
    """Per-cluster sums of the Gaussian kernel between row blocks and a fixed set of columns:
    sums[r, c] = sum_j w(r, j) onehot[j, c], and with `squares` the same of w^2. In numpy, or in
    torch on `device` (the columns and the one-hot moved there once; rows per call). The columns
    are taken in blocks of at most `budget` bytes of float64 kernel per block (times 3 for the
    temporaries)."""

    def __init__(self, Xc: np.ndarray, sq_c: np.ndarray, onehot: np.ndarray, device: str | None, budget: int = BLOCK_BYTES):
        self.device = device
        self.budget = int(budget) * (_DEVICE_BLOCK_FACTOR if device else 1)
        self.n_cols = int(Xc.shape[0])
        self.n_sets = int(onehot.shape[1])
        if device is None:
            self.Xc, self.sq_c, self.onehot = Xc, sq_c, onehot
            return
        import torch  # noqa: PLC0415 (only on this path)

        self.torch = torch
        self.Xc = torch.from_numpy(np.ascontiguousarray(Xc)).to(device)
        self.sq_c = torch.from_numpy(np.asarray(sq_c, dtype=np.float64)).to(device)
        self.onehot = torch.from_numpy(np.asarray(onehot, dtype=np.float64)).to(device)

    def __call__(
        self, Xr: np.ndarray, sq_r: np.ndarray, sigma: float, same: tuple[np.ndarray, np.ndarray] | None, squares: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        n_rows = len(Xr)
        step = block_rows(n_rows, 8 * 3, self.budget)  # columns per block
        sums = np.zeros((n_rows, self.n_sets), dtype=np.float64)
        sums2 = np.zeros((n_rows, self.n_sets), dtype=np.float64) if squares else None
        same_r, same_c = (np.zeros(0, np.int64), np.zeros(0, np.int64)) if same is None else (np.asarray(same[0]), np.asarray(same[1]))
        if self.device is None:
            block = self._numpy_block
            rows = (Xr, sq_r)
        else:
            block = self._device_block
            rows = (
                self.torch.from_numpy(np.ascontiguousarray(Xr)).to(self.device, dtype=self.Xc.dtype),
                self.torch.from_numpy(np.asarray(sq_r, dtype=np.float64)).to(self.device),
            )
        for c0 in range(0, self.n_cols, step):
            c1 = min(self.n_cols, c0 + step)
            sel = (same_c >= c0) & (same_c < c1)
            s1, s2 = block(*rows, c0, c1, sigma, (same_r[sel], same_c[sel] - c0), squares)
            sums += s1
            if squares:
                sums2 += s2
        return sums, sums2

    def _numpy_block(self, Xr, sq_r, c0: int, c1: int, sigma: float, same: tuple[np.ndarray, np.ndarray], squares: bool):
        w = kernel_rows(Xr, sq_r, self.Xc[c0:c1], self.sq_c[c0:c1], sigma, same)
        oh = self.onehot[c0:c1]
        return w @ oh, ((w * w) @ oh if squares else None)

    def _device_block(self, xr, sq_r_t, c0: int, c1: int, sigma: float, same: tuple[np.ndarray, np.ndarray], squares: bool):
        torch = self.torch
        g = (xr @ self.Xc[c0:c1].T).double()
        d2 = (sq_r_t[:, None] + self.sq_c[None, c0:c1] - 2.0 * g).clamp_(min=0.0)
        if len(same[0]):
            rows = torch.from_numpy(np.asarray(same[0], dtype=np.int64)).to(self.device)
            cols = torch.from_numpy(np.asarray(same[1], dtype=np.int64)).to(self.device)
            d2[rows, cols] = 0.0
        w = torch.ones_like(d2) if sigma == 0.0 else torch.exp(d2 * (-1.0 / (2.0 * sigma * sigma)))
        oh = self.onehot[c0:c1]
        return (w @ oh).cpu().numpy(), ((w * w) @ oh).cpu().numpy() if squares else None


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
    F: Any,
    labels: Any,
    sigma: float,
    rows: np.ndarray | None = None,
    dtype: Any = np.float64,
    block_bytes: int = BLOCK_BYTES,
    device: str | None = None,
    row_block: int = ROW_BLOCK,
) -> np.ndarray:
    """Exact PLRI (exact.plri_scores on the full Gaussian kernel of bandwidth `sigma`) without the
    N x N matrix: blocks of `row_block` rows x blocks of columns (`block_bytes` of float64 kernel),
    O(block_bytes) memory beyond the features, O(N^2 D) time.

    `rows`: score only these videos (their a_i, b_i still run over all N). `dtype`: the Gram
    product's precision (float64 reproduces the dense path to about 1e-12; float32 is about twice
    as fast with kernel errors about 1e-7). `device`: a torch device for the kernel sums (module
    docstring). Returns (len(rows),) or (N,) scores.
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
    kernel_sums = _KernelSums(X, sq, onehot, device, budget=block_bytes)
    step = max(1, int(row_block))
    for s in range(0, len(rows), step):
        r = rows[s : s + step]
        same = (np.arange(len(r)), r)
        sums, _ = kernel_sums(X[r], sq[r], float(sigma), same)  # (b, m)
        own = idx[r]
        own_size = counts[own]
        with np.errstate(divide="ignore", invalid="ignore"):
            a = (sums[np.arange(len(r)), own] - 1.0) / (own_size - 1)
        means = sums / counts[None, :]
        means[np.arange(len(r)), own] = -np.inf
        out[s : s + step], _ = _scores_from_means(a, means, own_size)
    return out


def _means_and_errors(sums: np.ndarray, sums2: np.ndarray, cnt: np.ndarray, pop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample means of the kernel and their standard errors, sd / sqrt(m) * sqrt(1 - m / population)
    (finite-population correction: 0 where the sample is the whole population). An empty sample
    gives mean nan (inf) and error 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = sums / cnt
        var = np.maximum(sums2 / cnt - mean**2, 0.0) * cnt / np.maximum(cnt - 1.0, 1.0)
        se = np.sqrt(var / cnt * np.clip(1.0 - cnt / pop, 0.0, 1.0))
    return mean, np.where(cnt > 0, np.nan_to_num(se, nan=0.0), 0.0)


def _scores_and_errors(
    mean: np.ndarray, se: np.ndarray, own: np.ndarray, counts: np.ndarray, z: float
) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 8 from per-cluster mean estimates (rows, C) and their standard errors: (scores, se(s)).

    a_i is the own cluster's mean, b_i the largest other mean. The true nearest cluster may be
    another one whose estimate came out low, even where the chosen one is exact, so se_b is the
    larger of the chosen cluster's error and (max_c (mean_c + z se_c) - b_i) / z over every other
    cluster c: b_i + z se_b reaches the highest mean any cluster could have. To first order
    se(s) = sqrt(se_a^2 + se_b^2) / max(a, b)."""
    ar = np.arange(len(own))
    a = mean[ar, own]
    se_a = se[ar, own]
    means = mean.copy()
    means[ar, own] = -np.inf
    scores, b_arg = _scores_from_means(a, means, counts[own])
    b = means[ar, b_arg]
    with np.errstate(invalid="ignore"):
        b_hi = np.max(means + z * se, axis=1)  # the own cluster stays -inf
        se_b = np.maximum(se[ar, b_arg], (b_hi - b) / z)
    with np.errstate(divide="ignore", invalid="ignore"):
        ses = np.sqrt(se_a**2 + se_b**2) / np.maximum(a, b)
    return scores, np.where(counts[own] > 1, np.nan_to_num(ses, nan=0.0, posinf=0.0), 0.0)


def _relevant_clusters(mean: np.ndarray, se: np.ndarray, own: np.ndarray, z: float) -> np.ndarray:
    """(rows, C) bool: the clusters whose means a refinement re-estimates: the own cluster (a_i) and
    every other cluster that can be the nearest at level z, i.e. whose mean_c + z se_c reaches the
    chosen nearest cluster's b_i - z se. The others stay below b_i unless an estimate is off by more
    than z standard errors."""
    ar = np.arange(len(own))
    means = mean.copy()
    means[ar, own] = -np.inf
    b_arg = np.argmax(means, axis=1)
    b_lo = means[ar, b_arg] - z * se[ar, b_arg]
    with np.errstate(invalid="ignore"):
        rel = (means + z * se) >= b_lo[:, None]
    rel[ar, own] = True
    rel[ar, b_arg] = True
    return rel


def _cluster_means(
    X: np.ndarray, sq: np.ndarray, rows: np.ndarray, cols: np.ndarray, population: np.ndarray, sigma: float, device: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean kernel of each video in `rows` over the videos `cols` (sorted members of one cluster: a
    sample, or all of them), the row itself left out, with its standard error against `population`
    (per row: the cluster's size, less one where it is the row's own cluster)."""
    kernel_sums = _KernelSums(X[cols], sq[cols], np.ones((len(cols), 1)), device)
    p = np.minimum(np.searchsorted(cols, rows), len(cols) - 1)
    inside = cols[p] == rows
    sums = np.empty(len(rows))
    sums2 = np.empty(len(rows))
    for s in range(0, len(rows), ROW_BLOCK):
        e = min(len(rows), s + ROW_BLOCK)
        hit = np.nonzero(inside[s:e])[0]
        one, two = kernel_sums(X[rows[s:e]], sq[rows[s:e]], sigma, (hit, p[s:e][hit]), squares=True)
        sums[s:e], sums2[s:e] = one[:, 0], two[:, 0]
    cnt = np.full(len(rows), float(len(cols)))
    sums[inside] -= 1.0  # w_ii = 1 (and w_ii^2 = 1) left out
    sums2[inside] -= 1.0
    cnt[inside] -= 1.0
    return _means_and_errors(sums, sums2, cnt, population)


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
    device: str | None = None,
    refine_samples: tuple[int, ...] = PLRI_REFINE_SAMPLES,
) -> tuple[np.ndarray, np.ndarray]:
    """PLRI from per-cluster random samples: returns (scores (N,), standard errors (N,)).

    Every cluster c contributes m_c = min(sample, |c|) members drawn without replacement (one draw,
    shared by all videos). a_i is the mean kernel over the sample of i's cluster (i itself left out),
    each candidate mean for b_i over the sample of that cluster; both are unbiased, with standard
    errors sd / sqrt(m) * sqrt(1 - m / population) (`_means_and_errors`). The error of s_i
    (`_scores_and_errors`) covers a_i's sampling error and which cluster is b_i's nearest; it is 0
    only where a_i is exact and no other cluster's mean could exceed b_i within z se (measured in
    tests: |s_sampled - s_exact| <= 4 se(s) for >= 99% of videos, and no video with se 0 is off,
    including videos of clusters sampled whole beside undersampled ones). The max over clusters in
    b_i adds a small upward bias where two clusters tie.

    `delta` given: the borderline videos, |s_i - delta| <= z se(s_i) (z = refine_z), whose P/U side
    the sampling error could flip, are refined in stages: each stage re-estimates, for the videos
    still borderline, the means of the clusters that can matter to them (their own and those that
    can be the nearest at level z: `_relevant_clusters`) from a larger sample, `refine_samples`
    members per cluster, then from all members (exact means, se 0), at most refine_max_frac * N
    videos in that last stage, closest to delta in units of se first. A cluster is left out of a
    video's refinement only where its estimate is more than 2 z standard errors below the nearest
    one's, so a refined video's side is exact unless an estimate was off by more than z standard
    errors (one-sided normal tail 0.13% at z = 3 per such cluster); the videos that are still
    borderline after the last stage (se > 0 because of such a cluster) are counted. `info`
    receives plri_borderline (found by the first stage), plri_stage_rows (videos refined per
    stage), plri_refined (means re-computed from all members), plri_refine_dropped (left sampled by
    the cap, with a warning when > 0) and plri_undecided (still within z se of delta at the end).
    Cost: N * C * sample + the refined videos times the members of their relevant clusters, kernel
    entries of D multiply-adds each. The Gram products are float32 (kernel error about 1e-7, far
    below the sampling error). `device`: a torch device for the kernel sums (module docstring).
    """
    X = as_features32(F)
    n = X.shape[0]
    idx, counts = _label_index(labels, n)
    m = len(counts)
    info = info if info is not None else {}
    scores = np.zeros(n, dtype=np.float64)
    se_s = np.zeros(n, dtype=np.float64)
    if m < 2:
        info["plri_refined"] = info["plri_borderline"] = info["plri_refine_dropped"] = info["plri_undecided"] = 0
        info["plri_stage_rows"], info["plri_stage_clusters"] = [], []
        return scores, se_s
    z = float(refine_z) if refine_z > 0 else PLRI_REFINE_Z  # the level se_b covers (below)
    rng = stream_rng(seed, STREAM_PLRI)
    members_sorted = np.argsort(idx, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts.astype(np.int64))])
    members = [members_sorted[starts[c] : starts[c + 1]] for c in range(m)]  # each ascending
    picks = [mem if len(mem) <= sample else np.sort(rng.choice(mem, sample, replace=False)) for mem in members]
    S = np.concatenate(picks)
    col_c = np.concatenate([np.full(len(p), c) for c, p in enumerate(picks)])
    m_c = np.bincount(col_c, minlength=m).astype(np.float64)
    pos = np.full(n, -1, dtype=np.int64)  # column of each sampled video in S
    pos[S] = np.arange(len(S))
    onehot = np.zeros((len(S), m), dtype=np.float64)
    onehot[np.arange(len(S)), col_c] = 1.0
    sq = np.einsum("ij,ij->i", X, X)
    kernel_sums = _KernelSums(X[S], sq[S], onehot, device)
    border_rows, border_mean, border_se = [], [], []
    # Few columns (C x sample): rows sized so that all of them fit one kernel block, at least ROW_BLOCK.
    step = max(ROW_BLOCK, block_rows(len(S), 8 * 4, BLOCK_BYTES * (_DEVICE_BLOCK_FACTOR if device else 1)))
    for s in range(0, n, step):
        e = min(n, s + step)
        r = np.arange(s, e)
        in_s = pos[r] >= 0
        same = (np.nonzero(in_s)[0], pos[r][in_s])
        sums, sums2 = kernel_sums(X[s:e], sq[s:e], float(sigma), same, squares=True)  # (b, m) each
        own = idx[r]
        ar = np.arange(e - s)
        # Leave i out of its own cluster's sample (w_ii = 1, w_ii^2 = 1).
        sums[ar[in_s], own[in_s]] -= 1.0
        sums2[ar[in_s], own[in_s]] -= 1.0
        cnt = np.broadcast_to(m_c, sums.shape).copy()
        cnt[ar[in_s], own[in_s]] -= 1.0
        pop = np.broadcast_to(counts, sums.shape).copy()
        pop[ar, own] -= 1.0  # the own cluster's population excludes i
        mean, se = _means_and_errors(sums, sums2, cnt, pop)
        scores[s:e], se_s[s:e] = _scores_and_errors(mean, se, own, counts, z)
        if delta is not None and refine_z > 0:  # refine_z <= 0: no refinement
            b = np.nonzero((np.abs(scores[s:e] - float(delta)) <= z * se_s[s:e]) & (se_s[s:e] > 0))[0]
            border_rows.append(b + s)
            border_mean.append(mean[b])
            border_se.append(se[b])
    stage_rows: list[int] = []
    stage_clusters: list[float] = []  # mean clusters re-estimated per video, per stage
    n_borderline = n_dropped = n_exact = 0
    rows = np.zeros(0, dtype=np.int64)
    if border_rows:
        rows = np.concatenate(border_rows)
        mean, se = np.concatenate(border_mean), np.concatenate(border_se)
        n_borderline = len(rows)
        # A random few of them, for a check against exact scores (the benchmark's); a stream of its
        # own, so that the refinement's draws do not depend on it.
        check_rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, STREAM_PLRI, 1])
        info["plri_borderline_sample"] = np.sort(check_rng.choice(rows, min(len(rows), 300), replace=False))
        # 0: every member. A sample as large as the largest cluster is that already.
        stages = [int(k) for k in refine_samples if sample < int(k) < counts.max()] + [0]
        for k in stages:
            if not len(rows):
                break
            if k == 0:
                cap = int(refine_max_frac * n)
                if len(rows) > cap:
                    margin = np.abs(scores[rows] - float(delta)) / se_s[rows]
                    keep = np.sort(np.argsort(margin, kind="stable")[:cap])
                    n_dropped = len(rows) - cap
                    warnings.warn(
                        f"sampled PLRI: {n_dropped} of {len(rows)} borderline videos (|s - delta| <= {refine_z:g} se) "
                        f"not re-computed exactly (cap refine_max_frac={refine_max_frac:g} of N={n}); their P/U side may be wrong",
                        stacklevel=2,
                    )
                    rows, mean, se = rows[keep], mean[keep], se[keep]
                n_exact = len(rows)
                if not len(rows):
                    break
            stage_rows.append(len(rows))
            own = idx[rows]
            rel = _relevant_clusters(mean, se, own, z)
            stage_clusters.append(float(rel.sum(axis=1).mean()))
            for c in range(m):
                sel = np.nonzero(rel[:, c])[0]
                if not len(sel):
                    continue
                mem = members[c]
                cols = mem if k == 0 or len(mem) <= k else np.sort(rng.choice(mem, k, replace=False))
                population = counts[c] - (own[sel] == c)
                mean[sel, c], se[sel, c] = _cluster_means(X, sq, rows[sel], cols, population, float(sigma), device)
            scores[rows], se_s[rows] = _scores_and_errors(mean, se, own, counts, z)
            still = (np.abs(scores[rows] - float(delta)) <= z * se_s[rows]) & (se_s[rows] > 0)
            rows, mean, se = rows[still], mean[still], se[still]
    info["plri_device"] = device or "numpy"
    info["plri_sample"] = int(sample)
    info["plri_borderline"] = int(n_borderline)
    info["plri_stage_rows"] = stage_rows
    info["plri_stage_clusters"] = stage_clusters
    info["plri_refine_dropped"] = int(n_dropped)
    info["plri_refined"] = int(n_exact)
    info["plri_undecided"] = int(len(rows))
    info["plri_se_max"] = float(se_s.max())
    info["plri_se_mean"] = float(se_s.mean())
    return scores, se_s
