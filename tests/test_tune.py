"""`copl tune`: space files, the no-test-labels rule, Ray Tune + ASHA trials with MLflow, and the
post-processing search on cached predictions (no training)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from copl_dist import config as config_lib
from copl_dist.cli import main
from copl_dist.data.synth import make_synthetic
from copl_dist.tune.objectives import agreement_objective, silhouette_objective
from copl_dist.tune.search import (
    in_space,
    load_raw,
    load_space,
    search_postprocess,
    user_config,
)

TINY = ["--iterations", "2", "--epochs", "2", "--snippets", "32",
        "--set", "model.hidden_dim=32", "--set", "train.batch_size=4", "--set", "train.shift_channels=64"]
ROOT = Path(__file__).resolve().parents[1]

# A small space whose post-processing ranges exclude the preset's values (class_threshold 0.2,
# nms_iou 0.4), so values inside them in best_config.yaml can only come from the search.
SPACE = {
    "preset": "thumos14",
    "base": {"has.vote_last": 1},
    "search": {
        "cluster.delta": {"uniform": [-0.1, 0.2]},
        "has.gamma": {"choice": [4.0, 8.0]},
        "train.beta": {"uniform": [0.2, 0.5]},
        "loss.lambda2": {"loguniform": [1.0, 20.0]},
    },
    "postprocess": {
        "inference.class_threshold": {"uniform": [0.3, 0.45]},
        "inference.nms_iou": {"uniform": [0.45, 0.55]},
    },
}


def write_space(path: Path, space: dict) -> Path:
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """8 + 8 synthetic videos; 3 of the 'validation' ones relabelled as a held-out 'val_holdout'."""
    root = tmp_path_factory.mktemp("tune-data") / "synth"
    make_synthetic(root, preset="thumos14", videos=8, classes=3, duration_scale=0.15, seed=0)
    ann = json.loads((root / "annotations.json").read_text())
    train = sorted(v for v, rec in ann["database"].items() if rec["subset"] == "validation")
    for vid in train[:3]:
        ann["database"][vid]["subset"] = "val_holdout"
    (root / "annotations.json").write_text(json.dumps(ann))
    return root


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    from copl_dist.config import DistributedConfig
    from copl_dist.distributed.ray_runtime import ensure_ray

    # ray.init(address="local", num_cpus=2, include_dashboard=False), listening on 127.0.0.1 only.
    ensure_ray(DistributedConfig(), num_cpus=2)
    yield
    ray.shutdown()


# -- space files and bad input (no Ray) ---------------------------------------------------------


@pytest.mark.parametrize("name, preset", [("thumos14", "thumos14"), ("anet12", "anet12")])
def test_shipped_spaces_load_and_cover_the_paper_values(name, preset):
    space = load_space(ROOT / "tune_spaces" / f"{name}.yaml")
    cfg = user_config(space, None, None, [], {})
    assert cfg.preset == preset
    for key in ("cluster.delta", "has.gamma", "has.alpha", "train.topl_ratio", "train.beta",
                "loss.mu1", "loss.mu2", "loss.lambda1", "loss.lambda2"):
        assert key in space.search
    assert {"inference.class_threshold", "inference.nms_iou", "inference.thetas"} <= set(space.postprocess)
    for key, spec in {**space.search, **space.postprocess}.items():  # the preset's value is a point of the space
        obj = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        assert in_space(spec, obj), key


def test_unknown_key_in_space_is_one_line_naming_the_file(tmp_path, capsys):
    space = write_space(tmp_path / "bad.yaml", {**SPACE, "search": {"has.gama": {"uniform": [1.0, 5.0]}}})
    assert main(["tune", "--space", str(space), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.yaml" in err and "has.gama" in err


@pytest.mark.parametrize("search, words", [
    ({"has.alpha": {"uniform": [0.5, 1.0]}}, ["has.alpha", "1.0"]),  # alpha must stay < 1
    ({"inference.nms_iou": {"uniform": [0.3, 0.7]}}, ["postprocess"]),
    ({"has.vote_last": {"uniform": [1, 3]}}, ["randint"]),
    ({"seed": {"randint": [0, 3]}}, ["seed"]),
])
def test_bad_specs_are_rejected(tmp_path, capsys, search, words):
    space = write_space(tmp_path / "s.yaml", {"preset": "thumos14", "search": search})
    assert main(["tune", "--space", str(space), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "s.yaml" in err and all(w in err for w in words)


class _NoRay:
    def __init__(self, cfg):
        raise AssertionError("Ray must not start for a bad space")


@pytest.mark.parametrize("section, key, spec, words", [
    ("search", "model.hidden_dim", {"choice": [0]}, ["value 0", "'model.hidden_dim' must be >= 1"]),
    ("search", "train.lr", {"uniform": [-1, 0.1]}, ["value -1", "'train.lr' must be >= 0 and finite"]),
    ("search", "loss.temperature", {"choice": [0.0]}, ["value 0.0", "'loss.temperature' must be > 0"]),
    ("search", "loss.q", {"uniform": [0.5, 1.5]}, ["value 1.5", "'loss.q' must be in (0, 1]"]),  # the upper end
    ("search", "model.dropout", {"choice": [0.0, 0.5, 1.0]}, ["value 1.0", "'model.dropout' must be in [0, 1)"]),
    ("search", "train.shift_channels", {"randint": [-2, 64]}, ["value -2", "'train.shift_channels' must be >= 0"]),
    ("postprocess", "inference.thetas", {"choice": [[0.5], []]}, ["value []", "'inference.thetas' must be a non-empty"]),
    ("postprocess", "inference.outer_ratio", {"uniform": [-0.1, 0.5]}, ["value -0.1", "'inference.outer_ratio' must be >= 0"]),
    ("postprocess", "inference.max_detections", {"randint": [-1, 10]}, ["value -1", "'inference.max_detections' must be >= 0"]),
])
def test_space_values_the_config_rejects_fail_before_ray(tmp_path, capsys, monkeypatch, section, key, spec, words):
    from copl_dist.tune import search as tune

    monkeypatch.setattr(tune, "RaySession", _NoRay)
    space = write_space(tmp_path / "s.yaml", {"preset": "thumos14", section: {key: spec}})
    out = tmp_path / "o"
    assert main(["tune", "--space", str(space), "--data", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"copl: error: {space}: {section} '{key}': "), err
    assert all(w in err for w in words), err
    assert not out.exists()


@pytest.mark.parametrize("extra, base, source, key", [
    (["--set", "model.hidden_dim=0"], {}, "--set", "model.hidden_dim"),
    (["--epochs", "0"], {}, "--epochs", "train.epochs"),
    (["--seed", "-1"], {}, "--seed", "seed"),
    ([], {"loss.q": 0.0}, "{space} (base)", "loss.q"),
    (["--config", "{config}"], {}, "{config}", "train.lr"),
])
def test_bad_fixed_value_names_where_it_was_set(tmp_path, capsys, monkeypatch, extra, base, source, key):
    from copl_dist.tune import search as tune

    monkeypatch.setattr(tune, "RaySession", _NoRay)
    space = write_space(tmp_path / "s.yaml", {**SPACE, "base": base})
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  lr: -0.5\n")
    extra = [a.format(config=config) for a in extra]
    assert main(["tune", "--space", str(space), "--data", str(tmp_path), "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"copl: error: {source.format(space=space, config=config)}: config key '{key}' must be"), err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("what, content, fragment", [
    ("space", b"preset: [1]\nsearch: {}\n", "unknown preset [1]"),
    ("space", b"search:\n  has.gamma: {choice: [4.0]}  # \xe9t\xe9\n", "not UTF-8 text"),
    ("config", b"preset: [1]\n", "unknown preset [1]"),
    ("config", b"has:\n  gamma: 4.0  # \xe9t\xe9\n", "not UTF-8 text"),
])
def test_unparseable_space_or_config_file_is_one_line(tmp_path, capsys, monkeypatch, what, content, fragment):
    from copl_dist.tune import search as tune

    monkeypatch.setattr(tune, "RaySession", _NoRay)
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    space = bad if what == "space" else write_space(tmp_path / "s.yaml", SPACE)
    extra = ["--config", str(bad)] if what == "config" else []
    assert main(["tune", "--space", str(space), "--data", str(tmp_path), "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"copl: error: {bad}: ") and fragment in err, err


def test_no_usable_trial_is_an_input_error_naming_the_folder_and_error_files(tmp_path):
    from copl_dist.common.errors import InputError
    from copl_dist.tune.search import _select_best

    files = [str(tmp_path / "t1" / "error.txt"), str(tmp_path / "t2" / "error.txt")]
    records = {
        "t1": {"trial_id": "t1", "history": [], "status": "error", "error": "ValueError: boom\n  at line 3"},
        "t2": {"trial_id": "t2", "history": [{"iteration": 1, "objective": float("nan")}], "status": "error", "error": None},
    }
    with pytest.raises(InputError) as err:
        _select_best(records, 2, tmp_path / "out", files)
    assert str(err.value) == (f"{tmp_path / 'out'}: no trial produced a finite objective (2 trials, 2 failed); "
                              f"first error: ValueError: boom at line 3; tracebacks in {files[0]} (and 1 more)")
    # A trial that ran to the end with a finite objective is chosen as before.
    records["t3"] = {"trial_id": "t3", "history": [{"iteration": 2, "objective": 0.25}], "status": "completed", "error": None}
    assert _select_best(records, 2, tmp_path / "out", files)["trial_id"] == "t3"


def test_map_objective_needs_a_validation_subset(tmp_path, capsys):
    space = write_space(tmp_path / "s.yaml", SPACE)
    assert main(["tune", "--space", str(space), "--data", str(tmp_path), "--objective", "map"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--val-subset" in err and "cheating" in err


def test_map_objective_refuses_the_test_subset(tmp_path, capsys):
    space = write_space(tmp_path / "s.yaml", SPACE)
    argv = ["tune", "--space", str(space), "--data", str(tmp_path), "--objective", "map", "--val-subset", "test"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "test subset" in err and "cheating" in err


def test_map_objective_refuses_the_training_subset(tmp_path, capsys):
    # thumos14 trains on the subset named 'validation': selecting on its labels leaks them into UTAL.
    space = write_space(tmp_path / "s.yaml", SPACE)
    out = tmp_path / "o"
    argv = ["tune", "--space", str(space), "--data", str(tmp_path), "--out", str(out),
            "--objective", "map", "--val-subset", "validation"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--val-subset validation" in err and "training subset" in err
    assert "held out" in err and "label-free" in err
    assert not out.exists()
    # The same subset with --train-subset pointing elsewhere is a held-out subset again: it gets past
    # the check (and fails later, on the folder that holds no data).
    argv += ["--train-subset", "val_holdout"]
    assert main(argv) == 2
    assert "training subset" not in capsys.readouterr().err


@pytest.mark.parametrize("extra, words", [
    (["--reduction-factor", "1.0"], ["--reduction-factor", "> 1", "1.0"]),
    (["--reduction-factor", "nan"], ["--reduction-factor", "> 1"]),
    (["--cpus-per-trial", "0"], ["--cpus-per-trial", "> 0"]),
    (["--pp-samples", "0"], ["--pp-samples", ">= 1"]),
])
def test_bad_tune_arguments_fail_before_ray_and_write_nothing(tmp_path, capsys, monkeypatch, extra, words):
    from copl_dist.tune import search as tune

    class NoRay:
        def __init__(self, cfg):
            raise AssertionError("Ray must not start for bad arguments")

    monkeypatch.setattr(tune, "RaySession", NoRay)
    space = write_space(tmp_path / "s.yaml", SPACE)
    out = tmp_path / "o"
    assert main(["tune", "--space", str(space), "--data", str(tmp_path), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("copl: error: ") and all(w in err for w in words), err
    assert not out.exists()


def test_best_config_leaves_where_a_run_executes_to_copl_run(tmp_path, monkeypatch):
    """The tuning session's distributed / tracking values (workers 0: in-process) must not reach the
    run: `copl run --config best_config.yaml` then fits Ray Train workers as without a config."""
    from copl_dist.run.plan import RUN_DEFAULT_WORKERS, RunRequest, run_workers
    from copl_dist.tune.search import best_config_yaml, with_values

    space = load_space(write_space(tmp_path / "s.yaml", SPACE))
    cfg = user_config(space, None, None, ["distributed.storage_path=/tmp/x", "tracking.experiment=tune-exp"], {"iterations": 2})
    cfg = with_values(cfg, {"has.gamma": 8.0, "inference.nms_iou": 0.5}, source="test")
    path = tmp_path / "best_config.yaml"
    path.write_text(best_config_yaml(cfg))
    written = yaml.safe_load(path.read_text())
    assert "distributed" not in written and "tracking" not in written
    assert written["has"]["gamma"] == 8.0 and written["inference"]["nms_iou"] == 0.5 and written["iterations"] == 2
    monkeypatch.delenv("COPL_WORKERS", raising=False)  # tests/conftest.py sets 0 for the suite
    request = RunRequest(config=str(path))
    assert run_workers(request) == RUN_DEFAULT_WORKERS == -1
    loaded = config_lib.resolve("thumos14", path, overrides={"distributed.workers": run_workers(request)})
    assert loaded.distributed.workers == -1 and loaded.tracking.experiment == "copl" and loaded.distributed.storage_path == ""
    expected = config_lib.to_dict(cfg)
    got = config_lib.to_dict(loaded)
    for section in ("distributed", "tracking"):
        expected.pop(section), got.pop(section)
    assert got == expected  # everything else comes back as tuned


def test_val_subset_must_exist_and_be_labelled(data, tmp_path, capsys):
    space = write_space(tmp_path / "s.yaml", SPACE)
    argv = ["tune", "--space", str(space), "--data", str(data), "--out", str(tmp_path / "o"),
            "--objective", "map", "--val-subset", "nope", *TINY]
    assert main(argv) == 2
    assert "nope" in capsys.readouterr().err
    # A subset that exists but carries no annotation (videos delivered without labels).
    unlabelled = tmp_path / "unlabelled"
    shutil.copytree(data, unlabelled)
    ann = json.loads((unlabelled / "annotations.json").read_text())
    for rec in ann["database"].values():
        if rec["subset"] == "val_holdout":
            rec["annotations"] = []
    (unlabelled / "annotations.json").write_text(json.dumps(ann))
    argv = ["tune", "--space", str(space), "--data", str(unlabelled), "--out", str(tmp_path / "o2"),
            "--objective", "map", "--val-subset", "val_holdout", *TINY]
    assert main(argv) == 2
    assert "--val-subset val_holdout: the subset has no annotations" in capsys.readouterr().err
    assert not (tmp_path / "o2" / "best_config.yaml").exists()


def test_map_objective_needs_annotated_training_videos_to_name_clusters(data, tmp_path, capsys):
    """A labelled validation subset cannot score clusters that no training annotation names."""
    space = write_space(tmp_path / "s.yaml", SPACE)
    bare_train = _without_annotations(data, tmp_path / "bare-train", subsets=("validation",))
    argv = ["tune", "--space", str(space), "--data", str(bare_train), "--out", str(tmp_path / "o"),
            "--objective", "map", "--val-subset", "val_holdout", *TINY]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("copl: error: --objective map: no video of subset 'validation' has annotations") and "\n" not in err
    assert "--objective silhouette or agreement" in err and not (tmp_path / "o").exists()


def _without_annotations(data: Path, dst: Path, subsets: tuple[str, ...] | None = None) -> Path:
    """A copy of `data` whose videos (of `subsets`, default all) have empty annotation lists."""
    shutil.copytree(data, dst)
    ann = json.loads((dst / "annotations.json").read_text())
    for rec in ann["database"].values():
        if subsets is None or rec["subset"] in subsets:
            rec["annotations"] = []
    (dst / "annotations.json").write_text(json.dumps(ann))
    return dst


def test_searched_key_cannot_also_be_set(tmp_path, capsys):
    space = write_space(tmp_path / "s.yaml", SPACE)
    assert main(["tune", "--space", str(space), "--data", str(tmp_path), "--set", "has.gamma=5"]) == 2
    assert "has.gamma" in capsys.readouterr().err


def test_label_free_objectives_on_an_untrained_teacher(data, tmp_path):
    import torch

    from copl_dist.data.formats import import_dataset
    from copl_dist.method.model import IOCNet

    corpus = import_dataset(data, tmp_path / "corpus")
    cfg = config_lib.resolve("thumos14", sets=["model.hidden_dim=32", "train.shift_channels=64"])
    torch.manual_seed(0)
    teacher = IOCNet(3, cfg.model.feature_dim, cfg.model.hidden_dim, cfg.model.dropout).eval()
    ids = corpus.video_ids("validation")
    s = silhouette_objective(cfg, corpus, ids, teacher, 3, 0)
    # By hand from the parts: the teacher's HAS features of each video (Eq. 5), the exact path's
    # affinity, spectral clustering with the next iteration's seed, the mean PLRI score (Eq. 8).
    from copl_dist.cluster import exact as cluster
    from copl_dist.common.seeding import STREAM_CLUSTER, derive_seed
    from copl_dist.method import has
    from copl_dist.method.engine import infer_video

    feats = []
    for vid in ids:
        x = corpus.features(vid)
        out = infer_video(teacher, x, cfg.train.beta, cfg.train.topl_ratio)
        attention = has.top_k_attention(has.consistent_actionness(out.a_cs, out.a_ca), cfg.has.gamma)  # Eqs. 1-3
        feats.append(has.global_feature(x, attention, cfg.has.centre))
    W = cluster.gaussian_affinity(np.stack(feats))
    labels = cluster.spectral_clustering(W, 3, derive_seed(cfg.seed, STREAM_CLUSTER, 1))
    expected = float(cluster.plri_scores(W, labels).mean())
    assert expected != 0.0 and s == pytest.approx(expected, abs=1e-9)
    a = agreement_objective(cfg, corpus, ids, teacher, 0)
    assert -1.0 <= a < 1.0
    assert a == agreement_objective(cfg, corpus, ids, teacher, 0)  # seeded shift: deterministic
    no_shift = config_lib.resolve("thumos14", sets=["model.hidden_dim=32", "train.shift_channels=0"])
    assert agreement_objective(no_shift, corpus, ids, teacher, 0) == pytest.approx(1.0)
    with torch.no_grad():  # a teacher whose attention is flat has no curve to agree on
        for p in teacher.ca_rgb.parameters():
            p.zero_()
        for p in teacher.ca_flow.parameters():
            p.zero_()
    assert agreement_objective(cfg, corpus, ids, teacher, 0) == 0.0


# -- Ray Tune end to end -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def map_tune(data, ray_session, tmp_path_factory):
    base = tmp_path_factory.mktemp("tune-map")
    space = write_space(base / "space.yaml", SPACE)
    out = base / "out"
    argv = ["tune", "--space", str(space), "--data", str(data), "--out", str(out), "--samples", "4",
            "--objective", "map", "--val-subset", "val_holdout", "--pp-samples", "6", *TINY]
    assert main(argv) == 0
    return out


@pytest.mark.ray
@pytest.mark.slow
def test_map_tuning_writes_a_loadable_best_config(map_tune):
    written = yaml.safe_load((map_tune / "best_config.yaml").read_text())
    assert "distributed" not in written and "tracking" not in written  # no trial-only or session settings
    cfg = config_lib.resolve("thumos14", map_tune / "best_config.yaml")
    assert cfg.data.test_subset == "test"  # the trials' data.test_subset override (the validation subset) not leaked
    assert cfg.iterations == 2 and cfg.model.hidden_dim == 32 and cfg.has.vote_last == 1  # flags, --set and base kept
    assert -0.1 <= cfg.cluster.delta <= 0.2 and cfg.has.gamma in (4.0, 8.0)
    assert 0.2 <= cfg.train.beta <= 0.5 and 1.0 <= cfg.loss.lambda2 <= 20.0
    # Post-processing values come from the postprocess space (which excludes the preset's 0.2 / 0.4).
    assert 0.3 <= cfg.inference.class_threshold <= 0.45 and 0.45 <= cfg.inference.nms_iou <= 0.55

    doc = json.loads((map_tune / "tune_results.json").read_text())
    assert len(doc["trials"]) == 4 and doc["eval_subset"] == "val_holdout"
    best = next(t for t in doc["trials"] if t["trial_id"] == doc["best"]["trial_id"])
    assert best["status"] == "completed" and [h["iteration"] for h in best["history"]] == [1, 2]
    assert best["params"]["has.gamma"] == cfg.has.gamma
    for t in doc["trials"]:
        assert t["status"] in ("completed", "stopped_early") and set(t["params"]) == set(SPACE["search"])
        assert all(np.isfinite(h["objective"]) and 0.0 <= h["objective"] <= 100.0 for h in t["history"])
    pp = doc["postprocess"]
    assert pp["searched"] and pp["best_values"]["inference.nms_iou"] == cfg.inference.nms_iou
    assert len(pp["candidates"]) == 6 and pp["best_objective"] == max(c["objective"] for c in pp["candidates"])
    # The cache reproduces the trial: its config's own post-processing scores the trial's final map@avg.
    assert pp["default_objective"] == pytest.approx(best["history"][-1]["objective"], abs=1e-6)
    assert not [p for p in map_tune.iterdir() if p.name.endswith(".tmp")]  # raw_predictions.npz renamed into place


@pytest.mark.ray
@pytest.mark.slow
def test_mlflow_has_one_tune_run_and_a_nested_run_per_trial(map_tune):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{map_tune / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("copl").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name == "tune"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 4 and len(runs) == 5
    for child in children:
        assert set(SPACE["search"]) <= set(child.data.params)
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "objective")]
        assert steps and steps[0] == 1 and child.info.status == "FINISHED"
    assert "objective" in parents[0].data.metrics


@pytest.mark.ray
@pytest.mark.slow
def test_postprocess_search_reads_the_cache_and_never_trains(map_tune, data, monkeypatch):
    from copl_dist.data.corpus import Corpus
    from copl_dist.method import engine
    from copl_dist.run import driver

    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        raise AssertionError("post-processing must not train")

    monkeypatch.setattr(engine, "train_loop_per_worker", spy)
    monkeypatch.setattr(driver, "train_loop_per_worker", spy)
    monkeypatch.setattr(driver.CoplRun, "execute", spy)
    raw = load_raw(map_tune / "raw_predictions.npz")
    assert raw.subset == "val_holdout" and len(raw.video_ids) == 3 and raw.h_cs[0].ndim == 2
    cfg = config_lib.resolve("thumos14", map_tune / "best_config.yaml")
    gt = Corpus.open(map_tune / "corpus").ground_truth("val_holdout")
    result = search_postprocess(raw, gt, cfg, SPACE["postprocess"], samples=5, source="test")
    assert calls == [] and len(result["candidates"]) == 5
    # The tuned values are inside the space, so they are the first candidate and nothing is worse.
    assert result["candidates"][0]["values"]["inference.nms_iou"] == cfg.inference.nms_iou
    objectives = [c["objective"] for c in result["candidates"]]
    assert objectives[0] == pytest.approx(result["default_objective"], abs=1e-12)
    # Each candidate is scored with its own values (the same values everywhere would tie them all).
    assert len(set(objectives)) > 1
    assert result["best_objective"] == max(objectives)
    assert result["best_values"] == result["candidates"][objectives.index(max(objectives))]["values"]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("annotated", [True, False], ids=["annotated", "bare"])
def test_label_free_tuning_with_the_shipped_space(annotated, data, ray_session, tmp_path):
    """On annotated videos the trials report nothing read from labels; on videos without any, as
    label-free tuning is for, they run (the number of clusters given)."""
    out = tmp_path / "out"
    corpus = data if annotated else _without_annotations(data, tmp_path / "bare")
    argv = ["tune", "--space", str(ROOT / "tune_spaces" / "thumos14.yaml"), "--data", str(corpus), "--out", str(out),
            "--samples", "2", "--objective", "silhouette", *TINY, "--set", "num_classes=3"]
    assert main(argv) == 0
    doc = json.loads((out / "tune_results.json").read_text())
    assert not doc["postprocess"]["searched"] and not (out / "raw_predictions.npz").exists()
    assert doc["eval_subset"] == "validation" and len(doc["trials"]) == 2
    for t in doc["trials"]:
        assert all(-1.0 <= h["objective"] <= 1.0 and "map@avg" not in h for h in t["history"])
        assert all(("nmi" in h) == annotated for h in t["history"])  # a diagnostic where labels exist
    # The preset's own values lie inside the shipped space: they are the first trial, a baseline to beat.
    first = doc["trials"][0]["params"]
    assert first["has.gamma"] == 20.0 and first["cluster.delta"] == 0.0 and first["loss.lambda2"] == 10.0
    cfg = config_lib.resolve("thumos14", out / "best_config.yaml")
    assert cfg.inference.class_threshold == 0.2 and cfg.inference.nms_iou == 0.4  # label-free: defaults kept
    assert cfg.num_classes == 3  # the --set that a run on this corpus needs is in the best config


@pytest.mark.ray
def test_every_trial_failing_is_one_line_naming_the_output_folder(data, ray_session, tmp_path, capsys, monkeypatch):
    from copl_dist.tune import search as tune

    def failing_trial(params, ctx):  # a local function: Ray ships it by value to the trial actors
        raise ValueError("forced trial failure")

    monkeypatch.setattr(tune, "trial_trainable", failing_trial)
    space = write_space(tmp_path / "s.yaml", SPACE)
    out = tmp_path / "out"
    argv = ["tune", "--space", str(space), "--data", str(data), "--out", str(out), "--samples", "2", *TINY]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"copl: error: {out}: no trial produced a finite objective (2 trials, 2 failed)"), err
    assert "ValueError: forced trial failure" in err
    named = err.split("tracebacks in ")[1].split(" (and")[0]
    assert named.startswith(str(out / "ray_results"))  # the kept copy, not the Ray session's staging one
    assert Path(named).is_file() and "forced trial failure" in Path(named).read_text()
    assert not (out / "best_config.yaml").exists() and not (out / "tune_results.json").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_ctrl_c_stops_the_search_without_a_best_config(data, tmp_path):
    """Ray Tune's own SIGINT handler ended the search early and `copl tune` then wrote best_config.yaml
    from the trials done so far, with exit 0; Ctrl-C is an interrupt now (exit 130, one line)."""
    from interrupt import interrupt_copl

    out = tmp_path / "out"
    space = write_space(tmp_path / "s.yaml", SPACE)
    args = ["tune", "--space", str(space), "--data", str(data), "--out", str(out),
            "--samples", "200", "--objective", "silhouette", *TINY]
    code, err = interrupt_copl(args, lambda: bool(list((out / "ray_results").glob("*/*/params.json"))),  # a trial started
                               drop_env=("TUNE_DISABLE_SIGINT_HANDLER",))
    assert code == 130, err[-2000:]
    assert "copl: interrupted" in err
    assert not (out / "best_config.yaml").exists() and not (out / "tune_results.json").exists()
    # Its MLflow runs were ended: the search KILLED (Ctrl-C once left the SQLite store locked, and this
    # write failed after 20 s: copl_dist/common/interrupts.py), no trial's run left RUNNING.
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("copl").experiment_id])
    by_kind = {}
    for r in runs:
        by_kind.setdefault(r.data.tags.get("copl.kind"), []).append(r.info.status)
    assert by_kind["tune"] == ["KILLED"], by_kind
    assert "RUNNING" not in by_kind.get("tune-trial", []), by_kind
