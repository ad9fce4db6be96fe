"""`ray job submit` of `copl run` against a real local Ray head (started and stopped here)."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from ray_head import BIN, ROOT, ray_env, shipped_runtime_env, start_head, stop_head
from tiny_corpus import tiny_synthetic

pytestmark = [pytest.mark.ray, pytest.mark.slow]


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


def _copl_run(data: Path, out: Path, storage: Path, iterations: int, epochs: int) -> list[str]:
    """A job's entrypoint: `copl run` on a tiny corpus, as in the working_dir the job ships."""
    return ["python", "-m", "copl_dist", "run", "--data", str(data), "--out", str(out),
            "--iterations", str(iterations), "--epochs", str(epochs), "--snippets", "32", "--no-progress",
            "--set", "train.batch_size=4", "--set", "model.hidden_dim=32", "--set", "train.shift_channels=64",
            "--set", f"distributed.storage_path={storage}"]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    # A grace of 30 s between `ray job stop`'s SIGTERM and its SIGKILL (3 s by default), so that the
    # stop test checks that copl exits by itself, not how fast on a loaded machine (that is measured
    # by docs/bench/job-stop/measure.py).
    head = start_head(tmp_path_factory.mktemp("ray") / "head.log", RAY_JOB_STOP_WAIT_TIME_S="30")
    yield head
    stop_head(head)


def test_job_runs_the_shipped_working_dir(ray_head, tmp_path):
    """The job imports copl_dist from the uploaded working_dir, not from this venv's install."""
    env_file = shipped_runtime_env(tmp_path)
    proc = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", ray_head.address, "--runtime-env", str(env_file), "--",
         "python", "-c", "import copl_dist; print('COPL_DIST_AT', copl_dist.__file__)"],
        env=ray_env(), cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    where = next(line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("COPL_DIST_AT"))
    assert "working_dir_files" in where and not where.startswith(str(ROOT)), where


def test_head_listens_on_loopback_only(ray_head):
    assert _listening_addresses(ray_head.gcs_port) == {"127.0.0.1"}


@pytest.mark.timeout(900)  # the submit's own limit below, not pytest's default 600 s
def test_ray_job_submit_copl_run(ray_head, tmp_path):
    """Submitted as a user submits to a cluster: cluster_configs/runtime_env.yaml ships this checkout
    as the job's working_dir and the entrypoint is `python -m copl_dist run`; the job joins the
    head's cluster, trains on Ray Train (`--workers -1`) and votes in a HAS actor. Only the runtime
    environment's pip list is left out (no package index here; the venv has the packages)."""
    data = tmp_path / "data"
    tiny_synthetic(data, videos=8, seed=0)
    out = tmp_path / "out"
    env_file = shipped_runtime_env(tmp_path)
    entry = [*_copl_run(data, out, tmp_path / "ray_storage", iterations=2, epochs=2), "--has-actors", "1"]
    proc = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", ray_head.address, "--runtime-env", str(env_file), "--", *entry],
        env=ray_env(), cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout + proc.stderr
    assert "gcs://_ray_pkg_" in proc.stdout + proc.stderr  # the working_dir went to the cluster (or was there)
    # HAS voted in an actor of the cluster (the state API keeps finished jobs' actors).
    from ray.util.state import list_actors

    has_actors = list_actors(address=ray_head.address, filters=[("class_name", "=", "HASActor")], raise_on_missing_output=False)
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


def _run_statuses(db: Path) -> dict[str, str]:
    """Run name -> status of every MLflow run in a SQLite store that a job may be writing to."""
    for _ in range(30):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
                return dict(conn.execute("SELECT name, status FROM runs").fetchall())
        except sqlite3.OperationalError:  # the tables are not there yet, or a write holds the lock
            time.sleep(1)
    raise AssertionError(f"{db}: no MLflow runs to read")


@pytest.mark.timeout(900)
def test_ray_job_stop_ends_the_run_as_terminated(ray_head, tmp_path):
    """`ray job stop` during Ray Train training: Ray's job supervisor sends SIGTERM to the entrypoint
    and SIGKILLs it after a grace. Before, copl died there with the MLflow runs RUNNING for ever (or,
    after ray.init, aborted with Ray's stack dump); now it exits by itself within the grace, says
    `copl: terminated` and ends its runs KILLED, and the job is STOPPED."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    data, out, storage = tmp_path / "data", tmp_path / "out", tmp_path / "ray_storage"
    tiny_synthetic(data, videos=8, seed=0)
    job_id = f"copl-stop-{tmp_path.name}"
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--no-wait", "--address", ray_head.address, "--submission-id", job_id,
         "--runtime-env", str(shipped_runtime_env(tmp_path)), "--",
         "exec", *_copl_run(data, out, storage, iterations=3, epochs=500)],  # as docs/cluster.md submits it
        env=ray_env(), cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert submit.returncode == 0, submit.stdout[-2000:] + submit.stderr[-2000:]
    client = JobSubmissionClient(ray_head.address)
    deadline = time.time() + 400
    # Under way: Ray Train has written an epoch's checkpoint of iteration 0.
    while not list(storage.glob("*/checkpoint_*")):
        status = client.get_job_status(job_id)
        assert not status.is_terminal(), f"{status}: {client.get_job_logs(job_id)[-3000:]}"
        assert time.time() < deadline, client.get_job_logs(job_id)[-3000:]
        time.sleep(1)
    assert _run_statuses(out / "mlflow.db")["iteration-0"] == "RUNNING"

    stop = subprocess.run([str(BIN / "ray"), "job", "stop", "--address", ray_head.address, job_id],
                          env=ray_env(), capture_output=True, text=True, timeout=300)
    assert stop.returncode == 0, stop.stdout[-2000:] + stop.stderr[-2000:]
    assert client.get_job_status(job_id) == JobStatus.STOPPED
    logs = client.get_job_logs(job_id).splitlines()
    assert "copl: terminated" in logs, logs[-40:]
    assert not [line for line in logs if line.startswith("Traceback")], logs[-40:]
    # It exited by itself on SIGTERM, before the supervisor's SIGKILL.
    assert ray_head.logs_mentioning(f"Job {job_id} has been terminated gracefully with SIGTERM")
    assert not ray_head.logs_mentioning(f"{job_id} through SIGTERM has timed out")
    # The run and the iteration under way (iteration 0 unless its 500 epochs went by first) end KILLED.
    statuses = _run_statuses(out / "mlflow.db")
    iterations = sorted(name for name in statuses if name.startswith("iteration-"))
    assert statuses["thumos14-utal-seed0"] == "KILLED" and statuses[iterations[-1]] == "KILLED", statuses
    assert "RUNNING" not in statuses.values(), statuses
    assert list(storage.glob("*/checkpoint_*"))  # what it had written stays
