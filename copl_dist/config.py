"""Typed configuration: dataclasses, YAML in and out, the paper's presets, unknown keys rejected.

A config is built as: preset defaults -> YAML file (`--config`) -> `--set key=value` overrides ->
explicit command-line flags. Keys are dotted paths into the dataclass tree (`train.epochs`,
`has.gamma`). Nothing mutates a config after `resolve()`: the pipeline reads it, it never writes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from copl_dist.common.errors import InputError


@dataclass
class DataConfig:
    train_subset: str = "validation"
    test_subset: str = "test"
    # Snippets sampled per training video (paper: 750 THUMOS, 50 ActivityNet). HAS and inference
    # read every snippet of a video.
    snippets: int = 750
    # Videos shorter than this many snippets are rejected as too short (>= 1).
    min_snippets: int = 4


@dataclass
class ModelConfig:
    feature_dim: int = 2048  # RGB (first half) | Flow (second half)
    hidden_dim: int = 512
    dropout: float = 0.5


@dataclass
class HASConfig:
    enabled: bool = True  # False: every iteration clusters iteration 0's features (ablation "w/o HAS")
    branch: str = "both"  # "both" (Eq. 2), "cs" (A_cs only) or "ca" (A_ca only)
    voting: bool = True  # False: the last epoch's A_HAS alone (ablation "w/o voting")
    gamma: float = 20.0  # k = max(1, floor(T / gamma)) (Eq. 3)
    alpha: float = 0.9  # voting decay (Eq. 4)
    # Which epochs of each training vote; each vote is a teacher pass over all training videos.
    # -1: the last has.vote_window(alpha, vote_tol), the epochs older than which hold at most vote_tol
    # of the vote's weight (22 for alpha 0.9, tol 0.1; docs/bench/voting/); 0: every epoch (the
    # paper); N: the last N.
    vote_last: int = -1
    vote_tol: float = 0.1
    # Iteration 0's features (no model yet): "mean" (the paper: the mean snippet feature, which the
    # background dominates) or "novelty" (the top k = max(1, floor(T / gamma)) snippets farthest from
    # the video's mean, centred on it and pooled; label-free, see has.novelty_feature).
    init: str = "novelty"
    # Eq. 5 on snippets minus their video's mean (True) or on the raw snippets (False, the paper).
    centre: bool = True


@dataclass
class ClusterConfig:
    plri: bool = True  # False: every clustered video is pseudo-labelled (ablation "w/o PLRI")
    delta: float = 0.0  # PLRI threshold (Eqs. 9-10)
    # Above this many videos the scale path (cluster/scale.py) is used: the dense path's peak grows as
    # N^2 (measured 3.3 GB and 26 s at N = 10,000 in 2048 dims; about 12 GB at 20,000).
    exact_max_n: int = 10000
    # The scale path's affinity: "knn" (the FAISS kNN graph on PCA-denoised features, sparse; ARI vs
    # the exact path 0.983-1.0 measured at N = 3,000-10,000 in 2048 dims) or "nystrom" (landmark
    # approximation of the full Gaussian kernel; 0.942-1.0 on the same sets). docs/bench/knn-pca/.
    scale_affinity: str = "knn"
    knn: int = 30  # neighbours for the kNN graph (at most N / (4 C): scale.graph_neighbours)
    # The kNN graph is built on the features' top knn_pca principal components (0: on the raw
    # features; -1: 2 x clusters of them, within 32-256, scale.graph_dims): in 2048 raw dims the
    # noise decides which neighbours are nearest near cluster borders (ARI vs exact 0.957 raw,
    # 0.989-0.996 at 32-256 components, N = 10,000; cluster/scale.py).
    knn_pca: int = -1
    # Iterations >= 1 cluster the global features projected by LDA fitted on the last iteration's
    # pseudo-labelled set P (projection.py; not in the paper): "lda" or "none" (the paper). Only
    # with plri: without it there is no P to learn from.
    project: str = "lda"


@dataclass
class LossConfig:
    cls: bool = True  # Eq. 15
    asl: bool = True  # Eq. 16
    ci: bool = True  # Eqs. 18-20
    contrastive: bool = True  # L_C (AICL)
    co: bool = True  # Eq. 21
    q: float = 0.7
    mu1: float = 5.0
    mu2: float = 0.1
    lambda1: float = 0.01
    lambda2: float = 10.0
    temperature: float = 0.1
    contrast_ratio: float = 0.05  # top T/20 snippets per group


@dataclass
class TrainConfig:
    epochs: int = 300
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 5e-4
    ema_decay: float = 0.999  # ramped up as min(decay, (1 + step) / (10 + step)): mean-teacher warm-up
    beta: float = 1.0 / 3.0  # Eq. 14
    topl_ratio: float = 1.0 / 8.0  # l = T * topl_ratio
    shift_channels: int = 512  # temporal feature shift, c
    max_grad_norm: float = 10.0
    # Where in-process training and inference run: "auto" (the GPU when torch sees one, else the CPU),
    # "cpu", "cuda" or "cuda:N". Ray Train workers use the device Ray gives them.
    device: str = "auto"


@dataclass
class InferenceConfig:
    class_threshold: float = 0.2  # keep classes whose video score exceeds this (at least the best)
    thetas: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(1, 10)])
    # "soft": overlapping proposals are ranked lower, not dropped (ASL's inference); "hard": dropped.
    nms: str = "soft"
    nms_iou: float = 0.4  # above this tIoU with a better proposal of its class: decayed (soft) or dropped (hard)
    soft_nms_alpha: float = 0.35  # decay exp(-tIoU^2 / alpha)
    # Parts per snippet the scores are interpolated to before thresholding: boundaries between snippet
    # edges (1: at snippet edges).
    upsample: int = 24
    outer_ratio: float = 0.25  # outer margin = this share of the proposal length
    class_score_weight: float = 0.25  # share of the video class score in a proposal's score
    max_detections: int = 200  # per video, after NMS; 0: no cap (localize.detect)


@dataclass
class TrackingConfig:
    enabled: bool = True  # False: no MLflow at all (benchmarks that run many small pipelines)
    tracking_uri: str = ""  # empty: $MLFLOW_TRACKING_URI, else sqlite:///OUT/mlflow.db
    experiment: str = "copl"
    registered_model: str = "copl-teacher"
    log_model: bool = True


@dataclass
class DistributedConfig:
    # Ray Train workers for IOCNet training: 0 trains in this process (no Ray); -1 fits the machine
    # (GPUs if any, else CPU cores // 2, at least 1; a fit of one CPU worker on a local Ray trains in
    # this process, the faster path).
    workers: int = 0
    # Whether each Ray Train worker takes a GPU (NCCL) or not (gloo): "auto" = when the Ray cluster (or
    # this machine, before Ray starts) has GPUs; "true"/"false" force it (e.g. "true" on an autoscaling
    # cluster whose GPU nodes are not up yet).
    use_gpu: str = "auto"
    has_actors: int = 0  # Ray actors for HAS voting / global features; 0: in this process (no -1: no auto count)
    has_actor_cpus: float = 1.0  # CPUs each HAS actor holds for the run
    # torch threads in each HAS actor; 0: the driver's count, which keeps the votes bit-for-bit equal
    # to the in-process path (distributed/has_actors.py) at the price of oversubscribed cores.
    has_actor_threads: int = 0
    ray_address: str = ""  # "": $RAY_ADDRESS, else a local in-process Ray
    storage_path: str = ""  # Ray Train checkpoints; "": OUT/ray_storage
    max_failures: int = 1  # worker-group restarts from the last epoch checkpoint; -1: unlimited (Ray)


@dataclass
class CoplConfig:
    preset: str = "thumos14"
    # "utal": the COPL iterations; "wtal": true video labels, one training; "baseline": spectral
    # clustering of mean features and novelty-based snippets, no training (the plain baseline).
    mode: str = "utal"
    iterations: int = 3
    seed: int = 0
    num_classes: int = 0  # 0: the number of classes in the corpus
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    has: HASConfig = field(default_factory=HASConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


# The paper's settings (4.1.3); everything else keeps the dataclass default.
PRESETS: dict[str, dict[str, Any]] = {
    "thumos14": {
        "preset": "thumos14",
        "data": {"train_subset": "validation", "test_subset": "test", "snippets": 750},
        "has": {"gamma": 20.0, "alpha": 0.9},
        "loss": {"lambda2": 10.0},
        "train": {"epochs": 300, "batch_size": 16, "beta": 1.0 / 3.0, "topl_ratio": 1.0 / 8.0},
    },
    "anet12": {
        "preset": "anet12",
        "data": {"train_subset": "training", "test_subset": "validation", "snippets": 50},
        "has": {"gamma": 2.0, "alpha": 0.5},
        "loss": {"lambda2": 1.0},
        "train": {"epochs": 30, "batch_size": 128, "beta": 0.5, "topl_ratio": 0.5},
        "inference": {"nms_iou": 0.7},
    },
}

# tIoU thresholds of each benchmark's protocol.
PRESET_TIOUS: dict[str, list[float]] = {
    "thumos14": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
    "anet12": [round(0.5 + 0.05 * i, 2) for i in range(10)],
}

_CHOICES = {
    "preset": tuple(PRESETS),
    "mode": ("utal", "wtal", "baseline"),
    "has.branch": ("both", "cs", "ca"),
    "has.init": ("mean", "novelty"),
    "inference.nms": ("soft", "hard"),
    "cluster.scale_affinity": ("nystrom", "knn"),
    "cluster.project": ("lda", "none"),
    "distributed.use_gpu": ("auto", "true", "false"),
}


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check (and gently convert) one value against its annotated type."""
    origin = typing.get_origin(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, bool):  # YAML's `true` for a choice such as distributed.use_gpu
            return "true" if value else "false"
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif origin is list:
        (item_hint,) = typing.get_args(hint)
        if isinstance(value, str):
            value = [v for v in value.strip("[]").split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            return [_coerce(v, item_hint, key, source) for v in value]
    raise InputError(f"{source}: config key '{key}' expects {getattr(hint, '__name__', hint)}, got {value!r}")


# Where each key's value came from ({'train.lr': '--set', ...}), kept on the config instance beside
# its fields (not a field: to_dict, ==, the hash and the YAML ignore it), so that validate() blames
# the preset, file, --set or flag that set a bad value last rather than whatever its caller names.
_SOURCES_ATTR = "_copl_sources"


def _sources(cfg: Any) -> dict[str, str]:
    found = cfg.__dict__.get(_SOURCES_ATTR)
    if found is None:
        found = {}
        cfg.__dict__[_SOURCES_ATTR] = found
    return found


def source_of(cfg: CoplConfig, key: str, default: str) -> str:
    """The source that last set the dotted `key`, or `default` if none was recorded."""
    return (cfg.__dict__.get(_SOURCES_ATTR) or {}).get(key, default)


def inherit_sources(dst: CoplConfig, src: CoplConfig) -> None:
    """Give `dst` (a copy of `src`, e.g. through to_dict / from_dict) the sources recorded on `src`."""
    recorded = src.__dict__.get(_SOURCES_ATTR)
    if recorded:
        dst.__dict__[_SOURCES_ATTR] = dict(recorded)


def merge_into(obj: Any, updates: dict[str, Any], source: str, prefix: str = "", sources: dict[str, str] | None = None) -> None:
    if sources is None:  # the top-level call: obj is the CoplConfig whose sources are recorded
        sources = _sources(obj)
    hints = _type_hints(type(obj))
    names = {f.name for f in fields(obj)}
    for key, value in updates.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise InputError(f"{source}: unknown config key '{path}'")
        current = getattr(obj, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise InputError(f"{source}: config key '{path}' expects a mapping, got {value!r}")
            merge_into(current, value, source, prefix=f"{path}.", sources=sources)
        else:
            setattr(obj, key, _coerce(value, hints[key], path, source))
            sources[path] = source


def dotted_to_nested(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def parse_set(items: list[str]) -> list[tuple[str, Any]]:
    """`--set key=value` items; values are parsed as YAML scalars or lists (`0.1`, `true`, `[1,2]`)."""
    pairs = []
    for item in items:
        if "=" not in item:
            raise InputError(f"--set: expected key=value, got '{item}'")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        pairs.append((key.strip(), value))
    return pairs


# (key, check, rule) for one value each; float checks reject NaN and inf (NaN fails every comparison,
# but inf passes a one-sided bound, and an infinite weight or rate only surfaces mid-run as NaN).
_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("iterations", lambda v: v >= 1, ">= 1"),
    ("num_classes", lambda v: v >= 0, ">= 0"),
    ("seed", lambda v: v >= 0, ">= 0"),  # numpy's SeedSequence (seeding.derive_seed) refuses negatives
    ("data.snippets", lambda v: v >= 4, ">= 4"),
    ("data.min_snippets", lambda v: v >= 1, ">= 1"),
    ("model.feature_dim", lambda v: v >= 2 and v % 2 == 0, ">= 2 and even (RGB | Flow)"),
    ("model.hidden_dim", lambda v: v >= 1, ">= 1"),
    # Upper bounds far above any real use (the paper: 750 snippets, 512 hidden, I3D's 2048 features;
    # 100,000 snippets are 18 hours of video) keep a typo from ending in an allocation of terabytes.
    ("data.snippets", lambda v: v <= 100_000, "<= 100000"),
    ("model.feature_dim", lambda v: v <= 65536, "<= 65536"),
    ("model.hidden_dim", lambda v: v <= 65536, "<= 65536"),
    # A batch is padded to its longest video: beyond a million videos per batch no machine holds one;
    # a million epochs never end.
    ("train.batch_size", lambda v: v <= 1_000_000, "<= 1000000"),
    ("train.epochs", lambda v: v <= 1_000_000, "<= 1000000"),
    ("model.dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("has.vote_last", lambda v: v >= -1, ">= -1"),
    ("has.vote_tol", lambda v: 0 < v < 1, "in (0, 1)"),
    ("has.gamma", lambda v: math.isfinite(v) and v >= 1, ">= 1 and finite"),
    ("has.alpha", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("cluster.delta", lambda v: -1 <= v <= 1, "in [-1, 1]"),
    ("cluster.exact_max_n", lambda v: v >= 0, ">= 0"),
    ("cluster.knn", lambda v: v >= 1, ">= 1"),
    ("cluster.knn_pca", lambda v: v >= -1, ">= -1 (-1: twice the clusters)"),
    ("loss.q", lambda v: 0 < v <= 1, "in (0, 1]"),  # Eq. 16 divides by q
    ("loss.mu1", lambda v: math.isfinite(v) and v >= 0, ">= 0 and finite"),
    ("loss.mu2", lambda v: math.isfinite(v) and v >= 0, ">= 0 and finite"),
    ("loss.lambda1", lambda v: math.isfinite(v) and v >= 0, ">= 0 and finite"),
    ("loss.lambda2", lambda v: math.isfinite(v) and v >= 0, ">= 0 and finite"),
    ("loss.temperature", lambda v: math.isfinite(v) and v > 0, "> 0 and finite"),
    ("loss.contrast_ratio", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("train.epochs", lambda v: v >= 1, ">= 1"),
    ("train.batch_size", lambda v: v >= 1, ">= 1"),
    # lr 0 freezes the weights: a run that starts from a registered model and keeps it (tests/test_registry.py)
    ("train.lr", lambda v: math.isfinite(v) and v >= 0, ">= 0 and finite"),
    ("train.weight_decay", lambda v: math.isfinite(v) and v >= 0, ">= 0 and finite"),
    ("train.ema_decay", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("train.beta", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("train.topl_ratio", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("train.shift_channels", lambda v: v >= 0, ">= 0"),
    ("train.max_grad_norm", lambda v: v > 0, "> 0 (inf: no clipping)"),  # NaN fails the comparison
    ("train.device", lambda v: re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None, "auto, cpu, cuda or cuda:N"),
    ("inference.class_threshold", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("inference.thetas", lambda v: len(v) > 0 and all(0 < t < 1 for t in v), "a non-empty list of values in (0, 1)"),
    ("inference.nms_iou", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("inference.soft_nms_alpha", lambda v: math.isfinite(v) and v > 0, "> 0 and finite"),
    ("inference.upsample", lambda v: 1 <= v <= 100, "in [1, 100]"),
    ("inference.outer_ratio", lambda v: math.isfinite(v) and v >= 0, ">= 0 and finite"),  # 0: a one-sample margin
    ("inference.class_score_weight", lambda v: math.isfinite(v) and v >= 0, ">= 0 and finite"),
    ("inference.max_detections", lambda v: v >= 0, ">= 0 (0: no cap)"),
    ("distributed.workers", lambda v: v >= -1, ">= -1 (-1: fit the machine)"),
    ("distributed.has_actors", lambda v: v >= 0, ">= 0"),
    ("distributed.has_actor_cpus", lambda v: math.isfinite(v) and v > 0, "> 0 and finite"),
    ("distributed.has_actor_threads", lambda v: v >= 0, ">= 0"),
    ("distributed.max_failures", lambda v: v >= -1, ">= -1 (-1: unlimited)"),
)


def _get(cfg: CoplConfig, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def validate(cfg: CoplConfig, source: str = "config") -> None:
    """Value checks that types alone cannot express; the message quotes the bad value and names where
    it came from: the source `merge_into` recorded for the key, else `source` (a config built otherwise)."""
    for key, allowed in _CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise InputError(f"{source_of(cfg, key, source)}: config key '{key}' must be one of {list(allowed)}, got '{value}'")
    for key, ok, rule in _RULES:
        value = _get(cfg, key)
        if not ok(value):
            raise InputError(f"{source_of(cfg, key, source)}: config key '{key}' must be {rule}, got {value!r}")


def read_yaml_mapping(path: Path, what: str, expected: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping; InputError naming the file otherwise."""
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise InputError(f"{path}: expected {expected}")
    return loaded


def resolve(
    preset: str = "thumos14",
    config_file: str | Path | None = None,
    sets: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> CoplConfig:
    """Preset -> YAML file -> `--set` items -> explicit flags (dotted keys); validated."""
    if preset not in PRESETS:
        raise InputError(f"--preset: unknown preset '{preset}' (choose from {sorted(PRESETS)})")
    cfg = CoplConfig()
    merge_into(cfg, PRESETS[preset], source=f"preset {preset}")
    if config_file is not None:
        path = Path(config_file)
        loaded = read_yaml_mapping(path, "config file", "a mapping of config keys at the top level")
        file_preset = loaded.get("preset")
        if file_preset is not None and file_preset != preset:
            if not isinstance(file_preset, str) or file_preset not in PRESETS:  # a list is no dict key
                raise InputError(f"{path}: unknown preset {file_preset!r} (choose from {sorted(PRESETS)})")
            cfg = CoplConfig()
            merge_into(cfg, PRESETS[file_preset], source=f"preset {file_preset}")
        merge_into(cfg, loaded, source=str(path))
    for key, value in parse_set(sets or []):
        merge_into(cfg, dotted_to_nested(key, value), source="--set")
    for key, value in (overrides or {}).items():
        if value is not None:
            merge_into(cfg, dotted_to_nested(key, value), source=flag_name(key))
    validate(cfg)  # each bad value is blamed on the preset, file, --set item or flag that set it
    return cfg


def flag_name(key: str) -> str:
    """The command-line flag that sets a dotted key: 'data.train_subset' -> '--train-subset'."""
    return "--" + key.split(".")[-1].replace("_", "-")


def to_dict(cfg: CoplConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any], source: str = "config") -> CoplConfig:
    cfg = CoplConfig()
    merge_into(cfg, data, source=source)
    validate(cfg, source=source)
    return cfg


def to_yaml(cfg: CoplConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_hash(cfg: CoplConfig) -> str:
    """A short stable hash of the resolved config (tags runs and registry versions)."""
    blob = json.dumps(to_dict(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: MLflow params and Tune keys use the dotted form."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out
