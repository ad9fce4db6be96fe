"""The MLflow model registry: each run's teacher as a version of one registered model.

A version is created from the logged MLflow model (`models:/<model_id>`) and tagged with what
`copl registry promote` ranks by (`map_at_avg`, ... in MLflow's spelling: tag keys forbid '@', like
metric keys) and what tells versions apart (dataset, seed, config_hash, mode). Promote ranks only the
versions of one mode (default utal) and, with --dataset, of one dataset. The run's teacher.pt
is logged beside it as the run artifact `checkpoint/teacher.pt`, so a version turns back into a
plain checkpoint (state dict, sizes, class names, config) loaded with `weights_only=True`: using a
registered teacher never unpickles code.

Model URIs: `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `models:/NAME/latest`, or a teacher.pt path.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from copl_dist.common.errors import InputError, first_line
from copl_dist.method.checkpoint import read_checkpoint
from copl_dist.tracking.runs import (
    check_sqlite_store,
    check_tracking_store,
    mlflow_key,
    normalize_tracking_uri,
)

CHECKPOINT_ARTIFACT = "checkpoint/teacher.pt"
DEFAULT_MODEL = "copl-teacher"
DEFAULT_ALIAS = "champion"


# -- URIs ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelRef:
    """A parsed `models:/` URI: exactly one of alias / version / model_id is set."""

    uri: str
    name: str = ""
    alias: str = ""
    version: str = ""  # a number or "latest"
    model_id: str = ""  # a logged model (models:/m-...)


_LOGGED_MODEL_ID = re.compile(r"^m-[0-9a-f]{32}$")


def parse_model_uri(uri: str) -> ModelRef:
    if not uri.startswith("models:/"):
        raise InputError(f"{uri}: not a models:/ URI (expected models:/NAME@ALIAS or models:/NAME/VERSION)")
    rest = uri[len("models:/"):].strip("/")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        if name and alias and "/" not in name:
            return ModelRef(uri, name=name, alias=alias)
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
        if name and "/" not in name and (version.isdigit() or version == "latest"):
            return ModelRef(uri, name=name, version=version)
    elif _LOGGED_MODEL_ID.match(rest):
        return ModelRef(uri, model_id=rest)
    raise InputError(f"{uri}: malformed model URI (expected models:/NAME@ALIAS or models:/NAME/VERSION)")


def resolve_registry_uri(tracking_uri: str | None) -> str:
    """--tracking-uri as given (a run folder or a .db file become sqlite URIs), else $MLFLOW_TRACKING_URI.

    A SQLite store must already exist: reading a registry never creates an empty database.
    """
    # An explicit --tracking-uri '' is refused below (normalize_tracking_uri), not replaced by the environment's.
    uri = tracking_uri if tracking_uri is not None else os.environ.get("MLFLOW_TRACKING_URI", "")
    if tracking_uri is None and not uri:
        raise InputError("no tracking store: pass --tracking-uri (a URI, a run folder or an mlflow.db) or set MLFLOW_TRACKING_URI")
    source = "--tracking-uri" if tracking_uri is not None else "$MLFLOW_TRACKING_URI"
    uri = normalize_tracking_uri(uri, source)
    check_sqlite_store(uri, source, must_exist=True)
    check_tracking_store(uri, source)
    return uri


# MLflow's alias rules (its registry refuses the others), written out here: the functions that check
# them are private to MLflow and were renamed in 3.18.
_ALIAS_CHARS = re.compile(r"[\w\-]+")
_ALIAS_VERSION = re.compile(r"[vV]\d+")
_ALIAS_MAX = 255


def _alias_problem(alias: str) -> str | None:
    if alias == "":
        return "Registered model alias name cannot be empty."
    if not _ALIAS_CHARS.fullmatch(alias):
        return f"Invalid alias name: '{alias}'. Names may only contain alphanumerics, underscores (_), and dashes (-)."
    if len(alias) > _ALIAS_MAX:
        return f"Registered model alias name exceeds the maximum length of {_ALIAS_MAX} characters."
    if alias.lower() == "latest":
        return "'latest' alias name (case insensitive) is reserved."
    if _ALIAS_VERSION.fullmatch(alias):
        return f"Version alias name '{alias}' is reserved."
    return None


def check_registry_names(model_name: str | None = None, alias: str | None = None, source: str = "") -> None:
    """MLflow's own rules for a registered model's name and an alias (no '/' in a name; an alias of
    letters, digits, '_' and '-', neither 'latest' nor 'v<digits>'), checked before anything runs."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils import validation

    if model_name is not None:
        try:
            validation._validate_model_name(model_name)
        except MlflowException as exc:
            raise InputError(f"{source or 'model name'} {model_name!r}: {first_line(exc)}") from None
    if alias is not None and (problem := _alias_problem(alias)) is not None:
        raise InputError(f"{source or 'alias'} {alias!r}: {problem}")


def _client(tracking_uri: str) -> Any:
    import logging

    import mlflow

    # One-file downloads need no progress bar on stderr (the CLI's stderr is for errors).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")


# -- registering -----------------------------------------------------------------------------------

def version_tags(tags: dict[str, str], metrics: dict[str, float]) -> dict[str, str]:
    """Run tags plus each metric as a tag (MLflow spelling: `map@avg` -> `map_at_avg`)."""
    out = {str(k): str(v) for k, v in tags.items()}
    out.update({mlflow_key(k): repr(float(v)) for k, v in metrics.items() if v is not None})
    out["checkpoint"] = CHECKPOINT_ARTIFACT
    return out


def register_teacher(
    model_uri: str,
    name: str,
    run_id: str,
    checkpoint: str | os.PathLike[str],
    tags: dict[str, str],
    metrics: dict[str, float],
    tracking_uri: str | None = None,
) -> str:
    """A new version of registered model `name` from the logged model `model_uri`; returns its number.

    `checkpoint` (the run's teacher.pt) is logged to run `run_id` as `checkpoint/teacher.pt` first,
    so that every version can be loaded back without unpickling. `tags`: dataset, seed, config_hash,
    mode...; `metrics`: map@... (each becomes a tag too). `tracking_uri`: None uses mlflow's current
    one (inside `Tracker.parent_run`, the run's store).
    """
    import mlflow

    client = _client(tracking_uri or mlflow.get_tracking_uri())
    client.log_artifact(run_id, str(checkpoint), artifact_path=str(Path(CHECKPOINT_ARTIFACT).parent))
    try:
        client.create_registered_model(name, description="COPL teacher (IOCNet EMA teacher); see tags for dataset, seed and mAP")
    except Exception as exc:  # already registered: add a version
        if getattr(exc, "error_code", "") not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    logged = model_uri.removeprefix("models:/")
    model_id = logged if _LOGGED_MODEL_ID.match(logged) else None  # links the version to its logged model
    mv = client.create_model_version(
        name=name, source=model_uri, run_id=run_id, tags=version_tags(tags, metrics), model_id=model_id
    )
    return str(mv.version)


# -- resolving and loading -------------------------------------------------------------------------

def resolve_version(client: Any, ref: ModelRef) -> Any:
    """The ModelVersion a `models:/NAME@ALIAS` or `models:/NAME/VERSION` URI names; InputError if none."""
    try:
        client.get_registered_model(ref.name)
    except Exception as exc:
        if _not_found(exc):
            raise InputError(f"{ref.uri}: no registered model '{ref.name}' in the tracking store") from None
        raise
    try:
        if ref.alias:
            return client.get_model_version_by_alias(ref.name, ref.alias)
        if ref.version == "latest":
            versions = _all_versions(client, ref.name)
            if not versions:
                raise InputError(f"{ref.uri}: model '{ref.name}' has no versions")
            return max(versions, key=lambda v: int(v.version))
        return client.get_model_version(ref.name, ref.version)
    except InputError:
        raise
    except Exception as exc:
        if _not_found(exc):
            what = f"alias '{ref.alias}'" if ref.alias else f"version {ref.version}"
            raise InputError(f"{ref.uri}: model '{ref.name}' has no {what}") from None
        raise


def _all_versions(client: Any, name: str) -> list[Any]:
    versions: list[Any] = []
    token = None
    while True:
        page = client.search_model_versions(f"name = '{name}'", max_results=1000, page_token=token)
        versions.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return versions


def _source_run_id(client: Any, ref: ModelRef) -> str:
    if ref.model_id:
        try:
            run_id = client.get_logged_model(ref.model_id).source_run_id
        except Exception as exc:
            if _not_found(exc):
                raise InputError(f"{ref.uri}: no such logged model in the tracking store") from None
            raise
    else:
        run_id = resolve_version(client, ref).run_id
    if not run_id:
        raise InputError(f"{ref.uri}: the model has no source run, so no {CHECKPOINT_ARTIFACT} to load")
    return str(run_id)


def load_registered_teacher(uri: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """The teacher.pt checkpoint dict of a registered version (or logged model), via its source run."""
    ref = parse_model_uri(uri)
    client = _client(resolve_registry_uri(tracking_uri))
    run_id = _source_run_id(client, ref)
    with tempfile.TemporaryDirectory(prefix="copl-teacher-") as tmp:
        try:
            local = client.download_artifacts(run_id, CHECKPOINT_ARTIFACT, tmp)
        except Exception as exc:
            raise InputError(f"{uri}: cannot download {CHECKPOINT_ARTIFACT} of run {run_id} ({first_line(exc)})") from None
        return read_checkpoint(local, uri)


def load_teacher_checkpoint(model: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """A `models:/` URI (through the registry) or a teacher.pt path -> checkpoint dict."""
    if model.startswith("models:/"):
        return load_registered_teacher(model, tracking_uri)
    path = Path(model)
    if not path.is_file():
        raise InputError(f"{model}: no such teacher checkpoint (expected a teacher.pt file or a models:/ URI)")
    return read_checkpoint(path, model)


# -- promoting and listing -------------------------------------------------------------------------

def version_metric(client: Any, version: Any, metric: str) -> float | None:
    """The version's `metric` from its tag, else from its source run's metrics; None if neither."""
    key = mlflow_key(metric)
    for name in (key, metric):
        if name in version.tags:
            try:
                return float(version.tags[name])
            except ValueError:
                pass
    if version.run_id:
        try:
            value = client.get_run(version.run_id).data.metrics.get(key)
        except Exception as exc:
            if not _not_found(exc):
                raise
            value = None
        if value is not None:
            return float(value)
    return None


@dataclass(frozen=True)
class Promotion:
    version: str
    value: float
    compared: int  # versions of the asked mode (and dataset) that have the metric


def promote(
    model_name: str = DEFAULT_MODEL,
    metric: str = "map@avg",
    alias: str = DEFAULT_ALIAS,
    higher_is_better: bool = True,
    tracking_uri: str | None = None,
    mode: str = "utal",
    dataset: str | None = None,
) -> Promotion:
    """Point `alias` at the version with the best `metric` among those tagged `mode` (and `dataset`).

    Only like is compared with like: a wtal teacher learnt from labels, and map@avg ranges differ
    between datasets (THUMOS vs ActivityNet). Ties go to the newer version. InputError if the model is
    unknown or no such version has the metric.
    """
    client = _client(resolve_registry_uri(tracking_uri))
    ref = ModelRef(f"models:/{model_name}", name=model_name)
    try:
        client.get_registered_model(model_name)
    except Exception as exc:
        if _not_found(exc):
            raise InputError(f"{ref.uri}: no registered model '{model_name}' in the tracking store") from None
        raise
    versions = _all_versions(client, model_name)
    kept = [
        v for v in versions
        if v.tags.get("mode") == mode and (dataset is None or dataset in (v.tags.get("dataset"), v.tags.get("dataset_digest")))
    ]
    scope = f"mode '{mode}'" + (f" and dataset '{dataset}'" if dataset is not None else "")
    if not kept:
        raise InputError(f"{ref.uri}: none of its {len(versions)} version(s) has {scope} (tags 'mode', 'dataset')")
    scored = []
    for v in kept:
        value = version_metric(client, v, metric)
        if value is not None:
            scored.append((value if higher_is_better else -value, int(v.version), value))
    if not scored:
        raise InputError(
            f"{ref.uri}: no version with {scope} has the metric '{metric}' (tag or run metric '{mlflow_key(metric)}')"
        )
    _, best, value = max(scored)
    client.set_registered_model_alias(model_name, alias, str(best))
    return Promotion(str(best), value, len(scored))


def set_alias(
    model_name: str, version: str, alias: str = DEFAULT_ALIAS, tracking_uri: str | None = None, mode: str = "utal"
) -> None:
    """Point `alias` at `version` as named (`copl registry promote --version`): the way to choose among
    versions with nothing to rank them by, such as teachers of corpora without annotations (no mAP).
    The version must have been trained in `mode`, as promote() compares only those."""
    client = _client(resolve_registry_uri(tracking_uri))
    ref = ModelRef(f"models:/{model_name}/{version}", name=model_name, version=version)
    tagged = resolve_version(client, ref).tags.get("mode")
    if tagged != mode:
        raise InputError(f"{ref.uri}: trained in mode '{tagged or 'unknown'}', not '{mode}' (--mode)")
    client.set_registered_model_alias(model_name, alias, version)


def list_versions(model_name: str = DEFAULT_MODEL, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Every version, newest first: version, aliases, tags, source run."""
    client = _client(resolve_registry_uri(tracking_uri))
    try:
        model = client.get_registered_model(model_name)
    except Exception as exc:
        if _not_found(exc):
            raise InputError(f"models:/{model_name}: no registered model '{model_name}' in the tracking store") from None
        raise
    # search_model_versions leaves aliases out (SQLite store); the registered model has them all.
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    rows = [
        {
            "version": str(v.version),
            "aliases": sorted(aliases.get(str(v.version), [])),
            "tags": dict(v.tags),
            "run_id": v.run_id,
            "source": v.source,
        }
        for v in _all_versions(client, model_name)
    ]
    return sorted(rows, key=lambda r: -int(r["version"]))


def format_versions(model_name: str, rows: list[dict[str, Any]]) -> str:
    header = f"{'version':>7}  {'aliases':<16} {'map@avg':>8}  {'seed':>5}  {'mode':<8} {'config':<12}  dataset"
    lines = [f"{model_name}: {len(rows)} version(s)", header]
    for r in rows:
        t = r["tags"]
        value = t.get(mlflow_key("map@avg"))
        shown = f"{float(value):.2f}" if value is not None else "-"
        lines.append(
            f"{r['version']:>7}  {','.join(r['aliases']) or '-':<16} {shown:>8}  {t.get('seed', '-'):>5}  "
            f"{t.get('mode', '-'):<8} {t.get('config_hash', '-'):<12}  {t.get('dataset', '-')}"
        )
    return "\n".join(lines)


# -- `copl registry` -------------------------------------------------------------------------------
