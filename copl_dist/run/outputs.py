"""What a `copl run` leaves under `--out`, each file written whole (temporary name, then rename).

    detections.json      ActivityNet results format, test subset, class names after mapping
    metrics.json         per iteration: purity, NMI, ARI, |P|, |U|, mean loss terms, mAP; final mAP
    config.yaml          the resolved config
    teacher.pt           {"state_dict", "config", "num_classes", "class_names", "cluster_to_class"},
                         loadable with torch.load(weights_only=True)
    pseudo_labels.parquet the last clustering: video, cluster, PLRI score, P or U
    plots/iterations.png, plots/actionness.png

metrics.json says `"complete": true` only once every other output is written (and, with tracking,
logged and registered): a run that failed on the way never claims to be complete.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from copl_dist.common.atomic import write_json, write_text
from copl_dist.config import CoplConfig, config_hash, to_yaml
from copl_dist.data.corpus import write_table
from copl_dist.data.formats import write_detections
from copl_dist.method.checkpoint import save_checkpoint
from copl_dist.run.driver import RunResult
from copl_dist.run.plots import plot_actionness, plot_iterations


def metrics_document(cfg: CoplConfig, result: RunResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "mode": cfg.mode,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "config_hash": config_hash(cfg),
        "iterations": result.iterations,
        "final": result.final,
        **(extra or {}),
    }


def write_metrics(path: Path, cfg: CoplConfig, iterations: list[dict[str, Any]]) -> None:
    """Progress file rewritten after each iteration (whole each time)."""
    final = {k: v for k, v in iterations[-1].items() if k.startswith("map@")} if iterations else {}
    write_json(path, {"mode": cfg.mode, "preset": cfg.preset, "seed": cfg.seed, "iterations": iterations, "final": final, "complete": False})


# Every output a run writes under --out (a fresh run removes those of the run it replaces).
OUTPUT_NAMES = ("detections.json", "metrics.json", "config.yaml", "teacher.pt", "pseudo_labels.parquet", "plots")


def remove_outputs(out_dir: Path) -> None:
    """The outputs of a run that an --overwrite replaces: none of them may outlive it into the new one."""
    for name in OUTPUT_NAMES:
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def write_run_outputs(out_dir: Path, cfg: CoplConfig, result: RunResult, class_names: list[str]) -> dict[str, Path]:
    """Every output but the final metrics.json (write_final_metrics, last); metrics.json is rewritten
    here still incomplete, with the final record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "detections": out_dir / "detections.json",
        "metrics": out_dir / "metrics.json",
        "config": out_dir / "config.yaml",
        "plot_iterations": out_dir / "plots" / "iterations.png",
    }
    write_detections(paths["detections"], result.detections["results"])
    write_json(paths["metrics"], metrics_document(cfg, result, {"complete": False}))
    write_text(paths["config"], to_yaml(cfg))
    plot_iterations(result.iterations, paths["plot_iterations"])
    if result.traces:
        paths["plot_actionness"] = out_dir / "plots" / "actionness.png"
        plot_actionness(result.traces, paths["plot_actionness"])
    if result.teacher_state is not None:
        paths["teacher"] = out_dir / "teacher.pt"
        cluster_to_class = [int(result.cluster_to_class.get(c, -1)) for c in range(result.num_classes)]
        save_checkpoint(paths["teacher"], cfg, result.teacher_state, result.num_classes, class_names, cluster_to_class)
    if result.pseudo_labels:
        paths["pseudo_labels"] = out_dir / "pseudo_labels.parquet"
        write_table(paths["pseudo_labels"], result.pseudo_labels)
    return paths


def write_final_metrics(path: Path, cfg: CoplConfig, result: RunResult) -> None:
    """metrics.json with `"complete": true`: the run's last write."""
    write_json(path, metrics_document(cfg, result, {"complete": True}))
