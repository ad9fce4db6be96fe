"""On a CUDA device: training, inference and the kNN graph give what the CPU gives.

Skipped where torch sees no GPU (CI has none); the project's GPU check runs this file on a lent GPU
machine, where ray, mlflow and faiss are not installed, so nothing here needs them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from copl_dist.cli import main
from copl_dist.cluster.knn import knn_search
from copl_dist.config import resolve, to_dict
from copl_dist.data.formats import import_dataset
from copl_dist.data.synth import make_synthetic
from copl_dist.method.engine import infer_video, resolve_device, train_loop_per_worker
from copl_dist.method.model import IOCNet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

NUM_CLASSES = 3
# No dropout: its masks come from the CUDA generator on the GPU and the CPU generator on the CPU, so
# they differ for the same seed (measured: losses 1% apart after 3 epochs with dropout 0.5).
TINY = {"model.hidden_dim": 32, "tracking.enabled": False, "train.epochs": 3, "train.batch_size": 4,
        "data.snippets": 32, "train.shift_channels": 64, "model.dropout": 0.0}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu")
    make_synthetic(tmp / "raw", videos=8, classes=NUM_CLASSES, duration_scale=0.15, seed=0)
    return import_dataset(tmp / "raw", tmp / "corpus")


@pytest.fixture(autouse=True)
def _exact_float32():
    # TF32 would make the GPU's matmuls and convolutions differ from the CPU's by ~1e-3 relative.
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _cuda_allocations() -> int:
    """How many CUDA allocations this process has made: a difference across a call proves that the
    call put something on the GPU (a result equal to the CPU's proves nothing if it ran there)."""
    return int(torch.cuda.memory_stats().get("allocation.all.allocated", 0))


def _train(corpus, device: str) -> dict:
    cfg = resolve("thumos14", overrides=TINY)
    ids = corpus.video_ids(cfg.data.train_subset)
    labels = np.arange(len(ids)) % NUM_CLASSES
    return train_loop_per_worker({
        "cfg": to_dict(cfg), "corpus": str(corpus.root), "video_ids": ids,
        "targets": np.eye(NUM_CLASSES, dtype=np.float32)[labels], "labelled": np.ones(len(ids), dtype=bool),
        "num_classes": NUM_CLASSES, "iteration": 0, "collect_votes": True, "device": device,
    })


def test_auto_device_is_the_gpu():
    assert resolve_device("auto").type == "cuda"


def test_training_on_gpu_matches_cpu(corpus):
    torch.cuda.reset_peak_memory_stats()
    gpu = _train(corpus, "cuda")
    assert torch.cuda.max_memory_allocated() > 0, "nothing was placed on the GPU"
    cpu = _train(corpus, "cpu")
    # Same seed, same batches, same shift channels; only the kernels' summation order differs.
    for g, c in zip(gpu["history"], cpu["history"]):
        for key in c:
            assert g[key] == pytest.approx(c[key], rel=1e-3, abs=1e-5), key
    assert all(t.device.type == "cpu" for t in gpu["teacher"].values())  # checkpoints load anywhere
    for key in cpu["teacher"]:
        torch.testing.assert_close(gpu["teacher"][key], cpu["teacher"][key], rtol=1e-3, atol=1e-4)
    assert gpu["votes"].keys() == cpu["votes"].keys()
    for vid in cpu["votes"]:
        np.testing.assert_allclose(gpu["votes"][vid], cpu["votes"][vid], rtol=1e-3, atol=1e-4)


def test_inference_on_gpu_matches_cpu(corpus):
    model = IOCNet(NUM_CLASSES, 2048, 32, 0.0).eval()
    x = corpus.features(corpus.video_ids("test")[0])
    cpu = infer_video(model, x, 1 / 3, 1 / 8)
    model.to("cuda")
    before = _cuda_allocations()
    gpu = infer_video(model, x, 1 / 3, 1 / 8)
    assert _cuda_allocations() > before  # the features went to the model's device
    for field in ("cas", "a_cs", "a_ca", "h_cs", "class_scores"):
        np.testing.assert_allclose(getattr(gpu, field), getattr(cpu, field), rtol=1e-4, atol=1e-5)


def test_knn_torch_on_gpu_matches_brute_force():
    X = np.random.default_rng(4).normal(size=(3000, 64))
    d_ref, i_ref = knn_search(X, 10, backend="numpy")
    before = _cuda_allocations()
    d, i = knn_search(X, 10, backend="torch")
    assert _cuda_allocations() > before
    assert np.mean(i == i_ref) > 0.999  # float32 on the GPU may swap near-ties
    np.testing.assert_allclose(d, d_ref, rtol=1e-3, atol=1e-3)


def test_plri_kernel_sums_on_gpu_match_numpy():
    from copl_dist.bench.cluster import make_cluster_features
    from copl_dist.cluster.plri_scale import plri_scores_blocked, plri_scores_sampled
    from copl_dist.cluster.scale import cluster_videos_scale, estimate_sigma

    X, _ = make_cluster_features(3000, 64, n_clusters=10, seed=8, separation=0.8)
    labels = cluster_videos_scale(X, 10, seed=0, delta=0.0, plri_device=None)[0]
    sigma = estimate_sigma(X)
    before = _cuda_allocations()
    on_gpu = plri_scores_blocked(X, labels, sigma, device="cuda")
    assert _cuda_allocations() > before
    np.testing.assert_allclose(on_gpu, plri_scores_blocked(X, labels, sigma), atol=1e-9)
    info: dict = {}
    s_gpu, se_gpu = plri_scores_sampled(X, labels, sigma, sample=40, seed=1, delta=0.0, info=info, device="cuda")
    s_np, se_np = plri_scores_sampled(X, labels, sigma, sample=40, seed=1, delta=0.0)
    assert info["plri_device"] == "cuda"
    np.testing.assert_allclose(s_gpu, s_np, atol=1e-6)
    np.testing.assert_allclose(se_gpu, se_np, atol=1e-6)
    info = {}
    before = _cuda_allocations()
    cluster_videos_scale(X, 10, seed=0, delta=0.0, plri_method="sampled", info=info)
    assert info["plri_device"] == "cuda" and _cuda_allocations() > before  # "auto" takes the GPU


def test_copl_run_on_gpu(corpus, tmp_path):
    raw = tmp_path / "raw"
    make_synthetic(raw, preset="thumos14", videos=10, classes=NUM_CLASSES, seed=1, duration_scale=0.15)
    out = tmp_path / "out"
    argv = ["run", "--data", str(raw), "--out", str(out), "--iterations", "2", "--epochs", "2", "--snippets", "32",
            "--workers", "0", "--no-progress", "--set", "tracking.enabled=false", "--set", "train.device=cuda",
            "--set", "model.hidden_dim=32", "--set", "train.batch_size=4"]
    before = _cuda_allocations()
    assert main(argv) == 0
    assert _cuda_allocations() > before  # training and inference ran on the GPU
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["iterations"]) == 2
    assert (out / "detections.json").is_file()
