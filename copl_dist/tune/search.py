"""`copl tune`: Ray Tune search over COPL's hyper-parameters, then post-processing on cached predictions.

    copl tune --space tune_spaces/thumos14.yaml [--data ROOT] [--samples N]
              [--objective silhouette|agreement|map] [--val-subset NAME] [--out DIR] ...

A space file (YAML, see tune_spaces/README.md) names a preset, fixed `base` overrides, the `search`
space (one COPL training per trial) and a `postprocess` space (inference.* only). Each trial resolves
preset -> --config -> base -> --set -> flags -> sampled values, runs the COPL iterations in its Ray
actor (driver.CoplRun, no MLflow, no Ray Train) and reports its objective after every iteration,
so ASHA (time_attr "iteration") stops bad trials early.

Objectives, all maximised:
  map         map@avg on `--val-subset`, a labelled subset the user holds out. Never the test subset
              (choosing hyper-parameters on test labels is cheating in unsupervised TAL), nor the
              training subset (its labels would leak into a method that claims to use none).
  silhouette  label-free: mean PLRI score s_i (Eq. 8) over the training videos of the clustering that
              the iteration's teacher induces (HAS global features from one teacher pass, spectral
              clustering with the next iteration's seed): how well separated the videos it groups are.
  agreement   label-free: mean over training videos of the Pearson correlation over time between
              A_ca(x) and A_ca(shift(x)), with A_ca the teacher's class-agnostic attention (Eq. 13)
              and shift the student's temporal feature shift (train.shift_channels channels, seeded
              per iteration): whether the actionness curve keeps its shape under the augmentation
              L_co trains for. In [-1, 1]; a flat (uninformative) curve counts 0. A correlation
              rather than 1 - MSE: the shift moves A_ca by ~1e-6 in MSE, which ranks trials by the
              curves' scale more than by their stability, and a constant teacher would score 1.
Label-free objectives rank settings that train sensibly; they do not replace a labelled check.

Post-processing (`postprocess`, objective map only): the best completed trial stores its raw
predictions on the validation videos (h_cs, class scores, durations, cluster -> class mapping) as a
Ray checkpoint; they are copied to OUT/raw_predictions.npz and the postprocess space is searched by
re-running localize + detection mAP on that cache alone, with no training. Label-free objectives keep
the post-processing values of the resolved config (there are no labels to score them with).

Outputs under OUT: best_config.yaml (loads with `copl run --config`; no distributed / tracking keys),
tune_results.json (every trial: params, per-iteration objective, status; the post-processing search),
raw_predictions.npz (map), mlflow.db (one parent run "tune", one nested run per trial), ray_results/
(Tune's own files).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from copl_dist import config as config_lib
from copl_dist.cluster.naming import labels_name_clusters
from copl_dist.common.atomic import (
    atomic_path,
    locked_folder,
    output_folder,
    write_json,
    write_text,
)
from copl_dist.common.errors import InputError
from copl_dist.common.interrupts import deferred_interrupt
from copl_dist.config import CoplConfig, flatten, resolve, to_dict, validate
from copl_dist.data.corpus import Corpus
from copl_dist.distributed.ray_runtime import RaySession
from copl_dist.run.driver import CoplRun, load_teacher
from copl_dist.run.plan import (
    EMBEDDED_OVERRIDES,
    RunPlan,
    RunRequest,
    check_run_inputs,
    embedded_source,
    import_corpus,
    plan_run,
    synthetic_source,
)
from copl_dist.run.report import table
from copl_dist.tracking.runs import Tracker
from copl_dist.tune.objectives import agreement_objective, silhouette_objective
from copl_dist.tune.postprocess import (  # noqa: F401
    RAW_FILE,
    load_raw,
    raw_predictions,
    save_raw,
    search_postprocess,
)
from copl_dist.tune.space import (  # noqa: F401  (re-exported: callers use copl_dist.tune.search)
    Space,
    get_key,
    in_space,
    load_space,
    plain_value,
    spec_values,
    tune_domain,
    with_values,
)
from copl_dist.tune.trial_log import make_trial_log

OBJECTIVES = ("silhouette", "agreement", "map")



# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------








def user_config(
    space: Space, preset: str | None, config_file: str | None, sets: list[str], flags: dict[str, Any]
) -> CoplConfig:
    """preset -> --config -> the space's base -> --set -> flags; the sampled values come on top per trial."""
    cfg = resolve(preset or space.preset or "thumos14", config_file)
    for key, value in space.base.items():
        config_lib.merge_into(cfg, config_lib.dotted_to_nested(key, value), source=f"{space.path} (base)")
    searched = set(space.search) | set(space.postprocess)
    for key, value in config_lib.parse_set(sets):
        if key in searched:
            raise InputError(f"--set {key}: the space {space.path} searches this key; drop one of the two")
        config_lib.merge_into(cfg, config_lib.dotted_to_nested(key, value), source="--set")
    for key, value in flags.items():
        if value is not None:
            config_lib.merge_into(cfg, config_lib.dotted_to_nested(key, value), source=config_lib.flag_name(key))
    validate(cfg, source=space.path)  # a bad value is blamed on the file, base, --set or flag that set it
    if cfg.mode != "utal":
        raise InputError(f"{space.path}: copl tune searches the unsupervised mode (mode: utal), got mode '{cfg.mode}'")
    # Every extreme value of the space must make a valid config, so no trial fails on a bound (the
    # checks are intervals, so a range's two ends stand for the values between them).
    for section, specs in (("search", space.search), ("postprocess", space.postprocess)):
        where = f"{space.path}: {section}"
        for key, spec in specs.items():
            for value in spec_values(spec):
                try:
                    with_values(cfg, {key: value}, source=where)
                except InputError as exc:
                    detail = str(exc).removeprefix(f"{where}: ")  # the file is named once
                    raise InputError(f"{where} '{key}': value {value!r} is not allowed ({detail})") from None
    return cfg


# Where a run executes and logs, not what it learns: left out of best_config.yaml, so that `copl run
# --config` chooses them as for any run (workers fitted to the machine, its own MLflow store)
# instead of inheriting the tuning session's (workers 0 in-process, a tune store).
RUN_ONLY_SECTIONS = ("distributed", "tracking")


def _learnt(cfg: CoplConfig) -> dict[str, Any]:
    return {k: v for k, v in to_dict(cfg).items() if k not in RUN_ONLY_SECTIONS}


def best_config_yaml(cfg: CoplConfig) -> str:
    """best_config.yaml: every key that decides what a run learns, none of RUN_ONLY_SECTIONS."""
    header = f"# copl tune: the tuned config; {' and '.join(RUN_ONLY_SECTIONS)} are left to `copl run`\n"
    return header + yaml.safe_dump(_learnt(cfg), sort_keys=False)


def trial_overrides(eval_subset: str) -> dict[str, Any]:
    """Set inside every trial only, never in best_config.yaml: no MLflow or Ray Train in a trial, and
    the pipeline's per-iteration evaluation runs on the validation subset (never the test subset)."""
    return {
        "tracking.enabled": False,
        "distributed.workers": 0,
        "distributed.has_actors": 0,
        "data.test_subset": eval_subset,
    }


# ---------------------------------------------------------------------------------------------
# The trial (runs in a Ray actor)
# ---------------------------------------------------------------------------------------------


def trial_trainable(params: dict[str, Any], ctx: dict[str, Any]) -> None:
    """One trial: COPL with the sampled values; `tune.report` after every COPL iteration."""
    from ray import tune


    base = with_values(ctx["base"], {k: plain_value(v) for k, v in params.items()}, source="trial")
    cfg = with_values(base, ctx["overrides"], source="trial")
    corpus = Corpus.open(ctx["corpus"])
    objective = ctx["objective"]
    run: CoplRun | None = None

    def on_iteration(iterations: list[dict[str, Any]]) -> None:
        assert run is not None and run.latest is not None
        latest, record = run.latest, iterations[-1]
        teacher = load_teacher(latest.teacher_state, latest.num_classes, cfg)
        metrics: dict[str, float] = {"iteration": float(len(iterations))}
        if objective == "silhouette":
            metrics["silhouette"] = silhouette_objective(cfg, corpus, run.train_ids, teacher, latest.num_classes, len(iterations) - 1)
        elif objective == "agreement":
            metrics["agreement"] = agreement_objective(cfg, corpus, run.train_ids, teacher, len(iterations) - 1)
        if ctx["val_subset"]:  # map on the validation subset (the objective for "map", else a diagnostic)
            metrics.update({k: float(record[k]) for k in ("map@avg", "map@0.5") if k in record})
        metrics.update({k: float(record[k]) for k in ("purity", "nmi", "ari", "num_pseudo_labelled") if k in record})
        metrics["loss"] = float(record["losses"]["loss"])
        metrics["objective"] = float(metrics.get({"map": "map@avg"}.get(objective, objective), float("nan")))
        if objective == "map" and len(iterations) == cfg.iterations:
            with tempfile.TemporaryDirectory() as tmp:
                raw = raw_predictions(
                    cfg, corpus, teacher, latest.cluster_to_class, latest.num_classes, ctx["val_subset"], latest.class_names
                )
                save_raw(Path(tmp) / RAW_FILE, raw)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        else:
            tune.report(metrics)

    run = CoplRun(cfg, corpus, tracker=None, progress=False, on_iteration=on_iteration)
    run.execute()


# ---------------------------------------------------------------------------------------------
# Driver side (the trial log and its MLflow runs: trial_log.py)
# ---------------------------------------------------------------------------------------------


def _trial_dirname(trial: Any) -> str:
    return str(trial.trial_id)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def _check_val_subset(objective: str, val_subset: str | None, cfg: CoplConfig) -> None:
    if objective == "map" and not val_subset:
        raise InputError(
            "--objective map needs --val-subset NAME, a labelled validation subset held out from the test set: "
            f"selecting hyper-parameters on the test labels (subset '{cfg.data.test_subset}') is cheating in unsupervised TAL; "
            "or use a label-free objective (--objective silhouette or agreement)"
        )
    if val_subset and val_subset == cfg.data.test_subset:
        raise InputError(
            f"--val-subset {val_subset}: that is the test subset (data.test_subset); tuning on test labels is cheating "
            "in unsupervised TAL: name a labelled subset held out from the test set"
        )
    if objective == "map" and val_subset == cfg.data.train_subset:
        raise InputError(
            f"--val-subset {val_subset}: that is the training subset (data.train_subset); selecting on the labels of the "
            "videos the trials cluster leaks them into unsupervised TAL: name a labelled subset held out from training "
            "(e.g. some training videos moved to their own subset), or use a label-free objective (--objective silhouette or agreement)"
        )


def _check_val_in_corpus(val_subset: str, corpus: Any, objective: str, train_subset: str) -> None:
    if val_subset not in corpus.subsets():
        raise InputError(f"--val-subset {val_subset}: no such subset in {corpus.root} (it has: {', '.join(corpus.subsets())})")
    if not any(corpus.segments(v) for v in corpus.video_ids(val_subset)):
        raise InputError(f"--val-subset {val_subset}: the subset has no annotations, so mAP cannot be measured on it")
    if objective == "map" and not labels_name_clusters(corpus, corpus.video_ids(train_subset)):
        raise InputError(
            f"--objective map: no video of subset '{train_subset}' has annotations, so clusters have no "
            f"class names to score against --val-subset {val_subset}: use --objective silhouette or agreement"
        )


def _select_best(
    records: dict[str, dict[str, Any]], max_iterations: int, out: Path | str = "", error_files: list[str] | tuple = ()
) -> dict[str, Any]:
    """The best last objective among trials that ran every iteration (ASHA lets at least one through);
    the reported model is the last iteration's, so a stopped trial's score is not comparable.
    No usable trial: an InputError naming `out` and the first of Tune's `error_files` (the tracebacks)."""
    def finite(rec: dict[str, Any]) -> bool:
        return bool(rec["history"]) and math.isfinite(rec["history"][-1]["objective"])

    pool = [r for r in records.values() if r["status"] == "completed" and finite(r)]
    if not pool:
        pool = [r for r in records.values() if r["status"] != "error" and finite(r)]
    if not pool:
        # A space or data every trial fails on is the user's to fix: one line, exit 2, no traceback.
        failed = sum(r["status"] == "error" for r in records.values())
        errors = [r["error"] for r in records.values() if r["error"]]
        msg = f"{out}: no trial produced a finite objective ({len(records)} trials, {failed} failed)"
        if errors:
            msg += f"; first error: {' '.join(str(errors[0]).split())}"
        if error_files:
            more = f" (and {len(error_files) - 1} more)" if len(error_files) > 1 else ""
            msg += f"; tracebacks in {error_files[0]}{more}"
        raise InputError(msg)
    return max(pool, key=lambda r: r["history"][-1]["objective"])


def _summary(records: dict[str, dict[str, Any]], best_id: str, keys: list[str]) -> str:
    rows = []
    for rec in records.values():
        last = rec["history"][-1] if rec["history"] else {}
        rows.append(
            [("* " if rec["trial_id"] == best_id else "") + rec["trial_id"], rec["status"], str(last.get("iteration", 0)),
             f"{last['objective']:.6g}" if last else "-"]
            + [f"{rec['params'][k]:.4g}" if isinstance(rec["params"].get(k), float) else str(rec["params"].get(k)) for k in keys]
        )
    return table(["trial", "status", "iter", "objective", *keys], rows)


def run(args: argparse.Namespace) -> int:
    space = load_space(args.space)
    flags = {
        "iterations": args.iterations, "train.epochs": args.epochs, "data.snippets": args.snippets, "seed": args.seed,
        "data.train_subset": args.train_subset, "data.test_subset": args.test_subset,
    }
    if args.data is None:
        for key, value in EMBEDDED_OVERRIDES.items():
            if flags.get(key) is None and key not in space.base and not any(s.startswith(f"{key}=") for s in args.sets):
                flags[key] = value
    cfg = user_config(space, args.preset, args.config, args.sets, flags)
    if args.samples < 1:
        raise InputError(f"--samples: must be >= 1, got {args.samples}")
    if args.max_concurrent < 1:
        raise InputError(f"--max-concurrent: must be >= 1, got {args.max_concurrent}")
    if not args.reduction_factor > 1:  # ASHA keeps 1/factor of the trials per rung; `not >` also catches nan
        raise InputError(f"--reduction-factor: must be > 1, got {args.reduction_factor}")
    if not args.cpus_per_trial > 0:
        raise InputError(f"--cpus-per-trial: must be > 0, got {args.cpus_per_trial}")
    if args.pp_samples < 1:
        raise InputError(f"--pp-samples: must be >= 1, got {args.pp_samples}")
    _check_val_subset(args.objective, args.val_subset, cfg)

    out = Path(args.out or f"runs/tune-{Path(space.path).stem}").resolve()
    # The checks `copl run` makes, in the same place (trials always run on Ray; they register nothing).
    plan = plan_run(RunRequest(data=Path(args.data) if args.data is not None else None, out=out, allow_pickle=args.allow_pickle), cfg=cfg, register=False, ray=True)
    # OUT is locked for the whole search (a second command on it is refused). Bad input found while
    # the data is prepared removes what this command added to OUT; once the trials start, their logs
    # and tracking history stay, whatever ends the search.
    with locked_folder(out, "--out"):
        with output_folder(out):
            if plan.synthetic:
                print(f"copl tune: no --data given: a synthetic {cfg.preset} corpus in {synthetic_source(plan)}", file=sys.stderr)
            corpus = import_corpus(plan, plan.data or embedded_source(plan), who="copl tune")
            check_run_inputs(cfg, corpus, where=args.data)
            if args.val_subset:
                _check_val_in_corpus(args.val_subset, corpus, args.objective, cfg.data.train_subset)
        return _run_in(args, space, cfg, plan, corpus)


def _run_in(args: argparse.Namespace, space: Space, cfg: CoplConfig, plan: RunPlan, corpus: Any) -> int:
    out = plan.out
    eval_subset = args.val_subset or cfg.data.train_subset

    tracker = Tracker(cfg.tracking, out, uri=plan.tracking_uri)
    parent_params = {
        "tune": {"space": space.path, "objective": args.objective, "val_subset": args.val_subset or "", "samples": args.samples,
                 "search": {k: str(v) for k, v in space.search.items()}, "postprocess": {k: str(v) for k, v in space.postprocess.items()}},
        **to_dict(cfg),
    }
    tags = {"dataset": plan.dataset, "dataset_digest": corpus.digest(), "copl.kind": "tune", "objective": args.objective,
            "seed": str(cfg.seed)}
    started = time.perf_counter()
    # Ctrl-C must stop `copl tune` (exit 130), not end the search early and write a "best" config from
    # the trials done so far with exit 0, which is what Ray Tune's own SIGINT handler does. A user's
    # own setting of the variable wins.
    own_sigint_setting = "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    try:
        return _search_and_write(args, space, cfg, corpus, out, eval_subset, tracker, parent_params, tags, started)
    finally:
        if own_sigint_setting:  # a library caller's process keeps Ray Tune's default afterwards
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)


def _search_and_write(args: argparse.Namespace, space: Space, cfg: CoplConfig, corpus: Any, out: Path, eval_subset: str,
                      tracker: Any, parent_params: dict[str, Any], tags: dict[str, str], started: float) -> int:
    with tracker.parent_run("tune", parent_params, tags), RaySession(cfg.distributed):
        doc = _search(args, space, cfg, corpus, out, eval_subset, tracker)
        doc["seconds"] = time.perf_counter() - started
        write_json(out / "tune_results.json", doc)
        if tracker.enabled:
            tracker.log_metrics({"objective": doc["best"]["objective"]})
            if doc["postprocess"].get("searched"):
                tracker.log_metrics({"postprocess_map@avg": doc["postprocess"]["best_objective"]})
            tracker.log_artifact(out / "best_config.yaml")
            tracker.log_artifact(out / "tune_results.json")
    print(f"best config: {out / 'best_config.yaml'}  (copl run --config {out / 'best_config.yaml'})")
    print(f"outputs: {out}" + (f"  (MLflow: {tracker.uri})" if tracker.enabled else ""))
    return 0


def _search(
    args: argparse.Namespace, space: Space, cfg: CoplConfig, corpus: Any, out: Path, eval_subset: str, tracker: Any
) -> dict[str, Any]:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    param_space = {k: tune_domain(spec) for k, spec in space.search.items()}
    # The config's own values are the first trial when they lie inside the space: a baseline to beat.
    defaults = {k: get_key(cfg, k) for k in space.search}
    points = [defaults] if space.search and all(in_space(space.search[k], defaults[k]) for k in space.search) else None
    ctx = {
        "base": to_dict(cfg),
        "overrides": trial_overrides(eval_subset),
        "corpus": str(Path(corpus.root).resolve()),
        "objective": args.objective,
        "val_subset": args.val_subset,
    }
    mlflow_target = None
    if tracker.enabled and tracker.parent_run_id:
        import mlflow

        with deferred_interrupt():
            run = mlflow.MlflowClient(tracking_uri=tracker.uri).get_run(tracker.parent_run_id)
        mlflow_target = (tracker.uri, run.info.experiment_id, tracker.parent_run_id)
    log = make_trial_log(cfg.iterations, mlflow_target, echo=True)
    trainable = tune.with_resources(tune.with_parameters(trial_trainable, ctx=ctx), {"cpu": args.cpus_per_trial})
    storage = Path(cfg.distributed.storage_path).resolve() if cfg.distributed.storage_path else out / "ray_results"
    name = f"tune-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"  # a fresh name: never resume an old run
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric="objective",
            mode="max",
            num_samples=args.samples,
            # A SearchAlgorithm takes the concurrency limit itself (Tune ignores max_concurrent_trials then).
            search_alg=BasicVariantGenerator(points_to_evaluate=points, max_concurrent=args.max_concurrent, random_state=cfg.seed),
            scheduler=ASHAScheduler(
                time_attr="iteration", max_t=cfg.iterations, grace_period=max(1, min(args.grace_period, cfg.iterations)),
                reduction_factor=args.reduction_factor,
            ),
            trial_dirname_creator=_trial_dirname,
            reuse_actors=True,  # one torch import per actor, not per trial
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=str(storage), callbacks=[log], verbose=0,
        ),
    )
    try:
        grid = tuner.fit()
    except BaseException as exc:
        log.end_unfinished("KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED")
        raise
    results = {}
    error_files = []  # Tune's copies in the storage folder (the driver's staging copy dies with the Ray session)
    for result in grid:
        trial_id = Path(result.path).name
        results[trial_id] = result
        if result.error is not None and trial_id in log.records:
            log.records[trial_id]["status"] = "error"
            log.records[trial_id]["error"] = str(result.error).strip().splitlines()[-1][:500]
        if result.error is not None and (Path(result.path) / "error.txt").is_file():
            error_files.append(str(Path(result.path) / "error.txt"))
    records = log.records
    best = _select_best(records, cfg.iterations, out, error_files)
    best_params = dict(best["params"])

    # Post-processing on cached raw predictions of the best trial (labels needed: objective map only).
    pp: dict[str, Any]
    if args.objective == "map":
        checkpoint = results[best["trial_id"]].checkpoint
        if checkpoint is None:
            raise RuntimeError(f"copl tune: the best trial {best['trial_id']} left no raw predictions")
        with checkpoint.as_directory() as ckpt_dir, atomic_path(out / RAW_FILE) as tmp:
            shutil.copyfile(Path(ckpt_dir) / RAW_FILE, tmp)
        trained = with_values(cfg, best_params, source="best trial")
        if space.postprocess:
            raw = load_raw(out / RAW_FILE)
            gt = corpus.ground_truth(raw.subset)
            pp = search_postprocess(raw, gt, trained, space.postprocess, args.pp_samples, source=f"{space.path}: postprocess")
            print(f"copl tune: post-processing on cached predictions of {len(raw.video_ids)} '{raw.subset}' videos: "
                  f"map@avg {pp['default_objective']:.2f} (config values) -> {pp['best_objective']:.2f}", file=sys.stderr)
        else:
            pp = {"searched": False, "note": "the space has no postprocess section"}
        pp["raw_predictions"] = str(out / RAW_FILE)
    else:
        pp = {"searched": False, "note": f"objective '{args.objective}' is label-free: post-processing needs labels, "
              "so the config's inference values are kept"}
        print(f"copl tune: {pp['note']}", file=sys.stderr)

    best_cfg = with_values(cfg, {**best_params, **(pp.get("best_values") or {})}, source="best config")
    write_text(out / "best_config.yaml", best_config_yaml(best_cfg))
    reloaded = resolve(best_cfg.preset, out / "best_config.yaml")  # what `copl run --config` will do
    if _learnt(reloaded) != _learnt(best_cfg):
        raise RuntimeError(f"{out / 'best_config.yaml'}: does not load back to the tuned config")

    keys = list(space.search)
    print(_summary(records, best["trial_id"], keys))
    return {
        "space": space.path,
        "objective": args.objective,
        "val_subset": args.val_subset,
        "eval_subset": eval_subset,
        "test_subset": cfg.data.test_subset,
        "samples": args.samples,
        "iterations": cfg.iterations,
        "experiment": str(storage / name),
        "best": {"trial_id": best["trial_id"], "objective": best["history"][-1]["objective"], "params": best_params},
        "trials": list(records.values()),
        "postprocess": pp,
        "best_config": str(out / "best_config.yaml"),
        "tuned_values": {k: v for k, v in flatten(to_dict(best_cfg)).items() if k in set(space.search) | set(space.postprocess)},
    }
