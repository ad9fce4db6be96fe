"""Where a Ray Train worker stages an epoch's checkpoint before it is copied to storage.

A temporary directory, removed once the checkpoint is stored (empty when the storage is a local
path, which the checkpoint is written to directly); but a worker killed meanwhile (`ray job stop`,
Ctrl-C, Tune stopping a trial, a lost node) leaves it behind, one per kill, up to the size of the
training state: 95 of them (6.1 MB each, the tests' tiny model) had piled up in /tmp after a day of
this project's stop tests and benchmarks. So each is named by its worker's process id, and a worker
starting on the node removes those whose process is gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

PREFIX = "copl-ckpt-"


@contextlib.contextmanager
def staging_dir(root: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """A fresh directory `PREFIX<pid>-<random>` under `root` (the system's temp dir), removed on exit."""
    with tempfile.TemporaryDirectory(prefix=f"{PREFIX}{os.getpid()}-", dir=root) as tmp:
        yield Path(tmp)


def make_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """A fresh directory named like `staging_dir`'s, which the caller removes."""
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=root))


def remove_stale(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove the staging directories under `root` whose process no longer runs; return them."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{PREFIX}*-*"):
        pid = path.name[len(PREFIX):].split("-", 1)[0]
        if path.is_dir() and pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(path, ignore_errors=True)  # another worker may be removing it too
            removed.append(path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
