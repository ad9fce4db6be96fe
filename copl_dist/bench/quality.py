"""`copl bench quality`: the paper's ablations on synthetic THUMOS-like corpora, over seeds.

Table 2-style rows (avg mAP): the plain baseline (mean-feature clusters, novelty snippets, no
training), Baseline (COPL without HAS and PLRI), +HAS, +PLRI, COPL, and the weakly-supervised mode.
Fig. 4: avg mAP and NMI per iteration. Table 3: purity / NMI / ARI of the last clustering for the HAS
variants. Each seed makes its own corpus (synthetic seed = run seed). Figures are measured here,
printed, and written to OUT/quality.json and OUT/quality.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from copl_dist.common.atomic import write_json, write_text
from copl_dist.common.errors import InputError
from copl_dist.config import resolve
from copl_dist.data.formats import import_dataset
from copl_dist.data.synth import make_synthetic
from copl_dist.run.driver import CoplRun
from copl_dist.run.plan import check_run_inputs
from copl_dist.run.report import table

PAPER_ROW = "COPL as in the paper (mean features first, Eq. 5 uncentred, no projection)"
NO_PROJECTION_ROW = "COPL w/o discriminant projection"
# name -> (mode, --set items)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "plain baseline (no training)": ("baseline", []),
    "Baseline (w/o HAS, w/o PLRI)": ("utal", ["has.enabled=false", "cluster.plri=false"]),
    "+HAS": ("utal", ["cluster.plri=false"]),
    "+PLRI": ("utal", ["has.enabled=false"]),
    "COPL (HAS + PLRI)": ("utal", []),
    NO_PROJECTION_ROW: ("utal", ["cluster.project=none"]),
    PAPER_ROW: ("utal", ["has.init=mean", "has.centre=false", "cluster.project=none"]),
    "HAS on A_cs only": ("utal", ["has.branch=cs"]),
    "HAS on A_ca only": ("utal", ["has.branch=ca"]),
    "HAS w/o voting": ("utal", ["has.voting=false"]),
    "weakly supervised": ("wtal", []),
}
ABLATION_ROWS = ["plain baseline (no training)", "Baseline (w/o HAS, w/o PLRI)", "+HAS", "+PLRI", "COPL (HAS + PLRI)",
                 NO_PROJECTION_ROW, PAPER_ROW, "weakly supervised"]
HAS_ROWS = ["Baseline (w/o HAS, w/o PLRI)", "HAS on A_cs only", "HAS on A_ca only", "HAS w/o voting", "COPL (HAS + PLRI)"]


def _mean_std(values: list[float]) -> str:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return "-"
    return f"{arr.mean():.2f} ± {arr.std(ddof=1) if arr.size > 1 else 0.0:.2f}"


def _overrides(args: argparse.Namespace, mode: str, seed: int) -> dict[str, Any]:
    return {"mode": mode, "seed": seed, "iterations": args.iterations if mode == "utal" else 1,
            "train.epochs": args.epochs, "data.snippets": args.snippets}


def run_quality_bench(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.merge:
        return merge_quality(args.merge, out)
    for mode, sets in VARIANTS.values():  # a bad --set fails before any corpus is made (as resolved below)
        resolve("thumos14", sets=["has.vote_last=6", *args.sets, *sets, "tracking.enabled=false"],
                overrides=_overrides(args, mode, args.first_seed))
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    started = time.perf_counter()
    for done, seed in enumerate(range(args.first_seed, args.first_seed + args.seeds)):
        data = out / f"data-seed{seed}"
        if not (data / "annotations.json").exists():
            make_synthetic(data, preset="thumos14", videos=args.videos, classes=args.classes, seed=seed, duration_scale=args.duration_scale)
        corpus = import_dataset(data, out / f"corpus-seed{seed}")
        for name, (mode, sets) in VARIANTS.items():
            cfg = resolve(
                "thumos14",
                # The user's --set first, so that no --set can undo the variant's own switches.
                sets=["has.vote_last=6", *args.sets, *sets, "tracking.enabled=false"],
                overrides=_overrides(args, mode, seed),
            )
            check_run_inputs(cfg, corpus)  # CoplRun trusts its caller to have checked
            t0 = time.perf_counter()
            result = CoplRun(cfg, corpus, tracker=None, progress=False).execute()
            runs[name].append({"seed": seed, "iterations": result.iterations, "final": result.final})
            print(f"seed {seed} {name:32s} avg mAP {result.final.get('map@avg', float('nan')):6.2f}  ({time.perf_counter() - t0:.0f} s)", flush=True)

        # Tables after every seed, so a long benchmark leaves usable figures as it goes.
        seconds = time.perf_counter() - started
        text = _tables(runs, args, done + 1, seconds)
        write_text(out / "quality.md", text + "\n")
        write_json(out / "quality.json", {"args": {k: v for k, v in vars(args).items() if not callable(v)}, "runs": runs,
                                          "seconds": seconds})
    print(text)
    return 0


def _read_output(path: Path) -> dict[str, Any]:
    """A `copl bench quality` quality.json with its settings and at least one seed of every run."""
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    runs = doc.get("runs") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or not isinstance(doc.get("args"), dict) or not isinstance(runs, dict):
        raise InputError(f"{path}: not a `copl bench quality` output (expected 'args' and 'runs')")
    for name in VARIANTS:
        rows = runs.get(name)
        if not isinstance(rows, list) or not rows or not all(
            isinstance(r, dict) and {"seed", "final", "iterations"} <= r.keys() and isinstance(r["iterations"], list)
            and isinstance(r["final"], dict) for r in rows
        ):
            raise InputError(f"{path}: no complete result of '{name}' (an interrupted or older benchmark?)")
    return doc


def merge_quality(folders: list[str], out: Path) -> int:
    """One table from several `copl bench quality` outputs (seeds split over processes or machines):
    the same settings are required, the seeds must not repeat."""
    docs = []
    for folder in folders:
        path = Path(folder) / "quality.json"
        if not path.is_file():
            raise InputError(f"{path}: not found (expected a `copl bench quality` output)")
        docs.append(_read_output(path))
    keys = ("videos", "classes", "epochs", "snippets", "iterations", "duration_scale", "sets")
    first = docs[0]["args"]
    for folder, doc in zip(folders, docs):
        if any(doc["args"].get(k) != first.get(k) for k in keys):
            raise InputError(f"{folder}/quality.json: other settings than {folders[0]} ({', '.join(keys)} must match)")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    for doc in docs:
        for name, rows in doc["runs"].items():
            if name in runs:
                runs[name].extend(rows)
    seeds = [r["seed"] for r in runs["COPL (HAS + PLRI)"]]
    if len(set(seeds)) != len(seeds):
        raise InputError(f"{', '.join(folders)}: a seed appears in more than one output")
    args = argparse.Namespace(**{**first, "seeds": len(seeds)})
    seconds = sum(float(doc.get("seconds", 0.0)) for doc in docs)
    text = _tables(runs, args, len(seeds), seconds, time_label="run time summed over the merged outputs")
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "quality.md", text + "\n")
    write_json(out / "quality.json", {"args": vars(args), "runs": runs, "seconds": seconds, "merged_from": list(folders)})
    print(text)
    return 0


def _tables(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace, seeds_done: int, seconds: float,
            time_label: str = "total time") -> str:
    def last(name: str, key: str) -> list[float]:
        return [r["iterations"][-1].get(key) for r in runs[name]]

    ablation = table(
        ["variant", "avg mAP (%)", "mAP@0.5 (%)", "NMI x100 (last)"],
        [[n, _mean_std([r["final"].get("map@avg") for r in runs[n]]), _mean_std([r["final"].get("map@0.5") for r in runs[n]]),
          _mean_std([100 * v for v in last(n, "nmi") if v is not None]) if n != "weakly supervised" else "-"] for n in ABLATION_ROWS],
    )
    has_table = table(
        ["HAS variant", "purity (%)", "NMI (%)", "ARI (%)"],
        [[n, *(_mean_std([100 * v for v in last(n, k)]) for k in ("purity", "nmi", "ari"))] for n in HAS_ROWS],
    )
    iters = max(len(r["iterations"]) for r in runs["COPL (HAS + PLRI)"])
    fig4_rows = []
    for n in ["Baseline (w/o HAS, w/o PLRI)", "+HAS", "+PLRI", "COPL (HAS + PLRI)", NO_PROJECTION_ROW, PAPER_ROW]:
        for key, label in (("map@avg", "avg mAP"), ("nmi", "NMI x100")):
            scale = 100.0 if key == "nmi" else 1.0
            fig4_rows.append([f"{n}: {label}", *(_mean_std([scale * r["iterations"][i].get(key) for r in runs[n]]) for i in range(iters))])
    fig4 = table(["variant", *(f"iter {i}" for i in range(iters))], fig4_rows)
    header = (
        f"copl bench quality --seeds {args.seeds} --videos {args.videos} --classes {args.classes} "
        f"--epochs {args.epochs} --snippets {args.snippets} --iterations {args.iterations} --duration-scale {args.duration_scale}"
        + "".join(f" --set {item}" for item in getattr(args, "sets", None) or [])
    )
    return "\n\n".join([header, "Ablations (mean ± std over seeds):", ablation, "Across iterations (Fig. 4):", fig4,
                        "HAS variants, last clustering (Table 3):", has_table,
                        f"seeds done: {seeds_done} of {args.seeds}; {time_label} {seconds:.0f} s"])
