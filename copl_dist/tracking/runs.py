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
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from copl_dist.common.errors import InputError, first_line
from copl_dist.common.interrupts import deferred_interrupt
from copl_dist.config import TrackingConfig, flatten
from copl_dist.method.model import ExportedTeacher

logging.getLogger("mlflow").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)
# It logs each database error, with its SQL, before raising it: the error itself reaches the user (one line).
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
# It warns of the pickle format on every log_model: chosen on purpose (Tracker.log_teacher), said once in docs/usage.md.
logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)


def mlflow_key(key: str) -> str:
    """The MLflow spelling of a metric key ('map@0.5' -> 'map_at_0.5')."""
    return key.replace("@", "_at_")


def normalize_tracking_uri(value: str, source: str) -> str:
    """A URI as given (any `scheme:`, e.g. http://, sqlite:///, file:/, databricks); a path is a run
    folder (its mlflow.db) or a database file, made sqlite:///ABS, the same wherever it is read.

    A path that names neither (no such folder, not ending in .db) is an InputError naming `source`:
    passed on, MLflow would take it for a file store (no model registry) and fail deep inside.
    """
    if not value.strip():
        # An empty path would be read as the current folder: a store nobody asked for.
        raise InputError(f"{source}: empty (give a URI, a run folder or an mlflow.db, or leave it out for the default)")
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


def check_sqlite_store(uri: str, source: str, must_exist: bool) -> None:
    """A sqlite:/// store must be MLflow's own: MLflow would add its tables to any SQLite file it is
    pointed at (a user's other database), and reads of a missing file would create an empty store.
    must_exist: reading (the registry) needs the file; a run creates it (its folder must exist).
    An empty .db file is taken as new (the run creates the schema in it), unless it must exist."""
    if not uri.startswith("sqlite:///"):
        return
    import sqlite3

    db = Path(uri[len("sqlite:///"):])
    if not db.exists():
        if must_exist:
            raise InputError(
                f"{source} {uri}: no such tracking database ({db} does not exist): point --tracking-uri or "
                "MLFLOW_TRACKING_URI at the store that holds the registry"
            )
        if not db.parent.is_dir():
            raise InputError(f"{source} {uri}: the folder of the database does not exist")
        return
    if not db.is_file():
        raise InputError(f"{source} {uri}: {db} is not a file")
    if db.stat().st_size == 0 and not must_exist and db.suffix == ".db":
        return  # a new store (create_sqlite_store fills it); any other empty file is not for MLflow
    try:
        # As a file: URI (escaped: a '#' or '?' in the path would cut it short) so that mode=ro holds.
        with sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True) as con:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        raise InputError(f"{source} {uri}: not an SQLite database ({exc})") from None
    if not {"experiments", "runs"} <= tables:
        raise InputError(f"{source} {uri}: not an MLflow tracking database (no MLflow tables in {db})")


SERVER_CHECK_TIMEOUT_S = 10.0


def check_tracking_server(uri: str, source: str) -> None:
    """An http(s) store must answer before a run starts: MLflow's client retries a refused
    connection for about four minutes (measured) and then fails after the data has been converted.
    Asked through MLflow's own HTTP client, so credentials in the URI or the environment and its TLS
    settings (MLFLOW_TRACKING_INSECURE_TLS, certificate paths) apply as for the run itself; any
    HTTP answer counts (a login in front of the server answers 401), no answer is an InputError."""
    if not uri.startswith(("http://", "https://")):
        return
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        http_request(get_default_host_creds(uri), "/health", "GET", max_retries=0, timeout=SERVER_CHECK_TIMEOUT_S,
                     raise_on_status=False)
    except Exception as exc:  # requests' connection errors arrive wrapped by MLflow
        raise InputError(f"{source} {uri}: the tracking server does not answer ({first_line(exc)})") from None


def check_tracking_store(uri: str, source: str) -> None:
    """Before a command writes anything: an http(s) server must answer (check_tracking_server); any
    other store but SQLite (checked by check_sqlite_store) is opened once through MLflow, which
    refuses an unknown scheme, a database whose driver is not installed (postgresql:// without
    psycopg) or the deprecated file store (file:, ./mlruns) at once, instead of after the import."""
    if uri.startswith(("http://", "https://")):
        check_tracking_server(uri, source)
        return
    if uri.startswith("sqlite:"):
        return
    import mlflow

    try:
        mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(max_results=1)
    except Exception as exc:
        raise InputError(f"{source} {uri}: MLflow cannot use this tracking store ({type(exc).__name__}: {first_line(exc)})") from None


def resolve_tracking_uri(cfg: TrackingConfig, out_dir: Path) -> str:
    """tracking.tracking_uri (`copl run --tracking-uri`), else $MLFLOW_TRACKING_URI, else OUT/mlflow.db;
    a path in either is read as `normalize_tracking_uri` reads it."""
    if cfg.tracking_uri:
        uri, source = normalize_tracking_uri(cfg.tracking_uri, "tracking.tracking_uri"), "tracking.tracking_uri"
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        uri, source = normalize_tracking_uri(os.environ["MLFLOW_TRACKING_URI"], "$MLFLOW_TRACKING_URI"), "$MLFLOW_TRACKING_URI"
    else:
        uri = f"sqlite:///{(out_dir / 'mlflow.db').resolve()}"
        if (out_dir / "mlflow.db").exists():  # else the run creates it, and OUT with it
            check_sqlite_store(uri, f"{out_dir}:", must_exist=False)
        return uri
    check_sqlite_store(uri, source, must_exist=False)
    return uri


def create_sqlite_store(uri: str, artifact_location: str) -> None:
    """Create a new sqlite:/// store whole: MLflow's migrations run on a temporary file beside it,
    which is renamed into place only once complete. A SIGKILL during the migrations (seconds) leaves
    the temporary file, never a half-made store that every later run and registry command would trip
    on; leftovers of such a kill are removed here. An existing store is left alone."""
    db = Path(uri[len("sqlite:///"):])
    if db.is_file() and db.stat().st_size > 0:
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for stale in db.parent.glob(f".{db.name}.*.creating*"):
        stale.unlink(missing_ok=True)
    tmp = db.parent / f".{db.name}.{uuid.uuid4().hex[:12]}.creating"
    try:
        store = SqlAlchemyStore(f"sqlite:///{tmp}", artifact_location)
        store.engine.dispose()  # no connection may outlive the rename
        os.replace(tmp, db)
    finally:
        for leftover in db.parent.glob(f"{tmp.name}*"):
            leftover.unlink(missing_ok=True)


# Tags that say which --out folder and machine a parent run writes from: a run that the next run on
# the same folder finds still RUNNING died without ending it (SIGKILL, a full disk), since the
# folder lock (common/atomic.py FolderLock) keeps two live runs apart.
OUT_TAG, HOST_TAG = "copl.out", "copl.host"


def run_identity(out_dir: Path) -> dict[str, str]:
    return {OUT_TAG: str(out_dir.resolve()), HOST_TAG: socket.gethostname()}


def end_dead_runs(client: Any, out_dir: Path) -> None:
    """End FAILED the runs of `out_dir` on this machine (and their iterations), in any experiment of
    the store, that a process which died left RUNNING. Called with the folder locked: no live run
    of that folder can be among them."""
    mine = run_identity(out_dir)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return
    running = client.search_runs(experiments, "attributes.status = 'RUNNING'", max_results=5000)
    dead = {r.info.run_id for r in running if all(r.data.tags.get(k) == v for k, v in mine.items())}
    for r in running:
        if r.info.run_id in dead or r.data.tags.get("mlflow.parentRunId") in dead:
            client.set_tag(r.info.run_id, "copl.ended", "its process died; ended by the next run on the same --out")
            client.set_terminated(r.info.run_id, "FAILED")


def end_dead_runs_in(uri: str, out_dir: Path) -> None:
    """end_dead_runs in the store at `uri` (a run with tracking off, over a folder whose own store
    holds runs a dead process left RUNNING)."""
    import mlflow

    end_dead_runs(mlflow.MlflowClient(tracking_uri=uri), out_dir)


class Tracker:
    """A thin, explicit wrapper: the pipeline says what to log, this says where."""

    def __init__(self, cfg: TrackingConfig, out_dir: Path, uri: str | None = None):
        """`uri`: the store as a run plan resolved it (run/plan.py); None: resolved here."""
        self.cfg = cfg
        self.out_dir = out_dir
        self.enabled = cfg.enabled
        self.uri = (uri or resolve_tracking_uri(cfg, out_dir)) if self.enabled else ""
        self.parent_run_id: str | None = None
        self._mlflow: Any = None

    def _setup(self) -> Any:
        import mlflow

        # A local store keeps artifacts beside its database (MLflow would pick a folder of the
        # working directory); a server decides for itself.
        location = None
        if self.uri.startswith("sqlite:///"):
            location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
            create_sqlite_store(self.uri, location)
        mlflow.set_tracking_uri(self.uri)
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(self.cfg.experiment)
        if exp is None:
            client.create_experiment(self.cfg.experiment, artifact_location=location)
        mlflow.set_experiment(self.cfg.experiment)
        end_dead_runs(client, self.out_dir)
        return mlflow

    def _identity(self) -> dict[str, str]:
        return run_identity(self.out_dir)

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
            with deferred_interrupt():
                self._mlflow = self._setup()
            with self._run(run_name=run_name, tags={**tags, **self._identity()}) as run:
                self.parent_run_id = run.info.run_id
                with deferred_interrupt():
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
        with self._run(run_name=f"iteration-{iteration}", nested=True):
            with deferred_interrupt():
                self._mlflow.log_param("iteration", iteration)
            yield

    @contextmanager
    def _run(self, **start: Any) -> Iterator[Any]:
        """mlflow.start_run as a context, its MLflow calls shielded from Ctrl-C (deferred_interrupt);
        an interrupted or terminated run ends KILLED (MLflow's own context says FAILED)."""
        run, status = None, "FINISHED"
        try:
            with deferred_interrupt():  # a Ctrl-C during start_run is raised after `run` is set
                run = self._mlflow.start_run(**start)
            yield run
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM turned into SystemExit (cli.main)
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            if run is not None:
                with deferred_interrupt():
                    # mlflow.end_run ends the innermost active run: a nested one whose own end a
                    # Ctrl-C skipped (between `finally:` and its shield) is ended here first.
                    while (active := self._mlflow.active_run()) is not None:
                        try:
                            self._mlflow.end_run(status)  # takes the run off MLflow's stack, then writes
                        except Exception:
                            if status == "FINISHED":
                                raise
                            # The store refused the end status too (a full disk): the error that ended
                            # the run is the one to report; the next run on this --out ends this one.
                        if active.info.run_id == run.info.run_id:
                            break

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self.enabled:
            return
        clean = {mlflow_key(k): float(v) for k, v in metrics.items() if v is not None}
        with deferred_interrupt():
            self._mlflow.log_metrics(clean, step=step)

    def log_dict(self, document: dict[str, Any], name: str) -> None:
        if self.enabled:
            with deferred_interrupt():
                self._mlflow.log_dict(document, name)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.enabled and path.exists():
            with deferred_interrupt():
                self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_teacher(self, model: Any, example: Any) -> str | None:
        """Log the teacher as an MLflow PyTorch model; returns its model URI."""
        if not (self.enabled and self.cfg.log_model):
            return None
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature


        exported = ExportedTeacher(model).eval()
        with torch.no_grad():
            output = exported(torch.from_numpy(example)).numpy()
        with deferred_interrupt():  # seconds: a model's files and its registry rows
            info = mlflow.pytorch.log_model(
                exported,
                name="teacher",
                signature=infer_signature(example, output),
                serialization_format="pickle",
                # Explicit requirements: inferring them costs ~10 s per call.
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "copl-dist"],
            )
        return str(info.model_uri)
