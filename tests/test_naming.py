"""Naming clusters and reading labels (cluster/naming.py) on hand-made corpora and mappings:
primary_labels, label_targets, map_clusters_to_classes, name_unheld_clusters, class_names_for,
cluster_names."""

from __future__ import annotations

import json

import numpy as np
import pytest

from copl_dist.cluster.naming import (
    class_names_for,
    cluster_names,
    label_targets,
    map_clusters_to_classes,
    name_unheld_clusters,
    primary_labels,
)
from copl_dist.data.formats import import_dataset

# Segments of each video as (start, end, label), in the order the annotation file lists them.
VIDEOS = {
    "v_one": [(1, 3, "jump")],
    # Three short "swim" (6 s in all) against one long "run" (8 s): the longest time wins, not the count.
    "v_longest": [(0, 2, "swim"), (3, 5, "swim"), (6, 8, "swim"), (10, 18, "run")],
    # 4 s each: a tie goes to the first name in sorted order, whatever order the file lists them in.
    "v_tie": [(0, 4, "swim"), (5, 9, "run")],
    "v_tie_reversed": [(5, 9, "run"), (0, 4, "swim")],
    "v_none": [],
}
CLASSES = ["jump", "run", "swim"]  # a corpus lists its classes sorted


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("naming")
    src = root / "src"
    (src / "features").mkdir(parents=True)
    database = {}
    for vid, segments in VIDEOS.items():
        database[vid] = {
            "subset": "train", "duration": 20.0,
            "annotations": [{"segment": [s, e], "label": label} for s, e, label in segments],
        }
        np.save(src / "features" / f"{vid}.npy", np.zeros((8, 4), dtype=np.float32))
    (src / "gt.json").write_text(json.dumps({"database": database}))
    return import_dataset(src, root / "corpus")


def test_primary_label_is_the_longest_annotated_class(corpus):
    assert corpus.classes == CLASSES
    ids = ["v_one", "v_longest", "v_tie", "v_tie_reversed", "v_none"]
    expected = [CLASSES.index("jump"), CLASSES.index("run"), CLASSES.index("run"), CLASSES.index("run"), -1]
    np.testing.assert_array_equal(primary_labels(corpus, ids), expected)
    # One entry per id asked for, in that order.
    np.testing.assert_array_equal(primary_labels(corpus, ids[::-1]), expected[::-1])
    assert primary_labels(corpus, ["v_none"]).tolist() == [-1]


def test_label_targets_spread_a_video_over_its_classes(corpus):
    targets = label_targets(corpus, ["v_one", "v_longest", "v_tie_reversed", "v_none"])
    assert targets.dtype == np.float32 and targets.shape == (4, 3)
    np.testing.assert_array_equal(
        targets,
        [
            [1.0, 0.0, 0.0],  # jump
            [0.0, 0.5, 0.5],  # run and swim, whatever their durations or segment counts
            [0.0, 0.5, 0.5],
            [0.0, 0.0, 0.0],  # no label: a zero row (unlabelled), not NaN
        ],
    )


def test_clusters_map_one_to_one_onto_the_classes_they_hold():
    labels = np.array([0, 0, 1, 1, 1, 2, 2])
    primary = np.array([2, 2, 0, 0, 1, 1, 1])
    assert map_clusters_to_classes(labels, primary, 3, 3) == {0: 2, 1: 0, 2: 1}
    # Cluster 1 holds more of class 0 than of class 1, but class 0 is cluster 0's: one-to-one
    # matching (most agreeing videos overall) beats each cluster's majority.
    assert map_clusters_to_classes(np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 0, 0, 0, 1]), 2, 2) == {0: 0, 1: 1}


def test_mapping_does_not_depend_on_cluster_ids_or_video_order():
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 3])
    primary = np.array([2, 2, 0, 0, 1, 1, 1, -1])
    base = map_clusters_to_classes(labels, primary, 4, 3)
    # Renumbering the clusters renumbers the mapping's keys, nothing else.
    perm = np.array([2, 3, 0, 1])
    renamed = map_clusters_to_classes(perm[labels], primary, 4, 3)
    assert {int(perm[c]): k for c, k in base.items()} == renamed
    # Listing the videos in another order changes nothing.
    order = np.random.default_rng(0).permutation(len(labels))
    assert map_clusters_to_classes(labels[order], primary[order], 4, 3) == base


def test_more_clusters_than_classes():
    # 5 clusters, 2 classes: clusters 0 and 1 take the classes; 2 and 3 hold annotated videos too,
    # so they take their majority class; cluster 4 holds only an unannotated video: its own name.
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 4])
    primary = np.array([0, 0, 0, 1, 1, 1, 1, 1, 0, 0, -1])
    mapping = map_clusters_to_classes(labels, primary, 5, 2)
    assert mapping == {0: 0, 1: 1, 2: 1, 3: 0, 4: 2}
    names = class_names_for(mapping, ["a", "b"])
    assert names == ["a", "b", "cluster_04"]
    assert [names[mapping[c]] for c in range(5)] == ["a", "b", "b", "a", "cluster_04"]


def test_fewer_clusters_than_classes():
    labels = np.array([0, 0, 0, 1, 1])
    primary = np.array([2, 2, 0, 1, 1])
    mapping = map_clusters_to_classes(labels, primary, 2, 3)
    assert mapping == {0: 2, 1: 1}
    names = class_names_for(mapping, ["a", "b", "c"])
    assert names == ["a", "b", "c"] and [names[mapping[c]] for c in range(2)] == ["c", "b"]


def test_no_annotated_training_video_names_every_cluster_after_itself():
    labels = np.array([0, 1, 2, 1])
    primary = np.full(4, -1)
    # No classes anywhere, or classes annotated only in another subset: each cluster its own name.
    assert map_clusters_to_classes(labels, primary, 3, 0) == {0: 0, 1: 1, 2: 2}
    mapping = map_clusters_to_classes(labels, primary, 3, 2)
    assert mapping == {0: 2, 1: 3, 2: 4}
    names = class_names_for(mapping, ["a", "b"])
    assert [names[mapping[c]] for c in range(3)] == cluster_names(3)


def test_unheld_clusters_are_numbered_past_the_classes_in_cluster_order():
    # Clusters 1 and 2 hold no annotated video; `held` may repeat clusters and come in any shape.
    mapping = name_unheld_clusters({3: 2, 0: 1, 2: 0, 1: 0}, np.array([[3, 0], [0, 3]]), 3)
    assert mapping == {0: 1, 1: 3, 2: 4, 3: 2}
    names = class_names_for(mapping, ["x", "y", "z"])
    assert names == ["x", "y", "z", "cluster_01", "cluster_02"]
    assert [names[mapping[c]] for c in range(4)] == ["y", "cluster_01", "cluster_02", "z"]


def test_own_names_are_as_wide_as_the_largest_cluster_id():
    mapping = name_unheld_clusters({c: 0 for c in range(12)}, np.array([0]), 1)
    names = class_names_for(mapping, ["a"])
    assert names[0] == "a" and names[1:] == [f"cluster_{c:02d}" for c in range(1, 12)]
    assert cluster_names(1) == ["cluster_00"]
    assert cluster_names(10)[-1] == "cluster_09" and cluster_names(11)[-1] == "cluster_10"
    assert cluster_names(100)[-1] == "cluster_99" and cluster_names(101)[0] == "cluster_000"
    assert len(set(cluster_names(250))) == 250
