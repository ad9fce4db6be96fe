"""Ctrl-C held back across a short critical section: an MLflow call to a SQLite store.

A KeyboardInterrupt that cuts an MLflow call short leaves its SQLAlchemy connection (kept alive by
the exception's traceback) holding the database lock; the run's end status, written next on the way
out, then waits MLflow's 20 s busy timeout and fails "database is locked", with a traceback from
MLflow's logger (measured: 2 of the first 3 writes interrupted in a loop; seen in CI as a failed
Ctrl-C test). Inside `deferred_interrupt()` a SIGINT is only recorded; it is raised again, to the
handler that was there before, when the section ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    # Python runs signal handlers on the main thread only, and only there may they be changed.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is None:  # a handler installed outside Python cannot be put back
        yield
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            # Raised again rather than handled here: the previous handler decides (Python's default
            # raises KeyboardInterrupt, Ray Train's aborts its run, SIG_IGN ignores it).
            signal.raise_signal(signal.SIGINT)
