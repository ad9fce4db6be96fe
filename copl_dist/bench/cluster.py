"""`copl bench cluster`: seconds and peak memory of video clustering per N, exact and scale paths.

    copl bench cluster --n 1000,10000,100000 --dim 2048 --out runs/bench-cluster

Synthetic global features with cluster structure (`make_cluster_features`: 20 clusters of unequal
size and spread in a 32-dim latent space, a quarter of them overlapping a neighbour, projected to
`--dim` dims with isotropic noise, ReLU'd like I3D features and L2-normalised). For each N, each path
runs in a fresh subprocess (so peak memory is its own; `ru_maxrss` of that process, and per stage the
peak of /proc/self/statm sampled every 10 ms; "base GB" is the process after imports and the
features, before clustering):

- exact: cluster/exact.py (dense (N, N) float64 Gaussian affinity, scikit-learn spectral clustering, dense
  PLRI), only while its N x N matrices fit (`--exact-max-gb`), else "skipped: would need X GB";
- nystrom: cluster/scale.py with affinity='nystrom' (landmark approximation of the full kernel);
- knn: cluster/scale.py with affinity='knn' (the default scale path: the FAISS kNN graph of the top
  `--knn-pca` principal components, by default twice the clusters; exact flat index up to 50,000
  rows, above IVF-Flat; recall@k of the search in that space measured on 500 queries).

Both scale paths use sigma from a 4096-row sample and, above 20,000 videos, per-cluster sampled PLRI
(32 members a cluster, borderline videos refined in stages, plri_scale.plri_scores_sampled); its
error there is measured against exact PLRI of the same labels on 1000 random videos and on 300 of
the videos the first stage left borderline. Reported: seconds per stage, peak memory,
ARI / NMI against the generating labels, and, where the exact path ran, the agreement of each scale
path with it (ARI, share of videos on the same P/U side, max |s - s_exact|). Written: OUT/bench.json,
OUT/bench.md (the table), OUT/bench.png (seconds and memory against N, log-log).

Reaching N = 1,000,000 on one GPU
---------------------------------
A plan (this module's GPU pieces today: the FAISS GPU indexes and k-means when FAISS sees a GPU, the
torch kNN back end and PLRI's kernel sums on CUDA; the PCA and Nystroem are numpy). Features:
10^6 x 2048 float32 = 8.2 GB (4.1 GB in float16), resident on the GPU.

- sigma: a 4096-row sample, (4096 x 4096) distances: 67 MB, milliseconds.
- kNN path (default): PCA to 40 components (twice the clusters) fitted on 10,000 rows, the
  projection 10^6 x 2048 x 40 x 2 = 0.16 TFLOP (6 s on 2 CPU cores); FAISS GPU IVF-Flat on the
  components (k = 30 neighbours: indices 10^6 x 30 int64 = 240 MB), or the torch
  blocked matmul + top-k back end of this module (exact, 10^12 pairs x 256 = 0.5 PFLOP: well under a
  minute of H100 float32; 14 s were measured for 250,000 rows at 2048 dims, 16x fewer pairs and 8x
  more dims); the graph has <= 6 x 10^7 non-zeros (0.7 GB as CSR) and its 20 eigenvectors come from
  scipy's `eigsh` on the CPU (ARPACK on a sparse matrix-vector product: 8 s at 250,000 rows).
- Nystroem path: m = 1000 landmarks; K(X, L) in row blocks (10^6 x 1000 x 2048 x 2 = 4 TFLOP
  of float32 GEMM, under a second on an H100) folded straight into Z = K(X, L) K(L, L)^-1/2
  (10^6 x 1000 float32 = 4 GB); Z^T Z (1000 x 1000) and two 1000 x 1000 eigenproblems; embedding
  10^6 x 20. In numpy on the CPU today; with torch this is a few seconds.
- k-means: FAISS GPU k-means (or torch) on the 10^6 x 20 embedding: 10 restarts in seconds.
- PLRI: per-cluster samples of 32 members: 10^6 x (20 x 32) kernel entries = 2.6 TFLOP at 2048
  dims; the staged refinement of the borderline videos (6% of them at 32 members) about 3 TFLOP
  more (docs/scale.md); seconds on a GPU. The exact PLRI for every video would be 10^12 kernel
  entries = 4 PFLOP: minutes.
- The dense path is out of reach: one (10^6 x 10^6) float64 matrix is 8 TB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from copl_dist.cluster import exact as cluster
from copl_dist.cluster import knn, plri_scale
from copl_dist.cluster import scale as cluster_scale
from copl_dist.common.atomic import atomic_path, write_json, write_text
from copl_dist.common.errors import InputError
from copl_dist.run.report import table

PATHS = ("exact", "nystrom", "knn")
# (N, N) float64 matrices the exact path holds at its peak: measured 3.75 above the input at N = 10,000.
EXACT_MATRICES = 4


# ------------------------------------------------------------------------------------------
# synthetic features


def make_cluster_features(
    n: int,
    dim: int,
    n_clusters: int = 20,
    seed: int = 0,
    separation: float = 1.0,
    latent: int = 32,
    noise: float = 0.35,
    chunk: int = 10_000,
) -> tuple[np.ndarray, np.ndarray]:
    """(N, dim) float32 L2-normalised features and (N,) int64 generating labels.

    Clusters: sizes proportional to U(0.5, 1.5); latent centres N(0, separation^2 / 2) in `latent`
    dims; every fourth cluster's centre is placed next to the previous one (offset 0.35 * separation
    per dim), so those pairs overlap; per-cluster spread U(0.6, 1.4) / 4 per latent dim. Latent
    points are projected by a fixed Gaussian (latent, dim) matrix, isotropic noise of std `noise`
    is added, then ReLU (I3D features are non-negative) and L2 normalisation. Generated in chunks of
    rows (peak memory about 2 x chunk x dim x 8 bytes beyond the output).
    """
    rng = np.random.default_rng([seed, 0])
    weights = rng.uniform(0.5, 1.5, n_clusters)
    truth = rng.choice(n_clusters, n, p=weights / weights.sum()).astype(np.int64)
    centers = rng.normal(size=(n_clusters, latent)) * separation / np.sqrt(2)
    for c in range(1, n_clusters, 4):
        centers[c] = centers[c - 1] + rng.normal(size=latent) * separation * 0.35
    spread = rng.uniform(0.6, 1.4, n_clusters) / 4
    P = rng.normal(size=(latent, dim)) / np.sqrt(latent)
    out = np.empty((n, dim), dtype=np.float32)
    for i, s in enumerate(range(0, n, chunk)):
        e = min(n, s + chunk)
        r = np.random.default_rng([seed, 1, i])
        t = truth[s:e]
        z = centers[t] + spread[t, None] * r.normal(size=(e - s, latent))
        x = z @ P + noise * r.normal(size=(e - s, dim))
        np.maximum(x, 0.0, out=x)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        out[s:e] = x
    return out, truth


# ------------------------------------------------------------------------------------------
# memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _RssSampler:
    """Samples this process's resident set size every `period_s` in a thread."""

    def __init__(self, period_s: float = 0.01) -> None:
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period_s,), daemon=True)

    def _run(self, period_s: float) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), _rss_bytes()))
            self._stop.wait(period_s)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, t0: float, t1: float, period_s: float = 0.01) -> int:
        """Largest sample in [t0, t1], widened by one period so a stage shorter than it still
        gets the samples on either side."""
        vals = [r for t, r in self.samples if t0 - period_s <= t <= t1 + period_s]
        return max(vals) if vals else 0


def _mem_available_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def exact_need_gb(n: int, dim: int) -> float:
    """Peak memory estimate of the exact path: EXACT_MATRICES (N, N) float64 + the float64 features."""
    return (EXACT_MATRICES * n * n * 8 + n * dim * 8) / 2**30


# ------------------------------------------------------------------------------------------
# one (path, N) in a fresh process


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


    n, dim, k, seed, path = spec["n"], spec["dim"], spec["clusters"], spec["seed"], spec["path"]
    result: dict[str, Any] = {"path": path, "n": n, "dim": dim}
    with _RssSampler() as sampler:
        t0 = time.perf_counter()
        F, truth = make_cluster_features(n, dim, k, seed=seed, separation=spec["separation"])
        result["generate_s"] = time.perf_counter() - t0
        base = _rss_bytes()
        info: dict[str, Any] = {"seconds": {}, "intervals": []}
        t_start = time.perf_counter()
        if path == "exact":
            stages = info["intervals"]
            t = time.perf_counter()
            W = cluster.gaussian_affinity(F)
            stages.append(("affinity", t, time.perf_counter()))
            t = time.perf_counter()
            labels = cluster.spectral_clustering(W, k, seed)
            stages.append(("eigen+kmeans", t, time.perf_counter()))
            t = time.perf_counter()
            scores = cluster.plri_scores(W, labels)
            stages.append(("plri", t, time.perf_counter()))
            del W
            mask = cluster.plri_split(scores, spec["delta"])
            info["seconds"] = {name: b - a for name, a, b in stages}
        else:
            info["keep_knn"] = path == "knn"
            labels, scores, mask = cluster_scale.cluster_videos_scale(
                F, k, seed, spec["delta"], affinity=path, knn=spec["knn"], knn_pca=spec["knn_pca"],
                backend=spec["backend"], info=info,
            )
        total_s = time.perf_counter() - t_start
        end = time.perf_counter()
    result["seconds"] = {name: float(v) for name, v in info["seconds"].items()}
    result["total_s"] = total_s
    result["input_rss_gb"] = base / 2**30
    result["stage_peak_gb"] = {name: sampler.peak(a, b) / 2**30 for name, a, b in info["intervals"]}
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    result["sampled_peak_gb"] = sampler.peak(t_start, end) / 2**30
    result["ari"] = float(adjusted_rand_score(truth, labels))
    result["nmi"] = float(normalized_mutual_info_score(truth, labels))
    result["pseudo_labelled"] = float(mask.mean())
    for key in ("sigma", "graph_sigma", "knn_dims", "knn_k", "knn_index", "graph_components", "graph_edges", "plri_method",
                "plri_refined", "plri_borderline", "plri_refine_dropped", "plri_se_max", "plri_device", "plri_sample",
                "plri_stage_rows", "plri_stage_clusters", "plri_undecided",
                "nystrom_landmarks", "nystrom_rank"):
        if key in info:
            result[key] = info[key]
    if path == "knn" and "knn_indices" in info:
        t = time.perf_counter()
        # Recall of the search in the space it ran in (the principal components with knn_pca).
        dims = info["knn_dims"]
        Y = knn.pca_project(F, dims, seed) if dims < F.shape[1] else F  # as the scale path projected them
        result["knn_recall"] = knn.knn_recall(Y, info["knn_indices"], n_queries=500, seed=seed)
        result["knn_recall_check_s"] = time.perf_counter() - t
    if info.get("plri_method") == "sampled":
        # Sampled PLRI against exact PLRI of the same labels (outside the timings): on random videos,
        # and on the videos whose side the first stage left in doubt, where an error would show.
        device = None if info.get("plri_device") in (None, "numpy") else info["plri_device"]

        def check(rows: np.ndarray) -> dict[str, Any]:
            t = time.perf_counter()
            exact = plri_scale.plri_scores_blocked(F, labels, info["sigma"], rows=rows, dtype=np.float32, device=device)
            return {"videos": len(rows), "max_abs_err": float(np.abs(exact - scores[rows]).max()),
                    "side_differs": float(np.mean((exact >= spec["delta"]) != mask[rows])), "seconds": time.perf_counter() - t}

        result["plri_check"] = check(np.sort(np.random.default_rng([seed, 7]).choice(n, min(n, 1000), replace=False)))
        border = info.get("plri_borderline_sample")
        if border is not None and len(border):
            result["plri_border_check"] = check(border)
    np.savez(spec["arrays"], labels=labels, scores=scores, mask=mask)
    return result


def _run_worker(spec: dict[str, Any], threads: int | None) -> dict[str, Any]:
    env = dict(os.environ)
    if threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    proc = subprocess.run(
        [sys.executable, "-m", "copl_dist.bench.cluster", "--worker", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return {"path": spec["path"], "n": spec["n"], "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(Path(spec["result"]).read_text())


# ------------------------------------------------------------------------------------------
# the command


def _parse_ns(text: str) -> list[int]:
    try:
        ns = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--n {text!r}: expected comma-separated integers, e.g. 1000,10000,100000") from None
    if not ns or any(v < 2 for v in ns):
        raise InputError(f"--n {text!r}: every N must be at least 2")
    return ns


def _agreement(out: Path, n: int, path: str) -> dict[str, float] | None:
    from sklearn.metrics import adjusted_rand_score

    a, b = out / "work" / f"exact-{n}.npz", out / "work" / f"{path}-{n}.npz"
    if not (a.exists() and b.exists()):
        return None
    ea, eb = np.load(a), np.load(b)
    return {
        "ari": float(adjusted_rand_score(ea["labels"], eb["labels"])),
        "same_side": float(np.mean(ea["mask"] == eb["mask"])),
        "max_abs_score_diff": float(np.abs(ea["scores"] - eb["scores"]).max()),
    }


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _table(rows: list[dict[str, Any]]) -> str:
    stages = ["sigma", "pca", "knn", "affinity", "eigen", "eigen+kmeans", "kmeans", "plri"]
    headers = ["N", "path", "total s", *[f"{s} s" for s in stages], "base GB", "peak GB", "ARI", "NMI", "vs exact ARI", "same P/U", "note"]
    body = []
    for r in rows:
        if "skipped" in r or "error" in r:
            body.append([str(r["n"]), r["path"], *["-"] * (len(headers) - 3), r.get("skipped") or f"error: {r['error']}"])
            continue
        sec = r["seconds"]
        agree = r.get("agreement") or {}
        note = []
        if "knn_recall" in r:
            note.append(f"recall@k {r['knn_recall']:.3f}")
        if "plri_check" in r:
            pc = r["plri_check"]
            note.append(f"PLRI sampled: max err {pc['max_abs_err']:.3f}, side differs {100 * pc['side_differs']:.1f}%")
            if r.get("plri_borderline") is not None:
                refined = r.get("plri_stage_rows") or []
                note.append(f"{r['plri_borderline']} borderline, refined in stages of {'/'.join(map(str, refined)) or '0'} videos,"
                            f" {r.get('plri_refined', 0)} of them from all members, {r.get('plri_refine_dropped', 0)} left by the cap,"
                            f" {r.get('plri_undecided', 0)} undecided")
            if "plri_border_check" in r:
                bc = r["plri_border_check"]
                note.append(f"{bc['videos']} borderline checked: max err {bc['max_abs_err']:.4f}, side differs {100 * bc['side_differs']:.1f}%")
        if r.get("plri_device") not in (None, "numpy"):
            note.append(f"PLRI on {r['plri_device']}")
        body.append(
            [str(r["n"]), r["path"], f"{r['total_s']:.1f}", *[_fmt(sec.get(s), ".1f") for s in stages],
             f"{r['input_rss_gb']:.2f}", f"{r['peak_rss_gb']:.2f}", f"{r['ari']:.3f}", f"{r['nmi']:.3f}", _fmt(agree.get("ari"), ".3f"),
             _fmt(None if not agree else 100 * agree["same_side"], ".2f"), "; ".join(note)]
        )
    return table(headers, body)


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for name, style in zip(PATHS, ("o-", "s-", "^-")):
        done = [r for r in rows if r["path"] == name and "total_s" in r]
        if not done:
            continue
        ns = [r["n"] for r in done]
        ax1.plot(ns, [r["total_s"] for r in done], style, label=name)
        ax2.plot(ns, [r["peak_rss_gb"] for r in done], style, label=name)
        for r in rows:
            if r["path"] == name and "skipped" in r:
                ax2.plot([r["n"]], [r["need_gb"]], "x", color=ax2.lines[-1].get_color())
                ax2.annotate(f"{name}: would need {r['need_gb']:.0f} GB", (r["n"], r["need_gb"]), fontsize=7,
                             textcoords="offset points", xytext=(-90, -12))
    for ax, label in ((ax1, "seconds (clustering + PLRI)"), (ax2, "peak memory (GB, process RSS)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N videos")
        ax.set_ylabel(label)
        ax.grid(True, which="both", lw=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("copl bench cluster", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    ns = _parse_ns(args.n)
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    bad = [p for p in paths if p not in PATHS]
    if bad:
        raise InputError(f"--paths {args.paths!r}: unknown path(s) {', '.join(bad)}; expected a subset of {', '.join(PATHS)}")
    if args.dim < 1 or args.clusters < 2:
        raise InputError(f"--dim {args.dim} / --clusters {args.clusters}: need dim >= 1 and at least 2 clusters")
    small = [n for n in ns if n <= args.clusters]
    if small:
        raise InputError(f"--n {args.n!r}: N = {small[0]} needs more videos than --clusters {args.clusters}")
    out = Path(args.out)
    (out / "work").mkdir(parents=True, exist_ok=True)
    budget_gb = min(float(args.exact_max_gb), 0.6 * _mem_available_gb())
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for n in ns:
        for path in paths:
            if path == "exact" and exact_need_gb(n, args.dim) > budget_gb:
                need = exact_need_gb(n, args.dim)
                rows.append({"path": path, "n": n, "need_gb": need,
                             "skipped": f"skipped: would need ~{need:.0f} GB (budget {budget_gb:.1f} GB)"})
                print(f"N={n:>8} {path:8s} skipped: would need ~{need:.1f} GB", flush=True)
                continue
            spec = {
                "path": path, "n": n, "dim": args.dim, "clusters": args.clusters, "seed": args.seed,
                "separation": args.separation, "delta": args.delta, "knn": args.knn, "knn_pca": args.knn_pca, "backend": args.backend,
                "arrays": str(out / "work" / f"{path}-{n}.npz"), "result": str(out / "work" / f"{path}-{n}.json"),
            }
            r = _run_worker(spec, args.threads or None)
            if path != "exact" and "error" not in r:
                r["agreement"] = _agreement(out, n, path)
            rows.append(r)
            if "error" in r:
                print(f"N={n:>8} {path:8s} error: {r['error']}", flush=True)
            else:
                agree = r.get("agreement")
                print(f"N={n:>8} {path:8s} {r['total_s']:8.1f} s  peak {r['peak_rss_gb']:6.2f} GB  ARI {r['ari']:.3f}"
                      + (f"  vs exact ARI {agree['ari']:.3f} same P/U {100 * agree['same_side']:.2f}%" if agree else ""), flush=True)
    text = _table(rows)
    load = os.getloadavg()
    header = (f"copl bench cluster: dim {args.dim}, {args.clusters} clusters, separation {args.separation}, seed {args.seed}, "
              f"{os.cpu_count()} CPUs, load average {load[0]:.1f} at the end, {time.perf_counter() - started:.0f} s in all")
    print(header)
    print(text)
    write_json(out / "bench.json", {"args": {k: v for k, v in vars(args).items() if not callable(v)}, "cpus": os.cpu_count(),
                                    "load_average": load, "rows": rows})
    write_text(out / "bench.md", header + "\n\n```\n" + text + "\n```\n")
    _plot(rows, out / "bench.png")
    return 0


def _worker_main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    result = _worker(spec)
    Path(spec["result"]).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":  # a worker process of `copl bench cluster`
    sys.exit(_worker_main(sys.argv[1:]))
