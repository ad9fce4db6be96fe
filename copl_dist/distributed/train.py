"""IOCNet training on Ray Train: `engine.train_loop_per_worker` under a TorchTrainer with DDP.

`make_ray_train_fn(cfg, storage_path)` returns a function with the in-process signature
(`train_fn(config, report=None) -> {"teacher", "votes", "history"}`), so `driver.CoplRun` does not
know which one it holds. On the workers, `ray_worker_loop` runs the same engine loop: each rank
opens the corpus by its path and reads its share of every global batch from the memory-mapped
Arrow shards; rank 0 votes and checkpoints after every epoch through `ray.train.report`.
`FailureConfig(max_failures)` restarts a failed worker group from the last checkpoint; since every
random draw depends only on (seed, iteration, epoch, batch, rank), a restarted run ends with the
same weights as an undisturbed one.

Backend: gloo for CPU workers; for GPU workers "cpu:gloo,cuda:nccl", i.e. NCCL for CUDA tensors and
gloo for the CPU-side epoch metrics that the engine all-reduces. Each GPU worker trains on the
device Ray Train gave it (config["device"]).

Network: on a local Ray (ray_runtime) every Ray server and the gloo connections listen on 127.0.0.1;
the one exception is DDP's rendezvous store (torch's TCPStore on rank 0, MASTER_PORT), which torch
binds to all interfaces for the length of a fit (env:// init has no bind-address option).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from copl_dist.common.errors import InputError
from copl_dist.distributed import checkpoint_staging
from copl_dist.distributed.ray_runtime import ensure_ray, ray_address, resolve_workers
from copl_dist.method import engine

CHECKPOINT_FILE = "train_state.pt"


class RayTrainingError(RuntimeError):
    """A Ray Train run failed after its restarts (`distributed.max_failures`) ran out."""


# -- on the workers ------------------------------------------------------------------------------
class _QuietReports(logging.Filter):
    """Drops Ray Train's per-report INFO line ("Reporting training result N: ..."), one per epoch and
    rank, which Ray forwards to the `copl run` terminal; its warnings still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno < logging.WARNING and record.getMessage().startswith("Reporting training result"))


def _quiet_ray_train_reports() -> None:
    # Ray Train V2 names that logger by its file path (logging.getLogger(__file__)), so look it up by
    # the path's tail rather than by a dotted name; the filter sits on that logger alone.
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and name.replace("\\", "/").endswith("train/v2/_internal/execution/context.py"):
            if not any(isinstance(f, _QuietReports) for f in logger.filters):
                logger.addFilter(_QuietReports())


def ray_worker_loop(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: resume from the latest checkpoint, if any, then train.

    Every rank calls `ray.train.report` once per epoch (V2 synchronises on it); only rank 0 attaches
    a checkpoint. config["fault"] = {"epoch" or "step", "rank", "marker"} (tests only) makes that rank
    SIGKILL its own process once, at that epoch's report or right after that optimizer step (counted
    from the training's start, engine's on_step): the marker file records the kill, and a restarted
    attempt that finds it trains through. That rank also appends "iteration I epoch E" to
    "<marker>.starts" as each attempt starts (E: the first epoch it trains), so a test can tell a
    resume from the last checkpoint from a restart at epoch 0. config["clock"] (benchmarks): a file
    where rank 0 appends "epoch unix-time" as each epoch ends.
    """
    import ray.train

    _quiet_ray_train_reports()
    checkpoint_staging.remove_stale()  # left by workers killed while a checkpoint was written
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            config = {**config, "resume_state": _load_state(Path(path))}
    rank = ray.train.get_context().get_world_rank()
    device = "cpu"  # never the driver's: a CPU worker must not inherit a GPU driver's "cuda"
    if torch.cuda.is_available():
        import ray.train.torch

        device = str(ray.train.torch.get_device())  # this worker's GPU
    config = {**config, "device": device}
    fault = config.get("fault")
    kill_step = None  # tests: SIGKILL right after this optimizer step
    if fault is not None and rank == int(fault["rank"]):
        resume = config.get("resume_state")
        with open(f"{fault['marker']}.starts", "a") as f:
            f.write(f"iteration {int(config.get('iteration', 0))} epoch {int(resume['epoch']) + 1 if resume else 0}\n")
        kill_step = fault.get("step")

    # Tests: rank 0 appends "iteration I epoch E" to "<marker>.written" once an epoch's checkpoint is
    # written (off the training thread), so that a kill waits for the checkpoint it should resume from.
    written = f"{fault['marker']}.written" if fault is not None else None
    iteration = int(config.get("iteration", 0))
    last_reported: list[str] = []

    def _on_step(step: int) -> None:
        if step == int(kill_step):
            _kill_once(Path(fault["marker"]), rank, f"step {step}", written, last_reported[-1:])

    clock = config.get("clock") if rank == 0 else None  # benchmarks: a file of "epoch wall-time" lines
    progress = config.get("progress_file") if rank == 0 else None  # the driver's live progress (EpochFeed)

    def _report(metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        if clock:
            with open(clock, "a") as f:
                f.write(f"{int(metrics['epoch'])} {time.time():.6f}\n")
        if progress:
            with open(progress, "a") as f:
                f.write(json.dumps(metrics) + "\n")
        at_epoch = fault.get("epoch") if fault is not None and rank == int(fault["rank"]) else None
        if at_epoch is not None and int(metrics["epoch"]) == int(at_epoch):
            _kill_once(Path(fault["marker"]), rank, f"epoch {int(metrics['epoch'])}", written, last_reported[-1:])
        last_reported.append(f"iteration {iteration} epoch {int(metrics['epoch'])}")
        if state is None:
            ray.train.report(metrics, checkpoint=None)
            return
        _report_checkpoint(metrics, state, written=written and (written, last_reported[-1]))

    engine.train_loop_per_worker(config, report=_report, on_step=_on_step if kill_step is not None else None)
    # Nothing returned: the driver reads the final checkpoint rather than shipping weights twice.


class _UploadInFlight:
    """At most one epoch's checkpoint being written at a time (rank 0): the next epoch's report
    waits for it, which bounds the memory of snapshots and the work a kill can lose to one epoch."""

    def __init__(self) -> None:
        self._idle = threading.Event()
        self._idle.set()

    def start(self) -> None:
        self._idle.wait()
        self._idle.clear()

    def done(self) -> None:
        self._idle.set()

    def wait(self, timeout_s: float | None = None) -> None:
        self._idle.wait(timeout_s)


_UPLOAD = _UploadInFlight()


def _report_checkpoint(
    metrics: dict[str, float], state: dict[str, Any], written: tuple[str, str] | None = None
) -> None:
    """Report an epoch with its checkpoint, written off the training thread.

    The training thread only snapshots the tensors (a copy in memory: training goes on changing
    them in place) and reports; Ray's upload thread (checkpoint_upload_mode ASYNC) calls `upload`,
    which writes the snapshot straight into the storage folder when that is a local filesystem, and
    through a local staging folder otherwise. Ray registers the checkpoint once it is written, in
    report order, so a worker killed mid-write resumes from the epoch before: per-epoch fault
    tolerance, with one more epoch to re-train at most. `written` (tests): (file, line) appended
    once the checkpoint is written.
    """
    import pyarrow.fs
    import ray.train

    _UPLOAD.start()
    snapshot = _detached_copy(state)
    placeholder = checkpoint_staging.make_dir()  # what report() is handed; the state goes where upload puts it

    def release() -> None:
        shutil.rmtree(placeholder, ignore_errors=True)
        _UPLOAD.done()

    def upload(_checkpoint: Any, dir_name: str) -> Any:
        # Ray retries a failed upload (transient storage errors): each attempt starts afresh, and
        # only a success releases the slot; a final failure fails the run, and the folder left is
        # removed as stale by the next worker on the node.
        storage = ray.train.get_context().get_storage()
        dest = storage.build_checkpoint_path_from_name(dir_name)
        if isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
            Path(dest).mkdir(parents=True, exist_ok=True)
            _save_state(snapshot, Path(dest) / CHECKPOINT_FILE)
            stored = ray.train.Checkpoint(path=dest, filesystem=storage.storage_filesystem)
        else:
            placeholder.mkdir(parents=True, exist_ok=True)
            _save_state(snapshot, placeholder / CHECKPOINT_FILE)
            stored = storage.persist_current_checkpoint(ray.train.Checkpoint.from_directory(str(placeholder)), dir_name)
        if written is not None:
            with open(written[0], "a") as f:
                f.write(written[1] + "\n")
        release()
        return stored

    before = _report_index()
    try:
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(str(placeholder)),
            checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
            checkpoint_upload_fn=upload,
            delete_local_checkpoint_after_upload=False,  # upload removes it
        )
    except BaseException:
        release()
        raise
    if before is not None and _report_index() == before:
        release()  # Ray skipped the report (its barrier was reset by a failed worker): no upload comes


def _report_index() -> int | None:
    """Ray Train's count of this worker's reports, which a skipped report leaves unchanged; None where
    this Ray version keeps it elsewhere (then a skipped report holds the slot until the worker stops)."""
    try:
        from ray.train.v2._internal.execution.context import get_train_context

        return int(get_train_context().report_call_index)
    except Exception:
        return None


def _detached_copy(value: Any) -> Any:
    """`value` with every tensor cloned (nested dicts and lists), the rest as is."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _detached_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detached_copy(v) for v in value)
    return value


def _kill_once(marker: Path, rank: int, where: str, written: str | None = None, last: list[str] = ()) -> None:
    if marker.exists():
        return  # already killed once: this is the restarted attempt
    # The last reported epoch's checkpoint written by rank 0 (off its training thread), so that the
    # test knows which epoch a resume starts from.
    deadline = time.monotonic() + 60.0
    while written and last and time.monotonic() < deadline:
        try:
            if last[0] in Path(written).read_text().splitlines():
                break
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    _wait_reports_consumed()
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, f"rank {rank} pid {os.getpid()} SIGKILLed itself at {where}\n".encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def _wait_reports_consumed(timeout_s: float = 30.0) -> None:
    """Wait until Ray Train's controller has taken this worker's reports (it polls every ~2 s).

    Otherwise a kill soon after an epoch's report loses that report, and with it the checkpoint:
    the restart then starts from the one before, which ends the same but makes the test unable to
    tell a resume from a restart. Ray internals, hence the fallback: on any change, just kill.
    """
    try:
        from ray.train.v2._internal.execution.context import get_train_context

        pending = get_train_context().get_result_queue()
    except Exception:
        return
    deadline = time.monotonic() + timeout_s
    while pending.unfinished_tasks and time.monotonic() < deadline:
        time.sleep(0.05)
    # The queue is marked done before the reply reaches the controller (a TODO in Ray's worker):
    # one more poll period so that the report has arrived.
    time.sleep(2.5)


def _save_state(state: dict[str, Any], path: Path) -> None:
    # Votes travel as tensors so that the checkpoint loads with weights_only=True (no code runs).
    votes = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.get("votes", {}).items()}
    torch.save({**state, "votes": votes}, path)


def _load_state(directory: Path) -> dict[str, Any]:
    state = torch.load(directory / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    state["votes"] = {k: v.numpy() for k, v in state.get("votes", {}).items()}
    return state


# -- on the driver -------------------------------------------------------------------------------
class EpochFeed:
    """Per-epoch metrics while `trainer.fit()` blocks: rank 0 appends one JSON line per epoch to a
    file (config["progress_file"]), and a thread here passes each new epoch to `on_epoch` once.

    Ray Train hands the driver nothing until fit() returns, so without this a progress bar would sit
    at 0 for the whole training. Only display should hang on it: the authoritative history is the
    final checkpoint's (an epoch re-run after a restart is shown once). On a cluster the file must be
    on storage the driver sees, like the checkpoints (distributed.storage_path).
    """

    def __init__(self, path: Path, on_epoch: Any, interval_s: float = 0.25):
        self.path, self.on_epoch, self.interval_s = path, on_epoch, interval_s
        self._offset, self._seen = 0, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="copl-epoch-feed", daemon=True)

    def __enter__(self) -> EpochFeed:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()  # whatever arrived after the last look
        self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next look
        self._offset += len(complete)
        for line in complete.decode().splitlines():
            metrics = json.loads(line)
            epoch = int(metrics["epoch"])
            if epoch not in self._seen:
                self._seen.add(epoch)
                self.on_epoch(metrics)


def _cpus_per_worker(num_workers: int, local: bool) -> int:
    """CPUs for each worker: the smallest node's CPUs split evenly, at least 1. On one machine the
    workers then use all its cores, and each worker's torch threads (OMP_NUM_THREADS, which Ray sets
    from the worker's CPUs) match what the in-process path uses with one worker. If other Ray work
    (HAS actors) holds CPUs, the workers share the free ones; on a local Ray with fewer free CPUs
    than workers the fit could never be placed, so that is an error rather than a hang."""
    import ray

    per_node = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    want = max(1, min([c for c in per_node if c > 0] or [1]) // num_workers)
    free = int(ray.available_resources().get("CPU", 0))
    deadline = time.monotonic() + 15  # a previous fit's workers may still be releasing theirs
    while local and free < num_workers and time.monotonic() < deadline:
        time.sleep(0.5)
        free = int(ray.available_resources().get("CPU", 0))
    if free >= num_workers * want:
        return want
    if local and free < num_workers:
        total = int(ray.cluster_resources().get("CPU", 0))
        raise InputError(
            f"Ray Train needs {num_workers} CPU(s) for {num_workers} worker(s) but only {free} of {total} are free "
            "(HAS actors or other Ray work hold the rest): lower --workers or --has-actors"
        )
    return max(1, free // num_workers)


def _check_local_gpus(num_workers: int) -> None:
    """On the local Ray nothing will add GPUs: more GPU workers than GPUs would wait forever."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus < num_workers:
        raise InputError(
            f"Ray Train: {num_workers} GPU worker(s) asked for (distributed.use_gpu=true) but this machine's Ray has "
            f"{gpus} GPU(s): lower --workers or set distributed.use_gpu=false"
        )


def cap_workers(requested: int, resolved: int, batch_size: int, num_videos: int) -> tuple[int, str | None]:
    """(workers to start, warning or None): at most one worker per video of the global batch.

    engine.epoch_batches gives every rank a share of each global batch (min(train.batch_size,
    videos)); with more workers than that, every batch would be dropped and nothing trained. The
    auto count (requested -1, e.g. cpus // 2 on a big node) is capped silently; an explicit
    --workers N that is capped gets a one-line warning.
    """
    global_batch = max(1, min(batch_size, num_videos))
    if resolved <= global_batch:
        return resolved, None
    if requested == -1:
        return global_batch, None
    return global_batch, (
        f"copl: warning: distributed.workers {requested} capped at {global_batch}: the global batch has "
        f"{global_batch} videos (train.batch_size {batch_size}, {num_videos} training videos)"
    )


def storage_locations(storage_path: str | os.PathLike[str] | None) -> tuple[str | None, Path]:
    """(RunConfig.storage_path, folder of the EpochFeed file) for distributed.storage_path.

    A local path is made absolute (workers may start elsewhere) and also holds the feed file. A URI
    (s3://, gs://, ...) goes to Ray Train as written, since a filesystem path of it would be wrong,
    and the feed file then lives in this machine's temp folder: live progress on one machine only.
    """
    if storage_path is None:
        return None, Path(tempfile.gettempdir())
    text = os.fspath(storage_path)
    if "://" in text:
        return text, Path(tempfile.gettempdir())
    local = Path(text).resolve()
    return str(local), local


def _interrupt_as_keyboard_interrupt(trainer: Any) -> list[bool]:
    """Ctrl-C during trainer.fit(): Ray Train's own handler aborts the run and fit() then returns or
    fails like any failed run (measured: `copl run` exited 1 with no message). Ours aborts it the same
    way but records the interrupt, so that the caller raises KeyboardInterrupt (`copl: interrupted`,
    exit 130). Returns the record (non-empty once interrupted). Ray versions without the hook keep
    their own behaviour."""
    interrupted: list[bool] = []
    register = getattr(trainer, "_register_sigint_handler", None)
    if register is None:
        return interrupted

    def register_recording(controller: Any) -> None:
        register(controller)
        ray_handler = signal.getsignal(signal.SIGINT)

        def on_sigint(signum: int, frame: Any) -> None:
            interrupted.append(True)
            if callable(ray_handler):
                try:
                    ray_handler(signum, frame)
                except SystemExit:  # Ray's handler exits 0 when the controller is already gone
                    raise KeyboardInterrupt from None

        signal.signal(signal.SIGINT, on_sigint)

    trainer._register_sigint_handler = register_recording
    return interrupted


def make_ray_train_fn(cfg: Any, storage_path: str | os.PathLike[str] | None = None):
    """A train_fn for `driver.CoplRun` that trains on Ray Train with `cfg.distributed` settings.

    `cfg` is the run's CoplConfig (only `cfg.distributed` is read here, and `train.batch_size` if
    the per-iteration config dict, which carries the rest, lacks it). The workers are capped at the
    global batch (cap_workers). `storage_path`: where Ray Train persists checkpoints (None: Ray's
    default, ~/ray_results). Ray is started or joined on the first call (`ensure_ray`).
    """
    dist = cfg.distributed
    warned: set[str] = set()

    def train_fn(
        config: dict[str, Any], report: engine.ReportFn | None = None, progress: Any = None
    ) -> dict[str, Any]:
        """`report` gets every epoch's metrics after the fit (from the final checkpoint); `progress`,
        if given, gets them as the epochs end (EpochFeed), for display."""
        from ray.train import (
            CheckpointConfig,
            FailureConfig,
            LoggingConfig,
            RunConfig,
            ScalingConfig,
            TrainingFailedError,
        )
        from ray.train.torch import TorchConfig, TorchTrainer

        ensure_ray(dist)
        num_workers, use_gpu = resolve_workers(dist.workers, dist.use_gpu)
        train_cfg = (config.get("cfg") or {}).get("train") or {}
        num_workers, warning = cap_workers(
            dist.workers, num_workers, int(train_cfg.get("batch_size", cfg.train.batch_size)), len(config["video_ids"])
        )
        if warning is not None and warning not in warned:  # once per run, not per iteration
            warned.add(warning)
            print(warning, file=sys.stderr)
        local = ray_address(dist) == "local"
        if local and use_gpu:
            _check_local_gpus(num_workers)
        cpus = _cpus_per_worker(num_workers, local=local)
        # Workers (possibly on other machines) open the corpus themselves: give them an absolute path.
        config = {**config, "corpus": str(Path(config["corpus"]).resolve())}
        name = f"copl-it{int(config.get('iteration', 0))}-{uuid.uuid4().hex[:12]}"  # same name+path would resume
        storage, feed_dir = storage_locations(storage_path)
        feed_path = feed_dir / f"{name}.progress.jsonl"
        if progress is not None:
            feed_dir.mkdir(parents=True, exist_ok=True)
            config["progress_file"] = str(feed_path)
        trainer = TorchTrainer(
            ray_worker_loop,
            train_loop_config=config,
            torch_config=TorchConfig(backend="cpu:gloo,cuda:nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(
                num_workers=num_workers,
                use_gpu=use_gpu,
                resources_per_worker={"CPU": cpus, **({"GPU": 1} if use_gpu else {})},
            ),
            run_config=RunConfig(
                name=name,
                storage_path=storage,
                failure_config=FailureConfig(max_failures=dist.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=1),  # resume needs only the latest
                logging_config=LoggingConfig(log_level="WARNING"),  # not a line per epoch and checkpoint
            ),
        )
        # Signal handlers exist on the main thread only (Ray registers its own there only, too).
        main_thread = threading.current_thread() is threading.main_thread()
        interrupted = _interrupt_as_keyboard_interrupt(trainer) if main_thread else []
        previous_sigint = signal.getsignal(signal.SIGINT) if main_thread else None
        try:
            with EpochFeed(feed_path, progress) if progress is not None else contextlib.nullcontext():
                result = trainer.fit()
        except TrainingFailedError as exc:
            if interrupted:
                raise KeyboardInterrupt from None
            _raise_failure(name, num_workers, exc)
        finally:
            if main_thread:
                signal.signal(signal.SIGINT, previous_sigint)  # Ray Train leaves its handler installed
        if interrupted:
            raise KeyboardInterrupt
        if result.error is not None:  # fit() raises in Ray 2.60; older versions returned the error
            _raise_failure(name, num_workers, result.error)
        if result.checkpoint is None:
            raise RayTrainingError(f"Ray Train run '{name}' finished without a checkpoint")
        with result.checkpoint.as_directory() as path:
            state = _load_state(Path(path))
        history = list(state["history"])
        if report is not None:
            for metrics in history:  # per-epoch losses to the caller (MLflow, progress bar) after the fit
                report(metrics, None)
        return {"teacher": state["teacher"], "votes": state.get("votes") or {}, "history": history}

    train_fn.live_progress = True  # type: ignore[attr-defined]  # CoplRun passes `progress`
    return train_fn


def _raise_failure(name: str, num_workers: int, exc: BaseException) -> None:
    """Raise one clear error for a failed fit: the workers' InputError as is (bad input is bad input
    wherever it is read: the CLI prints its one line), anything else as RayTrainingError naming
    the run and each failed rank's exception."""
    failures = getattr(exc, "worker_failures", None) or {}
    if failures and all(isinstance(e, InputError) for e in failures.values()):
        raise InputError(str(failures[min(failures)])) from exc
    raise RayTrainingError(f"Ray Train run '{name}' failed ({num_workers} workers): {_summary(exc)}") from exc


def _summary(exc: BaseException) -> str:
    failures = getattr(exc, "worker_failures", None)
    if failures:
        return "; ".join(f"rank {r}: {type(e).__name__}: {_first_line(e)}" for r, e in sorted(failures.items()))
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else ""
