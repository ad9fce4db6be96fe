"""The checkpoint staging directories of Ray Train workers: removed after the report, and those left by
killed workers removed when a worker starts on the node (distributed/checkpoint_staging.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from copl_dist.distributed.checkpoint_staging import PREFIX, remove_stale, staging_dir


def _ended_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid names no process now
    return proc.pid


def test_a_staging_dir_carries_the_pid_and_goes_away(tmp_path):
    with staging_dir(tmp_path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(f"{PREFIX}{os.getpid()}-")
        (tmp / "train_state.pt").write_bytes(b"x" * 10)
    assert list(tmp_path.iterdir()) == []


def test_only_dirs_of_ended_processes_are_removed(tmp_path):
    dead = tmp_path / f"{PREFIX}{_ended_pid()}-abc123"
    mine = tmp_path / f"{PREFIX}{os.getpid()}-def456"  # a live worker inside its report
    parent = tmp_path / f"{PREFIX}{os.getppid()}-ghi789"
    unnamed = tmp_path / f"{PREFIX}k2j_4x9q"  # older copl's names: no pid, nothing to tell
    other = tmp_path / "other-123-x"
    for path in (dead, mine, parent, unnamed, other):
        path.mkdir()
        (path / "train_state.pt").write_bytes(b"x")
    a_file = tmp_path / f"{PREFIX}{_ended_pid()}-file"
    a_file.write_text("not ours to remove: not a directory")

    assert remove_stale(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (mine, parent, unnamed, other, a_file))
    assert remove_stale(tmp_path) == []
