"""A real Ray head on 127.0.0.1 (`ray start --head`), as a cluster's, for `ray job submit`: started in
its own process group and temp dir, so that stopping it touches no other Ray on the machine. Shared by
tests/test_ray_job.py and docs/bench/job-stop/measure.py."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


def free_ports(n: int) -> list[int]:
    # All held open at once, so that the kernel cannot hand the same port out twice.
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def ray_env(**extra: str) -> dict[str, str]:
    # `ray job submit` runs the entrypoint with the Python active at `ray start`: this venv's. The
    # suite's COPL_WORKERS=0 (conftest) is not passed on: a job trains as a user's would, on Ray
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
        **extra,
    }


def shipped_runtime_env(dest_dir: Path) -> Path:
    """cluster_configs/runtime_env.yaml less its pip list (no package index here; the venv has the
    packages) and env_vars (its MLflow server is not here): the working_dir and its excludes."""
    shipped = yaml.safe_load((ROOT / "cluster_configs" / "runtime_env.yaml").read_text())
    env_file = dest_dir / "runtime_env.yaml"
    env_file.write_text(yaml.safe_dump({k: shipped[k] for k in ("working_dir", "excludes")}))
    return env_file


@dataclass
class Head:
    proc: subprocess.Popen
    address: str  # the dashboard's, for `ray job ...`
    gcs_port: int
    temp_dir: Path

    def logs_mentioning(self, text: str) -> list[str]:
        """Lines of the head's session logs holding `text` (a job's supervisor logs to a worker's
        .err file there, e.g. whether its entrypoint exited by itself after `ray job stop`)."""
        found = []
        for path in (self.temp_dir / "session_latest" / "logs").glob("*"):
            if path.is_file():
                found += [line for line in path.read_text(errors="replace").splitlines() if text in line]
        return found


def start_head(log: Path, **env: str) -> Head:
    """`env`: variables for the head and so for its job supervisors (e.g. RAY_JOB_STOP_WAIT_TIME_S)."""
    temp_dir = Path("/tmp") / f"copl-ray-{os.getpid()}"  # Ray's socket paths must stay short
    gcs, dashboard = free_ports(2)
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=ray_env(**env), start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    head = Head(proc, f"http://127.0.0.1:{dashboard}", gcs, temp_dir)
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{head.address}/api/version", timeout=2)
            return head
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                stop_head(head)
                raise RuntimeError(f"Ray head did not come up: {log.read_text()[-2000:]}") from None
            time.sleep(1)


def stop_head(head: Head) -> None:
    try:
        os.killpg(head.proc.pid, signal.SIGTERM)
        head.proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(head.proc.pid, signal.SIGKILL)
        head.proc.wait()
    except ProcessLookupError:
        head.proc.wait()
    shutil.rmtree(head.temp_dir, ignore_errors=True)
