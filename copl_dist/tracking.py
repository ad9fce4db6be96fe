"""MLflow tracking: one parent run per `copl run`, one nested run per COPL iteration.

Default store: a SQLite file under the output folder (the model registry needs a database store),
with artifacts beside it. `MLFLOW_TRACKING_URI`, `tracking.tracking_uri` or `copl run --tracking-uri`
(which wins) point it elsewhere.
Metric keys are the project's own (`map@0.5`, `nmi`); MLflow forbids '@', so it sees `map_at_0.5`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from copl_dist.config import TrackingConfig, flatten
from copl_dist.errors import InputError

logging.getLogger("mlflow").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)


def mlflow_key(key: str) -> str:
    """The MLflow spelling of a metric key ('map@0.5' -> 'map_at_0.5')."""
    return key.replace("@", "_at_")


def normalize_tracking_uri(value: str, source: str) -> str:
    """A URI as given (any `scheme:`, e.g. http://, sqlite:///, file:/, databricks); a path is a run
    folder (its mlflow.db) or a database file, made sqlite:///ABS, the same wherever it is read.

    A path that names neither (no such folder, not ending in .db) is an InputError naming `source`:
    passed on, MLflow would take it for a file store (no model registry) and fail deep inside.
    """
    if value == "databricks" or re.match(r"[A-Za-z][A-Za-z0-9+.-]+:", value):  # 2+ letters: a drive C: is a path
        return value
    path = Path(value)
    if path.is_dir():
        path = path / "mlflow.db"
    elif not (path.is_file() or value.endswith(".db")):
        raise InputError(
            f"{source} {value}: no such run folder or .db file (expected a URI such as sqlite:///PATH/mlflow.db "
            "or http://HOST:PORT, a run folder or an mlflow.db)"
        )
    return f"sqlite:///{path.resolve()}"


def resolve_tracking_uri(cfg: TrackingConfig, out_dir: Path) -> str:
    """tracking.tracking_uri (`copl run --tracking-uri`), else $MLFLOW_TRACKING_URI, else OUT/mlflow.db;
    a path in either is read as `normalize_tracking_uri` reads it."""
    if cfg.tracking_uri:
        return normalize_tracking_uri(cfg.tracking_uri, "tracking.tracking_uri")
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return normalize_tracking_uri(os.environ["MLFLOW_TRACKING_URI"], "$MLFLOW_TRACKING_URI")
    return f"sqlite:///{(out_dir / 'mlflow.db').resolve()}"


class Tracker:
    """A thin, explicit wrapper: the pipeline says what to log, this says where."""

    def __init__(self, cfg: TrackingConfig, out_dir: Path):
        self.cfg = cfg
        self.out_dir = out_dir
        self.enabled = cfg.enabled
        self.uri = resolve_tracking_uri(cfg, out_dir) if self.enabled else ""
        self.parent_run_id: str | None = None
        self._mlflow: Any = None

    def _setup(self) -> Any:
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(self.cfg.experiment)
        if exp is None:
            # A local store keeps artifacts beside its database (MLflow would pick a folder of the
            # working directory); a server decides for itself.
            location = None
            if self.uri.startswith("sqlite:///"):
                location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
            client.create_experiment(self.cfg.experiment, artifact_location=location)
        mlflow.set_experiment(self.cfg.experiment)
        return mlflow

    @contextmanager
    def parent_run(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI (so that Ray workers started
        # during the run log to the same store); restore it afterwards, or the next run in this
        # process would take this run's store for a user's setting.
        previous = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            self._mlflow = self._setup()
            with self._mlflow.start_run(run_name=run_name, tags=tags) as run:
                self.parent_run_id = run.info.run_id
                self._mlflow.log_params({k: str(v)[:500] for k, v in flatten(params).items()})
                yield
        finally:
            if previous is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = previous

    @contextmanager
    def iteration_run(self, iteration: int) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with self._mlflow.start_run(run_name=f"iteration-{iteration}", nested=True):
            self._mlflow.log_param("iteration", iteration)
            yield

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self.enabled:
            return
        clean = {mlflow_key(k): float(v) for k, v in metrics.items() if v is not None}
        self._mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.enabled and path.exists():
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_teacher(self, model: Any, example: Any) -> str | None:
        """Log the teacher as an MLflow PyTorch model; returns its model URI."""
        if not (self.enabled and self.cfg.log_model):
            return None
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        from copl_dist.model import ExportedTeacher

        exported = ExportedTeacher(model).eval()
        with torch.no_grad():
            output = exported(torch.from_numpy(example)).numpy()
        info = mlflow.pytorch.log_model(
            exported,
            name="teacher",
            signature=infer_signature(example, output),
            serialization_format="pickle",
            # Explicit requirements: inferring them costs ~10 s per call.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "copl-dist"],
        )
        return str(info.model_uri)
