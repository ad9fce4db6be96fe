"""A run in four steps: plan -> prepare the corpus -> execute -> report.

`plan_run(request)` makes every check of a run that writes nothing, once, before anything is
written, and returns a `RunPlan` that holds what they resolved (the config, the output folder, the
data, the tracking store, the registry name, the Ray address, the init checkpoint, the dataset tag).
`prepare(plan)` locks OUT for the run (a second run on it is refused), converts the data into
OUT/corpus and makes the checks that need the corpus (and a --resume's saved state).
`execute(prepared)` runs the iterations, writes the outputs and releases OUT. Nothing after the plan
and its preparation checks again.
`copl run`, `copl tune` and the Python API (copl_dist.api) all start from a plan.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import yaml

from copl_dist.cluster.naming import check_class_names, naming_note
from copl_dist.common.atomic import FolderLock, output_folder
from copl_dist.common.errors import InputError
from copl_dist.common.interrupts import deferred_interrupt
from copl_dist.config import (
    CoplConfig,
    config_hash,
    flag_name,
    resolve,
    source_of,
    to_dict,
)
from copl_dist.data.corpus import Corpus
from copl_dist.data.formats import import_dataset
from copl_dist.data.synth import make_synthetic
from copl_dist.distributed.ray_runtime import check_ray_address, ray_address
from copl_dist.method.checkpoint import (
    check_init_mode,
    check_state_shapes,
    init_state_for,
)
from copl_dist.method.engine import resolve_device
from copl_dist.run.driver import CoplRun, RunResult, load_teacher, run_provenance
from copl_dist.run.outputs import (
    metrics_document,
    remove_outputs,
    write_final_metrics,
    write_metrics,
    write_run_outputs,
)
from copl_dist.run.state import files_fingerprint, load_latest, saved_iterations
from copl_dist.tracking.registry import (
    check_registry_names,
    load_teacher_checkpoint,
    register_teacher,
)
from copl_dist.tracking.runs import (
    Tracker,
    check_sqlite_store,
    check_tracking_store,
    end_dead_runs_in,
    normalize_tracking_uri,
    resolve_tracking_uri,
)

# With no data, a run sizes a synthetic THUMOS-like corpus and the schedule to finish within 5
# minutes on two CPU cores (`copl bench embedded` measures it with the weakly-supervised mode beside
# it, docs/results.md). Explicit settings still win. HAS votes over the last 6 epochs: a vote costs
# about half a training epoch here, and the default window (22 epochs at alpha 0.9) would add a
# minute to the three trainings.
EMBEDDED_SYNTH = {"videos": 48, "classes": 6, "duration_scale": 0.5}
EMBEDDED_OVERRIDES = {"iterations": 3, "train.epochs": 24, "data.snippets": 128, "has.vote_last": 6}
# A run trains with workers fitted to the machine (on a local Ray started in-process; in this process
# where the fit is one CPU worker), or to the cluster at $RAY_ADDRESS, unless the request, --set, the
# config file or $COPL_WORKERS says otherwise. The config default stays 0 (in-process): code that
# builds a CoplRun itself starts no Ray, and the test suite sets COPL_WORKERS=0 (tests/conftest.py)
# so its many small runs skip Ray's start-up.
RUN_DEFAULT_WORKERS = -1

_ABSENT = object()


@dataclass(frozen=True)
class RunRequest:
    """What a user asks of a run, unchecked. `overrides`: dotted config keys set by flags
    (`mode`, `train.epochs`, ...; None values are ignored); `sets`: KEY=VALUE strings as --set takes
    them; `workers`: None for the run default (see RUN_DEFAULT_WORKERS)."""

    data: str | Path | None = None
    out: str | Path | None = None
    preset: str | None = None
    config: str | Path | None = None
    sets: Sequence[str] = ()
    overrides: Mapping[str, Any] = field(default_factory=dict)
    workers: int | None = None
    tracking_uri: str | None = None
    init_from: str | None = None
    resume: bool = False
    overwrite: bool = False  # start again over a folder holding another run's saved iterations
    allow_pickle: bool = False
    progress: bool = True


@dataclass(frozen=True)
class RunPlan:
    """A checked run: nothing here is checked again."""

    request: RunRequest
    cfg: CoplConfig
    out: Path
    data: Path | None  # None: the embedded synthetic corpus
    dataset: str  # what the registry tags as the dataset: what the user named, not the converted copy
    tracking_uri: str | None  # the resolved store (None: tracking off)
    registered_model: str | None  # the registry name the teacher goes to (None: not registered)
    ray_address: str | None  # None: no Ray asked for (workers 0, no HAS actors); "local" may still train in-process
    init_checkpoint: dict[str, Any] | None

    @property
    def synthetic(self) -> bool:
        return self.data is None


@dataclass(frozen=True)
class PreparedRun:
    """A plan with its corpus converted and checked against the config."""

    plan: RunPlan
    corpus: Corpus
    data_files: str  # the source's files fingerprint (--resume refuses other data)
    init_state: dict[str, Any] | None
    resume_state: dict[str, Any] | None  # the saved iteration a --resume continues after (None: from the start)
    lock: FolderLock  # OUT, locked from prepare() to the end of execute()


@dataclass(frozen=True)
class RunOutcome:
    plan: RunPlan
    result: RunResult
    paths: dict[str, Path]  # the output files (run/outputs.py)
    registered: str | None  # models:/NAME/VERSION of the registered teacher

    @property
    def iterations(self) -> list[dict[str, Any]]:
        return self.result.iterations

    @property
    def final(self) -> dict[str, float]:
        return self.result.final


# -- plan ------------------------------------------------------------------------------------------

def plan_run(request: RunRequest, cfg: CoplConfig | None = None, register: bool = True, ray: bool | None = None) -> RunPlan:
    """Every check of `request` that writes nothing. `cfg`: an already resolved config (`copl tune`
    builds its own from a search space), else resolved here from the request. `register`: whether the
    run registers its teacher (and so needs a valid registry name). `ray`: whether it runs on Ray
    (None: when the config trains on Ray Train or votes in HAS actors). With `cfg` given, the request's
    preset, config file, --set, overrides, workers and tracking URI are not read: `cfg` holds them."""
    if cfg is None:
        cfg = resolve_config(request)
    out = Path(request.out or f"runs/{cfg.preset}-{cfg.mode}-seed{cfg.seed}")
    data = Path(request.data) if request.data is not None else None
    if data is not None and not data.exists():
        raise InputError(f"{request.data}: data folder not found")
    check_output_folder(out, data)
    check_saved_state(out, request)
    tracking_uri = None
    registered_model = None
    if cfg.tracking.enabled:
        tracking_uri = resolve_tracking_uri(cfg.tracking, out)
        check_store_outside_data(tracking_uri, data)
        check_tracking_store(tracking_uri, "tracking store")
        if register and cfg.tracking.log_model:
            check_registry_names(cfg.tracking.registered_model, source="tracking.registered_model")
            registered_model = cfg.tracking.registered_model
    address = None
    if ray or (ray is None and (cfg.distributed.workers != 0 or cfg.distributed.has_actors > 0)):
        check_ray_address(cfg.distributed)
        address = ray_address(cfg.distributed)
    init_checkpoint = None
    if request.init_from:
        if cfg.mode == "baseline":
            raise InputError(f"--init-from {request.init_from}: mode 'baseline' trains no model")
        store = tracking_uri or resolve_tracking_uri(cfg.tracking, out)  # where models:/ URIs are read
        init_checkpoint = load_teacher_checkpoint(request.init_from, store)
        check_init_mode(init_checkpoint, request.init_from, cfg.mode)
    resolve_device(cfg.train.device)  # a device this machine lacks, before the corpus is converted
    dataset = f"synthetic:{cfg.preset}:seed{cfg.seed}" if data is None else str(data.resolve())
    return RunPlan(request, cfg, out, data, dataset, tracking_uri, registered_model, address, init_checkpoint)


def _data_root(data: Path) -> Path:
    return (data if data.is_dir() else data.parent).resolve()  # an annotation file's features lie beside it


def check_output_folder(out: Path, data: Path | None, flag: str = "--out") -> None:
    """OUT must be a folder this process can write, outside --data: the run's own files would change
    the data's fingerprint (a killed run could never be resumed) and the importers would read them."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{flag} {out}: exists and is not a folder")
    if data is not None:
        root, target = _data_root(data), out.resolve()
        if target == root or root in target.parents:
            raise InputError(
                f"{flag} {out}: inside the data folder {data}; the run's files would become part of its data: "
                "choose an output folder outside it"
            )
    here = out.absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    if not os.access(here, os.W_OK | os.X_OK):
        why = "read-only file system" if os.statvfs(here).f_flag & os.ST_RDONLY else "permission denied"
        raise InputError(f"{flag} {out}: cannot write in {here} ({why})")


def check_saved_state(out: Path, request: RunRequest) -> None:
    """A fresh run over another run's saved iterations would delete them: refused unless asked for."""
    if request.resume and request.overwrite:
        raise InputError("--resume and --overwrite: choose one (continue the run in --out, or start it again)")
    if request.resume and _finished(out) and not _rebuilds_lost_outputs(out):
        raise InputError(
            f"--out {out}: holds a finished run, nothing to resume; start again over it with --overwrite, "
            "or choose another --out"
        )
    saved = saved_iterations(out / "state")
    if not saved or request.resume or request.overwrite:
        return
    if _finished(out):
        raise InputError(
            f"--out {out}: holds a finished run (its saved iterations in state/); start again over it with "
            "--overwrite, or choose another --out"
        )
    raise InputError(
        f"--out {out}: holds an unfinished run ({_iterations(saved)} saved in state/); continue it with "
        "--resume, or start again with --overwrite or another --out"
    )


def _iterations(saved: list[int]) -> str:
    return f"iteration {saved[0]}" if len(saved) == 1 else f"iterations {saved[0]}-{saved[-1]}"


def _rebuilds_lost_outputs(out: Path) -> bool:
    """A finished utal run that lost an output but kept its last iteration's state: --resume rebuilds
    the outputs from that state without training. (wtal and baseline runs keep no state.)"""
    import json

    try:
        doc = json.loads((out / "metrics.json").read_text())
        last = len(doc["iterations"]) - 1
    except (OSError, ValueError, KeyError, TypeError):
        return False
    saved = saved_iterations(out / "state")
    if doc.get("mode") != "utal" or not saved or saved[-1] != last:
        return False
    outputs = ("detections.json", "config.yaml", "teacher.pt", "pseudo_labels.parquet")
    return any(not (out / name).exists() for name in outputs)


def _finished(out: Path) -> bool:
    import json

    try:
        return json.loads((out / "metrics.json").read_text()).get("complete") is True
    except (OSError, ValueError, AttributeError):
        return False


def check_store_outside_data(uri: str, data: Path | None) -> None:
    """A local tracking store must not be written into --data (its files would become the data's)."""
    if data is None or not uri.startswith(("sqlite:///", "file:")):
        return
    where = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:") else Path(url2pathname(urlparse(uri).path))
    db, root = where.resolve(), _data_root(data)
    if db == root or root in db.parents:
        raise InputError(f"tracking store {uri}: inside the data folder {data}; keep the MLflow store outside the data")


def resolve_config(request: RunRequest) -> CoplConfig:
    """The run's config: preset, then the config file, then --set, then the request's overrides; the
    embedded schedule where no data is given and nothing else sets it."""
    overrides = {k: v for k, v in request.overrides.items()}
    overrides["tracking.tracking_uri"] = _tracking_uri(request.tracking_uri)
    overrides["distributed.workers"] = run_workers(request)
    if request.data is None:
        for key, value in EMBEDDED_OVERRIDES.items():
            if overrides.get(key) is None and not any(s.startswith(f"{key}=") for s in request.sets):
                overrides[key] = value
    check_preset(request.preset, request.config)
    return resolve(request.preset or "thumos14", request.config, list(request.sets), overrides)


def check_preset(preset: str | None, config: str | Path | None) -> None:
    """A preset named beside a config file must be the file's: resolve() lets the file's preset win,
    and a tuned THUMOS config must not quietly run as ActivityNet."""
    file_preset = _config_file_value(config, "preset")
    if preset is not None and file_preset not in (_ABSENT, None) and file_preset != preset:
        raise InputError(f"--preset {preset}: the --config file {config} is for preset '{file_preset}'")


def _tracking_uri(value: str | None) -> str | None:
    """--tracking-uri as a URI (checked with the rest of the store before the run writes anything)."""
    if value is None:
        return None
    uri = normalize_tracking_uri(value, "--tracking-uri")
    check_sqlite_store(uri, "--tracking-uri", must_exist=False)
    return uri


def run_workers(request: RunRequest) -> int | None:
    """The run's distributed.workers override: the request's; else none if --set or the config file
    gives it; else $COPL_WORKERS; else RUN_DEFAULT_WORKERS."""
    if request.workers is not None:
        return request.workers
    if any(s.split("=", 1)[0].strip() == "distributed.workers" for s in request.sets):
        return None
    if _config_file_value(request.config, "distributed.workers") is not _ABSENT:
        return None
    raw = os.environ.get("COPL_WORKERS", "").strip()
    if not raw:
        return RUN_DEFAULT_WORKERS
    try:
        workers = int(raw)
    except ValueError:
        workers = -2
    if workers < -1:  # checked here: the config check would blame --workers, which was not given
        raise InputError(f"$COPL_WORKERS: expected -1, 0 or a worker count, got '{raw}'")
    return workers


def _config_file_value(config: str | Path | None, key: str) -> Any:
    """The config file's value of `key` (dotted), or _ABSENT (no file, no such key, or a file
    resolve() will report as bad)."""
    if not config or not Path(config).is_file():
        return _ABSENT  # resolve() reports a missing file
    try:
        node: Any = yaml.safe_load(Path(config).read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return _ABSENT  # resolve() reports it
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def check_run_inputs(cfg: CoplConfig, corpus: Corpus, where: str | Path | None = None) -> None:
    """What a run needs of its data, checked once before it starts (run/plan.py `prepare`, `copl tune`;
    CoplRun trusts its caller): both subsets exist, classes are known, the training subset has at least
    one video per cluster. A subset is blamed on where it was set (preset, file, --set or flag).
    `where`: the data as the user named it (default: the corpus folder)."""
    place = where if where is not None else corpus.root
    have = corpus.subsets()
    for key, subset in (("data.train_subset", cfg.data.train_subset), ("data.test_subset", cfg.data.test_subset)):
        if subset not in have:
            raise InputError(
                f"{source_of(cfg, key, flag_name(key))}: subset '{subset}' ({key}) is not in {place} "
                f"(it has: {', '.join(have) or 'none'})"
            )
    if corpus.feature_dim != cfg.model.feature_dim:
        raise InputError(
            f"{place}: features have {corpus.feature_dim} dimensions, but model.feature_dim is {cfg.model.feature_dim} "
            f"({source_of(cfg, 'model.feature_dim', 'default')}); for such features pass --set model.feature_dim={corpus.feature_dim}"
        )
    if cfg.mode == "wtal" and not any(corpus.record(v).labels for v in corpus.video_ids(cfg.data.train_subset)):
        raise InputError(
            f"{place}: mode 'wtal' trains on video-level labels, but no video of subset '{cfg.data.train_subset}' "
            "has annotations (mode utal needs none)"
        )
    if len(corpus.classes) == 0 and cfg.num_classes == 0:
        raise InputError(
            f"{place}: no video has annotations, so the number of clusters cannot be read from them: "
            "pass --set num_classes=K (the number of action classes expected)"
        )
    check_class_names(corpus.classes, place)
    clusters = cfg.num_classes or len(corpus.classes)
    train = len(corpus.video_ids(cfg.data.train_subset))
    if train < clusters:
        raise InputError(f"{place}: subset '{cfg.data.train_subset}' has {train} videos, fewer than the {clusters} clusters")


# -- prepare ---------------------------------------------------------------------------------------

def synthetic_source(plan: RunPlan) -> Path:
    # One folder per preset and seed: the corpus is generated from both, so another seed in the same
    # --out must not reuse the first one's (its registry tag names the seed).
    return plan.out / f"synthetic-data-{plan.cfg.preset}-seed{plan.cfg.seed}"


def embedded_source(plan: RunPlan) -> Path:
    """The embedded synthetic corpus of a plan without data, generated once."""
    src = synthetic_source(plan)
    if not (src / "annotations.json").exists():
        make_synthetic(src, preset=plan.cfg.preset, seed=plan.cfg.seed, **EMBEDDED_SYNTH)
    return src


def import_corpus(plan: RunPlan, src: Path, who: str = "copl") -> Corpus:
    """The source converted into OUT/corpus (reused by --resume)."""
    corpus_dir = plan.out / "corpus"
    if plan.request.resume and (corpus_dir / "corpus.json").is_file():
        return import_dataset(corpus_dir, corpus_dir)  # converted before the interruption
    return import_reporting(src, corpus_dir, plan.request.allow_pickle, plan.cfg.data.min_snippets, who)


def import_reporting(src: str | Path, corpus_dir: Path, allow_pickle: bool, min_snippets: int, who: str = "copl") -> Corpus:
    """import_dataset, with the importer's warnings printed as one line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        corpus = import_dataset(src, corpus_dir, allow_pickle=allow_pickle, min_snippets=min_snippets)
    for w in caught:
        print(f"{who}: warning: {w.message}", file=sys.stderr)
    return corpus


def prepare(plan: RunPlan) -> PreparedRun:
    """Lock OUT, convert the data into OUT/corpus and check it against the config (and a --resume's
    saved state against the run). Bad input found here removes what the run added to OUT (except
    --resume's state) and releases OUT."""
    cfg = plan.cfg
    lock = FolderLock(plan.out, "--out")
    try:
        with output_folder(plan.out, keep=("state",)):
            if plan.synthetic:
                print(
                    f"copl: no --data given: running on a synthetic {cfg.preset} corpus ({EMBEDDED_SYNTH['videos']} "
                    f"videos per subset, {EMBEDDED_SYNTH['classes']} classes) in {synthetic_source(plan)}",
                    file=sys.stderr,
                )
            src = plan.data or embedded_source(plan)
            corpus = import_corpus(plan, src)
            check_run_inputs(cfg, corpus, where=src)
            note = naming_note(cfg, corpus)
            if note is not None:
                print(f"copl: {note}", file=sys.stderr)
            data_files = files_fingerprint(src)
            clusters = len(corpus.classes) if cfg.mode == "wtal" else (cfg.num_classes or len(corpus.classes))
            init_state = None
            if plan.init_checkpoint is not None:
                init_state = init_state_for(plan.init_checkpoint, plan.request.init_from, clusters, cfg)
            resume_state = None
            if plan.request.resume:  # checked here, before the run opens its MLflow runs
                provenance = run_provenance(corpus, plan.dataset, data_files, init_state)
                resume_state = load_latest(plan.out / "state", config_hash(cfg), provenance)
                if resume_state is not None:
                    check_state_shapes(resume_state["teacher"], clusters, cfg, f"{plan.out / 'state'}: the saved teacher")
    except BaseException:
        lock.release(drop_if_empty=True)
        raise
    return PreparedRun(plan, corpus, data_files, init_state, resume_state, lock)


# -- execute ---------------------------------------------------------------------------------------

def execute(prepared: PreparedRun, on_iteration: Callable[[list[dict[str, Any]]], None] | None = None) -> RunOutcome:
    """Run the plan's mode on its corpus and write every output, metrics.json's `"complete": true`
    last. From here the run writes its progress (metrics per iteration, the tracking store, --resume's
    state): bad input found later (say, by a Ray worker) leaves it in place, as any other failure does.
    OUT is released at the end, however the run ends."""
    try:
        return _execute(prepared, on_iteration)
    finally:
        prepared.lock.release()


def _execute(prepared: PreparedRun, on_iteration: Callable[[list[dict[str, Any]]], None] | None) -> RunOutcome:
    plan, cfg, out = prepared.plan, prepared.plan.cfg, prepared.plan.out
    if not plan.request.resume:  # a fresh run never continues from, or leaves behind, another run's files
        shutil.rmtree(out / "state", ignore_errors=True)
        remove_outputs(out)
    local = f"sqlite:///{(out / 'mlflow.db').resolve()}"
    if (out / "mlflow.db").is_file() and plan.tracking_uri != local:  # the run's own store: the Tracker does it
        end_dead_runs_in(local, out)
    tracker = Tracker(cfg.tracking, out, uri=plan.tracking_uri)

    def progress(iterations: list[dict[str, Any]]) -> None:
        write_metrics(out / "metrics.json", cfg, iterations)
        if on_iteration is not None:
            on_iteration(iterations)

    run = CoplRun(
        cfg, prepared.corpus, tracker, progress=plan.request.progress, on_iteration=progress,
        init_state=prepared.init_state, state_dir=out / "state", resume_state=prepared.resume_state,
        data_source=plan.dataset, data_files=prepared.data_files,  # saved with each state: --resume compares them
    )
    registered = None
    tags = {"dataset": plan.dataset, "dataset_digest": prepared.corpus.digest(), "seed": str(cfg.seed),
            "config_hash": config_hash(cfg), "mode": cfg.mode}
    with tracker.parent_run(f"{cfg.preset}-{cfg.mode}-seed{cfg.seed}", to_dict(cfg), tags):
        result = run.execute()
        paths = write_run_outputs(out, cfg, result, result.class_names)
        tracker.log_metrics({k: v for k, v in result.final.items()})
        for key in ("detections", "config", "plot_iterations", "plot_actionness"):
            if key in paths:
                tracker.log_artifact(paths[key], "plots" if key.startswith("plot") else None)
        tracker.log_dict(metrics_document(cfg, result, {"complete": True}), "metrics.json")
        if result.teacher_state is not None and tracker.enabled:
            registered = _log_and_register(plan, tracker, result, paths["teacher"], tags)
    write_final_metrics(paths["metrics"], cfg, result)  # after the MLflow run ended FINISHED
    return RunOutcome(plan, result, paths, registered)


def _log_and_register(plan: RunPlan, tracker: Tracker, result: RunResult, checkpoint: Path, tags: dict[str, str]) -> str | None:
    cfg = plan.cfg
    teacher = load_teacher(result.teacher_state, result.num_classes, cfg)
    example = np.zeros((1, 16, cfg.model.feature_dim), dtype=np.float32)
    model_uri = tracker.log_teacher(teacher, example)
    if model_uri is None or tracker.parent_run_id is None or plan.registered_model is None:
        return None
    with deferred_interrupt():  # the run's end status is written after it (tracking.runs.Tracker._run)
        version = register_teacher(model_uri, plan.registered_model, tracker.parent_run_id, checkpoint, tags, result.final)
    return f"models:/{plan.registered_model}/{version}"
