"""The COPL iteration driver: cluster -> PLRI -> train IOCNet -> HAS -> cluster again.

Iteration 0 (no model yet) clusters novelty-pooled snippet features, or the mean snippet features
as the paper does (has.init); every later iteration clusters the HAS global features voted by the
previous iteration's teacher (Eqs. 1-5), projected by LDA fitted on the previous iteration's
pseudo-labelled set (cluster.project, projection.py; not in the paper). Each iteration trains a fresh
IOCNet, since cluster ids (and so the classifier's outputs) are not aligned between clusterings.
The test set is evaluated after every iteration for the record (the paper's Fig. 4); nothing is
selected on it: the reported model is the last one.

Annotations are only read to name and to score: clusters take the names of the classes of the
annotated training videos they hold (Hungarian mapping; a cluster holding none keeps its own name,
cluster_07), and the test subset is scored against its segments. A corpus whose training videos
carry none (the usual case at scale) runs the same iterations with clusters named cluster_00,
cluster_01, ... and no mAP, purity or NMI.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from copl_dist.cluster.naming import (
    class_names_for,
    cluster_metrics,
    label_targets,
    map_clusters_to_classes,
    primary_labels,
)
from copl_dist.cluster.videos import cluster_videos
from copl_dist.common.seeding import STREAM_CLUSTER, derive_seed
from copl_dist.config import (
    PRESET_TIOUS,
    CoplConfig,
    config_hash,
    to_dict,
)
from copl_dist.data.corpus import Corpus
from copl_dist.distributed.ray_runtime import ensure_ray, fits_one_local_cpu_worker, ray_address
from copl_dist.distributed.train import make_ray_train_fn
from copl_dist.method import baseline as baseline_lib
from copl_dist.method import has as has_lib
from copl_dist.method.engine import (
    TeacherOutputs,
    infer_video,
    resolve_device,
    train_loop_per_worker,
)
from copl_dist.method.localize import localize_video
from copl_dist.method.metrics import detection_map, snippet_auc, snippet_mask
from copl_dist.method.model import IOCNet
from copl_dist.method.projection import discriminant_projection
from copl_dist.run import state as run_state
from copl_dist.tracking.runs import Tracker

TrainFn = Callable[..., dict[str, Any]]


@dataclass
class RunResult:
    iterations: list[dict[str, Any]]
    final: dict[str, float]
    detections: dict[str, Any]
    teacher_state: dict[str, torch.Tensor] | None
    num_classes: int
    cluster_to_class: dict[int, int]
    traces: list[dict[str, Any]] = field(default_factory=list)
    pseudo_labels: list[dict[str, Any]] = field(default_factory=list)
    # The detections' labels, indexed by cluster_to_class's values (class_names_for).
    class_names: list[str] = field(default_factory=list)


def cluster_scale_options(cfg: CoplConfig) -> dict[str, Any]:
    """How `cluster_videos` picks and runs its large-N path (config `cluster.*`)."""
    return {
        "exact_max_n": cfg.cluster.exact_max_n,
        "knn": cfg.cluster.knn,
        "knn_pca": cfg.cluster.knn_pca,
        "scale_affinity": cfg.cluster.scale_affinity,
    }


def has_pool_options(cfg: CoplConfig, remote: bool) -> dict[str, Any]:
    """HASActorPool's keyword arguments from `distributed.*`; `remote`: Ray joined by address, whose
    autoscaler may still add the CPUs the actors wait for."""
    return {
        "num_cpus_per_actor": cfg.distributed.has_actor_cpus,
        "torch_threads": cfg.distributed.has_actor_threads or None,  # None: the driver's count
        "autoscaling": remote,
    }


def mean_features(corpus: Corpus, video_ids: list[str]) -> np.ndarray:
    return np.stack([has_lib.mean_feature(corpus.features(v)) for v in video_ids])


def initial_features(corpus: Corpus, video_ids: list[str], init: str, gamma: float) -> np.ndarray:
    """Iteration 0's global features (has.init): mean or novelty-pooled snippet features."""
    return np.stack([has_lib.initial_feature(corpus.features(v), init, gamma) for v in video_ids])


def project_features(
    features: np.ndarray, previous: tuple[np.ndarray, np.ndarray] | None, cfg: CoplConfig, seed: int
) -> np.ndarray:
    """What an iteration clusters: its global features, or (cluster.project = "lda", from iteration 1)
    their discriminant projection by the last clustering's pseudo-labelled set (projection.py).

    Not without PLRI (cluster.plri = false): then every video is "reliable", and a projection fitted
    on all of them separates exactly the last clustering, which the next one then reproduces
    (measured: the ablation +HAS gave Baseline's pseudo-labels and mAP to the digit)."""
    if cfg.cluster.project == "none" or not cfg.cluster.plri or previous is None:
        return features
    projected = discriminant_projection(features, previous[0], previous[1], seed=seed)
    return features if projected is None else projected


def cluster_iteration(
    features: np.ndarray, previous: tuple[np.ndarray, np.ndarray] | None, cfg: CoplConfig, num_classes: int,
    iteration: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One COPL iteration's clustering of the training videos' global features: (the features
    clustered, cluster labels, PLRI scores, the pseudo-labelled mask P; U is its complement)."""
    seed = derive_seed(cfg.seed, STREAM_CLUSTER, iteration)
    clustered = project_features(features, previous, cfg, seed)
    labels, scores, mask = cluster_videos(
        clustered, num_classes, seed, cfg.cluster.delta, cfg.cluster.plri, **cluster_scale_options(cfg)
    )
    return clustered, labels, scores, mask


def pseudo_targets(labels: np.ndarray, mask: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, C) training targets: one-hot pseudo-labels on P, zero rows on U."""
    return np.eye(num_classes, dtype=np.float32)[labels] * mask[:, None]


def has_features(corpus: Corpus, video_ids: list[str], votes: dict[str, np.ndarray], centre: bool = False) -> np.ndarray:
    """Eq. 5 for each video from its voted HAS attention (centred on the video mean: has.centre)."""
    return np.stack([has_lib.global_feature(corpus.features(v), votes[v], centre) for v in video_ids])


def load_teacher(state: dict[str, torch.Tensor], num_classes: int, cfg: CoplConfig) -> IOCNet:
    model = IOCNet(num_classes, cfg.model.feature_dim, cfg.model.hidden_dim, cfg.model.dropout)
    model.load_state_dict(state)
    return model.eval()


def localize_all(
    corpus: Corpus,
    video_ids: list[str],
    cfg: CoplConfig,
    outputs_for: Callable[[str], tuple[np.ndarray, np.ndarray]],
    cluster_to_class: dict[int, int],
    class_names: list[str] | None = None,
) -> dict[str, Any]:
    """Detections for every video, in the ActivityNet results format, labels after mapping
    (`class_names`, default the corpus classes)."""
    names = corpus.classes if class_names is None else class_names
    results: dict[str, list[dict[str, Any]]] = {}
    for vid in video_ids:
        h_cs, class_scores = outputs_for(vid)
        duration = corpus.record(vid).duration_s
        dets = localize_video(h_cs, class_scores, duration, cfg.inference)
        results[vid] = [
            {
                "segment": [round(float(s), 3), round(float(e), 3)],
                "label": names[cluster_to_class[int(c)]],
                "score": float(score),
            }
            for s, e, c, score in dets
        ]
    return {"version": "copl_dist", "results": results}


def evaluate(
    corpus: Corpus, subset: str, detections: dict[str, Any], tious: list[float], by_class: bool = True
) -> dict[str, float]:
    """`map@<tIoU>` and `map@avg` in percent (`by_class`: the detections' labels are class names),
    and the class-agnostic `agnostic_map@...` (localization alone); empty if the subset has no annotations."""
    gt = corpus.ground_truth(subset)
    if not any(v["annotations"] for v in gt["database"].values()):
        return {}
    keys = [f"{t:g}" for t in tious]
    out = {}
    if by_class:
        out.update({f"map@{k}": float(v) for k, v in detection_map(gt, detections, keys, subset=subset).items()})
    agnostic = detection_map(gt, detections, keys, subset=subset, class_agnostic=True)
    out.update({f"agnostic_map@{k}": float(v) for k, v in agnostic.items()})
    return out


def attention_auc(corpus: Corpus, video_ids: list[str], outputs: dict[str, TeacherOutputs]) -> dict[str, float]:
    """Snippet-level ROC AUC of the teacher's A_cs and A_ca against the ground truth (diagnostic)."""
    masks, a_cs, a_ca = [], [], []
    for vid in video_ids:
        segments = [(s.start_s, s.end_s) for s in corpus.segments(vid)]
        if not segments:
            continue
        out = outputs[vid]
        masks.append(snippet_mask(segments, corpus.record(vid).duration_s, len(out.a_cs)))
        a_cs.append(out.a_cs)
        a_ca.append(out.a_ca)
    if not masks:
        return {}
    mask = np.concatenate(masks)
    result = {"auc_a_cs": snippet_auc(np.concatenate(a_cs), mask), "auc_a_ca": snippet_auc(np.concatenate(a_ca), mask)}
    return {k: v for k, v in result.items() if v is not None}


def actionness_traces(
    corpus: Corpus, video_ids: list[str], outputs: dict[str, TeacherOutputs], count: int = 3
) -> list[dict[str, Any]]:
    """The first `count` annotated videos' curves (the first videos where none is annotated)."""
    traces = []
    shown = [v for v in video_ids if corpus.segments(v)] or video_ids
    for vid in shown[:count]:
        out = outputs[vid]
        top = int(np.argmax(out.class_scores))
        traces.append(
            {
                "video_id": vid,
                "duration_s": corpus.record(vid).duration_s,
                "actionness": out.h_cs[:, top],
                "a_ca": out.a_ca,
                "a_cs": out.a_cs,
                "segments": [(s.start_s, s.end_s) for s in corpus.segments(vid)],
            }
        )
    return traces


def state_digest(state: dict[str, torch.Tensor] | None) -> str | None:
    """A short content identity of a state dict (the --init-from weights), None for none: a resumed
    run compares it with the saved state's, so a moved registry alias is caught too."""
    if state is None:
        return None
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def run_provenance(
    corpus: Corpus, data_source: str | None, data_files: str | None, init_state: dict[str, torch.Tensor] | None,
) -> dict[str, Any]:
    """What a saved state must match beyond the config (run_state.PROVENANCE): `--resume` reuses
    OUT/corpus, so another --data or --init-from would otherwise be taken silently."""
    return {
        "corpus_digest": corpus.digest(),
        "data": data_source,
        "data_files": data_files,
        "init_digest": state_digest(init_state),
    }


def default_train_fn(cfg: CoplConfig, out_dir: Path | None = None) -> TrainFn:
    """The trainer `cfg.distributed.workers` asks for: 0 trains in this process; N > 0 (or -1, fit the
    machine or cluster) on Ray Train, checkpointing to distributed.storage_path, else OUT/ray_storage.
    A -1 that fits one CPU worker on this machine trains in this process too (the faster path)."""
    if cfg.distributed.workers == 0 or fits_one_local_cpu_worker(cfg.distributed):
        return train_loop_per_worker

    storage = cfg.distributed.storage_path or (str(out_dir / "ray_storage") if out_dir is not None else None)
    return make_ray_train_fn(cfg, storage)


class CoplRun:
    """One `copl run`: its config, corpus and tracker; `execute()` runs the mode the config names."""

    def __init__(
        self,
        cfg: CoplConfig,
        corpus: Corpus,
        tracker: Tracker | None = None,
        train_fn: TrainFn | None = None,
        progress: bool = True,
        on_iteration: Callable[[list[dict[str, Any]]], None] | None = None,
        init_state: dict[str, torch.Tensor] | None = None,
        state_dir: Path | None = None,
        resume_state: dict[str, Any] | None = None,
        data_source: str | None = None,
        data_files: str | None = None,
    ):
        self.cfg = cfg
        self.init_state = init_state  # the first training starts from these weights (`copl run --init-from`)
        self.state_dir = state_dir  # per-iteration state for `--resume` (run/state.py); None: not kept
        # A saved iteration to continue after (run/state.py load_latest, checked by run/plan.py prepare).
        self.resume_state = resume_state
        self.data_source = data_source  # what the user named as data (`copl run --data`): --resume checks it
        self.data_files = data_files  # run_state.files_fingerprint of it: --resume checks it too
        self.corpus = corpus
        self.tracker = tracker
        # None: the trainer cfg.distributed.workers asks for (default_train_fn).
        self.train_fn = train_fn if train_fn is not None else default_train_fn(cfg, tracker.out_dir if tracker else None)
        self.progress = progress
        self.on_iteration = on_iteration
        # The newest iteration's result (teacher, clustering, mapping) while `on_iteration` runs:
        # `copl tune` scores each iteration's teacher from it.
        self.latest: RunResult | None = None
        # HAS voting and global features in Ray actors while _utal runs with distributed.has_actors > 0.
        self._has_pool: Any = None
        self.train_ids = corpus.video_ids(cfg.data.train_subset)
        self.test_ids = corpus.video_ids(cfg.data.test_subset)
        self.num_classes = cfg.num_classes or len(corpus.classes)
        self.tious = PRESET_TIOUS[cfg.preset]
        self.primary = primary_labels(corpus, self.train_ids)
        # Clusters named after classes (and the test subset scored) only through annotated training videos.
        self.named = cfg.mode == "wtal" or bool((self.primary >= 0).any())
        self.device = resolve_device(cfg.train.device)

    # -- helpers -----------------------------------------------------------------------------
    def _log(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step=step)

    def _train(self, targets: np.ndarray, labelled: np.ndarray, iteration: int, collect_votes: bool) -> dict[str, Any]:
        bar = tqdm(total=self.cfg.train.epochs, desc=f"iteration {iteration} training", disable=not self.progress, leave=False)
        shown: set[int] = set()
        lock = threading.Lock()

        def show(metrics: dict[str, float]) -> None:
            # Called by report() and, on Ray Train, by its live feed thread: each epoch advances the bar once.
            with lock:
                epoch = int(metrics["epoch"])
                if epoch in shown:
                    return
                shown.add(epoch)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}")
                bar.update(1)

        def report(metrics: dict[str, float], _checkpoint: Any = None) -> None:
            self._log({k: v for k, v in metrics.items() if k != "epoch"}, step=int(metrics["epoch"]))
            show(metrics)

        config = {
            "cfg": to_dict(self.cfg),
            "corpus": str(self.corpus.root),
            "video_ids": self.train_ids,
            "targets": targets,
            "labelled": labelled,
            "num_classes": targets.shape[1],
            "iteration": iteration,
            "collect_votes": collect_votes,
            "init_state": self.init_state if iteration == 0 else None,
            "device": str(self.device),  # Ray Train workers replace it with their own
        }
        if collect_votes and self._has_pool is not None:
            config["voter"] = self._has_pool  # the training clears its votes first (engine: voter.restore)
        live = {"progress": show} if getattr(self.train_fn, "live_progress", False) else {}
        try:
            return self.train_fn(config, report=report, **live)
        finally:
            bar.close()

    def _model_detections(
        self, teacher: IOCNet, cluster_to_class: dict[int, int]
    ) -> tuple[dict[str, Any], dict[str, TeacherOutputs]]:
        outputs = {
            vid: infer_video(teacher, self.corpus.features(vid), self.cfg.train.beta, self.cfg.train.topl_ratio)
            for vid in tqdm(self.test_ids, desc="inference", disable=not self.progress, leave=False)
        }
        dets = localize_all(
            self.corpus, self.test_ids, self.cfg, lambda v: (outputs[v].h_cs, outputs[v].class_scores), cluster_to_class,
            class_names_for(cluster_to_class, self.corpus.classes),
        )
        return dets, outputs

    def _mapping(self, labels: np.ndarray) -> dict[int, int]:
        """Cluster -> index into class_names_for(mapping, corpus.classes)."""
        return map_clusters_to_classes(labels, self.primary, self.num_classes, len(self.corpus.classes))

    def _evaluate(self, detections: dict[str, Any]) -> dict[str, float]:
        """The test subset's mAP, by class only where clusters have class names to match its labels."""
        return evaluate(self.corpus, self.cfg.data.test_subset, detections, self.tious, by_class=self.named)

    # -- modes ---------------------------------------------------------------------------------
    def execute(self) -> RunResult:
        return {"utal": self._utal, "wtal": self._wtal, "baseline": self._baseline}[self.cfg.mode]()

    def _resume_point(
        self,
    ) -> tuple[int, np.ndarray | None, tuple[np.ndarray, np.ndarray] | None, list[dict[str, Any]], RunResult | None]:
        """(first iteration to run, its clustering features, the last clustering's (labels, P mask),
        records so far, last result)."""
        state = self.resume_state
        if state is None:
            return 0, None, None, [], None
        labels, scores, mask = state["labels"], state["scores"], state["mask"].astype(bool)
        result = RunResult(
            iterations=list(state["iterations"]),
            final={k: v for k, v in state["iterations"][-1].items() if k.startswith("map@")},
            detections=state["detections"],
            teacher_state=state["teacher"],
            num_classes=self.num_classes,
            cluster_to_class={int(k): int(v) for k, v in state["mapping"].items()},
            traces=state["traces"],
            pseudo_labels=self._pseudo_table(labels, scores, mask),
            class_names=class_names_for({int(k): int(v) for k, v in state["mapping"].items()}, self.corpus.classes),
        )
        return int(state["iteration"]) + 1, state["next_features"], (labels, mask), result.iterations, result

    def _provenance(self) -> dict[str, Any]:
        return run_provenance(self.corpus, self.data_source, self.data_files, self.init_state)

    def _pseudo_table(self, labels: np.ndarray, scores: np.ndarray, mask: np.ndarray) -> list[dict[str, Any]]:
        return [
            {"video_id": v, "cluster": int(labels[n]), "plri_score": float(scores[n]), "pseudo_labelled": bool(mask[n])}
            for n, v in enumerate(self.train_ids)
        ]

    def _initial_features(self) -> np.ndarray:
        init, gamma = self.cfg.has.init, self.cfg.has.gamma
        if self._has_pool is not None:
            return self._has_pool.initial_features(self.train_ids, init, gamma)
        return initial_features(self.corpus, self.train_ids, init, gamma)

    def _has_features(self, votes: dict[str, np.ndarray]) -> np.ndarray:
        if self._has_pool is not None:  # Eq. 5 inside the actors, from the votes they hold
            return self._has_pool.global_features(self.train_ids)
        return has_features(self.corpus, self.train_ids, votes, self.cfg.has.centre)

    def _utal(self) -> RunResult:
        n_actors = self.cfg.distributed.has_actors
        if n_actors > 0:
            from copl_dist.distributed.has_actors import (
                HASActorPool,  # deferred: imports ray (runs in-process need none)
            )

            ensure_ray(self.cfg.distributed)
            remote = ray_address(self.cfg.distributed) != "local"
            self._has_pool = HASActorPool(
                self.corpus.root, self.train_ids, self.cfg, n_actors, **has_pool_options(self.cfg, remote)
            )
        try:
            return self._utal_iterations()
        finally:
            if self._has_pool is not None:
                self._has_pool.shutdown()
                self._has_pool = None

    def _utal_iterations(self) -> RunResult:
        cfg = self.cfg
        start, features, previous, iterations, result = self._resume_point()
        # Recorded in each iteration this run computes, so metrics.json shows what a --resume skipped.
        resumed_from = start - 1 if start > 0 else None
        provenance = self._provenance() if self.state_dir is not None else {}
        if features is None:
            features = self._initial_features()
        for it in range(start, cfg.iterations):
            started = time.perf_counter()
            ctx = self.tracker.iteration_run(it) if self.tracker else _null()
            with ctx:
                clustered, labels, scores, mask = cluster_iteration(features, previous, cfg, self.num_classes, it)
                previous = (labels, mask)
                record: dict[str, Any] = {"iteration": it, **cluster_metrics(self.primary, labels)}
                record["cluster_dim"] = int(clustered.shape[1])
                record["num_pseudo_labelled"] = int(mask.sum())
                record["num_unlabelled"] = int((~mask).sum())
                targets = pseudo_targets(labels, mask, self.num_classes)
                collect = cfg.has.enabled and it < cfg.iterations - 1
                trained = self._train(targets, mask, it, collect_votes=collect)
                history = trained["history"]
                record["losses"] = {k: float(np.mean([h[k] for h in history])) for k in history[0] if k != "epoch"}
                teacher = load_teacher(trained["teacher"], self.num_classes, cfg).to(self.device)
                mapping = self._mapping(labels)
                dets, outputs = self._model_detections(teacher, mapping)
                record.update(self._evaluate(dets))
                record.update(attention_auc(self.corpus, self.test_ids, outputs))
                record["seconds"] = time.perf_counter() - started
                self._log({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "iteration"})
                if resumed_from is not None:
                    record["resumed_from"] = resumed_from
                iterations.append(record)
                result = RunResult(
                    iterations=iterations,
                    final={k: v for k, v in record.items() if k.startswith("map@")},
                    detections=dets,
                    teacher_state=trained["teacher"],
                    num_classes=self.num_classes,
                    cluster_to_class=mapping,
                    traces=actionness_traces(self.corpus, self.test_ids, outputs),
                    pseudo_labels=self._pseudo_table(labels, scores, mask),
                    class_names=class_names_for(mapping, self.corpus.classes),
                )
                self.latest = result
                # The next clustering's features: HAS (Eq. 5) from this training's votes, or
                # iteration 0's features again when HAS is off.
                if collect:
                    features = self._has_features(trained["votes"])
                if self.state_dir is not None:
                    run_state.save_iteration(self.state_dir, it, config_hash(cfg), {
                        "iterations": iterations, "labels": labels, "scores": scores, "mask": mask,
                        "teacher": trained["teacher"], "votes": trained["votes"], "next_features": features,
                        "detections": dets, "mapping": {str(k): int(v) for k, v in mapping.items()},
                        "traces": [{**t, "segments": [list(s) for s in t["segments"]]} for t in result.traces],
                        **provenance,
                    })
                if self.on_iteration:
                    self.on_iteration(iterations)
        assert result is not None
        return result

    def _wtal(self) -> RunResult:
        started = time.perf_counter()
        targets = label_targets(self.corpus, self.train_ids)
        labelled = targets.sum(axis=1) > 0
        ctx = self.tracker.iteration_run(0) if self.tracker else _null()
        with ctx:
            trained = self._train(targets, labelled, 0, collect_votes=False)
            history = trained["history"]
            teacher = load_teacher(trained["teacher"], len(self.corpus.classes), self.cfg).to(self.device)
            identity = {c: c for c in range(len(self.corpus.classes))}
            dets, outputs = self._model_detections(teacher, identity)
            record: dict[str, Any] = {"iteration": 0, "num_pseudo_labelled": int(labelled.sum()), "num_unlabelled": int((~labelled).sum())}
            record["losses"] = {k: float(np.mean([h[k] for h in history])) for k in history[0] if k != "epoch"}
            record.update(evaluate(self.corpus, self.cfg.data.test_subset, dets, self.tious))
            record.update(attention_auc(self.corpus, self.test_ids, outputs))
            record["seconds"] = time.perf_counter() - started
            self._log({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "iteration"})
        if self.on_iteration:
            self.on_iteration([record])
        return RunResult(
            iterations=[record],
            final={k: v for k, v in record.items() if k.startswith("map@")},
            detections=dets,
            teacher_state=trained["teacher"],
            num_classes=len(self.corpus.classes),
            cluster_to_class=identity,
            traces=actionness_traces(self.corpus, self.test_ids, outputs),
            class_names=list(self.corpus.classes),
        )

    def _baseline(self) -> RunResult:
        started = time.perf_counter()
        cfg = self.cfg
        features = mean_features(self.corpus, self.train_ids)
        labels, scores, _ = cluster_videos(
            features, self.num_classes, derive_seed(cfg.seed, STREAM_CLUSTER, 0), cfg.cluster.delta, plri=False,
            **cluster_scale_options(cfg),
        )
        mapping = self._mapping(labels)
        centroids = baseline_lib.cluster_centroids(features, labels, self.num_classes)
        test_features = mean_features(self.corpus, self.test_ids)
        assigned = baseline_lib.assign_to_centroids(test_features, centroids)

        position = {vid: n for n, vid in enumerate(self.test_ids)}

        def outputs_for(vid: str) -> tuple[np.ndarray, np.ndarray]:
            n = position[vid]
            actionness = baseline_lib.novelty(self.corpus.features(vid))
            class_scores = np.zeros(self.num_classes)
            class_scores[assigned[n]] = 1.0
            return np.repeat(actionness[:, None], self.num_classes, axis=1), class_scores

        dets = localize_all(self.corpus, self.test_ids, cfg, outputs_for, mapping, class_names_for(mapping, self.corpus.classes))
        record: dict[str, Any] = {"iteration": 0, **cluster_metrics(self.primary, labels)}
        record.update(self._evaluate(dets))
        record["seconds"] = time.perf_counter() - started
        self._log({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "iteration"})
        return RunResult(
            iterations=[record],
            final={k: v for k, v in record.items() if k.startswith("map@")},
            detections=dets,
            teacher_state=None,
            num_classes=self.num_classes,
            cluster_to_class=mapping,
            class_names=class_names_for(mapping, self.corpus.classes),
        )


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None
