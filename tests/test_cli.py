"""End to end through the `copl` command: outputs, MLflow, determinism, and bad input."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from one_line import one_line_error
from tiny_corpus import TINY, tiny_synthetic

from copl_dist.cli import main

# argparse's errors start "copl run: error:", the rest "copl: error:".
_one_line = functools.partial(one_line_error, prefix="copl")



@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "synth"
    tiny_synthetic(root, videos=10, seed=0)
    return root


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    assert main(["run", "--data", str(tiny_data), "--out", str(out), *TINY]) == 0
    return out


def test_run_writes_every_output(tiny_run, tiny_data):
    dets = json.loads((tiny_run / "detections.json").read_text())
    gt = json.loads((tiny_data / "annotations.json").read_text())["database"]
    test_ids = {v for v, rec in gt.items() if rec["subset"] == "test"}
    assert set(dets["results"]) == test_ids
    classes = {a["label"] for rec in gt.values() for a in rec["annotations"]}
    # Every test video gets detections (proposals at 9 thresholds, scored, NMS: never none on a
    # trained model), so the loop below has something to check.
    assert all(dets["results"].values())
    for items in dets["results"].values():
        for d in items:
            assert d["label"] in classes and d["segment"][0] < d["segment"][1] and np.isfinite(d["score"])

    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["complete"] is True and len(metrics["iterations"]) == 2
    for it in metrics["iterations"]:
        for key in ("purity", "nmi", "ari", "num_pseudo_labelled", "num_unlabelled", "map@avg", "map@0.5", "auc_a_cs", "auc_a_ca"):
            assert key in it
        assert it["num_pseudo_labelled"] + it["num_unlabelled"] == 10
        assert set(it["losses"]) == {"loss", "cls", "asl", "ci", "contrastive", "co"}
    # Iteration 0 clusters the 2048-d features; iteration 1 their projection by iteration 0's P
    # (clusters - 1 = 2 dimensions), or, as here where P holds too few videos of each cluster, the
    # features as they are (test_resume runs the projection end to end).
    assert [it["cluster_dim"] for it in metrics["iterations"]] == [2048, 2048]
    assert set(metrics["final"]) == {f"map@{t}" for t in ("0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "avg")}
    assert metrics["final"]["map@avg"] == pytest.approx(np.mean([metrics["final"][f"map@0.{i}"] for i in range(1, 8)]))
    assert metrics["final"]["map@0.1"] > 0  # the detections hit some ground truth

    assert "hidden_dim: 32" in (tiny_run / "config.yaml").read_text()
    ckpt = torch.load(tiny_run / "teacher.pt", weights_only=True)
    assert ckpt["num_classes"] == 3 and ckpt["config"]["model"]["hidden_dim"] == 32
    assert sorted(ckpt["cluster_to_class"]) == [0, 1, 2]
    for name in ("iterations.png", "actionness.png"):
        assert (tiny_run / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    table = pq.read_table(tiny_run / "pseudo_labels.parquet").to_pylist()
    assert len(table) == 10 and {"video_id", "cluster", "plri_score", "pseudo_labelled"} <= set(table[0])
    assert not list(tiny_run.glob("**/*.tmp"))


def test_mlflow_parent_and_nested_runs(tiny_run):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tiny_run / 'mlflow.db'}")
    exp = client.get_experiment_by_name("copl")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.data.params["train.epochs"] == "2"
    assert "map_at_avg" in parent.data.metrics and parent.data.tags["mode"] == "utal"
    child = sorted(children, key=lambda r: int(r.data.params["iteration"]))[0]
    assert {"nmi", "purity", "ari", "map_at_avg"} <= set(child.data.metrics)
    history = client.get_metric_history(child.info.run_id, "loss")
    assert [m.step for m in history] == [0, 1]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"detections.json", "metrics.json", "config.yaml", "plots"} <= artifacts
    models = mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list")
    assert any(m.name == "teacher" for m in models)


def test_same_seed_same_pseudo_labels_and_map(tiny_run, tiny_data, tmp_path):
    out = tmp_path / "again"
    assert main(["run", "--data", str(tiny_data), "--out", str(out), *TINY]) == 0
    a = json.loads((tiny_run / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    assert a["final"] == b["final"]
    assert [i["nmi"] for i in a["iterations"]] == [i["nmi"] for i in b["iterations"]]
    assert pq.read_table(tiny_run / "pseudo_labels.parquet").equals(pq.read_table(out / "pseudo_labels.parquet"))


@pytest.mark.parametrize("mode", ["wtal", "baseline"])
def test_other_modes(mode, tiny_data, tmp_path):
    out = tmp_path / mode
    assert main(["run", "--data", str(tiny_data), "--out", str(out), "--mode", mode, "--set", "tracking.enabled=false", *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == mode and len(metrics["iterations"]) == 1
    assert (out / "teacher.pt").exists() == (mode == "wtal")


def test_eval_json_and_table(tiny_run, tiny_data, capsys):
    gt, pred = str(tiny_data / "annotations.json"), str(tiny_run / "detections.json")
    assert main(["eval", "--gt", gt, "--pred", pred, "--subset", "test", "--tiou", "0.3,0.5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"0.3", "0.5", "avg"}
    final = json.loads((tiny_run / "metrics.json").read_text())["final"]
    assert result["0.5"] == pytest.approx(final["map@0.5"], abs=1e-9)
    assert main(["eval", "--gt", gt, "--pred", pred, "--subset", "test", "--tiou", "0.1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["0.1"] == pytest.approx(final["map@0.1"], abs=1e-9) and final["map@0.1"] > 0
    assert main(["eval", "--gt", gt, "--pred", pred, "--subset", "test"]) == 0
    assert "0.7" in capsys.readouterr().out


# -- bad input: one line, exit 2, no traceback, no outputs -----------------------------------

def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _first_video(root: Path, subset: str = "validation") -> str:
    gt = json.loads((root / "annotations.json").read_text())["database"]
    return sorted(v for v, r in gt.items() if r["subset"] == subset)[0]


def _corrupt(kind: str, root: Path) -> str:
    """Break the dataset in one way; return a fragment the error line must contain."""
    vid = _first_video(root)
    feat = root / "features" / f"{vid}.npy"
    ann = root / "annotations.json"
    gt = json.loads(ann.read_text())
    if kind == "missing_feature":
        feat.unlink()
        return vid
    if kind == "wrong_shape":
        np.save(feat, np.zeros((20, 100), dtype=np.float32))
        return vid
    if kind == "wrong_dtype":
        np.save(feat, np.zeros((20, 2048), dtype=np.int32))
        return vid
    if kind == "nan":
        x = np.load(feat)
        x[3, 5] = np.nan
        np.save(feat, x)
        return vid
    if kind == "too_short":
        np.save(feat, np.zeros((2, 2048), dtype=np.float32))
        return vid
    if kind == "end_before_start":
        gt["database"][vid]["annotations"] = [{"segment": [5.0, 4.0], "label": "class_00"}]
        ann.write_text(json.dumps(gt))
        return vid
    if kind == "start_after_end":
        d = gt["database"][vid]["duration"]
        gt["database"][vid]["annotations"] = [{"segment": [d + 1, d + 3], "label": "class_00"}]
        ann.write_text(json.dumps(gt))
        return vid
    raise AssertionError(kind)


BAD_DATA = ["missing_feature", "wrong_shape", "wrong_dtype", "nan", "too_short", "end_before_start", "start_after_end"]


@pytest.mark.parametrize("kind", BAD_DATA)
def test_bad_data_one_line_exit_2_no_outputs(kind, tiny_data, tmp_path, capsys):
    root = _copy(tiny_data, tmp_path / "data")
    fragment = _corrupt(kind, root)
    out = tmp_path / "out"
    assert main(["run", "--data", str(root), "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("copl: error: ") and fragment in err[0], err
    assert not out.exists()


def test_rgb_flow_length_mismatch(tiny_data, tmp_path, capsys):
    root = _copy(tiny_data, tmp_path / "data")
    feats = root / "features"
    (root / "rgb").mkdir()
    (root / "flow").mkdir()
    for f in feats.glob("*.npy"):
        x = np.load(f)
        np.save(root / "rgb" / f.name, x[:, :1024])
        np.save(root / "flow" / f.name, x[:, 1024:])
    shutil.rmtree(feats)
    vid = _first_video(root)
    np.save(root / "flow" / f"{vid}.npy", np.load(root / "flow" / f"{vid}.npy")[:-1])
    assert main(["run", "--data", str(root), "--out", str(tmp_path / "out"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert vid in err and "\n" not in err


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--test-subset", "nosuch"], "--test-subset: subset 'nosuch' (data.test_subset) is not in"),
        (["--train-subset", "nosuch"], "--train-subset: subset 'nosuch' (data.train_subset) is not in"),
        (["--set", "data.test_subset=nosuch"], "--set: subset 'nosuch' (data.test_subset) is not in"),
        (["--set", "num_classes=50"], "fewer than the 50 clusters"),
        (["--set", "train.epochz=3"], "unknown config key 'train.epochz'"),
        (["--set", "tracking.registered_model=bad/name"], "tracking.registered_model 'bad/name'"),
        (["--tracking-uri", ""], "--tracking-uri: empty"),
    ],
)
def test_bad_arguments(extra, fragment, tiny_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--data", str(tiny_data), "--out", str(out), *TINY, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "\n" not in err
    # Nothing is left: not the converted corpus, not the tracking store (the folder did not exist).
    assert not out.exists()


def test_bad_input_keeps_what_the_folder_held(tiny_data, tmp_path, capsys):
    """An --out that held files before: a run failing on bad input removes only what it added."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["run", "--data", str(tiny_data), "--out", str(out), *TINY, "--test-subset", "nosuch"]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    capsys.readouterr()


def test_file_system_refusals_are_one_line(tiny_data, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert main(["run", "--data", str(tiny_data), "--out", str(a_file), *TINY]) == 2
    _one_line(capsys, f"--out {a_file}: exists and is not a folder")
    # An OSError from deep inside (here: a folder under a file) is reported by the top level.
    assert main(["synth", str(a_file / "sub"), "--videos", "2", "--classes", "1"]) == 2
    _one_line(capsys, f"copl: error: {a_file}: File exists")
    assert a_file.read_text() == "x"


def test_tracking_stores_that_are_not_mlflow_are_never_touched(tiny_data, tmp_path, capsys):
    import sqlite3

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE mine (x INTEGER)")
    before = other.read_bytes()
    assert main(["run", "--data", str(tiny_data), "--out", str(tmp_path / "o"), *TINY, "--tracking-uri", str(other)]) == 2
    _one_line(capsys, "not an MLflow tracking database")
    empty = tmp_path / "empty.db"
    empty.touch()
    not_sqlite = tmp_path / "ann.db"
    not_sqlite.write_text("{}")
    for store, fragment in ((other, "not an MLflow tracking database"), (empty, "not an MLflow tracking database"),
                            (not_sqlite, "not an SQLite database")):
        assert main(["registry", "list", "--tracking-uri", str(store)]) == 2
        _one_line(capsys, fragment)
    # MLflow would have added its tables to each of them.
    assert other.read_bytes() == before and empty.stat().st_size == 0 and not_sqlite.read_text() == "{}"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["bench", "quality", "--seeds", "0"], "argument --seeds: must be >= 1, got 0"),
    (["bench", "cluster", "--separation", "nan"], "argument --separation: expected a finite number"),
    (["bench", "cluster", "--knn", "0"], "argument --knn: must be >= 1"),
    (["synth", "x", "--duration-scale", "inf"], "argument --duration-scale: expected a finite number"),
    (["run", "--iterations", "abc"], "argument --iterations: invalid int value"),
])
def test_argument_errors_are_one_line(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    _one_line(capsys, fragment)


def test_bench_quality_checks_its_sets_and_merge_inputs_first(tmp_path, capsys):
    out = tmp_path / "bq"
    assert main(["bench", "quality", "--set", "nokey=1", "--out", str(out)]) == 2
    _one_line(capsys, "unknown config key 'nokey'")
    assert not out.exists()  # no corpus was generated before the check
    broken = tmp_path / "broken"
    broken.mkdir()
    for text, fragment in (("{", "not valid JSON"), ('{"args": {}}', "expected 'args' and 'runs'"),
                           ('{"args": {}, "runs": {}}', "no complete result of")):
        (broken / "quality.json").write_text(text)
        assert main(["bench", "quality", "--merge", str(broken), "--out", str(tmp_path / "m")]) == 2
        _one_line(capsys, str(broken / "quality.json"), fragment)
    assert not (tmp_path / "m").exists()


def test_console_script_exit_status_and_no_traceback(tmp_path):
    copl = Path(sys.executable).parent / "copl"
    proc = subprocess.run(
        [str(copl), "run", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert "nowhere" in proc.stderr and not (tmp_path / "o").exists()


def test_bad_input_found_once_the_run_is_under_way_keeps_its_progress(tiny_data, tmp_path, capsys, monkeypatch):
    """Bad input that only shows mid-run (say, on a Ray worker) ends with one line like any other, but
    what the run had written (metrics so far, the tracking store) stays, as after any failure."""
    from copl_dist.common.errors import InputError
    from copl_dist.run import driver

    def fail_mid_run(self):
        self.on_iteration([])  # what an iteration writes: metrics.json
        raise InputError("video 'x': found bad on a worker")

    monkeypatch.setattr(driver.CoplRun, "execute", fail_mid_run)
    out = tmp_path / "out"
    assert main(["run", "--data", str(tiny_data), "--out", str(out), *TINY]) == 2
    _one_line(capsys, "found bad on a worker")
    assert (out / "metrics.json").is_file() and (out / "corpus" / "corpus.json").is_file()


def test_mlflow_store_in_a_path_with_uri_characters(tmp_path, capsys):
    """A "#" or "%" in the store's path: the read-only check must open that file, not a cut-off one."""
    import mlflow

    from copl_dist.tracking.runs import check_sqlite_store

    folder = tmp_path / "exp#1 %a"
    folder.mkdir()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.MlflowClient(tracking_uri=uri).search_experiments()  # creates MLflow's tables
    check_sqlite_store(uri, "--tracking-uri", must_exist=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp#1 %a"]  # no stray file beside it


def test_features_of_another_width_than_the_config_says(tiny_data, tmp_path, capsys):
    """Found before training (it failed inside IOCNet's forward with a traceback), naming the data
    and the setting that fits it."""
    narrow = _copy(tiny_data, tmp_path / "narrow")
    for f in (narrow / "features").glob("*.npy"):
        np.save(f, np.load(f)[:, :512])
    out = tmp_path / "out"
    assert main(["run", "--data", str(narrow), "--out", str(out), *TINY]) == 2
    _one_line(capsys, f"{narrow}: features have 512 dimensions, but model.feature_dim is 2048", "--set model.feature_dim=512")
    assert not out.exists()


def test_preset_flag_and_config_file_must_agree(tiny_data, tmp_path, capsys):
    conf = tmp_path / "best_config.yaml"
    conf.write_text("preset: thumos14\n")
    out = tmp_path / "out"
    assert main(["run", "--data", str(tiny_data), "--out", str(out), *TINY, "--preset", "anet12", "--config", str(conf)]) == 2
    _one_line(capsys, f"--preset anet12: the --config file {conf} is for preset 'thumos14'")
    assert not out.exists()


def test_eval_with_an_empty_tiou_list(tiny_run, tiny_data, capsys):
    gt, pred = str(tiny_data / "annotations.json"), str(tiny_run / "detections.json")
    assert main(["eval", "--gt", gt, "--pred", pred, "--subset", "test", "--tiou", ""]) == 2
    _one_line(capsys, "no tIoU thresholds given")


@pytest.mark.parametrize("uri, fragment", [
    ("foo://bar", "unsupported URI 'foo://bar'"),
    ("file:///nowhere/mlruns", "MLflow cannot use this tracking store"),
])
def test_tracking_stores_mlflow_cannot_use_fail_before_anything_is_written(uri, fragment, tiny_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--data", str(tiny_data), "--out", str(out), *TINY, "--tracking-uri", uri]) == 2
    _one_line(capsys, uri, fragment)
    assert not out.exists()
