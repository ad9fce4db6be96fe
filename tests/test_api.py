"""The public Python API (copl_dist.api): the README's example runs as written, and the API gives what
the command line gives on the same input (the CLI is a thin layer over the same plan)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_corpus import TINY, tiny_synthetic

from copl_dist import api
from copl_dist.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_example() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_readme_example_runs_as_written(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _readme_example()], cwd=tmp_path, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines[:2]] == ["0", "1"]  # one line per iteration
    assert len(lines) >= 3  # and at least one detection of the new video
    assert (tmp_path / "runs" / "api-demo" / "run" / "teacher.pt").is_file()


def _tiny_overrides() -> dict:
    return {"iterations": 2, "train.epochs": 2, "data.snippets": 32, "train.batch_size": 4, "model.hidden_dim": 32,
            "train.shift_channels": 64, "tracking.enabled": False}


def _untimed(iterations: list[dict]) -> list[dict]:
    return [{k: v for k, v in it.items() if "seconds" not in k} for it in iterations]


def test_api_run_equals_copl_run(tmp_path):
    data = tiny_synthetic(tmp_path / "data")
    outcome = api.run(data, out=tmp_path / "api", config=api.config("thumos14", _tiny_overrides()))
    assert main(["run", "--data", str(data), "--out", str(tmp_path / "cli"), "--workers", "0", *TINY,
                 "--set", "tracking.enabled=false"]) == 0
    cli_doc = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    api_doc = json.loads(outcome.paths["metrics"].read_text())
    assert _untimed(api_doc["iterations"]) == _untimed(cli_doc["iterations"]) and api_doc["iterations"] == outcome.iterations
    assert outcome.final == cli_doc["final"] and api_doc["complete"] is True
    assert outcome.paths["detections"].read_bytes() == (tmp_path / "cli" / "detections.json").read_bytes()

    teacher = api.load_teacher(outcome.paths["teacher"])
    db = json.loads((data / "annotations.json").read_text())["database"]
    vid = next(v for v, info in db.items() if info["subset"] == "validation")
    found = teacher.detect(np.load(data / "features" / f"{vid}.npy"), duration_s=db[vid]["duration"])
    predicted = api.detect(outcome.paths["teacher"], data, tmp_path / "predict")
    assert found == predicted[vid] and found  # detect on features == copl predict on the folder
    assert all(d["label"] in teacher.labels for d in found)


def test_api_bad_input_is_one_line_input_error(tmp_path):
    with pytest.raises(api.InputError, match=r"data folder not found$"):
        api.run(tmp_path / "missing", out=tmp_path / "out", config=api.config(overrides={"tracking.enabled": False}))
    assert not (tmp_path / "out").exists()  # nothing written
    with pytest.raises(api.InputError, match="config key 'has.branch' must be one of"):
        api.config(overrides={"has.branch": "neither"})
    with pytest.raises(api.InputError, match="no such teacher checkpoint"):
        api.load_teacher(tmp_path / "teacher.pt")
    teacher_dir = tmp_path / "t"
    data = tiny_synthetic(tmp_path / "data", videos=4)
    api.run(data, out=teacher_dir, config=api.config("thumos14", {**_tiny_overrides(), "iterations": 1}))
    teacher = api.load_teacher(teacher_dir / "teacher.pt")
    with pytest.raises(api.InputError, match=r"expects \(T, 2048\)"):
        teacher.detect(np.zeros((10, 7), dtype=np.float32), duration_s=5.0)
