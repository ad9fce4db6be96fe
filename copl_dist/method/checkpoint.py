"""The teacher checkpoint (teacher.pt): its payload, how it is written and read, and the checks that
its parts agree with each other and with the IOCNet a run builds.

    {"format_version", "state_dict", "config", "num_classes", "class_names", "cluster_to_class"}

Read with torch.load(weights_only=True), so loading runs no code from the file."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from copl_dist.common.atomic import atomic_path
from copl_dist.common.errors import InputError, first_line
from copl_dist.config import CoplConfig, from_dict, to_dict
from copl_dist.method.model import IOCNet

CHECKPOINT_VERSION = 1
CHECKPOINT_KEYS = ("state_dict", "config", "num_classes", "class_names", "cluster_to_class")


def save_checkpoint(
    path: Path, cfg: CoplConfig, state: dict[str, torch.Tensor], num_classes: int, class_names: list[str],
    cluster_to_class: list[int],
) -> None:
    payload = {
        "format_version": CHECKPOINT_VERSION,
        "state_dict": state,
        "config": to_dict(cfg),
        "num_classes": num_classes,
        "class_names": list(class_names),
        "cluster_to_class": list(cluster_to_class),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A teacher checkpoint as stored, unchecked (`read_checkpoint` checks it)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(path: str | Path, where: str) -> dict[str, Any]:
    """A checked teacher checkpoint; InputError naming `where` if it is not one."""
    return check_checkpoint(_load(path, where), where)


def _load(path: str | Path, where: str) -> Any:

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's multi-line advice on weights_only; the error says it
            return load_checkpoint(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError,
            AttributeError) as exc:
        # Arbitrary bytes reach torch's restricted unpickler as opcodes: any of these can come out.
        # Not torch's advice (load with weights_only=False: it would run code from the file).
        reason = first_line(exc).split(" Please ")[0].split(" (1) ")[0]
        if "weights_only" in reason or "Weights only load failed" in reason:
            # torch's advice to load it another way (running code from the file): not for a teacher.
            reason = "not a PyTorch checkpoint of tensors and plain data"
        raise InputError(f"{where}: not a loadable teacher checkpoint ({type(exc).__name__}: {reason[:200]})") from None


def check_checkpoint(ckpt: Any, where: str) -> dict[str, Any]:
    """A teacher checkpoint whose parts agree: a valid config, num_classes outputs with a class
    mapping for each, and IOCNet's parameters in the config's shapes, all finite (a file that merely
    has the keys failed later inside torch or at indexing)."""
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        raise InputError(f"{where}: not a COPL teacher checkpoint (expected keys {', '.join(CHECKPOINT_KEYS)})")
    if not isinstance(ckpt["config"], dict):
        raise InputError(f"{where}: the checkpoint's config is not a mapping")
    cfg = from_dict(ckpt["config"], source=f"{where}: config")
    n = ckpt["num_classes"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"{where}: num_classes must be a positive integer, got {n!r}")
    names, mapping = ckpt["class_names"], ckpt["cluster_to_class"]
    if not isinstance(names, (list, tuple)) or not all(isinstance(c, str) for c in names):
        raise InputError(f"{where}: class_names must be a list of names")
    if not isinstance(mapping, (list, tuple)) or len(mapping) != n or not all(
        isinstance(k, int) and not isinstance(k, bool) for k in mapping
    ):
        raise InputError(f"{where}: cluster_to_class must list one class index per output ({n}), got {mapping!r}"[:300])
    check_state_shapes(ckpt["state_dict"], n, cfg, where)
    # A teacher with NaN weights predicts nothing and would start a run at a NaN loss.
    for key, value in ckpt["state_dict"].items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise InputError(f"{where}: parameter '{key}' holds NaN or Inf (saved from a diverged training?)")
    return ckpt


def check_state_shapes(state: Any, num_classes: int, cfg: Any, source: str, trained: Any = None) -> None:
    """`state` has exactly IOCNet(num_classes, cfg.model...)'s parameters, in their shapes.
    `trained`: the config the state was trained with, named in a shape mismatch."""
    expected = IOCNet(num_classes, cfg.model.feature_dim, cfg.model.hidden_dim, cfg.model.dropout).state_dict()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{source}: the teacher's state_dict is not a mapping of tensors")
    if set(state) != set(expected):
        raise InputError(f"{source}: the teacher's parameters do not match IOCNet's ({sorted(map(str, set(state) ^ set(expected)))[:3]})")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            made = trained.model if trained is not None else cfg.model
            raise InputError(
                f"{source}: parameter '{key}' has shape {tuple(state[key].shape)}, this run's IOCNet "
                f"{tuple(value.shape)} (the teacher was trained with model.feature_dim="
                f"{made.feature_dim}, model.hidden_dim={made.hidden_dim})"
            )


def check_init_mode(ckpt: dict[str, Any], source: str, mode: str) -> None:
    """A teacher trained on true video labels (mode wtal) must not start an unsupervised run: its
    weights carry the labels the utal run claims not to use."""
    trained = str((ckpt.get("config") or {}).get("mode", "utal"))
    if trained == "wtal" and mode == "utal":
        raise InputError(
            f"{source}: the teacher was trained with mode 'wtal' (on video labels); an unsupervised run (mode 'utal') "
            "cannot start from it: name a utal teacher, or run with --mode wtal"
        )


def init_state_for(ckpt: dict[str, Any], source: str, num_classes: int, cfg: Any) -> dict[str, Any]:
    """The checkpoint's state dict if it fits this run's IOCNet; InputError naming `source` if not. Its
    mode is checked before, with the rest of the plan (check_init_mode)."""
    have = int(ckpt["num_classes"])
    if have != num_classes:
        raise InputError(
            f"{source}: the teacher's classifier has {have} outputs but this run trains {num_classes} clusters"
        )
    trained = from_dict(ckpt["config"], source=f"{source}: config")
    check_state_shapes(ckpt["state_dict"], num_classes, cfg, source, trained=trained)
    return ckpt["state_dict"]
