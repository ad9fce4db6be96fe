"""A full disk, said as such: which file, which disk, how much is left and how much was being written.

Libraries report a full disk in their own words: Python and pyarrow as errno 28, SQLite (MLflow's
store) as "database or disk is full", torch.save as a failed stream ("iostream error", "unexpected
pos"), without the errno. `disk_full_error` recognises the first two by their text and the last by
the disk itself (almost nothing left on it when the write failed).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

# What the libraries write when the disk is full, as found in their messages (lower case).
_MARKERS = ("no space left on device", "database or disk is full", "disk quota exceeded", "[errno 28]", "[errno 122]")
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")
# A write that failed on a disk with less than this left: the disk was full. A real full disk shows a
# few KiB (tmpfs, ext4's last blocks); a failed write for any other reason rarely leaves less than this.
NEARLY_FULL_BYTES = 1 << 20


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def mount_point(path: str | os.PathLike[str]) -> Path:
    here = _existing(Path(path))
    while not os.path.ismount(here) and here != here.parent:
        here = here.parent
    return here


def says_disk_full(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from, reports a full disk or quota."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(marker in str(current).lower() for marker in _MARKERS):
            return True
        if isinstance(current, OSError) and _SHORT_WRITE.search(str(current)):  # numpy's tofile, errno lost
            return True
        current = current.__cause__ or current.__context__
    return False


def nearly_full(path: str | os.PathLike[str]) -> bool:
    try:
        return shutil.disk_usage(_existing(Path(path))).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def disk_full_error(path: str | os.PathLike[str], written: int | None = None) -> OSError:
    """OSError(ENOSPC) naming `path`, its disk and what is left on it. `written`: how much of the file
    had been written when the disk ran out, its partial copy since removed (the file needs more than
    what is free now)."""
    where = mount_point(path)
    try:
        usage = shutil.disk_usage(where)
        left = f"{_size(usage.free)} free of {_size(usage.total)}"
    except OSError:
        left = "size unknown"
    if written:  # the partial file is gone again: what is free now is what the file did not fit in
        return OSError(errno.ENOSPC, f"no space left on the disk at {where}: the file needs more than the {left}", str(path))
    return OSError(errno.ENOSPC, f"no space left on the disk at {where} ({left})", str(path))
