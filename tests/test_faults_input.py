"""Input that used to end in a traceback or a wrong result, through the `copl` command: numbers no
float holds, JSON nested past the parser's depth, sizes no machine allocates, a corpus edited by hand,
null labels and a teacher with NaN weights. Each ends in one line on stderr and exit status 2, with
nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
import torch
from one_line import one_line_error
from test_metrics import _toy
from tiny_corpus import TINY_SETS, tiny_synthetic

from copl_dist.cli import main

# A run that only has to get as far as its checks of the input.
QUICK = ["--iterations", "1", "--epochs", "1", "--snippets", "32", "--no-progress", "--set", "tracking.enabled=false", *TINY_SETS]
HUGE_INT = "1" + "0" * 400  # an integer no float holds
HUGER_INT = "1" * 5000  # past Python's 4300-digit limit of int()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_synthetic(tmp_path_factory.mktemp("data") / "synth", videos=4)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """A finished run: OUT/corpus, OUT/teacher.pt and OUT/detections.json."""
    out = tmp_path_factory.mktemp("run") / "out"
    assert main(["run", "--data", str(data), "--out", str(out), *QUICK]) == 0
    return out


def _json_with(obj, literal: str) -> str:
    """obj as JSON text with the string "@" replaced by `literal` (a number json.dumps cannot write)."""
    return json.dumps(obj).replace('"@"', literal)


def _first_annotated(gt: dict, subset: str) -> str:
    return sorted(v for v, r in gt["database"].items() if r["subset"] == subset and r["annotations"])[0]


# -- 1, 2: numbers too large for a float, JSON nested too deeply -----------------------------------

@pytest.mark.parametrize("literal, fragment", [
    (HUGE_INT, "number 100000000000... (401 characters) is too large"),
    (HUGER_INT, "number 111111111111... (5000 characters) is too large"),
])
def test_import_annotations_with_an_integer_too_large(literal, fragment, data, tmp_path, capsys):
    src = shutil.copytree(data, tmp_path / "data")
    gt = json.loads((src / "annotations.json").read_text())
    gt["database"][_first_annotated(gt, "test")]["annotations"][0]["segment"][1] = "@"
    (src / "annotations.json").write_text(_json_with(gt, literal))
    assert main(["import", str(src), str(tmp_path / "corpus")]) == 2
    one_line_error(capsys, f"{src / 'annotations.json'}: {fragment}")
    assert not (tmp_path / "corpus").exists()


def test_run_on_annotations_with_an_integer_too_large(data, tmp_path, capsys):
    src = shutil.copytree(data, tmp_path / "data")
    gt = json.loads((src / "annotations.json").read_text())
    gt["database"][_first_annotated(gt, "validation")]["duration"] = "@"
    (src / "annotations.json").write_text(_json_with(gt, HUGE_INT))
    assert main(["run", "--data", str(src), "--out", str(tmp_path / "out"), *QUICK]) == 2
    one_line_error(capsys, f"{src / 'annotations.json'}: number 100000000000")
    assert not (tmp_path / "out").exists()


def _eval_files(tmp_path, gt_text: str, pred_text: str) -> tuple[Path, Path]:
    g, p = tmp_path / "gt.json", tmp_path / "pred.json"
    g.write_text(gt_text)
    p.write_text(pred_text)
    return g, p


@pytest.mark.parametrize("where", ["gt", "pred"])
@pytest.mark.parametrize("literal", [HUGE_INT, HUGER_INT])
def test_eval_with_an_integer_too_large(where, literal, tmp_path, capsys):
    gt, pred = _toy()
    if where == "gt":
        gt["database"]["v2"]["annotations"][0]["segment"][1] = "@"
    else:
        pred["results"]["v2"][0]["score"] = "@"
    files = dict(zip(("gt", "pred"), _eval_files(tmp_path, _json_with(gt, literal), _json_with(pred, literal))))
    assert main(["eval", "--gt", str(files["gt"]), "--pred", str(files["pred"]), "--subset", "test"]) == 2
    one_line_error(capsys, f"{files[where]}: number ", "is too large")


def test_eval_with_a_float_too_large(tmp_path, capsys):
    # 1e400 reads as inf, refused as any non-finite time is (with the video named).
    gt, pred = _toy()
    pred["results"]["v2"][0]["segment"][1] = "@"
    g, p = _eval_files(tmp_path, json.dumps(gt), _json_with(pred, "1e400"))
    assert main(["eval", "--gt", str(g), "--pred", str(p), "--subset", "test"]) == 2
    one_line_error(capsys, f"{p}: video 'v2': segment [30.0, inf] (Jump) is not finite")


@pytest.mark.parametrize("where", ["gt", "pred"])
def test_eval_with_json_nested_too_deeply(where, tmp_path, capsys):
    gt, pred = _toy()
    texts = {"gt": json.dumps(gt), "pred": json.dumps(pred), where: "[" * 100_000}
    files = dict(zip(("gt", "pred"), _eval_files(tmp_path, texts["gt"], texts["pred"])))
    assert main(["eval", "--gt", str(files["gt"]), "--pred", str(files["pred"]), "--subset", "test"]) == 2
    one_line_error(capsys, f"{files[where]}: not valid JSON (nested too deeply to read)")


def test_import_annotations_nested_too_deeply(data, tmp_path, capsys):
    src = shutil.copytree(data, tmp_path / "data")
    (src / "annotations.json").write_text('{"database": ' + "[" * 100_000)
    assert main(["import", str(src), str(tmp_path / "corpus")]) == 2
    one_line_error(capsys, f"{src / 'annotations.json'}: not valid JSON (nested too deeply to read)")
    assert not (tmp_path / "corpus").exists()


# -- 3: sizes no machine allocates -----------------------------------------------------------------

@pytest.mark.parametrize("extra, fragment", [
    (["--snippets", "100000000000"], "--snippets: config key 'data.snippets' must be <= 100000, got 100000000000"),
    (["--set", "model.hidden_dim=10000000000"], "--set: config key 'model.hidden_dim' must be <= 65536"),
    (["--set", "model.feature_dim=10000000000"], "--set: config key 'model.feature_dim' must be <= 65536"),
])
def test_run_with_sizes_too_large(extra, fragment, data, tmp_path, capsys):
    assert main(["run", "--data", str(data), "--out", str(tmp_path / "out"), *QUICK, *extra]) == 2
    one_line_error(capsys, fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("allocate, fragment", [
    (lambda: np.zeros(2**43), "Unable to allocate 64.0 TiB"),
    (lambda: torch.empty(2**43), "can't allocate memory"),
])
def test_an_allocation_the_machine_refuses_is_one_line(allocate, fragment, tmp_path, monkeypatch, capsys):
    # Sizes within the limits can still exceed a machine: numpy's MemoryError and torch's
    # RuntimeError, raised by a real allocation of 32 TiB or more inside `copl eval`.
    monkeypatch.setattr("copl_dist.method.metrics.average_precision", lambda *args: allocate())
    gt, pred = _toy()
    g, p = _eval_files(tmp_path, json.dumps(gt), json.dumps(pred))
    assert main(["eval", "--gt", str(g), "--pred", str(p), "--subset", "test"]) == 2
    one_line_error(capsys, "copl: error: out of memory: ", fragment)


# -- 4: a corpus edited by hand --------------------------------------------------------------------

def _edit_manifest(**changes):
    def edit(corpus: Path) -> None:
        manifest = corpus / "corpus.json"
        values = {k: v(corpus) if callable(v) else v for k, v in changes.items()}
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), **values}))
    return edit


def _nan_in_shard(corpus: Path) -> None:
    path = corpus / "features" / "shard-00000.arrow"
    table = ipc.open_file(pa.BufferReader(path.read_bytes())).read_all()
    batches = table.to_batches()
    x = batches[1].column(0).flatten().to_numpy().copy()
    x[7] = np.nan
    width = table.schema.field("features").type.list_size
    batches[1] = pa.record_batch([pa.FixedSizeListArray.from_arrays(pa.array(x), width)], schema=table.schema)
    with ipc.new_file(str(path), table.schema) as writer:
        for batch in batches:
            writer.write_batch(batch)


def _second_video(corpus: Path) -> str:
    return pq.read_table(corpus / "videos.parquet").column("video_id")[1].as_py()


def _videos_column(name, values):
    def edit(corpus: Path) -> None:
        table = pq.read_table(corpus / "videos.parquet")
        column = pa.array(values(table.column(name).to_pylist()))
        pq.write_table(table.set_column(table.schema.get_field_index(name), name, column), corpus / "videos.parquet")
    return edit


CORPUS_EDITS = {
    "feature_dim a string": (_edit_manifest(feature_dim="2048"), "corpus.json: 'feature_dim' '2048' is not a feature width"),
    "feature_dim a list": (_edit_manifest(feature_dim=[2048]), "corpus.json: 'feature_dim' '[2048]' is not a feature width"),
    "classes a dict": (_edit_manifest(classes={"class_00": 0}), "corpus.json: 'classes' is not a list of class names"),
    "shards a string": (_edit_manifest(shards="features/shard-00000.arrow"), "corpus.json: 'shards' is not a list of shard files"),
    "shard outside": (_edit_manifest(shards=["../x.arrow"]), "corpus.json: shard '../x.arrow' is not a file inside the corpus folder"),
    "shard absolute": (
        _edit_manifest(shards=lambda c: [str((c / "features" / "shard-00000.arrow").resolve())]),
        "is not a file inside the corpus folder",
    ),
    "feature_dim too large": (
        lambda c: (c / "corpus.json").write_text((c / "corpus.json").read_text().replace('"feature_dim": 2048', f'"feature_dim": {HUGE_INT}')),
        "corpus.json: number 100000000000... (401 characters) is too large",
    ),
    "feature_dim of other shards": (_edit_manifest(feature_dim=1024), "shard-00000.arrow: holds features: ", "expected features: float32 x 1024"),
    "NaN features": (_nan_in_shard, "features/shard-00000.arrow: features of video '{second}' hold NaN, Inf or empty values"),
    "durations as text": (_videos_column("duration_s", lambda old: [str(x) for x in old]), "videos.parquet: column 'duration_s' is string, expected double"),
    "rows past the shard": (_videos_column("row_offset", lambda old: [10**6, *old[1:]]), "rows, but videos.parquet puts video '{first}' at rows 1000000 to"),
}


@pytest.mark.parametrize("edit", list(CORPUS_EDITS))
def test_run_on_a_corpus_edited_by_hand(edit, trained, tmp_path, capsys):
    corpus = shutil.copytree(trained / "corpus", tmp_path / "corpus")
    first = pq.read_table(corpus / "videos.parquet").column("video_id")[0].as_py()
    change, *fragments = CORPUS_EDITS[edit]
    change(corpus)
    assert main(["run", "--data", str(corpus), "--out", str(tmp_path / "out"), *QUICK]) == 2
    one_line_error(capsys, *(f.format(first=first, second=_second_video(corpus)) for f in fragments))
    assert not (tmp_path / "out").exists()


def test_predict_on_a_corpus_with_nan_features(trained, tmp_path, capsys):
    corpus = shutil.copytree(trained / "corpus", tmp_path / "corpus")
    _nan_in_shard(corpus)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(trained / "teacher.pt"), "--data", str(corpus), "--out", str(out)]) == 2
    one_line_error(capsys, f"{corpus / 'features' / 'shard-00000.arrow'}: features of video '{_second_video(corpus)}'")
    assert not out.exists()


# -- 5: null labels in `copl eval` -----------------------------------------------------------------

@pytest.mark.parametrize("where", ["gt", "pred"])
def test_eval_with_a_null_label(where, trained, data, tmp_path, capsys):
    gt = json.loads((data / "annotations.json").read_text())
    pred = json.loads((trained / "detections.json").read_text())
    vid = _first_annotated(gt, "test")
    if where == "gt":
        gt["database"][vid]["annotations"][0]["label"] = None
    else:
        pred["results"][vid][0]["label"] = None
    files = dict(zip(("gt", "pred"), _eval_files(tmp_path, json.dumps(gt), json.dumps(pred))))
    assert main(["eval", "--gt", str(files["gt"]), "--pred", str(files["pred"]), "--subset", "test"]) == 2
    one_line_error(capsys, f"{files[where]}: video '{vid}': label None is not a class name")


# -- 6: a teacher with NaN weights -----------------------------------------------------------------

@pytest.fixture(scope="module")
def nan_teacher(trained) -> Path:
    ckpt = torch.load(trained / "teacher.pt", weights_only=True)
    ckpt["state_dict"]["cs_classifier.bias"] = torch.full_like(ckpt["state_dict"]["cs_classifier.bias"], float("nan"))
    path = trained.parent / "nan-teacher.pt"
    torch.save(ckpt, path)
    return path


def test_predict_with_a_nan_teacher(nan_teacher, data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", "--model", str(nan_teacher), "--data", str(data), "--out", str(out)]) == 2
    one_line_error(capsys, f"{nan_teacher}: parameter 'cs_classifier.bias' holds NaN or Inf")
    assert not out.exists()


def test_run_from_a_nan_teacher(nan_teacher, data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--data", str(data), "--out", str(out), *QUICK, "--init-from", str(nan_teacher)]) == 2
    one_line_error(capsys, f"{nan_teacher}: parameter 'cs_classifier.bias' holds NaN or Inf")
    assert not out.exists()
