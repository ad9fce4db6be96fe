"""A `copl run` whose driver is killed continues with `--resume` and ends as an undisturbed run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from copl_dist.cli import main
from tiny_corpus import TINY_SETS, tiny_synthetic

# cluster.delta=-1 pseudo-labels every video, so that even this tiny corpus gives the discriminant
# projection clusters to fit: a resumed iteration must rebuild it from the last persisted clustering.
ARGS = ["--iterations", "3", "--epochs", "3", "--snippets", "32", "--no-progress", *TINY_SETS,
        "--set", "tracking.enabled=false", "--set", "cluster.delta=-1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume") / "data"
    tiny_synthetic(root, videos=10, seed=1)
    return root


@pytest.fixture(scope="module")
def undisturbed(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "undisturbed"
    assert main(["run", "--data", str(data), "--out", str(out), *ARGS]) == 0
    return out


def _same_result(a: Path, b: Path) -> None:
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    assert ma["final"] == mb["final"]
    strip = lambda its: [{k: v for k, v in it.items() if k != "seconds"} for it in its]  # noqa: E731
    assert strip(ma["iterations"]) == strip(mb["iterations"])
    assert pq.read_table(a / "pseudo_labels.parquet").equals(pq.read_table(b / "pseudo_labels.parquet"))
    ta, tb = (torch.load(p / "teacher.pt", weights_only=True)["state_dict"] for p in (a, b))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert json.loads((a / "detections.json").read_text()) == json.loads((b / "detections.json").read_text())


def test_later_iterations_cluster_the_projection(undisturbed):
    dims = [it["cluster_dim"] for it in json.loads((undisturbed / "metrics.json").read_text())["iterations"]]
    assert dims == [2048, 2, 2]  # 3 clusters -> 2 discriminant dimensions


@pytest.mark.parametrize("kill_after", [0, 1])
def test_killed_driver_resumes_to_the_same_result(kill_after, data, undisturbed, tmp_path, capsys):
    out = tmp_path / "out"
    copl = Path(sys.executable).parent / "copl"
    proc = subprocess.Popen([str(copl), "run", "--data", str(data), "--out", str(out), *ARGS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    marker = out / "state" / f"iteration-{kill_after}.pt"
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # inside the next iteration's training, or just between
    proc.wait()
    assert not (out / "metrics.json").exists() or not json.loads((out / "metrics.json").read_text())["complete"]

    assert main(["run", "--data", str(data), "--out", str(out), "--resume", *ARGS]) == 0, capsys.readouterr().err
    _same_result(out, undisturbed)


def test_resume_with_another_config_is_refused(undisturbed, data, capsys):
    assert main(["run", "--data", str(data), "--out", str(undisturbed), "--resume", *ARGS, "--set", "has.gamma=5"]) == 2
    err = capsys.readouterr().err
    assert "iteration-2.pt: saved by a run with another config" in err and err.count("\n") == 1


def test_resume_of_a_finished_run_rewrites_the_same_outputs(undisturbed, data, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(undisturbed, copy)
    for name in ("metrics.json", "detections.json", "teacher.pt"):
        (copy / name).unlink()
    assert main(["run", "--data", str(data), "--out", str(copy), "--resume", *ARGS]) == 0
    _same_result(copy, undisturbed)
