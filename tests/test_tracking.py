import os

import pytest

from copl_dist.config import resolve
from copl_dist.tracking.runs import Tracker, mlflow_key


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


def test_normalize_tracking_uri(tmp_path, monkeypatch):
    import pytest

    from copl_dist.common.errors import InputError
    from copl_dist.tracking.runs import normalize_tracking_uri

    assert normalize_tracking_uri("http://127.0.0.1:5000", "--tracking-uri") == "http://127.0.0.1:5000"
    assert normalize_tracking_uri(str(tmp_path), "--tracking-uri") == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    assert normalize_tracking_uri("new.db", "--tracking-uri") == f"sqlite:///{tmp_path.resolve()}/new.db"  # created by a run
    with pytest.raises(InputError, match=r"^\$MLFLOW_TRACKING_URI nodir: no such run folder or \.db file"):
        normalize_tracking_uri("nodir", "$MLFLOW_TRACKING_URI")
    for uri in ("file:/tmp/mlruns", "file:///tmp/mlruns", "databricks", "databricks://profile", "sqlite:///x.db"):
        assert normalize_tracking_uri(uri, "--tracking-uri") == uri  # URIs pass as written


def test_every_source_of_the_tracking_uri_reads_a_path_alike(tmp_path, monkeypatch):
    """--tracking-uri, tracking.tracking_uri and $MLFLOW_TRACKING_URI: a run folder means its mlflow.db
    wherever it is named, so a run logs where --init-from looks its models up."""
    import pytest

    from copl_dist.common.errors import InputError
    from copl_dist.tracking.runs import resolve_tracking_uri

    want = f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(resolve(sets=[f"tracking.tracking_uri={tmp_path}"]).tracking, tmp_path / "out") == want
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(tmp_path))
    assert resolve_tracking_uri(resolve().tracking, tmp_path / "out") == want
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(tmp_path / "nodir"))
    with pytest.raises(InputError, match=r"^\$MLFLOW_TRACKING_URI .*nodir: no such run folder"):
        resolve_tracking_uri(resolve().tracking, tmp_path / "out")


def test_a_sqlite_store_elsewhere_keeps_artifacts_beside_its_database(tmp_path):
    import mlflow

    cfg = resolve("thumos14", sets=[f"tracking.tracking_uri=sqlite:///{tmp_path / 'store' / 'shared.db'}"])
    (tmp_path / "store").mkdir()
    with Tracker(cfg.tracking, tmp_path / "run").parent_run("a", {}, {}):
        pass
    exp = mlflow.MlflowClient(tracking_uri=cfg.tracking.tracking_uri).get_experiment_by_name("copl")
    assert exp.artifact_location == (tmp_path / "store" / "mlartifacts").as_uri()


def test_tracking_server_must_answer_before_a_run_starts():
    """A refused connection is one clear error at once (MLflow's client retried it for ~4 minutes);
    any HTTP answer, even an error status (a login in front of the server), counts as reachable."""
    import http.server
    import socket
    import threading

    from copl_dist.common.errors import InputError
    from copl_dist.tracking.runs import check_tracking_server

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    with pytest.raises(InputError, match=rf"^--tracking-uri http://127.0.0.1:{closed_port}: the tracking server does not answer"):
        check_tracking_server(f"http://127.0.0.1:{closed_port}", "--tracking-uri")
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # answers 501 to GET
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        check_tracking_server(f"http://127.0.0.1:{server.server_address[1]}/", "--tracking-uri")
    finally:
        server.shutdown()
        server.server_close()
    check_tracking_server("sqlite:////nowhere/mlflow.db", "x")  # not a server: nothing to ask
