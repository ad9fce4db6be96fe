"""Outputs appear whole or not at all: write to a temporary sibling, then rename over the target."""

from __future__ import annotations

import fcntl
import glob
import json
import os
import re
import shutil
import socket
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from copl_dist.common.disk import disk_full_error, nearly_full, says_disk_full
from copl_dist.common.errors import InputError

# A temporary sibling's name says which process on which machine made it, so that what a killed
# process left behind (a SIGKILL runs no cleanup) is recognised and removed by the next writer of the
# same target, and never a live writer's file, here or on another machine sharing the folder.
_HOST = socket.gethostname().replace(".", "_")[:32] or "host"
_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<host>[^.]+)-(?P<pid>\d+)-[0-9a-f]{12}\.tmp")


def temp_sibling(target: Path) -> Path:
    """A fresh temporary name beside `target` (`.NAME.HOST-PID-RANDOM.tmp`), its stale ones removed."""
    remove_stale_temps(target)
    return target.parent / f".{target.name}.{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp"


def remove_stale_temps(target: Path) -> None:
    """Remove the temporary siblings of `target` whose process, on this machine, is gone."""
    if not target.parent.is_dir():
        return
    for entry in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        m = _TEMP.fullmatch(entry.name)
        if m is None or m["name"] != target.name or m["host"] != _HOST or _alive(int(m["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed to `path`, on error removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = temp_sibling(target)
    # Not tempfile.mkstemp: its files are 0600 whatever the umask, and outputs on shared storage must
    # be readable as any other file the user writes. O_EXCL with a random name is as safe.
    try:
        os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:  # a read-only or full folder: named as the file the user asked for
        raise OSError(exc.errno, exc.strerror, str(target)) from None
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except Exception as exc:
        # Checked before the partial file is removed (which frees the disk again); torch.save says
        # "iostream error" on a full disk, so the disk itself is asked.
        full = says_disk_full(exc) or nearly_full(target.parent)
        written = tmp_path.stat().st_size if full and tmp_path.exists() else None
        if full:
            # The writer's frames (torch.save's open stream) keep the partial file open, and so its
            # space taken, for as long as the traceback lives: cleared, so that what comes next (the
            # MLflow run's end status) finds the disk as it was before this write.
            chained: BaseException | None = exc
            while chained is not None:
                traceback.clear_frames(chained.__traceback__)
                chained = chained.__cause__ or chained.__context__
        tmp_path.unlink(missing_ok=True)
        if full:
            raise disk_full_error(target, written) from exc
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def default_dir_mode() -> int:
    """The mode a new directory gets from the process umask (os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o777 & ~mask


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextmanager
def output_folder(folder: str | Path, keep: tuple[str, ...] = ()) -> Iterator[Path]:
    """A command's output folder (created if missing). When the command fails on bad input
    (InputError), what it added to the folder is removed again (the entries named in `keep` stay,
    e.g. `state`, which --resume needs), and so is the folder if the command created it: a
    corrected re-run starts from what was there. Any other failure (a crash, Ctrl-C) removes only a
    folder it left empty, so that partial progress (metrics so far, the tracking store) remains."""
    path = Path(folder)
    existed = path.exists()
    before = set(path.iterdir()) if existed else set()
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except InputError:
        for entry in set(path.iterdir()) - before:
            if entry.name in keep:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        if not existed and not any(path.iterdir()):
            path.rmdir()
        raise
    except BaseException:
        if not existed and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        raise


class FolderLock:
    """An OS lock (flock) on a folder, held while a command writes into it. The kernel releases it
    when the process ends, however it ends: a SIGKILL leaves no stale lock. Taken on the folder
    itself, so there is no lock file to leave behind or to clean up after bad input."""

    def __init__(self, folder: str | os.PathLike[str], what: str):
        self._fd: int | None = None  # set first: __del__ runs even when mkdir below fails
        self.path = Path(folder)
        self.created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            raise InputError(
                f"{what} {folder}: another copl command is writing to this folder (it stays locked until that "
                "command ends); wait for it, or choose another folder"
            ) from None

    def release(self, drop_if_empty: bool = False) -> None:
        """Unlock; with `drop_if_empty`, also remove the folder if this lock created it and it is empty."""
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None
        if drop_if_empty and self.created and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    def __del__(self) -> None:
        self.release()


@contextmanager
def locked_folder(folder: str | os.PathLike[str], what: str = "--out") -> Iterator[Path]:
    """`folder` created if missing and locked (FolderLock) for the block; removed again on the way out
    if the block failed and left it empty."""
    lock = FolderLock(folder, what)
    try:
        yield lock.path
    except BaseException:
        lock.release(drop_if_empty=True)
        raise
    lock.release()
