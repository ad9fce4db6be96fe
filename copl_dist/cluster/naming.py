"""What a UTAL run reads annotations for: naming clusters after classes, and measuring them.

Training never reads them (mode utal). A cluster takes the name of the class its annotated training
videos mostly have, by Hungarian matching on the videos' primary (longest-annotated) class; a cluster
holding no annotated training video keeps its own name (cluster_07), and where no training video is
annotated every cluster does, and nothing is measured by class.
"""

from __future__ import annotations

import re

import numpy as np

from copl_dist.common.errors import InputError
from copl_dist.config import CoplConfig
from copl_dist.data.corpus import Corpus
from copl_dist.method.metrics import ari, hungarian_mapping, nmi, purity


def primary_labels(corpus: Corpus, video_ids: list[str]) -> np.ndarray:
    """(N,) class index of each video's longest-annotated class; -1 for a video with none."""
    index = {name: i for i, name in enumerate(corpus.classes)}
    out = np.full(len(video_ids), -1, dtype=np.int64)
    for n, vid in enumerate(video_ids):
        totals: dict[str, float] = {}
        for seg in corpus.segments(vid):
            totals[seg.label] = totals.get(seg.label, 0.0) + (seg.end_s - seg.start_s)
        if totals:
            out[n] = index[max(sorted(totals), key=lambda k: totals[k])]
    return out


def label_targets(corpus: Corpus, video_ids: list[str]) -> np.ndarray:
    """(N, C) true video labels as distributions (weakly-supervised mode)."""
    index = {name: i for i, name in enumerate(corpus.classes)}
    targets = np.zeros((len(video_ids), len(corpus.classes)), dtype=np.float32)
    for n, vid in enumerate(video_ids):
        for name in corpus.record(vid).labels:
            targets[n, index[name]] = 1.0
    sums = targets.sum(axis=1, keepdims=True)
    return np.divide(targets, sums, out=np.zeros_like(targets), where=sums > 0)


def cluster_metrics(primary: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    known = primary >= 0
    if not known.any():
        return {}
    t, p = primary[known], labels[known]
    return {"purity": purity(t, p), "nmi": nmi(t, p), "ari": ari(t, p)}


def cluster_names(count: int) -> list[str]:
    """Names of `count` clusters that no annotation names: cluster_00, cluster_01, ..."""
    width = max(2, len(str(count - 1)))
    return [f"cluster_{c:0{width}d}" for c in range(count)]


def name_unheld_clusters(mapping: dict[int, int], held: np.ndarray, num_classes_named: int) -> dict[int, int]:
    """`mapping` with each cluster that holds no annotated training video (not in `held`, the
    clusters of those videos) pointed past the classes, at its own name (class_names_for): the
    Hungarian matching would give it a class without evidence."""
    held_set = {int(c) for c in np.asarray(held).ravel()}
    out, extra = {}, 0
    for c in sorted(mapping):
        if c in held_set:
            out[c] = int(mapping[c])
        else:
            out[c] = num_classes_named + extra
            extra += 1
    return out


def class_names_for(mapping: dict[int, int], classes: list[str]) -> list[str]:
    """The label of each index `mapping` points at: the classes, then the clusters that
    name_unheld_clusters left to themselves, in cluster order."""
    own = sorted((k, c) for c, k in mapping.items() if k >= len(classes))
    return list(classes) + [cluster_names(len(mapping))[c] for _, c in own]


def map_clusters_to_classes(labels: np.ndarray, primary: np.ndarray, num_clusters: int, num_classes: int) -> dict[int, int]:
    """Cluster -> index into class_names_for(mapping, classes): Hungarian matching of the clusters
    (`labels`, one per training video) to the annotated videos' `primary` classes (-1: none), with
    clusters that hold no annotated video left to their own names."""
    known = primary >= 0
    matched = hungarian_mapping(labels[known], primary[known], num_clusters) if known.any() else {c: 0 for c in range(num_clusters)}
    return name_unheld_clusters(matched, labels[known], num_classes)


def naming_note(cfg: CoplConfig, corpus: Corpus) -> str | None:
    """What a run on training videos without annotations gives instead of named, scored detections
    (None when they have some). `copl run` prints it before it starts."""
    if cfg.mode == "wtal" or labels_name_clusters(corpus, corpus.video_ids(cfg.data.train_subset)):
        return None
    clusters = cfg.num_classes or len(corpus.classes)
    names = cluster_names(clusters)
    counted = "" if cfg.num_classes else " (as many as the classes annotated in other subsets; --set num_classes=K to choose)"
    note = (
        f"no video of subset '{cfg.data.train_subset}' has annotations: its {clusters} clusters{counted} are named "
        f"{names[0]}..{names[-1]}"
    )
    if corpus.classes:
        note += (
            ", with no purity, NMI or mAP by class: they cannot be matched to annotations; those of subset "
            f"'{cfg.data.test_subset}', if any, give the snippet AUC and the class-agnostic mAP"
        )
    else:
        note += ", and there is no purity, NMI or mAP"
    return note


def check_class_names(classes: list[str], where: object) -> None:
    """A class may not be named as clusters without one are (cluster_07): the two would be one label."""
    taken = [c for c in classes if re.fullmatch(r"cluster_\d+", c)]
    if taken:
        raise InputError(
            f"{where}: class '{taken[0]}' is named as copl names clusters that no annotation names; rename the class"
        )


def labels_name_clusters(corpus: Corpus, train_ids: list[str]) -> bool:
    """Whether some training video is annotated, so that clusters can take class names (Hungarian)."""
    return bool((primary_labels(corpus, train_ids) >= 0).any())
