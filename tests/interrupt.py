"""Ctrl-C as a user at a terminal gives it: start a `copl` command, wait until it is under way, send
SIGINT (or `sig`: SIGTERM as `ray job stop` sends it), and return (exit status, stderr). Shared by
the Ray Train and Ray Tune interrupt tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable


def interrupt_copl(args: list[str], under_way: Callable[[], bool], drop_env: tuple[str, ...] = (),
                   sig: int = signal.SIGINT) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", *drop_env)}
    # SIGINT at its default, as from a terminal: a process started with it ignored (children of a
    # background job are) rightly ignores it; seen when the suite itself ran in the background.
    proc = subprocess.Popen([sys.executable, "-m", "copl_dist", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 240
        while not under_way() and time.time() < deadline:
            time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()[1][-2000:]  # still running when interrupted
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    # No traceback of the driver's (Ray's own actors may log theirs while they are torn down,
    # prefixed with the actor's name, e.g. "(PlacementGroupCleaner pid=...) Traceback").
    assert not [line for line in err.splitlines() if line.startswith("Traceback")], err[-2000:]
    return proc.returncode, err
