"""`copl run` against a real `mlflow server` over HTTP on 127.0.0.1: runs, metrics, registry, artifacts.

The test starts the server in its own process group (it spawns uvicorn/gunicorn workers), and stops
the whole group by the server's process id.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tiny_corpus import TINY, tiny_synthetic

from copl_dist.cli import main

READY_TIMEOUT_S = 180.0  # schema migrations and uvicorn's start on a loaded 2-core machine
HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((HOST, port)) == 0


def _stop(proc: subprocess.Popen, port: int) -> None:
    """SIGTERM to the server's process group, SIGKILL if it lingers; then the port must close."""
    for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; give its workers (same group) a moment, then make sure none is left.
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _group_alive(proc.pid):
            time.sleep(0.2)
        if not _group_alive(proc.pid):
            break


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(tmp / "server.log", "wb")
    cmd = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--host", HOST, "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{tmp / 'db.sqlite'}",
        "--artifacts-destination", str(tmp / "art"),
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp, start_new_session=True)
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"mlflow server exited ({proc.returncode}): {(tmp / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"mlflow server not healthy after {READY_TIMEOUT_S:.0f} s: {(tmp / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield {"url": url, "port": port, "proc": proc, "tmp": tmp}
    finally:
        _stop(proc, port)
        log.close()


@pytest.mark.slow
def test_run_over_http_and_server_stops(server, tmp_path, monkeypatch):
    import mlflow

    from copl_dist.tracking.registry import load_registered_teacher, promote

    url = server["url"]
    data = tmp_path / "data"
    tiny_synthetic(data, videos=8, seed=0)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    # Fail fast instead of MLflow's long HTTP retry schedule if the server goes away.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    out = tmp_path / "out"
    assert main(["run", "--data", str(data), "--out", str(out), *TINY]) == 0
    assert not (out / "mlflow.db").exists()  # everything went to the server

    client = mlflow.MlflowClient(tracking_uri=url, registry_uri=url)
    exp = client.get_experiment_by_name("copl")
    assert exp.artifact_location.startswith("mlflow-artifacts:")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2
    assert "map_at_avg" in parent.data.metrics and parent.data.params["train.epochs"] == "2"
    assert all({"nmi", "map_at_avg"} <= set(c.data.metrics) for c in children)
    assert [m.step for m in client.get_metric_history(children[0].info.run_id, "loss")] == [0, 1]

    versions = client.search_model_versions("name = 'copl-teacher'")
    assert [str(v.version) for v in versions] == ["1"]
    v = versions[0]
    assert v.run_id == parent.info.run_id and v.tags["mode"] == "utal" and v.tags["seed"] == "0"
    assert float(v.tags["map_at_avg"]) == pytest.approx(parent.data.metrics["map_at_avg"])
    # The proxied artifact store serves the checkpoint back; the alias is set over HTTP too.
    best = promote("copl-teacher", tracking_uri=url)
    assert (best.version, best.value) == ("1", pytest.approx(parent.data.metrics["map_at_avg"]))
    ckpt = load_registered_teacher("models:/copl-teacher@champion", tracking_uri=url)
    assert ckpt["num_classes"] == 3 and ckpt["config"]["model"]["hidden_dim"] == 32
    assert any((server["tmp"] / "art").rglob("teacher.pt"))

    proc, port = server["proc"], server["port"]
    _stop(proc, port)
    assert proc.poll() is not None and not _group_alive(proc.pid)
    assert not _port_open(port)
