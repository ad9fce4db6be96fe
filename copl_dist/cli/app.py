"""The `copl` command's entry: parse, run the command's handler, and turn what it raises into an exit
status. Bad input ends in one line on stderr and exit status 2 (no traceback); `--debug` shows the
traceback; Ctrl-C 130, SIGTERM 143. Each command's flags and handler live in a module of its own
(run.py, data.py, registry.py, predict.py, tune.py, bench.py; parser.py puts them together)."""

from __future__ import annotations

import errno
import gc
import os
import signal
import sys
import threading

from copl_dist.cli.parser import HANDLERS, build_parser
from copl_dist.common.disk import disk_full_error, says_disk_full
from copl_dist.common.errors import InputError, first_line
from copl_dist.common.interrupts import reset_terminated, sigterm_unwinds, terminated


def _os_error_line(exc: OSError) -> str:
    if exc.filename is not None:
        target = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
        return f"{target}: {exc.strerror or first_line(exc)}"
    return first_line(exc)


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, MemoryError) or any(
        words in text for words in ("can't allocate memory", "not enough memory", "out of memory")
    )


def _disk_full_line(exc: BaseException, args: object) -> str | None:
    """A full disk, named with the file (or the command's output folder) and what is left on it."""
    if not says_disk_full(exc):
        return None
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC and "no space left on the disk at" in str(exc.strerror):
        return _os_error_line(exc)  # already said by common/disk.py
    where = getattr(exc, "filename", None) or getattr(args, "out", None) or "."
    return _os_error_line(disk_full_error(where))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # SIGTERM (`ray job stop`, an evicted pod) unwinds, so that the MLflow runs end KILLED (interrupts.py).
    sigterm_before = signal.getsignal(signal.SIGTERM)
    reset_terminated()
    sigterm_unwinds()
    try:
        return HANDLERS[args.command](args)
    except InputError as exc:
        if args.debug:
            raise
        print(f"copl: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # The file system or the network refused (an output path that is a file, no permission, a
        # full disk, a server that is down): the user's environment, not a bug, so one line too.
        if args.debug:
            raise
        print(f"copl: error: {_disk_full_line(exc, args) or _os_error_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        # A full disk, whoever found it (MLflow's SQLite store, pyarrow, torch); an allocation this
        # machine cannot make (numpy's MemoryError, torch's "can't allocate memory" or CUDA's out of
        # memory, both RuntimeErrors): sizes too large for it; MLflow refusing a store, a name or an
        # alias (checked by MLflow itself). The user's environment or input, not a bug: one line.
        line = _disk_full_line(exc, args)
        if line is None and _out_of_memory(exc):
            line = f"out of memory: {first_line(exc)}"
        if line is None and type(exc).__module__.startswith("mlflow"):
            line = f"MLflow: {first_line(exc)}"
        if args.debug or line is None:
            raise
        print(f"copl: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("copl: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        if not terminated():
            raise
        print("copl: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if sigterm_before is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, sigterm_before)  # a library caller's process keeps its own


def entry() -> None:
    """The `copl` script and `python -m copl_dist`: main(), then the process's exit."""
    code = main()
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        # Stopped by a signal: skip the interpreter's final garbage collection of a heap holding
        # torch, Ray and MLflow (2 s here, measured), so that `ray job stop`'s 3 s before its SIGKILL
        # cover Ray's disconnect. Only here, at the process's end: the cycle collector never visits
        # frozen objects again. atexit handlers (ray.shutdown, MLflow's) still run.
        gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
