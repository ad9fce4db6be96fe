"""`copl run` on videos without annotations, as users at scale have them: the same iterations, clusters
named cluster_00.., no purity, NMI or mAP; registered, promoted by name and used by `copl predict`.

The anchor is the annotated twin: `copl synth --no-annotations` writes the same features and durations
as the annotated corpus of its seed, and annotations are only read to name and to score, so the two
runs must cluster, train and detect identically, differing only in the detections' label names.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from one_line import one_line_error
from tiny_corpus import TINY

from copl_dist.cli import main
from copl_dist.cluster.naming import (
    class_names_for,
    cluster_names,
    name_unheld_clusters,
)
from copl_dist.data.synth import make_synthetic

SYNTH = {"preset": "thumos14", "videos": 8, "classes": 3, "seed": 0, "duration_scale": 0.15}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("unannotated")
    argv = ["synth", str(root / "bare"), "--no-annotations", *(f"--{k.replace('_', '-')}={v}" for k, v in SYNTH.items())]
    assert main(argv) == 0
    return {"annotated": make_synthetic(root / "annotated", **SYNTH), "bare": root / "bare"}


def test_clusters_without_annotated_videos_keep_their_own_names():
    assert cluster_names(3) == ["cluster_00", "cluster_01", "cluster_02"]
    assert cluster_names(101)[100] == "cluster_100" and cluster_names(101)[7] == "cluster_007"
    # Hungarian over one annotated video (in cluster 2, class 1) gives {0: 0, 1: 0, 2: 1}: clusters 0
    # and 1 hold no annotated video, so they are named after themselves, past the 4 classes.
    mapping = name_unheld_clusters({0: 0, 1: 0, 2: 1}, np.array([2]), 4)
    assert mapping == {0: 4, 1: 5, 2: 1}
    assert class_names_for(mapping, ["a", "b", "c", "d"]) == ["a", "b", "c", "d", "cluster_00", "cluster_01"]
    # No annotated video at all and no classes: each cluster is its own name, in order.
    bare = name_unheld_clusters({0: 0, 1: 0, 2: 0}, np.array([], dtype=int), 0)
    assert bare == {0: 0, 1: 1, 2: 2} and class_names_for(bare, []) == cluster_names(3)
    # Every cluster holds annotated videos: the matching stays as it is.
    assert name_unheld_clusters({0: 2, 1: 0, 2: 1}, np.array([0, 1, 2, 2]), 3) == {0: 2, 1: 0, 2: 1}


@pytest.fixture(scope="module")
def twin_runs(corpora, tmp_path_factory) -> dict[str, Path]:
    """The same run on both corpora; the bare one registers its teacher in its own store."""
    root = tmp_path_factory.mktemp("twin-runs")
    outs = {"annotated": root / "annotated", "bare": root / "bare"}
    assert main(["run", "--data", str(corpora["annotated"]), "--out", str(outs["annotated"]), *TINY,
                 "--set", "tracking.enabled=false"]) == 0
    assert main(["run", "--data", str(corpora["bare"]), "--out", str(outs["bare"]), *TINY, "--set", "num_classes=3"]) == 0
    return outs


def test_synth_without_annotations_keeps_features_and_durations(corpora):
    with_gt = json.loads((corpora["annotated"] / "annotations.json").read_text())["database"]
    bare = json.loads((corpora["bare"] / "annotations.json").read_text())["database"]
    assert set(bare) == set(with_gt) and any(r["annotations"] for r in with_gt.values())
    for vid, rec in bare.items():
        assert rec["annotations"] == [] and rec["subset"] == with_gt[vid]["subset"] and rec["duration"] == with_gt[vid]["duration"]
        a = np.load(corpora["annotated"] / "features" / f"{vid}.npy")
        assert np.array_equal(a, np.load(corpora["bare"] / "features" / f"{vid}.npy"))


def test_clusters_and_teacher_are_those_of_the_annotated_twin(twin_runs):
    tables = {k: pq.read_table(out / "pseudo_labels.parquet").to_pylist() for k, out in twin_runs.items()}
    assert tables["bare"] == tables["annotated"] and any(r["pseudo_labelled"] for r in tables["bare"])
    ckpt = {k: torch.load(out / "teacher.pt", weights_only=True) for k, out in twin_runs.items()}
    assert ckpt["bare"]["state_dict"].keys() == ckpt["annotated"]["state_dict"].keys()
    for name, value in ckpt["bare"]["state_dict"].items():
        assert torch.equal(value, ckpt["annotated"]["state_dict"][name]), name
    assert ckpt["bare"]["class_names"] == ["cluster_00", "cluster_01", "cluster_02"]
    assert ckpt["bare"]["cluster_to_class"] == [0, 1, 2]
    assert sorted(ckpt["annotated"]["cluster_to_class"]) == [0, 1, 2]  # 3 clusters onto 3 classes: a bijection


def test_detections_differ_only_by_the_label_names(twin_runs):
    dets = {k: json.loads((out / "detections.json").read_text())["results"] for k, out in twin_runs.items()}
    ckpt = torch.load(twin_runs["annotated"] / "teacher.pt", weights_only=True)
    # cluster c is named cluster_0c in the bare run and class_names[cluster_to_class[c]] in the annotated one
    rename = {f"cluster_0{c}": ckpt["class_names"][k] for c, k in enumerate(ckpt["cluster_to_class"])}
    assert set(dets["bare"]) == set(dets["annotated"]) and sum(map(len, dets["bare"].values())) > 0
    for vid, bare in dets["bare"].items():
        assert [{**d, "label": rename[d["label"]]} for d in bare] == dets["annotated"][vid]


def test_metrics_have_no_label_based_figures(twin_runs):
    bare = json.loads((twin_runs["bare"] / "metrics.json").read_text())
    annotated = json.loads((twin_runs["annotated"] / "metrics.json").read_text())
    assert bare["complete"] and bare["final"] == {} and annotated["final"]["map@avg"] > 0
    for it_bare, it_ann in zip(bare["iterations"], annotated["iterations"], strict=True):
        assert not {"purity", "nmi", "ari", "auc_a_cs", "agnostic_map@avg"} & set(it_bare) and "nmi" in it_ann
        assert not any("map@" in k for k in it_bare) and it_ann["agnostic_map@avg"] > 0
        assert (it_bare["num_pseudo_labelled"], it_bare["losses"]) == (it_ann["num_pseudo_labelled"], it_ann["losses"])
    # Actionness curves of the first test videos are still drawn, with no ground truth to shade.
    assert (twin_runs["bare"] / "plots" / "actionness.png").stat().st_size > 0


def test_registered_without_map_promoted_by_name_and_predicting(twin_runs, corpora, tmp_path, capsys):
    store = str(twin_runs["bare"])
    assert main(["registry", "list", "--tracking-uri", store, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["version"] for r in rows] == ["1"] and not any(k.startswith("map_at") for k in rows[0]["tags"])
    assert main(["registry", "promote", "--tracking-uri", store]) == 2
    one_line_error(capsys, "no version with mode 'utal' has the metric 'map@avg'")
    assert main(["registry", "promote", "--tracking-uri", store, "--version", "2"]) == 2
    one_line_error(capsys, "models:/copl-teacher/2", "no version 2")
    assert main(["registry", "promote", "--tracking-uri", store, "--version", "1", "--metric", "map@avg"]) == 2
    one_line_error(capsys, "--version", "--metric")
    assert main(["registry", "promote", "--tracking-uri", store, "--version", "1"]) == 0
    assert "models:/copl-teacher@champion -> version 1" in capsys.readouterr().out
    out = tmp_path / "pred"
    argv = ["predict", "--model", "models:/copl-teacher@champion", "--tracking-uri", store,
            "--data", str(corpora["bare"]), "--subset", "test", "--out", str(out)]
    assert main(argv) == 0
    predicted = json.loads((out / "detections.json").read_text())["results"]
    run = json.loads((twin_runs["bare"] / "detections.json").read_text())["results"]
    assert predicted == run  # the registered teacher is the run's: the same detections, the same names


def test_the_note_and_the_errors(corpora, tmp_path, capsys):
    out = tmp_path / "out"
    # No annotation to count the classes from: the number of clusters must be given.
    assert main(["run", "--data", str(corpora["bare"]), "--out", str(out), *TINY]) == 2
    one_line_error(capsys, f"{corpora['bare']}: no video has annotations", "--set num_classes=K")
    assert main(["run", "--data", str(corpora["bare"]), "--out", str(out), *TINY, "--mode", "wtal", "--set", "num_classes=3"]) == 2
    one_line_error(capsys, "mode 'wtal' trains on video-level labels", "subset 'validation'")
    assert not out.exists()
    # Training videos without annotations, an annotated test subset: the clusters cannot be matched to
    # the test labels, so nothing is scored by label (the snippet AUC needs none and stays), and the
    # number of clusters comes from the classes annotated elsewhere, as the note says.
    mixed = _with_annotations_only_in(tmp_path / "mixed", ("test",))
    argv = ["run", "--data", str(mixed), "--out", str(out), *TINY, "--iterations", "1", "--set", "tracking.enabled=false"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert (
        "copl: no video of subset 'validation' has annotations: its 3 clusters (as many as the classes annotated in "
        "other subsets; --set num_classes=K to choose) are named cluster_00..cluster_02"
    ) in captured.err
    assert (
        "with no purity, NMI or mAP by class: they cannot be matched to annotations; those of subset 'test', "
        "if any, give the snippet AUC and the class-agnostic mAP"
    ) in captured.err
    assert "class-agnostic mAP (the clusters have no class names to score by class):" in captured.out
    doc = json.loads((out / "metrics.json").read_text())
    record = doc["iterations"][0]
    assert doc["final"] == {} and "nmi" not in record and 0 <= record["auc_a_ca"] <= 1
    assert not any(k.startswith("map@") for k in record) and record["agnostic_map@avg"] > 0
    # The number is the one `copl eval --class-agnostic` gives for the run's detections.
    from copl_dist.method.metrics import evaluate_files

    thumos = ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7"]
    by_file = evaluate_files(mixed / "annotations.json", out / "detections.json", "test", thumos, class_agnostic=True)
    assert record["agnostic_map@avg"] == pytest.approx(by_file["avg"])
    labels = {d["label"] for v in json.loads((out / "detections.json").read_text())["results"].values() for d in v}
    assert labels and labels <= {"cluster_00", "cluster_01", "cluster_02"}
    ckpt = torch.load(out / "teacher.pt", weights_only=True)
    assert [ckpt["class_names"][k] for k in ckpt["cluster_to_class"]] == cluster_names(3)


def test_one_annotated_training_video_names_one_cluster(tmp_path, capsys):
    """Only the cluster holding the one annotated training video takes a class name; the others keep
    their own, past the classes in cluster order."""
    data = _with_annotations_only_in(tmp_path / "one", ("test",), keep=1)
    out = tmp_path / "out"
    argv = ["run", "--data", str(data), "--out", str(out), *TINY, "--iterations", "1", "--set", "tracking.enabled=false"]
    assert main(argv) == 0
    assert "copl: no video" not in capsys.readouterr().err  # named and scored: no note
    doc = json.loads((out / "metrics.json").read_text())
    assert "map@avg" in doc["final"] and "nmi" in doc["iterations"][0]
    ckpt = torch.load(out / "teacher.pt", weights_only=True)
    classes, mapping = ckpt["class_names"][:3], ckpt["cluster_to_class"]
    assert classes == ["class_00", "class_01", "class_02"]
    named = [c for c, k in enumerate(mapping) if k < 3]
    assert len(named) == 1
    assert [mapping[c] for c in range(3) if c not in named] == [3, 4]
    assert ckpt["class_names"][3:] == [f"cluster_0{c}" for c in range(3) if c not in named]
    labels = {d["label"] for v in json.loads((out / "detections.json").read_text())["results"].values() for d in v}
    assert labels <= {classes[mapping[named[0]]], *ckpt["class_names"][3:]} and labels


def test_a_class_named_as_clusters_are_is_refused(tmp_path, capsys):
    data = make_synthetic(tmp_path / "data", **SYNTH)
    ann = json.loads((data / "annotations.json").read_text())
    for rec in ann["database"].values():
        for a in rec["annotations"]:
            a["label"] = a["label"].replace("class_", "cluster_")
    (data / "annotations.json").write_text(json.dumps(ann))
    assert main(["run", "--data", str(data), "--out", str(tmp_path / "out"), *TINY]) == 2
    one_line_error(capsys, f"{data}: class 'cluster_00' is named as copl names clusters")
    assert not (tmp_path / "out").exists()


def _with_annotations_only_in(root: Path, subsets: tuple[str, ...], keep: int = 0) -> Path:
    """The annotated synthetic corpus with every annotation dropped outside `subsets`, except the
    first `keep` training videos' (in id order)."""
    make_synthetic(root, **SYNTH)
    ann = json.loads((root / "annotations.json").read_text())
    kept = sorted(v for v, r in ann["database"].items() if r["subset"] == "validation")[:keep]
    for vid, rec in ann["database"].items():
        if rec["subset"] not in subsets and vid not in kept:
            rec["annotations"] = []
    (root / "annotations.json").write_text(json.dumps(ann))
    return root


def test_the_least_a_user_must_write(corpora, tmp_path):
    """Features and a database of subsets only (no durations: T / (25/16) s, no annotations), one
    subset trained on and detected in: detections for every video."""
    root = tmp_path / "min"
    (root / "features").mkdir(parents=True)
    videos = sorted(p.stem for p in (corpora["bare"] / "features").glob("*.npy"))
    for vid in videos:
        (root / "features" / f"{vid}.npy").symlink_to(corpora["bare"] / "features" / f"{vid}.npy")
    (root / "videos.json").write_text(json.dumps({"database": {vid: {"subset": "all"} for vid in videos}}))
    out = tmp_path / "out"
    argv = ["run", "--data", str(root), "--out", str(out), *TINY, "--iterations", "1", "--set", "num_classes=3",
            "--train-subset", "all", "--test-subset", "all", "--set", "tracking.enabled=false"]
    assert main(argv) == 0
    dets = json.loads((out / "detections.json").read_text())["results"]
    assert sorted(dets) == videos and all(dets.values())
    for vid in videos[:3]:
        duration = len(np.load(root / "features" / f"{vid}.npy")) / (25 / 16)
        assert all(0 <= d["segment"][0] < d["segment"][1] <= duration + 1e-3 for d in dets[vid])
    assert {d["label"] for v in dets.values() for d in v} <= set(cluster_names(3))


def test_resume_of_a_finished_run_names_clusters_as_the_run_did(corpora, tmp_path, monkeypatch):
    """--resume rebuilds the names from the saved cluster mapping (nothing is trained again)."""
    import shutil

    from copl_dist.run import driver

    first, resumed = tmp_path / "first", tmp_path / "resumed"
    argv = ["run", "--data", str(corpora["bare"]), *TINY, "--set", "num_classes=3", "--set", "tracking.enabled=false"]
    assert main([*argv, "--out", str(first)]) == 0
    shutil.copytree(first, resumed)
    for name in ("detections.json", "teacher.pt", "pseudo_labels.parquet"):
        (resumed / name).unlink()
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(driver, "train_loop_per_worker", no_training)
    assert main([*argv, "--out", str(resumed), "--resume"]) == 0
    for name in ("detections.json", "pseudo_labels.parquet"):
        assert (resumed / name).read_bytes() == (first / name).read_bytes(), name
    ckpt = torch.load(resumed / "teacher.pt", weights_only=True)
    assert ckpt["class_names"] == cluster_names(3) and ckpt["cluster_to_class"] == [0, 1, 2]
