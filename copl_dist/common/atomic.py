"""Outputs appear whole or not at all: write to a temporary sibling, then rename over the target."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from copl_dist.common.errors import InputError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed to `path`, on error removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its files are 0600 whatever the umask, and outputs on shared storage must
    # be readable as any other file the user writes. O_EXCL with a random name is as safe.
    tmp_path = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
    os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp_path
        os.replace(tmp_path, target)
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
    import shutil


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
