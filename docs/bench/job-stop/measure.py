"""How fast a `copl run` job exits on SIGTERM, against `ray job stop`'s grace of 3 s before SIGKILL.

Starts a local Ray head (tests/ray_head.py), submits `copl run` on a tiny corpus as a job, waits until
Ray Train has written a checkpoint, then either sends SIGTERM to the job's driver itself (as Ray's job
supervisor does) and times its exit, or runs `ray job stop` and reads from the supervisor's log whether
the driver exited by itself ("terminated gracefully") or was SIGKILLed. Each is done for copl as it is,
with the entrypoint as the README has it (`exec python -m copl_dist ...`: the supervisor signals and
waits for copl itself) and without `exec` (a shell between), and, as the baseline in the same head, for
copl with the interpreter's final garbage collection back (gc.freeze made a no-op in the job's driver:
`copl_dist.cli.app.entry` freezes the heap after a signal's exit).

    .venv/bin/python docs/bench/job-stop/measure.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from ray_head import BIN, ROOT, ray_env, shipped_runtime_env, start_head, stop_head  # noqa: E402
from tiny_corpus import tiny_synthetic  # noqa: E402

BASELINE = "baseline: exec, final gc kept"
VARIANTS = {
    "copl: exec python -m copl_dist": ["exec", "python", "-m", "copl_dist"],
    "copl: python -m copl_dist": ["python", "-m", "copl_dist"],
    BASELINE: ["exec", "python", "-c", "import gc; gc.freeze = lambda: None; from copl_dist.cli.app import entry; entry()"],
}


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _submit(head, work: Path, job_id: str, command: list[str]) -> int:
    """Submit `copl run` as job `job_id`; once Ray Train has checkpointed, the driver's process id."""
    data, out = work / "data", work / job_id
    storage = out / "ray_storage"
    args = [*command, "run", "--data", str(data), "--out", str(out), "--iterations", "3", "--epochs", "500",
            "--snippets", "32", "--no-progress", "--set", "train.batch_size=4", "--set", "model.hidden_dim=32",
            "--set", "train.shift_channels=64", "--set", f"distributed.storage_path={storage}"]
    env_file = work / "runtime_env.yaml"
    subprocess.run([str(BIN / "ray"), "job", "submit", "--no-wait", "--address", head.address,
                    "--submission-id", job_id, "--runtime-env", str(env_file), "--", *args],
                   env=ray_env(), cwd=ROOT, check=True, capture_output=True, timeout=300)
    deadline = time.time() + 400
    while not list(storage.glob("*/checkpoint_*")):
        if time.time() > deadline:
            raise RuntimeError(f"{job_id}: no checkpoint after 400 s")
        time.sleep(0.5)
    found = subprocess.run(["pgrep", "-f", "--", f"--out {out} "], capture_output=True, text=True).stdout.split()
    if not found:
        raise RuntimeError(f"{job_id}: its driver is not running")
    return max(int(p) for p in found)  # the driver (python), not a shell that may wrap it


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    with tempfile.TemporaryDirectory(prefix="copl-job-stop-") as tmp:
        work = Path(tmp)
        tiny_synthetic(work / "data", videos=8, seed=0)
        shipped_runtime_env(work)
        head = start_head(work / "head.log")  # Ray's default grace: 3 s
        exit_s: dict[str, list[float]] = {name: [] for name in VARIANTS}
        graceful: dict[str, list[bool]] = {name: [] for name in VARIANTS}
        try:
            for rep in range(repeats):
                for v, (name, command) in enumerate(VARIANTS.items()):
                    pid = _submit(head, work, f"sigterm-{rep}-{v}", command)
                    start = time.perf_counter()
                    os.kill(pid, signal.SIGTERM)
                    while _alive(pid):
                        time.sleep(0.02)
                    exit_s[name].append(time.perf_counter() - start)
                    job_id = f"stop-{rep}-{v}"
                    _submit(head, work, job_id, command)
                    subprocess.run([str(BIN / "ray"), "job", "stop", "--address", head.address, job_id],
                                   env=ray_env(), check=True, capture_output=True, timeout=300)
                    exited = bool(head.logs_mentioning(f"Job {job_id} has been terminated gracefully"))
                    killed = bool(head.logs_mentioning(f"{job_id} through SIGTERM has timed out"))
                    if exited == killed:
                        raise RuntimeError(f"{job_id}: the supervisor's log says neither or both")
                    graceful[name].append(exited)
                    print(f"repeat {rep} {name}: SIGTERM -> exit {exit_s[name][-1]:.2f} s; `ray job stop`: "
                          f"{'exited by itself' if graceful[name][-1] else 'SIGKILLed after 3 s'}", flush=True)
        finally:
            stop_head(head)
    base = statistics.median(exit_s[BASELINE])
    for name in VARIANTS:
        med = statistics.median(exit_s[name])
        print(f"{name}: SIGTERM -> exit median {med:.2f} s (runs {', '.join(f'{s:.2f}' for s in exit_s[name])}; "
              f"{med / base:.2f}x the baseline); `ray job stop` exited by itself in "
              f"{sum(graceful[name])} of {repeats}")


if __name__ == "__main__":
    main()
