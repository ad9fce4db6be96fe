"""Per-iteration state of a `copl run`, so that `--resume` continues after the last completed one.

OUT/state/iteration-K.pt (`copl run` keeps them there) holds what iteration K+1 needs and what the outputs are made from: the
clustering (pseudo-labels, PLRI scores, P/U mask), the teacher, the HAS voting state, the global
features for the next clustering, the iteration's record and detections, and what the run was
computed from (PROVENANCE: a resume on other data or another init model is refused). Everything is tensors,
numbers, strings, lists and dicts, so it loads with `weights_only=True` (no code runs on load).
Each iteration is seeded from (seed, iteration) alone, so a resumed run ends where an undisturbed
one does.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from copl_dist.common.atomic import atomic_path
from copl_dist.common.errors import InputError

STATE_VERSION = 3  # 2: PROVENANCE saved with the state; 3: with data_files
STATE_NAME = re.compile(r"iteration-(\d+)\.pt")  # not a stray iteration-x.pt or an editor's copy

# What a resumed run must share with the one that saved the state, beyond the config: each key is
# saved in the state and compared on load, with what a mismatch means.
PROVENANCE = {
    "corpus_digest": "on another corpus",
    "data": "on another --data",
    "init_digest": "from another --init-from model",
    # --resume reuses OUT/corpus, converted at the first start: a --data edited since would be ignored.
    "data_files": "on --data whose files have changed since (names, sizes or modification times)",
}


# The parts of a --data folder the importers read (data/formats.py): annotation files at its top level,
# the feature folders, W-TALC's *-Annotations folder, a corpus' features/ shards.
_DATA_FOLDERS = ("features", "rgb", "flow")


def files_fingerprint(src: Path) -> str:
    """A digest of what the importers read of `src` (formats.import_dataset), by relative path, size
    and modification time: what --resume compares to see that --data is as it was (no file is read).
    Only those parts: other runs' outputs or a tracking database kept in the data folder change
    nothing. Links are not followed (a broken one is recorded, not an error)."""
    import hashlib
    import os

    src = Path(src)
    root = src.parent if src.is_file() else src
    lines = []

    def add(path: Path) -> None:
        try:
            st = os.lstat(path)
            lines.append(f"{path.relative_to(root)}\t{st.st_size}\t{st.st_mtime_ns}")
        except OSError as exc:  # vanished or unreadable: recorded as such
            lines.append(f"{path.relative_to(root)}\t{type(exc).__name__}")

    top = [src] if src.is_file() else sorted(root.iterdir()) if root.is_dir() else []
    for entry in top:
        if entry.is_dir():  # a data folder may be a link to where the features live; inside, none is followed
            if entry.name in _DATA_FOLDERS or entry.name.endswith("-Annotations"):
                for folder, _, files in os.walk(entry):
                    for name in files:
                        add(Path(folder) / name)
        elif entry.suffix != ".db":
            add(entry)
    if src.is_file():  # an annotation file named directly: its feature folders beside it count too
        for name in _DATA_FOLDERS:
            for folder, _, files in os.walk(root / name):
                for f in files:
                    add(Path(folder) / f)
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()[:16]


# What driver.CoplRun reads back from a state (checked on load: a damaged file is one clear error).
STATE_KEYS = ("iterations", "labels", "scores", "mask", "teacher", "votes", "next_features", "detections", "mapping",
              "traces")


def _to_saveable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, dict):
        return {k: _to_saveable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_saveable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {k: _to_numpy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_numpy(v) for v in value]
    return value


def state_path(state_dir: Path, iteration: int) -> Path:
    return state_dir / f"iteration-{iteration}.pt"


def save_iteration(state_dir: Path, iteration: int, config_hash: str, state: dict[str, Any]) -> None:
    """State of a completed iteration; `teacher` stays a state dict of tensors."""
    payload = {"version": STATE_VERSION, "iteration": iteration, "config_hash": config_hash}
    payload.update({k: (v if k == "teacher" else _to_saveable(v)) for k, v in state.items()})
    with atomic_path(state_path(state_dir, iteration)) as tmp:
        torch.save(payload, tmp)


def saved_iterations(state_dir: Path) -> list[int]:
    """The iterations whose state is saved in `state_dir`, in order."""
    names = state_dir.glob("iteration-*.pt") if state_dir.is_dir() else []
    return sorted(int(m.group(1)) for p in names if (m := STATE_NAME.fullmatch(p.name)))


def load_latest(state_dir: Path, config_hash: str, provenance: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The last completed iteration's state in `state_dir`, or None when none was saved.

    `provenance` (keys of PROVENANCE): what this run uses; a state saved with other values is
    refused, like one saved with another config.
    """
    saved = saved_iterations(state_dir)
    if not saved:
        return None
    path = state_path(state_dir, saved[-1])
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which
        raise InputError(f"{path}: not a readable copl run state ({type(exc).__name__})") from None
    if not isinstance(payload, dict):
        raise InputError(f"{path}: not a copl run state (a {type(payload).__name__}); start the run again in a new --out")
    if payload.get("version") != STATE_VERSION:
        raise InputError(
            f"{path}: a run state of format {payload.get('version')}, this copl reads {STATE_VERSION}; "
            "start the run again in a new --out"
        )
    if payload.get("config_hash") != config_hash:
        raise InputError(
            f"{path}: saved by a run with another config (hash {payload.get('config_hash')}, now {config_hash}); "
            "resume with the same arguments"
        )
    for key, now in (provenance or {}).items():
        if payload.get(key) != now:
            raise InputError(
                f"{path}: saved by a run {PROVENANCE[key]} ({key} {payload.get(key)}, now {now}); "
                "resume with the same arguments"
            )
    missing = [k for k in STATE_KEYS if k not in payload]
    teacher = payload.pop("teacher", None)
    if missing or not isinstance(teacher, dict) or not all(isinstance(v, torch.Tensor) for v in teacher.values()):
        what = f"lacks {', '.join(missing)}" if missing else "has no teacher state dict"
        raise InputError(f"{path}: a damaged copl run state ({what}); start the run again in a new --out")
    state = _to_numpy(payload)
    state["teacher"] = teacher
    return state
