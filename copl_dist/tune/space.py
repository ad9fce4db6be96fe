"""Search spaces of `copl tune`: the YAML schema (tune_spaces/README.md), checked against the config."""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from copl_dist import config as config_lib
from copl_dist.common.errors import InputError
from copl_dist.config import PRESETS, CoplConfig, from_dict, to_dict, validate

SPEC_KINDS = ("uniform", "loguniform", "randint", "choice")
SPACE_KEYS = ("preset", "base", "search", "postprocess")
# The tuner owns these in every trial (the schedule, the subsets, where things run and log).
NOT_SEARCHABLE = ("preset", "mode", "seed", "iterations", "num_classes", "data.train_subset", "data.test_subset")
NOT_SEARCHABLE_PREFIXES = ("tracking.", "distributed.")


# ---------------------------------------------------------------------------------------------
# The space file
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Space:
    path: str
    preset: str | None
    base: dict[str, Any]
    search: dict[str, dict[str, Any]]
    postprocess: dict[str, dict[str, Any]]


def leaf_types() -> dict[str, Any]:
    """{'has.gamma': float, 'inference.thetas': list[float], ...}: every settable config key."""
    out: dict[str, Any] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if dataclasses.is_dataclass(hint):
                walk(hint, f"{prefix}{f.name}.")
            else:
                out[f"{prefix}{f.name}"] = hint

    walk(CoplConfig, "")
    return out


def _check_spec(where: str, key: str, spec: Any, hint: Any) -> None:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SPEC_KINDS:
        raise InputError(f"{where} '{key}': expected one of {{{' | '.join(f'{k}: ...' for k in SPEC_KINDS)}}}, got {spec!r}")
    kind, arg = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise InputError(f"{where} '{key}': choice needs a non-empty list, got {arg!r}")
        return
    if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg)):
        raise InputError(f"{where} '{key}': {kind} needs [lo, hi] numbers, got {arg!r}")
    lo, hi = arg
    if not lo < hi:
        raise InputError(f"{where} '{key}': {kind} needs lo < hi, got {arg!r}")
    if kind in ("uniform", "loguniform") and hint is not float:
        raise InputError(f"{where} '{key}': {kind} draws floats but the key is {getattr(hint, '__name__', hint)}; use randint or choice")
    if kind == "loguniform" and lo <= 0:
        raise InputError(f"{where} '{key}': loguniform needs lo > 0, got {arg!r}")
    if kind == "randint" and not (isinstance(lo, int) and isinstance(hi, int) and hint in (int, float)):
        raise InputError(f"{where} '{key}': randint needs integer bounds and a numeric key, got {arg!r}")


def load_space(path: str | Path) -> Space:
    """Parse and check a space file: known sections, existing config keys, well-formed specs."""
    p = Path(path)
    raw = config_lib.read_yaml_mapping(p, "space file", f"a mapping with keys {list(SPACE_KEYS)}")
    for key in raw:
        if key not in SPACE_KEYS:
            raise InputError(f"{p}: unknown section '{key}' (expected {', '.join(SPACE_KEYS)})")
    preset = raw.get("preset")
    if preset is not None and (not isinstance(preset, str) or preset not in PRESETS):  # a list is no dict key
        raise InputError(f"{p}: unknown preset {preset!r} (choose from {sorted(PRESETS)})")
    types = leaf_types()
    sections: dict[str, dict[str, Any]] = {}
    for name in ("base", "search", "postprocess"):
        value = raw.get(name) or {}
        if not isinstance(value, dict):
            raise InputError(f"{p}: '{name}' must be a mapping of dotted config keys")
        for key in value:
            if key not in types:
                raise InputError(f"{p}: {name}: unknown config key '{key}'")
        sections[name] = dict(value)
    for key, spec in sections["search"].items():
        if key.startswith("inference."):
            raise InputError(f"{p}: search: '{key}' changes no training; put it under postprocess (tuned on cached predictions)")
        if key in NOT_SEARCHABLE or key.startswith(NOT_SEARCHABLE_PREFIXES):
            raise InputError(f"{p}: search: '{key}' is set by the tuner or the command line, not searched")
        _check_spec(f"{p}: search", key, spec, types[key])
    for key, spec in sections["postprocess"].items():
        if not key.startswith("inference."):
            raise InputError(f"{p}: postprocess: '{key}' needs retraining; only inference.* keys are tuned on cached predictions")
        _check_spec(f"{p}: postprocess", key, spec, types[key])
    both = set(sections["base"]) & (set(sections["search"]) | set(sections["postprocess"]))
    if both:
        raise InputError(f"{p}: '{sorted(both)[0]}' is both fixed in base and searched")
    return Space(str(p), preset, sections["base"], sections["search"], sections["postprocess"])


def spec_values(spec: dict[str, Any]) -> list[Any]:
    """The extreme values a spec can produce (every choice; lo and hi, hi - 1 for randint)."""
    kind, arg = next(iter(spec.items()))
    if kind == "choice":
        return list(arg)
    return [arg[0], arg[1] - 1] if kind == "randint" else [arg[0], arg[1]]


def in_space(spec: dict[str, Any], value: Any) -> bool:
    kind, arg = next(iter(spec.items()))
    if kind == "choice":
        return any(value == v for v in arg)
    if kind == "randint":
        return float(value).is_integer() and arg[0] <= value < arg[1]
    return arg[0] <= value <= arg[1]


def sample_spec(spec: dict[str, Any], rng: np.random.Generator) -> Any:
    """One plain-Python draw from a spec (the post-processing search; trials use Ray's samplers)."""
    kind, arg = next(iter(spec.items()))
    if kind == "choice":
        return copy.deepcopy(arg[int(rng.integers(len(arg)))])
    if kind == "randint":
        return int(rng.integers(arg[0], arg[1]))
    if kind == "loguniform":
        return float(math.exp(rng.uniform(math.log(arg[0]), math.log(arg[1]))))
    return float(rng.uniform(arg[0], arg[1]))


def tune_domain(spec: dict[str, Any]) -> Any:
    from ray import tune

    kind, arg = next(iter(spec.items()))
    if kind == "choice":
        return tune.choice(arg)
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[kind](*arg)


def plain_value(value: Any) -> Any:
    """numpy scalars from the samplers -> Python numbers (the config and YAML want plain types)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    return value

def get_key(cfg: CoplConfig, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return copy.deepcopy(obj)

def with_values(cfg: CoplConfig | dict[str, Any], values: dict[str, Any], source: str) -> CoplConfig:
    """A validated copy of `cfg` with dotted `values` set; `cfg` is not touched."""
    out = from_dict(to_dict(cfg) if isinstance(cfg, CoplConfig) else copy.deepcopy(cfg), source=source)
    if isinstance(cfg, CoplConfig):  # keep blaming a bad value on whoever set it in `cfg`
        config_lib.inherit_sources(out, cfg)
    for key, value in values.items():
        config_lib.merge_into(out, config_lib.dotted_to_nested(key, plain_value(value)), source=source)
    validate(out, source=source)
    return out
