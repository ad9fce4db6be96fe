"""Faults around a run, from the user's side: a full disk, a SIGKILL while the MLflow store is being
created, two runs on one folder, a rerun over saved iterations, --out inside --data, an --out that
cannot be written, a tracking store that is not one. Each: the command, its exit status, its one line,
and what is on disk after (nothing claiming to be complete that is not, no MLflow run left RUNNING)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from one_line import one_line_error
from tiny_corpus import TINY, TINY_SETS, tiny_synthetic

from copl_dist.cli.app import main

ONE = ["--iterations", "1", "--epochs", "1", "--snippets", "32", "--no-progress", *TINY_SETS]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_synthetic(tmp_path_factory.mktemp("faults") / "data")


def _statuses(db: Path) -> list[str]:
    with sqlite3.connect(db) as con:
        return [row[0] for row in con.execute("SELECT status FROM runs")]


def _copl(*args: str, **kw) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen([sys.executable, "-m", "copl_dist", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **kw)


def _complete(out: Path) -> bool:
    path = out / "metrics.json"
    return path.exists() and json.loads(path.read_text()).get("complete") is True


def _mount_tmpfs(where: Path, size: int, read_only: bool = False) -> None:
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}; needs root)")


@pytest.fixture
def mounts():
    mounted: list[Path] = []
    yield mounted
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


# -- a full disk ---------------------------------------------------------------------------------

@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="a real full disk needs a tmpfs mounted as root")
@pytest.mark.parametrize("room_mb", [0.5, 3.0])
def test_full_disk_is_named_and_nothing_claims_completeness(data, tmp_path, capsys, mounts, room_mb):
    """A tmpfs the converted corpus fits in, with `room_mb` to spare: the run fails where the disk runs
    out (the store's creation, a saved iteration, an output), in one line naming the disk."""
    probe = tmp_path / "probe"
    assert main(["import", str(data), str(probe)]) == 0
    corpus_bytes = sum(f.stat().st_size for f in probe.rglob("*") if f.is_file())
    full = tmp_path / "full"
    _mount_tmpfs(full, corpus_bytes + int(room_mb * 2**20) + 256 * 1024)
    mounts.append(full)
    capsys.readouterr()
    out = full / "r"
    assert main(["run", "--data", str(data), "--out", str(out), *TINY]) == 2
    one_line_error(capsys, "no space left on the disk at", str(full))
    assert not _complete(out)
    assert not [p for p in out.rglob("*") if p.name.endswith((".tmp", ".creating"))]  # no partial file left
    if (out / "mlflow.db").exists():
        assert "RUNNING" not in _statuses(out / "mlflow.db")


def test_metrics_say_complete_only_after_every_output(data, tmp_path, capsys, monkeypatch):
    """The registry's last step fails: every local output is there, but metrics.json does not claim a
    complete run, and the MLflow run ends FAILED."""
    import copl_dist.run.plan as plan_module

    def refuse(*args, **kwargs):
        raise OSError(5, "Input/output error", "the registry")

    monkeypatch.setattr(plan_module, "register_teacher", refuse)
    out = tmp_path / "r"
    assert main(["run", "--data", str(data), "--out", str(out), *ONE]) == 2
    one_line_error(capsys, "the registry")
    assert (out / "teacher.pt").exists() and (out / "detections.json").exists()
    assert json.loads((out / "metrics.json").read_text())["complete"] is False
    assert sorted(_statuses(out / "mlflow.db")) == ["FAILED", "FINISHED"]  # the run FAILED, its iteration FINISHED


# -- the MLflow store's creation -------------------------------------------------------------------

@pytest.mark.parametrize("delay_s", [0.2, 1.0])
def test_sigkill_while_the_store_is_created_leaves_a_usable_folder(data, tmp_path, capsys, delay_s):
    out = tmp_path / "r"
    proc = _copl("run", "--data", str(data), "--out", str(out), *ONE)
    try:
        deadline = time.time() + 120
        # The store's first file, whatever its name (mlflow.db itself, were it built in place).
        while not list(out.glob("*mlflow.db*")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(delay_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if (out / "mlflow.db").exists():  # the kill came after the rename: the store is whole
        with sqlite3.connect(out / "mlflow.db") as con:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "alembic_version" in tables and not [t for t in tables if t.startswith("_alembic_tmp")], tables
    # Both the registry and --resume work on the folder.
    capsys.readouterr()
    if main(["registry", "list", "--tracking-uri", str(out)]) != 0:  # no store yet, or none registered: said in one line
        one_line_error(capsys)
    assert main(["run", "--data", str(data), "--out", str(out), "--resume", *ONE]) == 0
    assert _complete(out) and set(_statuses(out / "mlflow.db")) == {"FINISHED"}
    assert not list(out.glob(".mlflow.db.*"))  # the killed creation's temporary store is gone
    assert main(["registry", "list", "--tracking-uri", str(out)]) == 0


# -- two runs on one folder ------------------------------------------------------------------------

def test_a_second_run_on_a_busy_folder_is_refused(data, tmp_path, capsys):
    out = tmp_path / "r"
    first = _copl("run", "--data", str(data), "--out", str(out), *TINY)
    try:
        deadline = time.time() + 120
        while not (out / "corpus" / "corpus.json").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert first.poll() is None, first.communicate()[1][-2000:]
        assert main(["run", "--data", str(data), "--out", str(out), *TINY]) == 2
        one_line_error(capsys, f"--out {out}", "another copl command is writing to this folder")
        _, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err[-2000:]
    assert _complete(out) and len(_statuses(out / "mlflow.db")) == 3  # the first run's, whole


@pytest.mark.parametrize("then", [
    ["--resume"], ["--overwrite", "--set", "tracking.enabled=false"], ["--overwrite", "--set", "tracking.experiment=other"],
])
def test_a_sigkill_leaves_no_stale_lock_and_its_mlflow_runs_are_ended(data, tmp_path, capsys, then):
    out = tmp_path / "r"
    proc = _copl("run", "--data", str(data), "--out", str(out), *TINY)
    try:
        deadline = time.time() + 300
        while not (out / "state" / "iteration-0.pt").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "RUNNING" in _statuses(out / "mlflow.db")  # what the killed process could not end
    assert main(["run", "--data", str(data), "--out", str(out), *then, *TINY]) == 0
    assert _complete(out) and "RUNNING" not in _statuses(out / "mlflow.db")
    assert "FAILED" in _statuses(out / "mlflow.db")  # the dead run, ended by the next one on the folder


# -- saved state is never deleted silently --------------------------------------------------------

def _saved_iterations(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "state").glob("iteration-*.pt"))


def test_a_rerun_over_saved_iterations_is_refused(data, tmp_path, capsys):
    out = tmp_path / "r"
    # An unfinished run: the first iteration's state kept, metrics.json incomplete.
    assert main(["run", "--data", str(data), "--out", str(out), *TINY]) == 0
    (out / "state" / "iteration-1.pt").unlink()
    metrics = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text(json.dumps({**metrics, "complete": False}))
    before = sorted(p.name for p in out.rglob("*"))
    capsys.readouterr()
    assert main(["run", "--data", str(data), "--out", str(out), *TINY]) == 2
    one_line_error(capsys, f"--out {out}", "unfinished run (iteration 0 saved", "--resume", "--overwrite")
    assert sorted(p.name for p in out.rglob("*")) == before  # nothing touched
    assert main(["run", "--data", str(data), "--out", str(out), "--resume", "--overwrite", *TINY]) == 2
    one_line_error(capsys, "--resume and --overwrite")
    # Finished: refused too, with the one way that makes sense.
    assert main(["run", "--data", str(data), "--out", str(out), "--resume", *TINY]) == 0
    capsys.readouterr()
    assert main(["run", "--data", str(data), "--out", str(out), *TINY]) == 2
    one_line_error(capsys, "holds a finished run", "--overwrite")
    # --overwrite: the old run's files go, the new run's come.
    (out / "plots" / "old.png").write_bytes(b"x")
    assert main(["run", "--data", str(data), "--out", str(out), "--overwrite", *ONE]) == 0
    assert _saved_iterations(out) == ["iteration-0.pt"] and _complete(out)
    assert not (out / "plots" / "old.png").exists()


@pytest.mark.parametrize("mode", ["wtal", "baseline"])
def test_resume_of_a_finished_run_without_state_is_refused(mode, data, tmp_path, capsys):
    """wtal and baseline runs keep no per-iteration state: --resume of a finished one, even one that
    lost an output, has nothing to continue from and is refused (it would train again)."""
    out = tmp_path / "r"
    assert main(["run", "--data", str(data), "--out", str(out), "--mode", mode, *ONE]) == 0
    (out / "detections.json").unlink()
    capsys.readouterr()
    assert main(["run", "--data", str(data), "--out", str(out), "--mode", mode, "--resume", *ONE]) == 2
    one_line_error(capsys, "holds a finished run, nothing to resume", "--overwrite")
    assert not (out / "detections.json").exists()


# -- where a run may write -------------------------------------------------------------------------

@pytest.mark.parametrize("inside", ["", "runs/r", "features/r"])
def test_out_inside_data_is_refused_before_anything_is_written(data, tmp_path, capsys, inside):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    before = sorted(str(p) for p in copy.rglob("*"))
    out = copy / inside if inside else copy
    assert main(["run", "--data", str(copy), "--out", str(out), *ONE]) == 2
    one_line_error(capsys, f"--out {out}", "inside the data folder")
    assert sorted(str(p) for p in copy.rglob("*")) == before


def test_tracking_store_inside_data_or_in_a_foreign_file_is_refused(data, tmp_path, capsys):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    before = sorted(str(p) for p in copy.rglob("*"))
    out = tmp_path / "r"
    for uri in (str(copy), str(copy / "store.db"), (copy / "mlruns").as_uri()):
        assert main(["run", "--data", str(copy), "--out", str(out), "--tracking-uri", uri, *ONE]) == 2
        one_line_error(capsys, "inside the data folder")
    notes = tmp_path / "notes.txt"
    notes.write_text("")
    assert main(["run", "--data", str(copy), "--out", str(out), "--tracking-uri", str(notes), *ONE]) == 2
    one_line_error(capsys, str(notes), "not an MLflow tracking database")
    assert notes.read_text() == "" and not out.exists()
    assert sorted(str(p) for p in copy.rglob("*")) == before


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="a read-only file system needs a tmpfs mounted as root")
def test_a_read_only_out_is_refused_before_anything_is_written(data, tmp_path, capsys, mounts):
    ro = tmp_path / "ro"
    _mount_tmpfs(ro, 1 << 20, read_only=True)
    mounts.append(ro)
    for out in (ro, ro / "r"):
        assert main(["run", "--data", str(data), "--out", str(out), *ONE]) == 2
        one_line_error(capsys, f"--out {out}", "read-only file system")
    # The commands that write one folder or file whole name it, not their temporary sibling.
    assert main(["import", str(data), str(ro / "c")]) == 2
    assert one_line_error(capsys, "Read-only file system").startswith(f"copl: error: {ro / 'c'}:")
    assert main(["synth", str(ro / "s"), "--videos", "2", "--classes", "2"]) == 2
    assert one_line_error(capsys, "Read-only file system").startswith(f"copl: error: {ro / 's'}:")


def test_a_device_the_machine_lacks_is_refused_before_the_corpus_is_converted(data, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "r"
    assert main(["run", "--data", str(data), "--out", str(out), "--set", "train.device=cuda", *ONE]) == 2
    one_line_error(capsys, "cuda")
    assert not out.exists()


def test_predict_never_writes_into_a_run_folder(data, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "--data", str(data), "--out", str(out), *ONE]) == 0
    before = (out / "detections.json").read_bytes()
    capsys.readouterr()
    assert main(["predict", "--model", str(out / "teacher.pt"), "--data", str(data), "--out", str(out)]) == 2
    one_line_error(capsys, f"--out {out}", "holds a copl run's outputs")
    assert (out / "detections.json").read_bytes() == before and _complete(out)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    # In a process of its own, as the user runs it: nothing may follow the line at the interpreter's exit
    # (the lock that was never taken says nothing).
    err = _copl("predict", "--model", str(out / "teacher.pt"), "--data", str(data), "--out", str(blocked / "p"))
    _, text = err.communicate(timeout=300)
    assert err.returncode == 2 and text.strip() == f"copl: error: {blocked / 'p'}: Not a directory", text


def test_predict_on_a_busy_folder_is_refused(data, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "--data", str(data), "--out", str(out), *ONE]) == 0
    busy = tmp_path / "busy"
    first = _copl("run", "--data", str(data), "--out", str(busy), *TINY)
    try:
        deadline = time.time() + 120
        while not (busy / "corpus" / "corpus.json").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert first.poll() is None, first.communicate()[1][-2000:]
        capsys.readouterr()
        # Not yet a run folder by its files (no metrics.json before the first iteration ends): the lock refuses it.
        assert main(["predict", "--model", str(out / "teacher.pt"), "--data", str(data), "--out", str(busy)]) == 2
        one_line_error(capsys, f"--out {busy}", "another copl command is writing to this folder")
    finally:
        first.kill()
        first.wait(timeout=60)


def test_what_a_killed_import_left_is_removed_by_the_next(data, tmp_path, capsys):
    """A SIGKILL runs no cleanup: the half-written corpus (a hidden sibling named after the process)
    stays until the next import of the same target finds its process gone."""
    from copl_dist.common.atomic import temp_sibling

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)
    target = tmp_path / "c"
    live = temp_sibling(target)  # this process's: alive, so kept
    stale = live.with_name(live.name.replace(f"-{os.getpid()}-", f"-{pid}-"))
    (stale / "features").mkdir(parents=True)
    live.mkdir()
    assert main(["import", str(data), str(target)]) == 0
    assert not stale.exists() and live.exists() and (target / "corpus.json").exists()
