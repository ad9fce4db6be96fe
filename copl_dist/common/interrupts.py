"""How a copl command stops when told to: Ctrl-C (SIGINT) and SIGTERM (`ray job stop`, a pod's eviction).

Both unwind the command (KeyboardInterrupt; SystemExit from `exit_on_sigterm`), so that its MLflow
runs end KILLED and cli.main ends it with one line (exit 130 or 143).

A signal that cuts an MLflow call short leaves its SQLAlchemy connection (kept alive by the
exception's traceback) holding the database lock; the run's end status, written next on the way
out, then waits MLflow's 20 s busy timeout and fails "database is locked", with a traceback from
MLflow's logger (measured: 2 of the first 3 writes interrupted in a loop; seen in CI as a failed
Ctrl-C test). Inside `deferred_interrupt()` either signal is only recorded; it is raised again, to
the handler that was there before, when the section ends.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

DEFERRED = (signal.SIGINT, signal.SIGTERM)

# SIGTERMs seen by exit_on_sigterm: Ray turns a SystemExit raised while the driver waits in ray.get
# into SystemExit(1) (measured, Ray 2.60), so its code cannot say that the process was terminated.
_terminated: list[int] = []


def exit_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM as Ray's driver handler takes it (sys.exit), recorded for `terminated()`."""
    _terminated.append(signum)
    sys.exit(signum)


def terminated() -> bool:
    return bool(_terminated)


def reset_terminated() -> None:
    _terminated.clear()


def sigterm_unwinds() -> None:
    """Put exit_on_sigterm in front (main thread only): before Ray starts, SIGTERM would end the process
    at once; after ray.init, Ray's core worker has put a C++ failure handler over the Python one, and
    SIGTERM aborted the driver with a stack dump (status -6, measured on Ray 2.60). Either way the
    MLflow runs stayed RUNNING for ever. A handler of a library caller's own is left alone."""
    if threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    ray_handler = callable(current) and getattr(current, "__module__", "").startswith("ray")
    if current in (signal.SIG_DFL, exit_on_sigterm) or ray_handler:
        signal.signal(signal.SIGTERM, exit_on_sigterm)


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    # Python runs signal handlers on the main thread only, and only there may they be changed.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in DEFERRED}
    if any(handler is None for handler in previous.values()):  # installed outside Python: cannot be put back
        yield
        return
    received: list[int] = []
    for signum in DEFERRED:
        signal.signal(signum, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        # Raised again rather than handled here: the previous handler decides (Python's default
        # raises KeyboardInterrupt, Ray Train's aborts its run, SIG_IGN ignores it). Each signal
        # once, in the order they came.
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)
