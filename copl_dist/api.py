"""The public Python API: what `copl run` and `copl predict` do, for notebooks and other programs.

    from copl_dist import api

    cfg = api.config("thumos14", {"iterations": 2, "train.epochs": 5, "tracking.enabled": False})
    outcome = api.run("data/thumos14", out="runs/notebook", config=cfg)
    for it in outcome.iterations:           # one dict per iteration: nmi, purity, |P|, |U|, map@..., ...
        print(it["iteration"], it["nmi"], it["map@avg"])
    teacher = api.load_teacher("runs/notebook/teacher.pt")  # or "models:/copl-teacher@champion"
    detections = teacher.detect(features, duration_s=212.5)  # features: a new video's (T, D) array

(`map@...` keys exist where the test subset is annotated; README.md has a runnable example.) Every call validates its inputs once, as the command line does (run/plan.py), and raises
copl_dist.common.errors.InputError with the command line's one-line message on bad input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from copl_dist.common.errors import InputError
from copl_dist.config import CoplConfig, resolve
from copl_dist.data.synth import make_synthetic
from copl_dist.run.plan import (
    RunOutcome,
    RunRequest,
    check_preset,
    execute,
    plan_run,
    prepare,
    resolve_config,
)
from copl_dist.run.predict import PredictPlan, Teacher, plan_predict, predict
from copl_dist.tracking.registry import load_teacher_checkpoint

__all__ = ["InputError", "RunOutcome", "Teacher", "config", "detect", "load_teacher", "run", "synthesize"]


def config(
    preset: str | None = None, overrides: Mapping[str, Any] | None = None, config_file: str | Path | None = None,
    sets: Sequence[str] = (),
) -> CoplConfig:
    """A validated config: the preset's values (default thumos14, or the config file's), then the YAML
    file's, then `sets` (KEY=VALUE strings as --set takes them), then `overrides` (dotted keys:
    {"train.epochs": 5}). Unlike `copl run`, training stays in this process (distributed.workers = 0)
    unless the file, `sets` or `overrides` say otherwise."""
    check_preset(preset, config_file)
    return resolve(preset or "thumos14", config_file, list(sets), dict(overrides or {}))


def run(
    data: str | Path | None = None,
    out: str | Path | None = None,
    config: CoplConfig | None = None,
    *,
    init_from: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    allow_pickle: bool = False,
    progress: bool = False,
    on_iteration: Callable[[list[dict[str, Any]]], None] | None = None,
) -> RunOutcome:
    """COPL (or the config's mode) on a data folder or converted corpus, as `copl run` runs it, writing
    the same outputs under `out`. No data: the embedded synthetic corpus (and, with no config, its
    short schedule). No config: the thumos14 preset, in this process. `on_iteration` receives the iterations so far after each one.
    Returns the outcome: `.iterations`, `.final`, `.paths` (output files), `.registered`."""
    request = RunRequest(data=data, out=out, workers=0, init_from=init_from, resume=resume, overwrite=overwrite,
                         allow_pickle=allow_pickle, progress=progress)
    plan = plan_run(request, cfg=config if config is not None else resolve_config(request))
    return execute(prepare(plan), on_iteration=on_iteration)


def load_teacher(model: str | Path, tracking_uri: str | None = None) -> Teacher:
    """A trained teacher from a teacher.pt or a registered model (models:/NAME@ALIAS or
    models:/NAME/VERSION, read from `tracking_uri`, default $MLFLOW_TRACKING_URI)."""
    return Teacher(load_teacher_checkpoint(str(model), tracking_uri), str(model))


def detect(
    model: str | Path, data: str | Path, out: str | Path, subset: str | None = None, tracking_uri: str | None = None,
    allow_pickle: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """`copl predict`: detections for every video of a data folder (or one subset), written to
    OUT/detections.json and returned as {video_id: [{"segment", "label", "score"}]}."""
    plan: PredictPlan = plan_predict(str(model), data, out, subset, tracking_uri, allow_pickle)
    return predict(plan)[1]


def synthesize(out: str | Path, preset: str = "thumos14", videos: int | None = None, classes: int | None = None,
               seed: int = 0, duration_scale: float = 1.0) -> Path:
    """`copl synth`: a synthetic corpus (ActivityNet JSON + one .npy of features per video) in `out`."""
    return make_synthetic(out, preset=preset, videos=videos, classes=classes, seed=seed, duration_scale=duration_scale)
