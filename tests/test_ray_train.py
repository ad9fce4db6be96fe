"""IOCNet training on Ray Train (copl_dist.distributed.train) on a local Ray with 2 CPUs.

Ray fits cost ~15-35 s each on two cores, so the runs are shared through module fixtures:
one undisturbed 2-worker pipeline, one 1-worker fit of its first training, one pipeline whose rank 1
SIGKILLs itself, one failing fit.
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from copl_dist.common.errors import InputError
from copl_dist.config import resolve
from copl_dist.data.formats import import_dataset
from copl_dist.data.synth import make_synthetic
from copl_dist.method import engine
from copl_dist.run.driver import CoplRun, default_train_fn

# All videos pseudo-labelled (no PLRI) and no dropout: then 1 and 2 workers compute the same loss
# (module docstring of test_one_and_two_workers_same_losses).
TINY = {
    "iterations": 2,
    "train.epochs": 3,
    "train.batch_size": 4,
    "data.snippets": 32,
    "model.hidden_dim": 32,
    "model.dropout": 0.0,
    "train.shift_channels": 64,
    "cluster.plri": False,
    "tracking.enabled": False,
}


def _cfg(**distributed):
    return resolve("thumos14", overrides={**TINY, **{f"distributed.{k}": v for k, v in distributed.items()}})


class Recorder:
    """A train_fn that remembers every call's config and result."""

    def __init__(self, train_fn, extra=None):
        self.train_fn, self.extra, self.calls = train_fn, extra or {}, []

    def __call__(self, config, report=None):
        out = self.train_fn({**config, **self.extra}, report=report)
        self.calls.append((config, out))
        return out


# -- no Ray ----------------------------------------------------------------------------------------
def test_resolve_workers(monkeypatch):
    from copl_dist.distributed import ray_runtime

    monkeypatch.setattr(ray_runtime, "_available_gpus_cpus", lambda: (0, 2))
    assert ray_runtime.resolve_workers(3) == (3, False)
    assert ray_runtime.resolve_workers(2, use_gpu="true") == (2, True)  # e.g. GPU nodes not up yet
    assert ray_runtime.resolve_workers(-1) == (1, False)
    monkeypatch.setattr(ray_runtime, "_available_gpus_cpus", lambda: (0, 16))
    assert ray_runtime.resolve_workers(-1) == (8, False)
    monkeypatch.setattr(ray_runtime, "_available_gpus_cpus", lambda: (4, 64))
    assert ray_runtime.resolve_workers(-1) == (4, True)
    # An explicit worker count takes a GPU each (NCCL) where there is one for every worker, unless
    # told not to; more workers than GPUs could never be placed, so auto trains them on CPUs.
    assert ray_runtime.resolve_workers(2) == (2, True)
    assert ray_runtime.resolve_workers(4) == (4, True)
    assert ray_runtime.resolve_workers(5) == (5, False)
    assert ray_runtime.resolve_workers(5, use_gpu="true") == (5, True)
    assert ray_runtime.resolve_workers(2, use_gpu="false") == (2, False)
    assert ray_runtime.resolve_workers(-1, use_gpu="false") == (32, False)
    with pytest.raises(ValueError, match="-2"):
        ray_runtime.resolve_workers(-2)
    with pytest.raises(ValueError, match="maybe"):
        ray_runtime.resolve_workers(2, use_gpu="maybe")


def test_workers_capped_at_the_global_batch():
    """More workers than videos in a global batch would drop every batch (engine.epoch_batches)."""
    from copl_dist.distributed.train import cap_workers

    assert cap_workers(-1, 17, batch_size=16, num_videos=200) == (16, None)  # auto on a 34-core node: silent
    assert cap_workers(-1, 4, batch_size=16, num_videos=3) == (3, None)  # fewer videos than the batch
    assert cap_workers(8, 8, batch_size=16, num_videos=200) == (8, None)
    capped, warning = cap_workers(20, 20, batch_size=16, num_videos=200)
    assert capped == 16
    assert warning == ("copl: warning: distributed.workers 20 capped at 16: the global batch has 16 videos "
                       "(train.batch_size 16, 200 training videos)")


def test_ray_address_order(monkeypatch):
    from copl_dist.distributed.ray_runtime import ray_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address(_cfg().distributed) == "local"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert ray_address(_cfg().distributed) == "10.0.0.1:6379"
    assert ray_address(_cfg(ray_address="ray://head:10001").distributed) == "ray://head:10001"


def test_copl_run_workers_default(monkeypatch, tmp_path):
    from copl_dist.cli.parser import build_parser
    from copl_dist.cli.run import run_request
    from copl_dist.run.plan import run_workers

    def workers(*argv):
        return run_workers(run_request(build_parser().parse_args(["run", *argv])))

    monkeypatch.delenv("COPL_WORKERS", raising=False)
    assert workers() == -1  # the embedded default: fitted to the machine
    assert workers("--workers", "0") == 0 and workers("--workers", "3") == 3
    assert workers("--set", "distributed.workers=2") is None  # --set decides
    conf = tmp_path / "c.yaml"
    conf.write_text("distributed:\n  workers: 0\n")
    assert workers("--config", str(conf)) is None  # the file decides
    monkeypatch.setenv("COPL_WORKERS", "0")
    assert workers() == 0
    for bad in ("two", "-5"):  # blamed on the variable, not on a --workers nobody gave
        monkeypatch.setenv("COPL_WORKERS", bad)
        with pytest.raises(InputError, match=rf"^\$COPL_WORKERS: expected -1, 0 or a worker count, got '{bad}'$"):
            workers()


def test_default_train_fn_in_process_unless_workers(monkeypatch, tmp_path):
    from copl_dist.distributed import train as ray_train
    from copl_dist.run import driver

    assert default_train_fn(_cfg()) is engine.train_loop_per_worker
    built = []
    monkeypatch.setattr(driver, "make_ray_train_fn", lambda cfg, storage: built.append((cfg.distributed.workers, storage)) or "ray")
    assert default_train_fn(_cfg(workers=2), tmp_path) == "ray"
    from copl_dist.distributed import ray_runtime

    # -1 fits the machine: one CPU worker on this machine trains in-process (the faster path); more
    # workers, a GPU or a cluster train on Ray Train.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_runtime, "_available_gpus_cpus", lambda: (0, 2))
    assert default_train_fn(_cfg(workers=-1)) is engine.train_loop_per_worker
    monkeypatch.setattr(ray_runtime, "_available_gpus_cpus", lambda: (0, 4))
    assert default_train_fn(_cfg(workers=-1)) == "ray"
    monkeypatch.setattr(ray_runtime, "_available_gpus_cpus", lambda: (1, 2))
    assert default_train_fn(_cfg(workers=-1)) == "ray"
    # A GPU the workers are told not to use: in-process training would take it, so Ray Train.
    assert default_train_fn(_cfg(workers=-1, use_gpu="false")) == "ray"
    monkeypatch.setattr(ray_runtime, "_available_gpus_cpus", lambda: (0, 2))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert default_train_fn(_cfg(workers=-1)) == "ray"
    assert built == [(2, str(tmp_path / "ray_storage")), (-1, None), (-1, None), (-1, None), (-1, None)]
    monkeypatch.undo()
    fn = default_train_fn(_cfg(workers=2))  # the real one builds a Ray trainer and starts nothing
    assert fn is not engine.train_loop_per_worker and fn.__module__ == ray_train.__name__


def test_worker_failures_become_one_clear_error():
    from ray.train import WorkerGroupError

    from copl_dist.distributed.train import RayTrainingError, _raise_failure

    with pytest.raises(RayTrainingError, match=r"run 'r' failed.*rank 1: ValueError: boom") as info:
        _raise_failure("r", 2, WorkerGroupError("x", {1: ValueError("boom\nmore")}))
    assert isinstance(info.value.__cause__, WorkerGroupError)
    # Bad input found on a worker stays bad input: one line at the command line.
    with pytest.raises(InputError, match="^/x: not a corpus$"):
        bad = InputError("/x: not a corpus")
        _raise_failure("r", 2, WorkerGroupError("x", {0: bad, 1: bad}))


# -- on a local Ray -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local():
    import ray

    from copl_dist.distributed.ray_runtime import ensure_ray

    started = not ray.is_initialized()
    ensure_ray(_cfg().distributed, num_cpus=2)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_train")
    make_synthetic(root / "synth", videos=8, classes=3, duration_scale=0.15, seed=0)
    return import_dataset(root / "synth", root / "corpus")


@pytest.fixture(scope="module")
def undisturbed(ray_local, corpus, tmp_path_factory):
    """The whole pipeline (2 iterations) with IOCNet trained by 2 Ray workers."""
    from copl_dist.distributed.train import make_ray_train_fn

    cfg = _cfg(workers=2)
    rec = Recorder(make_ray_train_fn(cfg, tmp_path_factory.mktemp("storage")))
    result = CoplRun(cfg, corpus, train_fn=rec, progress=False).execute()
    return result, rec


@pytest.fixture(scope="module")
def one_worker(ray_local, undisturbed, tmp_path_factory):
    """The undisturbed run's first training again, on 1 Ray worker."""
    from copl_dist.distributed.train import make_ray_train_fn

    config, _ = undisturbed[1].calls[0]
    reported = []
    out = make_ray_train_fn(_cfg(workers=1), tmp_path_factory.mktemp("storage"))(
        config, report=lambda m, c: reported.append((m, c))
    )
    return config, out, reported


@pytest.mark.ray
@pytest.mark.slow
def test_local_ray_listens_on_loopback(ray_local):
    assert ray_local.get_runtime_context().gcs_address.startswith("127.0.0.1:")


@pytest.mark.ray
@pytest.mark.slow
def test_one_and_two_workers_same_losses(undisturbed, one_worker):
    """The same global batch of 4 on 1 worker or split 2 + 2 over 2 workers gives the same losses.

    Each rank's loss is a mean over its own videos (masked means over the labelled ones), and DDP
    averages the ranks' gradients: with equal shards and every video labelled that is the global
    batch mean, so only float summation order differs (the DDP all-reduce; the 2 workers' torch
    runs 1 thread, the single worker 2, which splits the GEMMs differently). Measured: relative
    differences up to ~5e-7 after 3 epochs; the tolerance is 1e-4. With PLRI-unlabelled videos or
    unequal shards each rank's means are weighted by its share (engine.rank_share, tested in
    test_engine), so the logged losses are still the global batch's.
    """
    config, out1, reported = one_worker
    assert bool(np.all(config["labelled"]))  # the premise above
    out2 = undisturbed[1].calls[0][1]
    assert len(out1["history"]) == len(out2["history"]) == 3
    for h1, h2 in zip(out1["history"], out2["history"]):
        assert h1["epoch"] == h2["epoch"]
        for key in engine.LOSS_KEYS:
            assert h1[key] == pytest.approx(h2[key], rel=1e-4, abs=1e-9), key
    for name, w in out1["teacher"].items():
        torch.testing.assert_close(w, out2["teacher"][name], rtol=1e-4, atol=1e-6)
    # The caller's report sees every epoch's metrics (replayed after the fit) and no checkpoint.
    assert [m for m, _ in reported] == out1["history"] and all(c is None for _, c in reported)
    assert set(out1["votes"]) == set(config["video_ids"])


@pytest.mark.ray
@pytest.mark.slow
def test_two_workers_with_unequal_shards_log_the_global_losses(undisturbed, tmp_path):
    """Global batches of 3 split 2 + 1 over 2 workers, 3 of the 8 videos unlabelled (PLRI's U): each
    rank's means are over different numbers of (labelled) videos, and the logged losses are still the
    global batch's, equal to an in-process training on the same batches within the 1e-4 above."""
    from copl_dist.distributed.train import make_ray_train_fn

    config, _ = undisturbed[1].calls[0]
    labelled = np.ones(len(config["video_ids"]), bool)
    labelled[[1, 4, 6]] = False
    targets = np.where(labelled[:, None], np.asarray(config["targets"]), 0.0).astype(np.float32)
    cfg_dict = {**config["cfg"], "train": {**config["cfg"]["train"], "batch_size": 3}}
    config = {**config, "cfg": cfg_dict, "labelled": labelled, "targets": targets, "collect_votes": False}
    # 8 videos in batches of 3: 3, 3 and a last 2 (split 1 + 1); every rank gets a video of each.
    assert [len(b) for b in engine.epoch_batches(8, 3, 2, 0, 0, 0)] == [3, 3, 2]
    local = engine.train_loop_per_worker({**config, "device": "cpu"})
    ray2 = make_ray_train_fn(_cfg(workers=2), tmp_path / "storage")(config)
    assert len(local["history"]) == len(ray2["history"]) == 3
    for h1, h2 in zip(local["history"], ray2["history"]):
        for key in engine.LOSS_KEYS:
            assert h1[key] == pytest.approx(h2[key], rel=1e-4, abs=1e-9), (h1["epoch"], key)


def test_epoch_feed_passes_each_complete_epoch_once(tmp_path):
    """The driver's live feed: whole lines only, each epoch once (a restarted worker re-runs epochs)."""
    import json

    from copl_dist.distributed.train import EpochFeed

    path = tmp_path / "run.progress.jsonl"
    seen = []
    feed = EpochFeed(path, seen.append, interval_s=3600)  # polled by hand below
    feed.poll()  # no file yet: nothing
    with open(path, "w") as f:
        f.write(json.dumps({"epoch": 0.0, "loss": 3.0}) + "\n" + '{"epoch": 1.0, "lo')
    feed.poll()
    assert seen == [{"epoch": 0.0, "loss": 3.0}]  # the half-written line waits
    with open(path, "a") as f:
        f.write('ss": 2.5}\n' + json.dumps({"epoch": 1.0, "loss": 2.6}) + "\n")  # epoch 1 again
    with feed:  # the thread starts; leaving drains the rest and removes the file
        pass
    assert seen == [{"epoch": 0.0, "loss": 3.0}, {"epoch": 1.0, "loss": 2.5}]
    assert not path.exists()


def test_storage_locations_keep_uris(tmp_path, monkeypatch):
    import tempfile

    from copl_dist.distributed.train import storage_locations

    monkeypatch.chdir(tmp_path)
    assert storage_locations("ckpt") == (str(tmp_path / "ckpt"), tmp_path / "ckpt")  # absolute for the workers
    # A cloud URI goes to Ray Train as written (Path() would turn it into "<cwd>/s3:/bucket/runs").
    assert storage_locations("s3://bucket/runs") == ("s3://bucket/runs", Path(tempfile.gettempdir()))
    assert storage_locations(None) == (None, Path(tempfile.gettempdir()))


@pytest.mark.ray
@pytest.mark.slow
def test_ray_train_progress_arrives_while_training(ray_local, corpus, tmp_path):
    """Each epoch reaches `progress` once, from the feed thread while fit() still runs (not replayed
    afterwards), with the metrics the final history holds."""
    import threading

    from copl_dist.config import to_dict
    from copl_dist.distributed.train import make_ray_train_fn

    cfg = resolve("thumos14", overrides={**TINY, "train.epochs": 8, "distributed.workers": 1})
    ids = corpus.video_ids(cfg.data.train_subset)
    calls = []
    train_fn = make_ray_train_fn(cfg, tmp_path / "storage")
    assert train_fn.live_progress
    out = train_fn(
        {"cfg": to_dict(cfg), "corpus": str(corpus.root), "video_ids": ids,
         "targets": np.eye(3, dtype=np.float32)[np.arange(len(ids)) % 3], "labelled": np.ones(len(ids), dtype=bool),
         "num_classes": 3, "iteration": 0, "collect_votes": False},
        progress=lambda m: calls.append((m, threading.current_thread().name)),
    )
    assert [m for m, _ in calls] == out["history"]
    assert any(name == "copl-epoch-feed" for _, name in calls), "every epoch arrived only after the fit"
    assert list((tmp_path / "storage").glob("*.progress.jsonl")) == []


@pytest.mark.ray
@pytest.mark.slow
def test_in_process_and_one_ray_worker_identical(one_worker):
    """Same code path, same thread count (the worker has both CPUs, so torch uses 2 threads)."""
    config, out1, _ = one_worker
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        local = engine.train_loop_per_worker(config)
    finally:
        torch.set_num_threads(threads)
    assert local["history"] == out1["history"]
    for name, w in local["teacher"].items():
        assert torch.equal(w, out1["teacher"][name]), name
    assert all(np.array_equal(local["votes"][v], out1["votes"][v]) for v in config["video_ids"])


@pytest.mark.ray
@pytest.mark.slow
def test_worker_exception_surfaces_from_the_driver(ray_local, corpus, tmp_path):
    from ray.train import TrainingFailedError

    from copl_dist.distributed.train import make_ray_train_fn

    missing = tmp_path / "not-a-corpus"
    train_fn = make_ray_train_fn(_cfg(workers=1, max_failures=0), tmp_path / "storage")
    config = {
        "cfg": {}, "corpus": str(missing), "video_ids": corpus.video_ids("validation"),
        "targets": np.zeros((8, 3), np.float32), "labelled": np.zeros(8, bool), "num_classes": 3,
    }
    with pytest.raises(InputError, match="not-a-corpus") as info:
        train_fn(config)
    assert isinstance(info.value.__cause__, TrainingFailedError)


@pytest.mark.ray
def test_gpu_workers_beyond_the_local_gpus_are_refused(ray_local, corpus, tmp_path):
    """On the local Ray no GPU will appear: asking for more GPU workers than it has is one clear error
    (Ray Train would otherwise wait for them forever)."""
    from copl_dist.distributed.train import make_ray_train_fn

    gpus = int(ray_local.cluster_resources().get("GPU", 0))
    train_fn = make_ray_train_fn(_cfg(workers=gpus + 1, use_gpu="true"), tmp_path / "storage")
    config = {
        "cfg": {}, "corpus": str(corpus.root), "video_ids": corpus.video_ids("validation"),
        "targets": np.zeros((8, 3), np.float32), "labelled": np.zeros(8, bool), "num_classes": 3,
    }
    with pytest.raises(InputError, match=f"{gpus + 1} GPU worker\\(s\\) asked for .* has {gpus} GPU"):
        train_fn(config)


@pytest.mark.ray
@pytest.mark.slow
def test_sigkilled_worker_restarts_and_the_run_ends_the_same(undisturbed, corpus, tmp_path):
    """Rank 1 SIGKILLs its own process after optimizer step 3 of the first training, i.e. mid-epoch 1
    (8 videos in batches of 4: 2 steps per epoch); Ray Train restarts the worker group from the last
    checkpoint, epoch 0's (max_failures=1), and the run ends bit-for-bit as the undisturbed one:
    same pseudo-labels, clustering metrics, teacher and mAP."""
    from copl_dist.distributed.train import make_ray_train_fn

    marker = tmp_path / "killed"
    cfg = _cfg(workers=2, max_failures=1)
    fault = {"step": 3, "rank": 1, "marker": str(marker)}
    rec = Recorder(make_ray_train_fn(cfg, tmp_path / "storage"), {"fault": fault})
    faulted = CoplRun(cfg, corpus, train_fn=rec, progress=False).execute()

    # The kill happened once, mid-epoch; the restarted attempt began after the last checkpoint
    # (epoch 0), not at epoch 0 again; the second training ran undisturbed.
    assert marker.read_text().startswith("rank 1 pid ") and marker.read_text().endswith("at step 3\n")
    starts = Path(f"{marker}.starts").read_text().splitlines()
    assert starts == ["iteration 0 epoch 0", "iteration 0 epoch 1", "iteration 1 epoch 0"]
    clean, clean_rec = undisturbed
    drop = {"seconds"}
    assert [{k: v for k, v in it.items() if k not in drop} for it in faulted.iterations] == [
        {k: v for k, v in it.items() if k not in drop} for it in clean.iterations
    ]
    assert faulted.pseudo_labels == clean.pseudo_labels
    assert faulted.final == clean.final and "map@avg" in faulted.final
    for name, w in faulted.teacher_state.items():
        assert torch.equal(w, clean.teacher_state[name]), name
    for (_, a), (_, b) in zip(rec.calls, clean_rec.calls):
        assert a["history"] == b["history"]
        assert all(np.array_equal(a["votes"][v], b["votes"][v]) for v in b["votes"])


@pytest.mark.ray
@pytest.mark.slow
def test_copl_run_default_fits_the_machine(ray_local, corpus, tmp_path, monkeypatch):
    """`copl run` with no --workers fits the machine: on the fixture's Ray with 2 CPUs that is one
    CPU worker, which trains in-process (no Ray Train checkpoints); where the fit is more (here
    claimed: 4 CPUs, 2 workers) it trains on Ray Train, checkpointing under OUT/ray_storage."""
    from copl_dist.cli import main
    from copl_dist.distributed import ray_runtime

    monkeypatch.delenv("COPL_WORKERS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    argv = ["run", "--data", str(corpus.root), "--iterations", "1", "--epochs", "2",
            "--snippets", "32", "--no-progress", "--set", "train.batch_size=4", "--set", "model.hidden_dim=32",
            "--set", "train.shift_channels=64", "--set", "tracking.enabled=false"]
    small = tmp_path / "one-worker"
    assert main([*argv, "--out", str(small)]) == 0
    assert "workers: -1" in (small / "config.yaml").read_text()
    assert not (small / "ray_storage").exists() and (small / "detections.json").exists()

    monkeypatch.setattr(ray_runtime, "_available_gpus_cpus", lambda: (0, 4))
    wide = tmp_path / "two-workers"
    assert main([*argv, "--out", str(wide)]) == 0
    assert len(list((wide / "ray_storage").glob("copl-it0-*"))) == 1
    assert (wide / "detections.json").exists()


def test_ray_train_report_lines_are_quietened():
    """Ray Train logs one INFO line per epoch and rank; the workers drop it, not its warnings."""
    import logging

    from ray.train.v2._internal.execution import context as ray_context

    from copl_dist.distributed.train import _quiet_ray_train_reports

    _quiet_ray_train_reports()
    logger = ray_context.logger  # the logger Ray really writes those lines to
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("Reporting training result 3: TrainingReport(...) from rank 0")
        logger.warning("Reporting training result 4 took long")
        logger.info("something else")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert seen == ["Reporting training result 4 took long", "something else"]


@pytest.mark.ray
@pytest.mark.slow
def test_copl_run_on_the_local_ray_prints_no_preemption_watcher_error(corpus, tmp_path):
    """A whole `copl run` in its own process (its own local Ray, one Ray Train worker): Ray Train's
    preemption watcher, meaningless on one local node, logs a C++ ERROR line per training unless copl turns it off."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")}
    argv = [sys.executable, "-m", "copl_dist", "run", "--data", str(corpus.root), "--out", str(tmp_path / "out"),
            "--workers", "1", "--iterations", "1", "--epochs", "1", "--snippets", "32", "--no-progress",
            "--set", "train.batch_size=4", "--set", "model.hidden_dim=32", "--set", "train.shift_channels=64",
            "--set", "tracking.enabled=false"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / "detections.json").exists()
    log = proc.stdout + proc.stderr
    assert "PreemptionWatcher" not in log and "max_restarts > 0" not in log


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("sig, code, line", [(signal.SIGINT, 130, "copl: interrupted"), (signal.SIGTERM, 143, "copl: terminated")])
def test_ctrl_c_during_ray_train_is_an_interrupt(sig, code, line, corpus, tmp_path):
    """SIGINT while Ray Train trains: Ray's own handler aborted the run and `copl run` exited 1 with
    no message; now the run stops as interrupted (exit 130, one line), keeping what it wrote.
    SIGTERM (`ray job stop`) likewise: it ended the process with status 15 and left the MLflow runs
    RUNNING for ever; now exit 143, one line, the runs KILLED."""
    from interrupt import interrupt_copl

    out = tmp_path / "out"
    args = ["run", "--data", str(corpus.root), "--out", str(out),
            "--workers", "1", "--iterations", "1", "--epochs", "2000", "--snippets", "32", "--no-progress",
            "--set", "train.batch_size=4", "--set", "model.hidden_dim=32", "--set", "train.shift_channels=64"]
    # Training is under way once an epoch's checkpoint exists.
    returned, err = interrupt_copl(args, lambda: bool(list((out / "ray_storage").glob("*/checkpoint_*"))), sig=sig)
    assert returned == code, err[-2000:]
    assert line in err.splitlines()  # Ray's teardown may still print after it
    assert list((out / "ray_storage").glob("*/checkpoint_*"))  # what it had written stays
    # The MLflow runs ended KILLED, the run and its iteration (copl_dist/common/interrupts.py).
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("copl").experiment_id])
    assert sorted((r.info.run_name, r.info.status) for r in runs) == [
        ("iteration-0", "KILLED"), ("thumos14-utal-seed0", "KILLED")], [(r.info.run_name, r.info.status) for r in runs]


def test_cluster_address_checked_before_anything_starts(monkeypatch):
    """A malformed address was a traceback from ray.init, one where nothing listens a retry loop
    still running after 5 minutes: both are one line at once now."""
    import socket
    from types import SimpleNamespace

    from copl_dist.distributed.ray_runtime import check_ray_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    check_ray_address(SimpleNamespace(ray_address=""))  # local: nothing to reach
    check_ray_address(SimpleNamespace(ray_address="auto"))
    with pytest.raises(InputError, match=r"^distributed.ray_address: 'garbage' is not an address Ray takes"):
        check_ray_address(SimpleNamespace(ray_address="garbage"))
    with pytest.raises(InputError, match=r"is a dashboard's address .* GCS address HOST:6379"):
        check_ray_address(SimpleNamespace(ray_address="http://127.0.0.1:8265"))
    check_ray_address(SimpleNamespace(ray_address="anyscale://my-cluster"))  # a Ray Client plug-in: Ray's to resolve
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
        check_ray_address(SimpleNamespace(ray_address=""))
        check_ray_address(SimpleNamespace(ray_address=f"ray://127.0.0.1:{port}"))
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")  # closed now
    with pytest.raises(InputError, match=rf"^\$RAY_ADDRESS: nothing answers at 127.0.0.1:{port}"):
        check_ray_address(SimpleNamespace(ray_address=""))


def test_a_checkpoint_snapshot_does_not_follow_training():
    """Rank 0 hands Ray's upload thread a copy of the state: the next epoch's optimizer steps,
    which change the tensors in place, must not reach a checkpoint still being written."""
    from copl_dist.distributed.train import _detached_copy

    weights = torch.ones(3)
    optimizer = {"state": {0: {"exp_avg": weights * 2}}, "param_groups": [{"lr": 1e-4}]}
    state = {"student": {"w": weights}, "optimizer": optimizer, "history": [{"loss": 1.0}], "epoch": 4}
    snapshot = _detached_copy(state)
    weights.add_(5.0)
    state["optimizer"]["state"][0]["exp_avg"].zero_()
    assert torch.equal(snapshot["student"]["w"], torch.ones(3))
    assert torch.equal(snapshot["optimizer"]["state"][0]["exp_avg"], torch.full((3,), 2.0))
    assert snapshot["history"] == [{"loss": 1.0}] and snapshot["epoch"] == 4
    assert snapshot["optimizer"]["param_groups"] == [{"lr": 1e-4}]


def test_one_checkpoint_in_flight_at_a_time():
    """The next epoch's report waits until the previous checkpoint is written."""
    import threading

    from copl_dist.distributed.train import _UploadInFlight

    uploads = _UploadInFlight()
    uploads.start()
    second = threading.Thread(target=uploads.start)
    second.start()
    second.join(0.3)
    assert second.is_alive()  # blocked behind the first upload
    uploads.done()
    second.join(5)
    assert not second.is_alive()
    uploads.done()
    uploads.wait(1)
