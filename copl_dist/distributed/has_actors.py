"""HAS voting (Eqs. 1-4) and global video features (Eq. 5) over a pool of Ray actors.

Each actor owns a shard of the training videos: it opens the corpus by its root path itself (so
features go from the memory-mapped shard files straight into the actor, never through the driver),
keeps its shard's voting state, and computes Eq. 5 there. Per voting epoch the driver puts the
teacher's weights into the object store once (`ray.put`) and hands every actor the same ObjectRef.

`HASActorPool` implements the voter protocol of `engine.train_loop_per_worker` (vote / state /
restore, like `engine.LocalVoter`), plus `initial_features` / `global_features` for the pipeline.

Sharding: contiguous runs of `video_ids` (in the given order, normally the corpus' video_id order,
so each actor reads a contiguous range of the shard files), cut where the cumulative snippet count
crosses k/N of the total, so actors get about the same teacher work; see `contiguous_shards`.

Bit-for-bit equality with the in-process path, where it holds: the actors run the very same code
(`engine.update_votes`, `has.global_feature`, `has.initial_feature`) in float32/float64 as the driver
does, and always rebuild IOCNet on the CPU. So the votes equal the in-process ones only when the
in-process teacher also runs on the CPU with the actors' torch thread count; with train.device on a
GPU, or an in-process vote from a Ray Train worker whose thread count differs, the last bits (and so
a top-k tie) can differ. tests/test_has_actors.py checks the CPU case, the driver and actors on
the same thread count: votes, Eq. 5 and initial features equal, and a whole tiny CPU COPL run with
actors equal to one without. Within that case the thread count is the one thing that differs
between processes. Ray starts an actor with OMP_NUM_THREADS = its num_cpus (1), and IOCNet's 1x1
convolutions with few output channels (the classifier, C outputs; the class-agnostic heads, 1
output) run as a (C_out x C_in) @ (C_in x T) GEMM whose work split, and so summation order, depends
on the thread count (measured with oneDNN and with it disabled: 1 vs 2 threads differ by ~4e-5 in
the logits; the k=3 convolutions do not), so 1 and 2 threads can give votes that differ in the
last bits (and a top-k tie can flip). The actors therefore call
`torch.set_num_threads(torch_threads)`, by default the thread count of the process that builds the
pool (the driver): equal results where the in-process vote would run there, at the price of
oversubscribing the cores when actors x threads exceeds them. Pass `torch_threads=1` (with
num_cpus_per_actor=1; `copl run --set distributed.has_actor_threads=1`) for speed where last-bit
equality with the driver does not matter.
(NumPy's Eq. 5 was measured thread-count invariant.)

Pickling: a pool holds only plain data and Ray actor handles, so it pickles (pickle inside Ray,
cloudpickle outside) and can travel inside a Ray Train `train_loop_config` to a rank-0 worker; the
copy talks to the same actors. Only `shutdown()` ends the actors (no `__del__`): a copy going out of
scope on a worker leaves them running for the driver.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray
import torch

from copl_dist.common.errors import InputError
from copl_dist.config import CoplConfig, from_dict, to_dict
from copl_dist.data.corpus import Corpus
from copl_dist.method import has as has_lib
from copl_dist.method.engine import update_votes
from copl_dist.method.model import IOCNet

# How long a pool on a cluster joined by address waits for an autoscaler to add the CPUs it needs.
AUTOSCALE_WAIT_S = 600.0


def contiguous_shards(counts: Sequence[int], num_shards: int) -> list[tuple[int, int]]:
    """Split items 0..N-1 with work `counts` into `num_shards` contiguous [start, stop) ranges.

    Cut k falls at the item boundary nearest to k/num_shards of the total work (ties to the earlier
    boundary); every range is non-empty (num_shards must be <= N). Deterministic: depends only on
    `counts` and `num_shards`.
    """
    n = len(counts)
    if not 1 <= num_shards <= max(1, n):
        raise ValueError(f"num_shards must be in [1, {max(1, n)}], got {num_shards}")
    if n == 0:
        return [(0, 0)]
    before = np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))])  # work before item j
    total = int(before[-1])
    cuts = [0]
    for k in range(1, num_shards):
        target = total * k / num_shards
        j = int(np.argmin(np.abs(before - target)))  # first minimum: ties to the earlier boundary
        j = min(max(j, cuts[-1] + 1), n - (num_shards - k))
        cuts.append(j)
    cuts.append(n)
    return [(cuts[k], cuts[k + 1]) for k in range(num_shards)]


def teacher_payload(teacher: IOCNet) -> dict[str, Any]:
    """What an actor needs to rebuild the teacher: its shape and weights as numpy (zero-copy in the
    object store; float32 round-trips exactly)."""
    return {
        "num_classes": int(teacher.num_classes),
        "feature_dim": int(teacher.feature_dim),
        "hidden_dim": int(teacher.hidden_dim),
        "state": {k: v.detach().cpu().numpy() for k, v in teacher.state_dict().items()},
    }


@ray.remote
class HASActor:
    """One shard of videos: its corpus reads, its teacher copy, its voting state."""

    def __init__(self, corpus_root: str, video_ids: list[str], cfg: dict[str, Any], torch_threads: int):
        torch.set_num_threads(int(torch_threads))
        self.corpus = Corpus.open(corpus_root)
        self.video_ids = list(video_ids)
        self.cfg: CoplConfig = from_dict(cfg, source="HAS actor config")
        self.votes: dict[str, np.ndarray] = {}
        self._model: IOCNet | None = None
        self._shape: tuple[int, int, int] | None = None

    def vote(self, teacher: dict[str, Any]) -> int:
        """One epoch's vote over this shard (engine.update_votes); `teacher` is a teacher_payload
        (Ray resolves the ObjectRef it was passed as into the value, read from shared memory)."""
        shape = (teacher["num_classes"], teacher["feature_dim"], teacher["hidden_dim"])
        if self._model is None or self._shape != shape:
            self._model = IOCNet(*shape, dropout=self.cfg.model.dropout)
            self._shape = shape
        # np.array copies the read-only object-store buffers into tensors torch may own.
        self._model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in teacher["state"].items()})
        update_votes(self._model, self.corpus, self.video_ids, self.votes, self.cfg)
        return len(self.video_ids)

    def state(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.votes.items()}

    def restore(self, votes: dict[str, np.ndarray]) -> None:
        self.votes = {k: np.array(v) for k, v in votes.items()}

    def initial_features(self, video_ids: list[str], init: str, gamma: float) -> np.ndarray:
        return _stack(
            [has_lib.initial_feature(self.corpus.features(v), init, gamma) for v in video_ids], self.corpus.feature_dim
        )

    def global_features(self, video_ids: list[str]) -> np.ndarray:
        missing = [v for v in video_ids if v not in self.votes]
        if missing:
            raise KeyError(f"no HAS votes for {len(missing)} video(s), e.g. '{missing[0]}' (vote first)")
        return _stack(
            [has_lib.global_feature(self.corpus.features(v), self.votes[v], self.cfg.has.centre) for v in video_ids],
            self.corpus.feature_dim,
        )

    def info(self) -> dict[str, int]:
        """pid, torch threads and peak RSS (bytes) of this actor's process."""
        return {
            "pid": os.getpid(),
            "torch_threads": torch.get_num_threads(),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }


def _stack(rows: list[np.ndarray], dim: int) -> np.ndarray:
    return np.stack(rows) if rows else np.zeros((0, dim), dtype=np.float32)


class HASActorPool:
    """HAS over `num_actors` Ray actors; the voter protocol of engine.train_loop_per_worker.

    `corpus_root`: the corpus directory every actor opens. `video_ids`: the videos voted on (the
    training set), split into contiguous snippet-balanced shards (at most one actor per video).
    `cfg`: the run's CoplConfig (HAS settings: gamma, alpha, branch, voting; train.beta/topl_ratio).
    `torch_threads`: torch intra-op threads in each actor; None = this process's count, which keeps
    the results bit-for-bit equal to an in-process vote on this process's CPU (module docstring). Ray must be up.
    Each actor holds `num_cpus_per_actor` CPUs for its whole life: with Ray Train workers beside it,
    the cluster needs room for both (InputError if the pool alone cannot fit the cluster's CPUs, unless
    `autoscaling`: a cluster joined by address, whose autoscaler may add the nodes the actors wait for).
    """

    def __init__(
        self,
        corpus_root: str | os.PathLike[str],
        video_ids: Sequence[str],
        cfg: CoplConfig,
        num_actors: int,
        num_cpus_per_actor: float = 1,
        torch_threads: int | None = None,
        autoscaling: bool = False,
    ):
        if num_actors < 1:
            raise ValueError(f"num_actors must be >= 1, got {num_actors}")
        if not ray.is_initialized():
            raise RuntimeError("HASActorPool needs Ray: call ray.init (or ray_runtime) first")
        cluster_cpus = float(ray.cluster_resources().get("CPU", 0))
        placed = min(num_actors, max(1, len(video_ids)))  # at most one actor per video
        wanted = placed * num_cpus_per_actor
        if wanted > cluster_cpus and autoscaling:
            # A cluster joined by address may add nodes for the actors (autoscaler): wait a while,
            # say why, and refuse if none come (a fixed-size cluster would leave them pending forever).
            from ray.autoscaler.sdk import request_resources

            print(f"copl: {wanted:g} CPUs wanted for HAS actors, the Ray cluster has {cluster_cpus:g}: waiting up to "
                  f"{AUTOSCALE_WAIT_S:g} s for the autoscaler", file=sys.stderr)
            # The demand it scales for, shaped as the actors (no actor is pending yet). Ray keeps such a
            # request until the next call, so it is withdrawn once the wait ends: the placed actors
            # then hold their nodes, and an unanswered request must not keep the cluster scaling.
            request_resources(bundles=[{"CPU": num_cpus_per_actor}] * placed)
            try:
                deadline = time.monotonic() + AUTOSCALE_WAIT_S
                while wanted > cluster_cpus and time.monotonic() < deadline:
                    time.sleep(min(5.0, AUTOSCALE_WAIT_S))
                    cluster_cpus = float(ray.cluster_resources().get("CPU", 0))
            finally:
                request_resources()
        if wanted > cluster_cpus:
            # Ray would keep the surplus actors pending forever and vote() would never return.
            raise InputError(
                f"distributed.has_actors: {num_actors} HAS actors x {num_cpus_per_actor} CPU need {wanted:g} CPUs, "
                f"the Ray cluster has {cluster_cpus:g}"
            )
        corpus = Corpus.open(corpus_root)  # metadata only: the snippet counts for balanced shards
        self.corpus_root = str(corpus.root)
        self.video_ids = list(video_ids)
        self.feature_dim = corpus.feature_dim
        self.torch_threads = int(torch_threads or torch.get_num_threads())
        counts = [corpus.record(v).num_snippets for v in self.video_ids]
        ranges = contiguous_shards(counts, placed)
        self.shards = [self.video_ids[a:b] for a, b in ranges]
        self._owner = {v: i for i, shard in enumerate(self.shards) for v in shard}
        cfg_dict = to_dict(cfg)
        self._actors = [
            HASActor.options(num_cpus=num_cpus_per_actor).remote(self.corpus_root, shard, cfg_dict, self.torch_threads)
            for shard in self.shards
        ]

    @property
    def num_actors(self) -> int:
        return len(self._actors)

    # -- voter protocol ------------------------------------------------------------------------
    def vote(self, epoch: int, teacher: IOCNet) -> None:
        """One voting epoch on every shard; returns when all actors are done."""
        ref = ray.put(teacher_payload(teacher))  # once per epoch; every actor reads the same object
        ray.get([actor.vote.remote(ref) for actor in self._live()])

    def state(self) -> dict[str, np.ndarray]:
        """{video_id: votes} over all shards, in video_ids order."""
        merged: dict[str, np.ndarray] = {}
        for part in ray.get([actor.state.remote() for actor in self._live()]):
            merged.update(part)
        return {v: merged[v] for v in self.video_ids if v in merged}

    def restore(self, votes: dict[str, np.ndarray]) -> None:
        """Replace the voting state; each actor receives its shard's part ({} resets)."""
        unknown = [v for v in votes if v not in self._owner]
        if unknown:
            raise ValueError(f"votes for {len(unknown)} video(s) outside this pool, e.g. '{unknown[0]}'")
        parts: list[dict[str, np.ndarray]] = [{} for _ in self.shards]
        for v, arr in votes.items():
            parts[self._owner[v]][v] = np.asarray(arr)
        ray.get([actor.restore.remote(part) for actor, part in zip(self._live(), parts)])

    # -- features ------------------------------------------------------------------------------
    def initial_features(self, video_ids: Sequence[str], init: str, gamma: float) -> np.ndarray:
        """(N, D) float32 iteration-0 features (has.initial_feature), rows in video_ids order. A video
        outside the pool is read by actor (position mod num_actors)."""
        owners = [self._owner.get(v, n % self.num_actors) for n, v in enumerate(video_ids)]
        return self._gather("initial_features", list(video_ids), owners, init, gamma)

    def global_features(self, video_ids: Sequence[str]) -> np.ndarray:
        """(N, D) float32 Eq. 5 features from the voted HAS attention, rows in video_ids order."""
        unknown = [v for v in video_ids if v not in self._owner]
        if unknown:
            raise ValueError(f"{len(unknown)} video(s) outside this pool, e.g. '{unknown[0]}'")
        return self._gather("global_features", list(video_ids), [self._owner[v] for v in video_ids])

    def _gather(self, method: str, video_ids: list[str], owners: list[int], *args: Any) -> np.ndarray:
        actors = self._live()
        rows = [[n for n, o in enumerate(owners) if o == a] for a in range(len(actors))]
        refs = [getattr(actors[a], method).remote([video_ids[n] for n in rows[a]], *args) for a in range(len(actors))]
        out = np.zeros((len(video_ids), self.feature_dim), dtype=np.float32)
        for idx, part in zip(rows, ray.get(refs)):
            if idx:
                out[idx] = part
        return out

    # -- lifecycle -----------------------------------------------------------------------------
    def info(self) -> list[dict[str, int]]:
        """Per actor: pid, torch threads, peak RSS in bytes."""
        return ray.get([actor.info.remote() for actor in self._live()])

    def shutdown(self) -> None:
        """End the actors (idempotent). Copies of this pool (pickled elsewhere) stop working too."""
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []

    def _live(self) -> list[Any]:
        if not self._actors:
            raise RuntimeError("HASActorPool was shut down")
        return self._actors

    def __enter__(self) -> HASActorPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

