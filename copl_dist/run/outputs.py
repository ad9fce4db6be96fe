"""What a `copl run` leaves under `--out`, each file written whole (temporary name, then rename).

    detections.json      ActivityNet results format, test subset, class names after mapping
    metrics.json         per iteration: purity, NMI, ARI, |P|, |U|, mean loss terms, mAP; final mAP
    config.yaml          the resolved config
    teacher.pt           {"state_dict", "config", "num_classes", "class_names", "cluster_to_class"},
                         loadable with torch.load(weights_only=True)
    pseudo_labels.parquet the last clustering: video, cluster, PLRI score, P or U
    plots/iterations.png, plots/actionness.png
"""

from __future__ import annotations

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


def write_run_outputs(out_dir: Path, cfg: CoplConfig, result: RunResult, class_names: list[str]) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "detections": out_dir / "detections.json",
        "metrics": out_dir / "metrics.json",
        "config": out_dir / "config.yaml",
        "plot_iterations": out_dir / "plots" / "iterations.png",
    }
    write_detections(paths["detections"], result.detections["results"])
    doc = metrics_document(cfg, result, {"complete": True})
    write_json(paths["metrics"], doc)
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
