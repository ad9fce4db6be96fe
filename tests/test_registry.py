"""The model registry through the `copl` command: register, promote, --init-from, predict, errors.

Two tiny runs (seeds 0 and 1) share one SQLite tracking store ($MLFLOW_TRACKING_URI) and so register
versions 1 and 2 of `copl-teacher`; everything else reuses them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from one_line import one_line_error
from tiny_corpus import TINY, tiny_synthetic

from copl_dist.cli import main
from copl_dist.data.corpus import Corpus


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "synth"
    tiny_synthetic(root, videos=8, seed=0)
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A shared tracking store for the module (runs default to one store per output folder)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


@pytest.fixture(scope="module")
def runs(data, store, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    outs = {}
    for seed in (0, 1):
        outs[str(seed)] = root / f"seed{seed}"
        argv = ["run", "--data", str(data), "--out", str(outs[str(seed)]), "--seed", str(seed), *TINY, "--iterations", "1"]
        assert main(argv) == 0
    return outs


@pytest.fixture(scope="module")
def champion(runs, store) -> str:
    """Promote once; the version number the alias points at."""
    from copl_dist.tracking.registry import promote

    version = promote("copl-teacher", "map@avg", "champion").version
    return version


def _client(store: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=store, registry_uri=store)


def _final(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_each_run_registers_a_tagged_version(runs, store, data):
    client = _client(store)
    versions = {str(v.version): v for v in client.search_model_versions("name = 'copl-teacher'")}
    assert set(versions) == {"1", "2"}
    for version, seed in (("1", "0"), ("2", "1")):
        v = versions[version]
        doc = _final(runs[seed])
        assert v.tags["seed"] == seed and v.tags["mode"] == "utal"
        assert v.tags["config_hash"] == doc["config_hash"]
        # Tag keys forbid '@' as metric keys do: the MLflow spelling.
        for key, value in doc["final"].items():
            assert float(v.tags[key.replace("@", "_at_")]) == pytest.approx(value)
        run = client.get_run(v.run_id)
        assert "mlflow.parentRunId" not in run.data.tags and run.data.tags["seed"] == seed
        # The data the user named (not the run's converted copy) and the converted corpus's content digest.
        assert v.tags["dataset"] == run.data.tags["dataset"] == str(data.resolve())
        assert v.tags["dataset_digest"] == Corpus.open(runs[seed] / "corpus").digest()
        assert "teacher.pt" in {a.path.split("/")[-1] for a in client.list_artifacts(v.run_id, "checkpoint")}


def test_registry_list_json(runs, store, capsys):
    assert main(["registry", "list", "--tracking-uri", store, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["version"] for r in rows] == ["2", "1"]
    assert all("map_at_avg" in r["tags"] and r["run_id"] for r in rows)


def test_promote_picks_the_best_map(runs, store, champion, capsys):
    maps = {seed: _final(run)["final"]["map@avg"] for seed, run in runs.items()}
    best_seed = max(maps, key=maps.get)
    expected = "1" if best_seed == "0" else "2"
    assert champion == expected
    # The command, again: same answer, alias in place, shown by `registry list`.
    assert main(["registry", "promote", "--tracking-uri", store]) == 0
    assert f"-> version {expected}" in capsys.readouterr().out
    assert str(_client(store).get_model_version_by_alias("copl-teacher", "champion").version) == expected
    assert main(["registry", "list", "--tracking-uri", store]) == 0
    listing = capsys.readouterr().out
    assert any(line.split()[0] == expected and "champion" in line for line in listing.splitlines()[2:])
    # Lower is better picks the other version under another alias; the champion stays.
    from copl_dist.tracking.registry import promote

    worst = promote("copl-teacher", "map@avg", "worst", higher_is_better=False)
    other, value = worst.version, worst.value
    assert other != expected and value == pytest.approx(min(maps.values()))


def test_load_registered_teacher_is_the_runs_checkpoint(runs, champion):
    from copl_dist.method.checkpoint import load_checkpoint
    from copl_dist.tracking.registry import load_registered_teacher

    seed = "0" if champion == "1" else "1"
    on_disk = load_checkpoint(runs[seed] / "teacher.pt")
    for uri in ("models:/copl-teacher@champion", f"models:/copl-teacher/{champion}"):
        ckpt = load_registered_teacher(uri)
        assert ckpt["class_names"] == on_disk["class_names"] and ckpt["num_classes"] == 3
        assert ckpt["cluster_to_class"] == on_disk["cluster_to_class"]
        assert all(torch.equal(ckpt["state_dict"][k], on_disk["state_dict"][k]) for k in on_disk["state_dict"])


def test_init_from_champion_starts_from_its_weights(runs, champion, data, tmp_path):
    # lr = 0: training changes nothing, so the run's teacher is exactly the weights it started from.
    out = tmp_path / "warm"
    argv = ["run", "--data", str(data), "--out", str(out), *TINY, "--iterations", "1", "--epochs", "1",
            "--set", "train.lr=0", "--init-from", "models:/copl-teacher@champion"]
    assert main(argv) == 0
    champ_seed = "0" if champion == "1" else "1"
    start = torch.load(runs[champ_seed] / "teacher.pt", weights_only=True)["state_dict"]
    other = torch.load(runs["1" if champ_seed == "0" else "0"] / "teacher.pt", weights_only=True)["state_dict"]
    got = torch.load(out / "teacher.pt", weights_only=True)["state_dict"]
    assert all(torch.allclose(got[k], start[k], atol=1e-6) for k in start)
    assert not all(torch.allclose(got[k], other[k], atol=1e-3) for k in other)


def test_init_state_reaches_only_the_first_training(runs, champion):
    """driver.CoplRun hands init_state to the engine for iteration 0 and not after."""
    from copl_dist.config import resolve
    from copl_dist.data.corpus import Corpus
    from copl_dist.method.engine import train_loop_per_worker
    from copl_dist.run.driver import CoplRun
    from copl_dist.tracking.registry import load_registered_teacher

    ckpt = load_registered_teacher("models:/copl-teacher@champion")
    cfg = resolve("thumos14", None, ["train.batch_size=4", "model.hidden_dim=32", "train.shift_channels=64"],
                  {"iterations": 2, "train.epochs": 1, "data.snippets": 32, "tracking.enabled": False})
    seen = []

    def recording(config, report=None):
        seen.append(config.get("init_state"))
        return train_loop_per_worker(config, report=report)

    CoplRun(cfg, Corpus.open(runs["0"] / "corpus"), None, train_fn=recording, progress=False,
            init_state=ckpt["state_dict"]).execute()
    assert len(seen) == 2 and seen[0] is ckpt["state_dict"] and seen[1] is None


def test_init_from_wrong_head_size(runs, data, tmp_path, capsys):
    argv = ["run", "--data", str(data), "--out", str(tmp_path / "o"), *TINY, "--set", "num_classes=4",
            "--init-from", "models:/copl-teacher/1"]
    assert main(argv) == 2
    one_line_error(capsys, "models:/copl-teacher/1", "3 outputs", "4 clusters")
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_predict_registered_and_checkpoint(runs, champion, data, tmp_path, capsys):
    gt = json.loads((data / "annotations.json").read_text())["database"]
    out = tmp_path / "pred"
    assert main(["predict", "--model", "models:/copl-teacher@champion", "--data", str(data), "--out", str(out)]) == 0
    assert "16 videos" in capsys.readouterr().out
    dets = json.loads((out / "detections.json").read_text())["results"]
    assert set(dets) == set(gt)
    ckpt = torch.load(runs["0" if champion == "1" else "1"] / "teacher.pt", weights_only=True)
    labels = {d["label"] for items in dets.values() for d in items}
    assert labels and labels <= set(ckpt["class_names"])
    for items in dets.values():
        assert all(d["segment"][0] < d["segment"][1] and np.isfinite(d["score"]) for d in items)
    # The same teacher from its teacher.pt, one subset: the same detections for those videos.
    seed = "0" if champion == "1" else "1"
    out2 = tmp_path / "pred2"
    assert main(["predict", "--model", str(runs[seed] / "teacher.pt"), "--data", str(data), "--out", str(out2),
                 "--subset", "test"]) == 0
    test_dets = json.loads((out2 / "detections.json").read_text())["results"]
    assert set(test_dets) == {v for v, r in gt.items() if r["subset"] == "test"}
    assert all(test_dets[v] == dets[v] for v in test_dets)
    assert not list(out.glob("*.tmp"))


def test_predict_new_videos_without_annotations(runs, champion, data, tmp_path):
    import shutil

    new = tmp_path / "new"
    shutil.copytree(data, new)
    ann = json.loads((new / "annotations.json").read_text())
    for rec in ann["database"].values():
        rec["annotations"] = []
    (new / "annotations.json").write_text(json.dumps(ann))
    out = tmp_path / "pred"
    assert main(["predict", "--model", "models:/copl-teacher@champion", "--data", str(new), "--out", str(out)]) == 0
    dets = json.loads((out / "detections.json").read_text())["results"]
    assert set(dets) == set(ann["database"]) and any(dets.values())


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["predict", "--model", "models:/copl-teacher@nope"], ["models:/copl-teacher@nope", "no alias 'nope'"]),
        (["predict", "--model", "models:/nosuch@champion"], ["models:/nosuch@champion", "no registered model 'nosuch'"]),
        (["predict", "--model", "models:/copl-teacher/99"], ["models:/copl-teacher/99", "no version 99"]),
        (["predict", "--model", "models:/copl-teacher"], ["models:/copl-teacher", "malformed"]),
        (["predict", "--model", "nowhere/teacher.pt"], ["nowhere/teacher.pt", "no such teacher checkpoint"]),
        (["run", "--init-from", "models:/copl-teacher@nope"], ["models:/copl-teacher@nope", "no alias 'nope'"]),
        (["registry", "promote", "--model", "nosuch"], ["nosuch", "no registered model"]),
        (["registry", "promote", "--metric", "map@0.95"], ["no version with mode 'utal' has the metric 'map@0.95'"]),
        (["registry", "list", "--tracking-uri", "/nowhere/mlflow.db"], ["/nowhere/mlflow.db", "no such tracking database"]),
        # Neither a URI nor an existing folder nor a .db file: MLflow would take it for a file store.
        (["registry", "promote", "--tracking-uri", "no/such/dir"], ["--tracking-uri no/such/dir", "no such run folder or .db file"]),
        (["run", "--tracking-uri", "no/such/dir"], ["--tracking-uri no/such/dir", "no such run folder or .db file"]),
        (["run", "--tracking-uri", "/nowhere/mlflow.db"], ["--tracking-uri sqlite:////nowhere/mlflow.db", "folder of the database does not exist"]),
        # MLflow's alias rules, checked before the registry is touched
        (["registry", "promote", "--alias", "bad alias"], ["--alias 'bad alias'", "Invalid alias name"]),
        (["registry", "promote", "--alias", "latest"], ["--alias 'latest'", "reserved"]),
        (["registry", "promote", "--alias", "v3"], ["--alias 'v3'", "reserved"]),
        (["registry", "promote", "--alias", ""], ["--alias ''", "cannot be empty"]),
        (["predict", "--model", "teacher.pt", "--subset", "nosuch"], ["--subset nosuch: no such subset in"]),
        # An explicit empty store is refused, not replaced by $MLFLOW_TRACKING_URI (the module's store)
        (["registry", "list", "--tracking-uri", ""], ["--tracking-uri: empty"]),
    ],
)
def test_bad_model_references(argv, fragments, runs, champion, data, tmp_path, capsys):
    out = tmp_path / "o"
    argv = [str(runs["0"] / "teacher.pt") if a == "teacher.pt" else a for a in argv]
    if argv[0] in ("predict", "run"):
        argv = [*argv, "--data", str(data), "--out", str(out)]
    assert main(argv) == 2
    one_line_error(capsys, *fragments)
    assert not out.exists()


def test_not_a_checkpoint(tmp_path, data, capsys):
    bad = tmp_path / "teacher.pt"
    torch.save({"weights": torch.zeros(2)}, bad)
    assert main(["predict", "--model", str(bad), "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, str(bad), "not a COPL teacher checkpoint")
    bad.write_bytes(b"not a zip")
    assert main(["predict", "--model", str(bad), "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, str(bad), "not a loadable teacher checkpoint")
    import pickle

    bad.write_bytes(pickle.dumps({"a": 1}))  # a plain pickle: torch refuses it (weights_only), with no warning text
    assert main(["predict", "--model", str(bad), "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, str(bad), "not a loadable teacher checkpoint")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("change, fragment", [
    ({"num_classes": 7}, "cluster_to_class must list one class index per output (7)"),
    ({"num_classes": 7, "cluster_to_class": list(range(7))}, "parameter 'cs_classifier.weight' has shape (3, 32, 1)"),
    ({"num_classes": 0}, "num_classes must be a positive integer"),
    ({"state_dict": {}}, "the teacher's parameters do not match IOCNet's"),
    ({"cluster_to_class": []}, "cluster_to_class must list one class index per output (3)"),
    ({"class_names": "abc"}, "class_names must be a list of names"),
    ({"config": None}, "the checkpoint's config is not a mapping"),
    ({"config": {"model": {"hidden_dim": 0}}}, "model.hidden_dim"),
    ({"state_dict": {0: torch.zeros(1)}}, "the teacher's parameters do not match IOCNet's (['0',"),
])
def test_inconsistent_checkpoints_are_refused_before_any_output(change, fragment, runs, data, tmp_path, capsys):
    """A checkpoint with every key but parts that disagree failed inside torch or at indexing."""
    ckpt = torch.load(runs["0"] / "teacher.pt", weights_only=True)
    assert ckpt["num_classes"] == 3
    bad = tmp_path / "teacher.pt"
    torch.save({**ckpt, **change}, bad)
    out = tmp_path / "o"
    assert main(["predict", "--model", str(bad), "--data", str(data), "--out", str(out)]) == 2
    one_line_error(capsys, str(bad), fragment)
    assert not out.exists()


def test_init_from_a_wtal_teacher_into_utal_is_refused(runs, data, tmp_path, capsys):
    """A wtal teacher learnt from the true video labels: starting an unsupervised run from it would
    carry them in. Refused before anything is written; a wtal run may still start from it."""
    from copl_dist.common.errors import InputError
    from copl_dist.config import resolve
    from copl_dist.method.checkpoint import check_init_mode, init_state_for

    ckpt = torch.load(runs["0"] / "teacher.pt", weights_only=True)
    ckpt["config"]["mode"] = "wtal"
    teacher = tmp_path / "wtal-teacher.pt"
    torch.save(ckpt, teacher)
    out = tmp_path / "o"
    assert main(["run", "--data", str(data), "--out", str(out), *TINY, "--init-from", str(teacher)]) == 2
    one_line_error(capsys, str(teacher), "mode 'wtal'", "utal")
    assert not out.exists()
    sets = ["model.hidden_dim=32"]
    with pytest.raises(InputError, match="mode 'wtal'"):
        check_init_mode(ckpt, str(teacher), "utal")
    check_init_mode(ckpt, str(teacher), "wtal")
    assert init_state_for(ckpt, str(teacher), 3, resolve("thumos14", sets=sets, overrides={"mode": "wtal"})) is ckpt["state_dict"]


def test_run_tracking_uri_is_where_init_from_is_read_and_the_run_logs(runs, champion, store, data, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    out = tmp_path / "newrun"
    argv = ["run", "--data", str(data), "--out", str(out), *TINY, "--iterations", "1", "--epochs", "1",
            "--set", "tracking.log_model=false", "--init-from", "models:/copl-teacher@champion"]
    # Without it the URI is looked up in the new run's own store, which does not exist yet.
    assert main(argv) == 2
    one_line_error(capsys, "newrun/mlflow.db", "no such tracking database", "--tracking-uri", "MLFLOW_TRACKING_URI")
    assert not out.exists()
    client = _client(store)
    experiment = client.get_experiment_by_name("copl").experiment_id
    before = len(client.search_runs([experiment]))
    db = store[len("sqlite:///"):]  # a plain .db path is taken as the sqlite store it names
    assert main([*argv, "--tracking-uri", db]) == 0
    assert f"(MLflow: {store})" in capsys.readouterr().out
    assert not (out / "mlflow.db").exists()
    assert len(client.search_runs([experiment])) == before + 2  # the run and its one iteration


def test_promote_compares_only_versions_of_one_mode_and_dataset(tmp_path, capsys):
    """Hand-made versions (tags only): a label-trained wtal teacher and another dataset's mAP scale must
    not win; a version without a mode tag is never compared."""
    from copl_dist.common.errors import InputError
    from copl_dist.tracking.registry import promote

    db = tmp_path / "mixed.db"
    client = _client(f"sqlite:///{db}")
    client.create_registered_model("copl-teacher")
    versions = [  # (mode, dataset, map@avg) of versions 1..5
        ("utal", "thumos", 30.0), ("wtal", "thumos", 45.0), ("utal", "anet", 38.0), ("utal", "thumos", 32.0), (None, "thumos", 99.0),
    ]
    for mode, dataset, value in versions:
        tags = {"dataset": dataset, "map_at_avg": repr(value), **({"mode": mode} if mode else {})}
        client.create_model_version("copl-teacher", source=str(tmp_path / "model"), tags=tags)
    assert main(["registry", "promote", "--tracking-uri", str(db)]) == 0
    assert capsys.readouterr().out.strip() == (
        "models:/copl-teacher@champion -> version 3 (map@avg = 38; 3 utal version(s) compared)"
    )
    assert main(["registry", "promote", "--tracking-uri", str(db), "--dataset", "thumos"]) == 0
    assert "-> version 4 (map@avg = 32; 2 utal version(s) of dataset thumos compared)" in capsys.readouterr().out
    assert str(client.get_model_version_by_alias("copl-teacher", "champion").version) == "4"
    client.set_model_version_tag("copl-teacher", "1", "dataset_digest", "d1g")
    assert promote("copl-teacher", tracking_uri=str(db), dataset="d1g").version == "1"  # by the corpus' digest too
    p = promote("copl-teacher", "map@avg", "weak", tracking_uri=str(db), mode="wtal")
    assert (p.version, p.value, p.compared) == ("2", 45.0, 1)
    with pytest.raises(InputError, match="none of its 5 version\\(s\\) has mode 'utal' and dataset 'nosuch'"):
        promote("copl-teacher", tracking_uri=str(db), dataset="nosuch")
    # Named, not ranked: the version must still be of the mode (a wtal teacher is never the utal champion).
    assert main(["registry", "promote", "--tracking-uri", str(db), "--version", "2"]) == 2
    one_line_error(capsys, "models:/copl-teacher/2: trained in mode 'wtal', not 'utal' (--mode)")
    assert main(["registry", "promote", "--tracking-uri", str(db), "--version", "5"]) == 2
    one_line_error(capsys, "models:/copl-teacher/5: trained in mode 'unknown'")
    assert main(["registry", "promote", "--tracking-uri", str(db), "--version", "2", "--mode", "wtal", "--alias", "w"]) == 0
    assert capsys.readouterr().out.strip() == "models:/copl-teacher@w -> version 2 (as named)"
    assert main(["registry", "promote", "--tracking-uri", str(db), "--version", "1"]) == 0
    assert str(client.get_model_version_by_alias("copl-teacher", "champion").version) == "1"


def test_arbitrary_bytes_as_a_teacher(tmp_path, data, capsys):
    """Text or random bytes reach torch's restricted unpickler as opcodes (KeyError, IndexError...)."""
    bad = tmp_path / "g.pt"
    for payload in (b"hi\n", bytes(range(256)) * 4):
        bad.write_bytes(payload)
        assert main(["predict", "--model", str(bad), "--data", str(data), "--out", str(tmp_path / "o")]) == 2
        err = one_line_error(capsys, str(bad), "not a loadable teacher checkpoint")
        assert "weights_only=False" not in err  # torch's advice would run code from the file
    assert not (tmp_path / "o").exists()
