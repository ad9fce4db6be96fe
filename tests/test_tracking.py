import os

from copl_dist.config import resolve
from copl_dist.tracking import Tracker, mlflow_key


def test_metric_keys_spelled_for_mlflow():
    assert mlflow_key("map@0.5") == "map_at_0.5" and mlflow_key("nmi") == "nmi"


def test_a_finished_run_does_not_leave_its_store_to_the_next(tmp_path):
    cfg = resolve("thumos14")
    t = Tracker(cfg.tracking, tmp_path / "a")
    with t.parent_run("a", {"x": 1}, {}):
        # exported during the run, so that workers started by it log to the same store
        assert os.environ["MLFLOW_TRACKING_URI"].endswith("a/mlflow.db")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert Tracker(cfg.tracking, tmp_path / "b").uri.endswith("b/mlflow.db")


def test_user_setting_wins_and_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'user.db'}")
    cfg = resolve("thumos14")
    t = Tracker(cfg.tracking, tmp_path / "a")
    assert t.uri.endswith("user.db")
    with t.parent_run("a", {}, {}):
        pass
    assert os.environ["MLFLOW_TRACKING_URI"].endswith("user.db")
