"""A `copl run` whose driver is killed continues with `--resume` and ends as an undisturbed run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from tiny_corpus import TINY_SETS, tiny_synthetic

from copl_dist.cli import main
from copl_dist.common.errors import InputError
from copl_dist.run.state import load_latest, save_iteration

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


@pytest.fixture(scope="module")
def unfinished(undisturbed, tmp_path_factory) -> Path:
    """The undisturbed run as if killed after saving its last iteration, before its final outputs:
    --resume checks its state (a finished run has nothing to resume and is refused before)."""
    import shutil

    out = tmp_path_factory.mktemp("resume") / "unfinished"
    shutil.copytree(undisturbed, out)
    metrics = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text(json.dumps({**metrics, "complete": False}))
    return out


def test_resume_of_a_finished_run_is_refused(undisturbed, data, capsys):
    before = _state_files(undisturbed)
    assert main(["run", "--data", str(data), "--out", str(undisturbed), "--resume", *ARGS]) == 2
    err = capsys.readouterr().err
    assert "holds a finished run, nothing to resume" in err and err.count("\n") == 1
    assert _state_files(undisturbed) == before


def test_resume_of_a_finished_run_rebuilds_a_lost_output_untrained(undisturbed, data, tmp_path, capsys):
    """A finished run that lost its detections: --resume writes the outputs again from the saved
    state, the same as before, and neither trains nor writes a saved iteration again."""
    import shutil

    out = tmp_path / "lost"
    shutil.copytree(undisturbed, out)
    (out / "detections.json").unlink()
    before = _state_files(out)
    assert main(["run", "--data", str(data), "--out", str(out), "--resume", *ARGS]) == 0, capsys.readouterr().err
    _same_result(out, undisturbed)
    assert _state_files(out) == before
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] is True and not any(it.get("resumed_from") is not None for it in metrics["iterations"])


def _same_result(a: Path, b: Path) -> None:
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    assert ma["final"] == mb["final"]
    strip = lambda its: [{k: v for k, v in it.items() if k not in ("seconds", "resumed_from")} for it in its]  # noqa: E731
    assert strip(ma["iterations"]) == strip(mb["iterations"])
    assert pq.read_table(a / "pseudo_labels.parquet").equals(pq.read_table(b / "pseudo_labels.parquet"))
    ta, tb = (torch.load(p / "teacher.pt", weights_only=True)["state_dict"] for p in (a, b))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert json.loads((a / "detections.json").read_text()) == json.loads((b / "detections.json").read_text())


def test_later_iterations_cluster_the_projection(undisturbed):
    dims = [it["cluster_dim"] for it in json.loads((undisturbed / "metrics.json").read_text())["iterations"]]
    assert dims == [2048, 2, 2]  # 3 clusters -> 2 discriminant dimensions


def _state_files(out: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of each saved iteration state: a state written again (atomic rename) changes both."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "state").glob("iteration-*.pt")}


@pytest.mark.parametrize("kill_after, when", [(0, "state saved"), (1, "next training begun")])
def test_killed_driver_resumes_to_the_same_result(kill_after, when, data, undisturbed, tmp_path, capsys):
    """The driver is SIGKILLed after iteration `kill_after` is saved: as soon as its state file
    appears (in the HAS features / clustering before the next training), or once the next
    iteration's training has begun (its progress bar on stderr, shown without --no-progress; its
    training lasts ~0.2 s here, the poll is every 5 ms). The resumed run recomputes none of the
    saved iterations and ends as the undisturbed one."""
    out = tmp_path / "out"
    copl = Path(sys.executable).parent / "copl"
    argv = ARGS if when == "state saved" else [a for a in ARGS if a != "--no-progress"]
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as err:
        proc = subprocess.Popen([str(copl), "run", "--data", str(data), "--out", str(out), *argv],
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    marker = out / "state" / f"iteration-{kill_after}.pt"
    training = f"iteration {kill_after + 1} training".encode()
    deadline = time.time() + 300
    while not (marker.exists() if when == "state saved" else training in log.read_bytes()):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists() or not json.loads((out / "metrics.json").read_text())["complete"]
    saved = _state_files(out)
    assert sorted(saved) == [f"iteration-{i}.pt" for i in range(kill_after + 1)]  # killed inside iteration kill_after + 1

    assert main(["run", "--data", str(data), "--out", str(out), "--resume", *ARGS]) == 0, capsys.readouterr().err
    _same_result(out, undisturbed)
    # Resumed, not re-run: the saved iterations' states were not written again, and metrics.json
    # marks the iterations this run computed with the iteration it resumed after.
    assert {name: _state_files(out)[name] for name in saved} == saved
    resumed = [it.get("resumed_from") for it in json.loads((out / "metrics.json").read_text())["iterations"]]
    assert resumed == [None] * (kill_after + 1) + [kill_after] * (2 - kill_after)


def test_resume_with_another_config_is_refused(unfinished, data, capsys):
    assert main(["run", "--data", str(data), "--out", str(unfinished), "--resume", *ARGS, "--set", "has.gamma=5"]) == 2
    err = capsys.readouterr().err
    assert "iteration-2.pt: saved by a run with another config" in err and err.count("\n") == 1


def test_resume_of_a_finished_run_rewrites_the_same_outputs(undisturbed, data, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(undisturbed, copy)
    for name in ("metrics.json", "detections.json", "teacher.pt"):
        (copy / name).unlink()
    saved = _state_files(copy)
    assert main(["run", "--data", str(data), "--out", str(copy), "--resume", *ARGS]) == 0
    _same_result(copy, undisturbed)
    assert _state_files(copy) == saved  # nothing recomputed
    assert all("resumed_from" not in it for it in json.loads((copy / "metrics.json").read_text())["iterations"])


def test_resume_on_other_data_is_refused(unfinished, tmp_path, capsys):
    """OUT/corpus is reused on --resume, so another --data would otherwise go unnoticed."""
    other = tiny_synthetic(tmp_path / "other", videos=10, seed=2)
    before = _state_files(unfinished)
    assert main(["run", "--data", str(other), "--out", str(unfinished), "--resume", *ARGS]) == 2
    err = capsys.readouterr().err
    assert "iteration-2.pt: saved by a run on another --data" in err and err.count("\n") == 1
    assert _state_files(unfinished) == before


def test_resume_after_the_data_changed_is_refused(unfinished, data, capsys):
    """The same --data path, but a file in it changed since the first start: OUT/corpus, converted
    then, would be used as it was (found in review: a deleted video still got detections)."""
    feature = sorted((data / "features").glob("*.npy"))[0]
    st = feature.stat()
    before = _state_files(unfinished)
    try:
        os.utime(feature, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert main(["run", "--data", str(data), "--out", str(unfinished), "--resume", *ARGS]) == 2
    finally:
        os.utime(feature, ns=(st.st_atime_ns, st.st_mtime_ns))  # the module's other tests use it as it was
    err = capsys.readouterr().err
    assert "saved by a run on --data whose files have changed since" in err and err.count("\n") == 1
    assert _state_files(unfinished) == before


def test_resume_from_another_init_model_is_refused(unfinished, undisturbed, data, capsys):
    assert main(["run", "--data", str(data), "--out", str(unfinished), "--resume", *ARGS,
                 "--init-from", str(undisturbed / "teacher.pt")]) == 2
    err = capsys.readouterr().err
    assert "iteration-2.pt: saved by a run from another --init-from model" in err and err.count("\n") == 1


def _state(**kw):
    """A complete state (every key CoplRun reads back), as save_iteration gets it."""
    from copl_dist.run.state import STATE_KEYS

    return {**{k: [] for k in STATE_KEYS}, "teacher": {"w": torch.zeros(1)}, **kw}


def test_damaged_or_foreign_state_files_are_one_clear_error(tmp_path):
    path = tmp_path / "iteration-0.pt"
    for payload, fragment in (([1, 2], "not a copl run state (a list)"), (torch.zeros(3), "not a copl run state (a Tensor)")):
        torch.save(payload, path)
        with pytest.raises(InputError, match=re.escape(f"{path}: {fragment}")):
            load_latest(tmp_path, "h")
    save_iteration(tmp_path, 0, "h", {k: v for k, v in _state().items() if k != "labels"})
    with pytest.raises(InputError, match=re.escape(f"{path}: a damaged copl run state (lacks labels)")):
        load_latest(tmp_path, "h")
    save_iteration(tmp_path, 0, "h", _state(teacher=[1]))
    with pytest.raises(InputError, match="has no teacher state dict"):
        load_latest(tmp_path, "h")


def test_state_files_are_matched_by_number_only(tmp_path):
    """Stray files beside the states (a hand-made iteration-x.pt, a copy) are not states."""
    assert load_latest(tmp_path / "none", "h") is None
    (tmp_path / "iteration-x.pt").write_text("not a state")
    (tmp_path / "iteration-7-copy.pt").write_text("not a state")
    assert load_latest(tmp_path, "h") is None
    save_iteration(tmp_path, 1, "h", _state(labels=np.arange(3)))
    save_iteration(tmp_path, 10, "h", _state(labels=np.arange(4)))
    state = load_latest(tmp_path, "h")
    assert state["iteration"] == 10 and state["labels"].tolist() == [0, 1, 2, 3]  # 10 after 1, not "1" < "10" < "x"


def test_state_of_another_corpus_or_init_is_refused(tmp_path):
    save_iteration(tmp_path, 0, "h", _state(corpus_digest="aaa", data="/d", init_digest=None))
    same = {"corpus_digest": "aaa", "data": "/d", "init_digest": None}
    assert load_latest(tmp_path, "h", same)["iteration"] == 0
    with pytest.raises(InputError, match=r"^\S*iteration-0.pt: saved by a run on another corpus \(corpus_digest aaa, now bbb\)"):
        load_latest(tmp_path, "h", {**same, "corpus_digest": "bbb"})
    with pytest.raises(InputError, match="from another --init-from model"):
        load_latest(tmp_path, "h", {**same, "init_digest": "ccc"})


def test_state_of_another_format_is_refused(tmp_path):
    """A state saved by another copl version (here: format 1, before the provenance keys) is named,
    not misread as a run on other data."""
    save_iteration(tmp_path, 0, "h", _state())
    path = tmp_path / "iteration-0.pt"
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "version": 1}, path)
    with pytest.raises(InputError, match=r"iteration-0.pt: a run state of format 1, this copl reads 3"):
        load_latest(tmp_path, "h", {"data": "x"})


def test_data_fingerprint_covers_what_the_importers_read_only(tmp_path):
    """--resume compares the files the importers read: not other runs' outputs or a tracking database
    kept in the data folder (they would refuse every resume), and a broken link is no error."""
    from copl_dist.run.state import files_fingerprint

    root = tiny_synthetic(tmp_path / "d", videos=4, seed=0)
    first = files_fingerprint(root)
    (root / "runs" / "seed1").mkdir(parents=True)
    (root / "runs" / "seed1" / "metrics.json").write_text("{}")
    (root / "mlflow.db").write_text("")
    (root / "broken").symlink_to(root / "missing")
    assert files_fingerprint(root) != first  # the link sits at the top, where annotation files are read
    (root / "broken").unlink()
    assert files_fingerprint(root) == first
    feature = sorted((root / "features").glob("*.npy"))[0]
    np.save(feature, np.load(feature)[:-1])
    assert files_fingerprint(root) != first
    assert files_fingerprint(root / "annotations.json") == files_fingerprint(root)  # the file and its features: the same
