"""Connecting to Ray: a cluster when one is named, else a local Ray in this process.

Address order: `distributed.ray_address`, then `$RAY_ADDRESS` (set by `ray job submit`), else a
local instance. The local one listens on 127.0.0.1 only (its dashboard included), with no usage stats.
"""

from __future__ import annotations

import os
from typing import Any

from copl_dist.common.errors import InputError
from copl_dist.common.interrupts import sigterm_unwinds

LOCALHOST = "127.0.0.1"
_SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # false: Ray keeps a loopback node address
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def ray_address(cfg_distributed: Any) -> str:
    """The address `ensure_ray` connects to: a cluster's, or "local"."""
    return cfg_distributed.ray_address or os.environ.get("RAY_ADDRESS", "") or "local"


ADDRESS_CHECK_TIMEOUT_S = 5.0


def check_ray_address(cfg_distributed: Any) -> None:
    """Before a command writes anything: a cluster address must have the form Ray takes and something
    must listen there. ray.init raised "Invalid address format" as a traceback for a malformed one
    and kept retrying an address where nothing listens (still at it after 5 minutes, measured)."""
    import socket

    address = ray_address(cfg_distributed)
    if address in ("local", "auto"):
        return
    source = "distributed.ray_address" if cfg_distributed.ray_address else "$RAY_ADDRESS"
    scheme, has_scheme, _ = address.partition("://")
    if has_scheme and scheme in ("http", "https"):
        raise InputError(
            f"{source}: '{address}' is a dashboard's address (what `ray job submit` takes); a run joins the "
            "cluster at its GCS address HOST:6379 or through Ray Client at ray://HOST:10001"
        )
    if has_scheme and scheme != "ray":
        return  # a Ray Client plug-in's scheme (e.g. anyscale://): Ray resolves it, nothing to probe here
    hostport = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InputError(f"{source}: '{address}' is not an address Ray takes (HOST:PORT, ray://HOST:PORT, auto or local)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=ADDRESS_CHECK_TIMEOUT_S).close()
    except OSError as exc:
        raise InputError(f"{source}: nothing answers at {address} ({exc.strerror or exc})") from None


def ensure_ray(cfg_distributed: Any, num_cpus: int | None = None) -> None:
    """Reuse an initialised Ray, join the configured cluster, or start a local Ray in-process.

    `num_cpus` caps a local instance (tests); a cluster ignores it.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = ray_address(cfg_distributed)
    if address != "local":
        ray.init(address=address, log_to_driver=True)
        sigterm_unwinds()  # Ray's core worker put a C++ handler over it (interrupts.py)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # token auth guards a shared cluster, not this process's
    # Ray Train's preemption watcher reports nodes being drained (spot instances); this single local
    # node is never drained, and the watcher actor costs one C++ ERROR line per training (Ray 2.60,
    # ray-project/ray#53727). Ray Train passes the variable from the driver to its controller; a
    # user's own setting wins, and on a cluster the watcher stays on.
    os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")
    _init_local_on_loopback(num_cpus)
    sigterm_unwinds()  # Ray's core worker put a C++ handler over it (interrupts.py)


def _init_local_on_loopback(num_cpus: int | None) -> None:
    """ray.init(address="local") with every Ray server bound to 127.0.0.1.

    `_node_ip_address="127.0.0.1"` alone is not enough on Linux: Ray swaps a loopback address for the
    machine's outward IP unless `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER` is false, a flag it reads once at
    import (measured with `ss -ltn`, Ray 2.60: GCS, raylet and workers then listen on 127.0.0.1, not
    on all interfaces). The environment variable reaches Ray's own processes; the driver's copy of
    the flag is switched off for the duration of `ray.init`.
    """
    import ray
    from ray._private import ray_constants

    env_saved = os.environ.get(_SINGLE_NODE_ENV)
    os.environ[_SINGLE_NODE_ENV] = "0"
    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if saved is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            # The dashboard serves Ray's State API, which Ray Train's placement-group cleaner polls: without
            # it the cleaner never sees the training end and logs a warning every few seconds (measured:
            # ~90 lines per `copl run`). Bound to 127.0.0.1; Ray moves off port 8265 when it is taken.
            include_dashboard=True,
            dashboard_host=LOCALHOST,
            _node_ip_address=LOCALHOST,
            log_to_driver=True,
        )
    finally:
        # Ray's processes have their copy; later subprocesses of ours (e.g. `ray start`) get the old value.
        if saved is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved
        if env_saved is None:
            os.environ.pop(_SINGLE_NODE_ENV, None)
        else:
            os.environ[_SINGLE_NODE_ENV] = env_saved


def resolve_workers(workers: int, use_gpu: str = "auto") -> tuple[int, bool]:
    """(number of Ray Train workers, whether each takes a GPU) for `distributed.workers` / `use_gpu`.

    workers > 0 is taken as given; -1 fits the machine, or the cluster when Ray is initialised: one
    worker per GPU if there are GPUs, else one per two CPUs (each worker's torch then has two
    threads' worth of cores), at least one. use_gpu "auto": a GPU per worker (NCCL) when the
    cluster has one for every worker (more workers than GPUs could never be placed: Ray Train would
    wait for them forever); "true" / "false" force the choice ("true" e.g. while an autoscaler is
    still starting the GPU nodes).
    """
    if workers != -1 and workers <= 0:
        raise ValueError(f"distributed.workers must be -1 (auto), 0 (in-process) or > 0, got {workers}")
    if use_gpu not in ("auto", "true", "false"):
        raise ValueError(f"distributed.use_gpu must be auto, true or false, got {use_gpu!r}")
    gpus, cpus = _available_gpus_cpus()
    if workers > 0:
        return workers, use_gpu == "true" or (use_gpu == "auto" and gpus >= workers)
    if use_gpu == "true" or (use_gpu == "auto" and gpus >= 1):
        return max(1, gpus), True
    return max(1, cpus // 2), False


def fits_one_local_cpu_worker(cfg_distributed: Any) -> bool:
    """Whether `distributed.workers` -1 would train on a single CPU worker of a Ray on this machine.
    Such a fit trains in the driver's process instead: the same training without Ray Train's
    start-up per training (18-24 s on two cores) and checkpoint per epoch (Ray Train's one worker
    reached 75% of the in-process throughput on a small corpus; docs/results.md, `copl bench train`)."""
    if cfg_distributed.workers != -1 or ray_address(cfg_distributed) != "local":
        return False
    # With a GPU visible, in-process training would take it (train.device auto) where a worker
    # told use_gpu=false would not.
    return _available_gpus_cpus()[0] == 0 and resolve_workers(-1, cfg_distributed.use_gpu) == (1, False)


def _available_gpus_cpus() -> tuple[int, int]:
    import ray

    if ray.is_initialized():
        res = ray.cluster_resources()
        return int(res.get("GPU", 0)), int(res.get("CPU", 1))
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return gpus, _local_cpus()


def _local_cpus() -> int:
    """The CPUs a local ray.init would count: it reads the container's CPU quota, which
    os.cpu_count() does not (a 2-CPU container on a 64-core host)."""
    try:
        from ray._private.utils import get_num_cpus  # what ray.init counts; private, hence the fallback
    except ImportError:
        return os.cpu_count() or 1
    try:
        return max(1, int(get_num_cpus()))
    except Exception:  # noqa: BLE001 - any failure of a private helper: count as the OS does
        return os.cpu_count() or 1


class RaySession:
    """Use a Ray that is already up (tests, `ray job submit`); else start one as `ensure_ray` does
    (distributed.ray_address, $RAY_ADDRESS, else local on 127.0.0.1) and stop it afterwards."""

    def __init__(self, cfg_distributed: Any):
        self.cfg_distributed = cfg_distributed
        self.started = False

    def __enter__(self) -> None:
        import ray

        if ray.is_initialized():
            return
        ensure_ray(self.cfg_distributed)
        self.started = True

    def __exit__(self, *exc: Any) -> None:
        if self.started:
            import ray

            ray.shutdown()
