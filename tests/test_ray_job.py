"""`ray job submit` of `copl run` against a real local Ray head (started and stopped here)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tiny_corpus import tiny_synthetic

pytestmark = [pytest.mark.ray, pytest.mark.slow]

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


def _free_ports(n: int) -> list[int]:
    # All held open at once, so that the kernel cannot hand the same port out twice.
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _listening_addresses(port: int) -> set[str]:
    """Addresses with a TCP socket listening on `port`, from /proc/net/tcp and tcp6 (what `ss -ltn`
    shows); an IPv4-mapped IPv6 address (::ffff:a.b.c.d, Ray's gRPC servers) as a.b.c.d."""
    found = set()
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            ip_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = b"".join(bytes.fromhex(ip_hex[i : i + 8])[::-1] for i in range(0, len(ip_hex), 8))
            if len(raw) == 4:
                found.add(socket.inet_ntop(socket.AF_INET, raw))
            elif raw[:12] == b"\0" * 10 + b"\xff\xff":
                found.add(socket.inet_ntop(socket.AF_INET, raw[12:]))
            else:
                found.add(socket.inet_ntop(socket.AF_INET6, raw))
    return found


def _shipped_runtime_env(tmp_path: Path) -> Path:
    """cluster_configs/runtime_env.yaml less its pip list (no package index here; the venv has the
    packages) and env_vars (its MLflow server is not here): the working_dir and its excludes."""
    shipped = yaml.safe_load((ROOT / "cluster_configs" / "runtime_env.yaml").read_text())
    env_file = tmp_path / "runtime_env.yaml"
    env_file.write_text(yaml.safe_dump({k: shipped[k] for k in ("working_dir", "excludes")}))
    return env_file


def _env() -> dict[str, str]:
    # `ray job submit` runs the entrypoint with the Python active at `ray start`: this venv's. The
    # suite's COPL_WORKERS=0 (conftest) is not passed on: the job trains as a user's would, on Ray
    # Train workers of the cluster it joins.
    return {
        **{k: v for k, v in os.environ.items() if k != "COPL_WORKERS"},
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        # Else Ray swaps --node-ip-address=127.0.0.1 for the machine's outward address on Linux and
        # its servers listen there (see ray_runtime._init_local_on_loopback).
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONWARNINGS": "ignore",
    }


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head on 127.0.0.1 in its own process group, so stopping it touches no other Ray."""
    temp_dir = Path("/tmp") / f"copl-ray-{os.getpid()}"  # Ray's socket paths must stay short
    gcs, dashboard = _free_ports(2)
    log = tmp_path_factory.mktemp("ray") / "head.log"
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=_env(), start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except OSError:
            if time.time() > deadline or head.poll() is not None:
                os.killpg(head.pid, signal.SIGKILL)
                pytest.fail(f"Ray head did not come up: {log.read_text()[-2000:]}")
            time.sleep(1)
    yield address, gcs
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()


def test_job_runs_the_shipped_working_dir(ray_head, tmp_path):
    """The job imports copl_dist from the uploaded working_dir, not from this venv's install."""
    env_file = _shipped_runtime_env(tmp_path)
    proc = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", ray_head[0], "--runtime-env", str(env_file), "--",
         "python", "-c", "import copl_dist; print('COPL_DIST_AT', copl_dist.__file__)"],
        env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    where = next(line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("COPL_DIST_AT"))
    assert "working_dir_files" in where and not where.startswith(str(ROOT)), where


def test_head_listens_on_loopback_only(ray_head):
    _, gcs = ray_head
    assert _listening_addresses(gcs) == {"127.0.0.1"}


@pytest.mark.timeout(900)  # the submit's own limit below, not pytest's default 600 s
def test_ray_job_submit_copl_run(ray_head, tmp_path):
    """Submitted as a user submits to a cluster: cluster_configs/runtime_env.yaml ships this checkout
    as the job's working_dir and the entrypoint is `python -m copl_dist run`; the job joins the
    head's cluster, trains on Ray Train (`--workers -1`) and votes in a HAS actor. Only the runtime
    environment's pip list is left out (no package index here; the venv has the packages)."""
    data = tmp_path / "data"
    tiny_synthetic(data, videos=8, seed=0)
    out = tmp_path / "out"
    env_file = _shipped_runtime_env(tmp_path)
    entry = [
        "python", "-m", "copl_dist", "run", "--data", str(data), "--out", str(out), "--iterations", "2",
        "--epochs", "2", "--snippets", "32", "--no-progress", "--has-actors", "1", "--set", "train.batch_size=4",
        "--set", "model.hidden_dim=32", "--set", "train.shift_channels=64",
        "--set", f"distributed.storage_path={tmp_path / 'ray_storage'}",
    ]
    proc = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", ray_head[0], "--runtime-env", str(env_file), "--", *entry],
        env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout + proc.stderr
    assert "gcs://_ray_pkg_" in proc.stdout + proc.stderr  # the working_dir went to the cluster (or was there)
    # HAS voted in an actor of the cluster (the state API keeps finished jobs' actors).
    from ray.util.state import list_actors

    has_actors = list_actors(address=ray_head[0], filters=[("class_name", "=", "HASActor")], raise_on_missing_output=False)
    assert len(has_actors) == 1
    # Trained on the cluster's Ray Train workers, one fit per iteration, not in the job's process.
    assert "workers: -1" in (out / "config.yaml").read_text()
    assert len(list((tmp_path / "ray_storage").glob("copl-it*-*"))) == 2

    # The same kind of outputs as the embedded default.
    for name in ("detections.json", "metrics.json", "config.yaml", "teacher.pt", "pseudo_labels.parquet",
                 "plots/iterations.png", "plots/actionness.png", "mlflow.db"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] and len(metrics["iterations"]) == 2 and "map@avg" in metrics["final"]

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("copl")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(runs) == 3  # parent + one nested run per iteration
