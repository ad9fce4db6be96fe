"""Ctrl-C and SIGTERM held back across a critical section (copl_dist.common.interrupts), and what
it is for: an MLflow store that a Ctrl-C interrupted still takes the run's end status."""

import os
import random
import signal
import threading

import pytest

from copl_dist.common.interrupts import deferred_interrupt


@pytest.fixture(autouse=True)
def ctrl_c_as_at_a_terminal():
    """Python as a terminal starts it, with Ctrl-C raising KeyboardInterrupt. A suite started from a
    background job inherits SIGINT ignored, and these tests' own Ctrl-C would then never arrive
    (one loops until it does)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def test_a_ctrl_c_inside_is_raised_when_the_section_ends():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupt():
            _ctrl_c()
            done.append("after the signal")  # the section ran to its end
    assert done == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_no_ctrl_c_no_interrupt_and_the_handler_is_put_back():
    before = signal.getsignal(signal.SIGINT)
    with deferred_interrupt():
        assert signal.getsignal(signal.SIGINT) is not before  # recording, not raising
    assert signal.getsignal(signal.SIGINT) is before


def test_the_previous_handler_gets_one_signal_through_nested_sections():
    got = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        with deferred_interrupt():
            with deferred_interrupt():
                _ctrl_c()
                _ctrl_c()  # a second press within the section: still one signal on
            assert got == []  # the inner section hands it to the outer one, which holds it too
        assert got == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigterm_is_held_too_and_each_signal_goes_on_once_in_order():
    got = []
    record = lambda signum, frame: got.append(signum)  # noqa: E731
    previous = {s: signal.signal(s, record) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with deferred_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            _ctrl_c()
            os.kill(os.getpid(), signal.SIGTERM)
            assert got == []
        assert got == [signal.SIGTERM, signal.SIGINT]
        assert signal.getsignal(signal.SIGTERM) is record and signal.getsignal(signal.SIGINT) is record
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def test_sigterm_ends_a_copl_command_as_terminated(tmp_path, monkeypatch, capsys):
    """cli.main turns SIGTERM (`ray job stop`, an evicted pod) into SystemExit, so that the command
    unwinds (its MLflow runs end KILLED), and ends it with one line and the shell's status 143."""
    from copl_dist.cli import app as cli

    def terminated_midway(args):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setitem(cli.HANDLERS, "synth", terminated_midway)
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in a fresh process (Ray's handler may be here)
    try:
        assert cli.main(["synth", str(tmp_path / "out")]) == 128 + signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # put back: a library caller keeps its own
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert capsys.readouterr().err == "copl: terminated\n"


@pytest.mark.parametrize("code, frozen", [(130, True), (143, True), (0, False), (2, False)])
def test_the_process_skips_its_final_gc_only_after_a_signal(monkeypatch, code, frozen):
    """cli.entry (the `copl` script, `python -m copl_dist`) exits with main's status, and after Ctrl-C
    or SIGTERM freezes the heap so that the interpreter's last collection (2 s here) does not eat
    `ray job stop`'s grace; a finished or failed command exits as usual."""
    import gc

    from copl_dist.cli import app as cli

    calls = []
    monkeypatch.setattr(cli, "main", lambda: code)
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))  # the real one would leak this process's heap
    with pytest.raises(SystemExit) as exit_:
        cli.entry()
    assert exit_.value.code == code
    assert calls == (["freeze"] if frozen else [])


def test_an_ignored_ctrl_c_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with deferred_interrupt():
            _ctrl_c()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_off_the_main_thread_it_changes_nothing():
    # signal.signal raises ValueError off the main thread; the section must simply run.
    errors, ran = [], []

    def body():
        try:
            with deferred_interrupt():
                ran.append(True)
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert ran == [True] and errors == []


def test_ctrl_c_during_mlflow_writes_leaves_the_store_usable(tmp_path):
    """The regression: a Ctrl-C that cut an MLflow write short left the SQLite lock held, so that the
    run's end status failed after 20 s with "database is locked" instead of `copl: interrupted`
    (2 of the first 3 interrupted writes before the fix). Every round must end with the interrupt and its runs
    marked KILLED."""
    import mlflow

    from copl_dist.config import resolve
    from copl_dist.tracking.runs import Tracker

    cfg = resolve("thumos14")
    rng = random.Random(0)
    for round_ in range(4):
        tracker = Tracker(cfg.tracking, tmp_path)
        with pytest.raises(KeyboardInterrupt):
            with tracker.parent_run(f"round-{round_}", {"round": round_}, {}):
                timer = threading.Timer(rng.uniform(0.02, 0.3), _ctrl_c)
                timer.start()
                step = 0
                while True:  # writes until the Ctrl-C lands, wherever it lands
                    with tracker.iteration_run(step):
                        tracker.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
                    step += 1
        timer.join()
        client = mlflow.MlflowClient(tracking_uri=tracker.uri)
        assert client.get_run(tracker.parent_run_id).info.status == "KILLED"
        children = client.search_runs([client.get_experiment_by_name("copl").experiment_id],
                                      f"tags.mlflow.parentRunId = '{tracker.parent_run_id}'")
        assert "RUNNING" not in [r.info.status for r in children]  # the Ctrl-C may fall in one or between two
        assert mlflow.active_run() is None


def test_sigterm_unwinds_takes_the_default_and_leaves_a_callers_own_handler():
    from copl_dist.common.interrupts import exit_on_sigterm, sigterm_unwinds

    own = lambda signum, frame: None  # noqa: E731
    previous = signal.signal(signal.SIGTERM, own)
    try:
        sigterm_unwinds()
        assert signal.getsignal(signal.SIGTERM) is own
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sigterm_unwinds()
        assert signal.getsignal(signal.SIGTERM) is exit_on_sigterm
    finally:
        signal.signal(signal.SIGTERM, previous)
