"""`copl bench robustness`: UTAL, the weakly supervised mode, the plain baseline and a reference
weakly supervised model (ASL's public recipe, method/asl.py) on a grid of corpora from the second
generator (data/synth_i3d.py), each cell one difficulty axis moved from the base cell, over seeds.

Per cell (mean ± std over seeds): UTAL avg mAP and NMI per iteration, the weakly supervised mode's and
ASL's avg mAP, the plain baseline's, UTAL / WTAL at the last iteration, UTAL's class-agnostic mAP
(localization alone) and snippet AUCs of A_cs / A_ca, and four checks per cell (docs/robustness.md). Written
to OUT/robustness.json (every run, after each), OUT/robustness.md and OUT/robustness.png. A second
call with the same settings and --out skips the runs already there (a long grid survives a stop).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from copl_dist.common.atomic import atomic_path, write_json, write_text
from copl_dist.common.errors import InputError
from copl_dist.common.user_json import read_json
from copl_dist.config import PRESET_TIOUS, resolve
from copl_dist.data.corpus import MANIFEST, Corpus
from copl_dist.data.formats import import_dataset
from copl_dist.data.synth_i3d import CELLS, make_i3d_like
from copl_dist.method.asl import detect_asl, train_asl
from copl_dist.method.engine import infer_video, train_loop_per_worker
from copl_dist.run.driver import CoplRun, evaluate, load_teacher, localize_all
from copl_dist.run.plan import check_run_inputs
from copl_dist.run.report import table

MODES = ("utal", "wtal", "baseline", "asl")
SIZES = {
    # A THUMOS-like corpus: 150 training / 100 test videos of 10 classes, trained as the acceptance runs train.
    "acceptance": {"train_videos": 150, "test_videos": 100, "classes": 10, "epochs": 40, "snippets": 256,
                   "iterations": 3, "duration_scale": 1.0, "feature_dim": 2048},
    # Seconds per run: the mechanics of the grid, not its figures (CI).
    "smoke": {"train_videos": 12, "test_videos": 8, "classes": 3, "epochs": 2, "snippets": 32,
              "iterations": 2, "duration_scale": 0.2, "feature_dim": 2048},
}
SETTINGS = ("train_videos", "test_videos", "classes", "epochs", "snippets", "iterations", "duration_scale",
            "feature_dim", "asl_lr", "curve_every", "sets")
# Config keys the benchmark sets from its own flags: a --set of one would be overridden unseen.
OWN_KEYS = {"mode": "--modes", "seed": "--seeds", "iterations": "--iterations", "train.epochs": "--epochs",
            "data.snippets": "--snippets", "model.feature_dim": "--feature-dim", "tracking.enabled": "(always off)"}


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The size (the --size preset, then any explicit flag) and what else fixes a run's result."""
    out = dict(SIZES[args.size])
    for key in out:
        if getattr(args, key, None) is not None:
            out[key] = getattr(args, key)
    out["asl_lr"] = args.asl_lr
    out["curve_every"] = args.curve_every
    for item in args.sets:
        key = item.split("=", 1)[0].strip()
        if key in OWN_KEYS:
            raise InputError(f"--set {item}: {key} is the benchmark's own ({OWN_KEYS[key]}), not a --set")
    out["sets"] = list(args.sets)
    return out


def parse_list(text: str, known: tuple[str, ...] | list[str], what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if items == ["all"]:
        return list(known)
    unknown = [x for x in items if x not in known]
    if not items or unknown:
        raise InputError(f"--{what} {text}: expected 'all' or a comma-separated subset of {', '.join(known)}")
    return list(dict.fromkeys(items))


def _config(s: dict[str, Any], mode: str, seed: int):
    return resolve("thumos14", sets=[*s["sets"], "tracking.enabled=false"], overrides={
        "mode": mode, "seed": seed, "iterations": s["iterations"] if mode == "utal" else 1,
        "train.epochs": s["epochs"], "data.snippets": s["snippets"], "model.feature_dim": s["feature_dim"]})


def _copl(corpus, s: dict[str, Any], mode: str, seed: int) -> dict[str, Any]:
    cfg = _config(s, mode, seed)
    check_run_inputs(cfg, corpus)
    run = CoplRun(cfg, corpus, tracker=None, progress=False)
    curve: list[dict[str, float]] = []
    curve_every = s["curve_every"]
    if mode == "wtal" and curve_every:
        # In this process: Ray Train's workers keep the per-epoch teacher to themselves.
        run.train_fn = _scored_every(train_loop_per_worker, cfg, corpus, curve_every, curve)
    result = run.execute()
    keep = ("iteration", "nmi", "purity", "map@avg", "agnostic_map@avg", "auc_a_cs", "auc_a_ca",
            "num_pseudo_labelled", "num_unlabelled", "seconds")
    out: dict[str, Any] = {"iterations": [{k: it[k] for k in keep if k in it} for it in result.iterations]}
    if mode == "wtal" and curve_every:
        out["curve"] = curve
    return out


def _scored_every(train_fn, cfg, corpus, every: int, curve: list[dict[str, float]]):
    """The weakly supervised training, its teacher scored on the test subset every `every` epochs and
    after the last (a training curve; the run's own result is untouched)."""
    test = corpus.video_ids(cfg.data.test_subset)
    identity = {c: c for c in range(len(corpus.classes))}

    def scored(config: dict[str, Any], report=None, **kwargs):
        def hooked(metrics: dict[str, float], checkpoint: Any = None) -> None:
            if report is not None:
                report(metrics, checkpoint)
            done = int(metrics["epoch"]) + 1  # the engine counts epochs from 0
            if checkpoint is not None and (done % every == 0 or done == cfg.train.epochs):
                teacher = load_teacher(checkpoint["teacher"], config["num_classes"], cfg)
                outputs = {v: infer_video(teacher, corpus.features(v), cfg.train.beta, cfg.train.topl_ratio) for v in test}
                dets = localize_all(corpus, test, cfg, lambda v: (outputs[v].h_cs, outputs[v].class_scores), identity)
                curve.append({"epoch": done, "map@avg": evaluate(corpus, cfg.data.test_subset, dets, PRESET_TIOUS[cfg.preset])["map@avg"]})

        return train_fn(config, report=hooked, **kwargs)

    return scored


def asl_training_set(corpus) -> tuple[list[np.ndarray], np.ndarray]:
    """The training subset's annotated videos: their features and (N, C) multi-hot video labels."""
    train = corpus.video_ids("validation")
    index = {c: i for i, c in enumerate(corpus.classes)}
    labels = np.zeros((len(train), len(corpus.classes)), dtype=np.float32)
    for row, vid in enumerate(train):
        for seg in corpus.segments(vid):
            labels[row, index[seg.label]] = 1.0
    keep = labels.sum(1) > 0
    return [corpus.features(v) for v, k in zip(train, keep) if k], labels[keep]


def _asl(corpus, s: dict[str, Any], seed: int) -> dict[str, Any]:
    """ASL trained on the training subset's true video labels, scored on the test subset."""
    test = corpus.video_ids("test")
    features, labels = asl_training_set(corpus)
    tious = PRESET_TIOUS["thumos14"]

    def score(net) -> dict[str, float]:
        results = {}
        for vid in test:
            dets = detect_asl(net, corpus.features(vid), corpus.record(vid).duration_s)
            results[vid] = [{"segment": [round(a, 3), round(b, 3)], "label": corpus.classes[c], "score": sc}
                            for a, b, c, sc in dets]
        return evaluate(corpus, "test", {"results": results}, tious)

    curve: list[dict[str, float]] = []

    def on_epoch(epoch: int, net) -> None:
        if s["curve_every"] and epoch % s["curve_every"] == 0 and epoch < s["epochs"]:
            curve.append({"epoch": epoch, "map@avg": score(net)["map@avg"]})

    started = time.perf_counter()
    net = train_asl(features, labels, s["epochs"], lr=s["asl_lr"], snippets=s["snippets"], seed=seed,
                    on_epoch=on_epoch)
    final = score(net)
    curve.append({"epoch": s["epochs"], "map@avg": final["map@avg"]})
    record = {"iteration": 0, **{k: final[k] for k in ("map@avg", "agnostic_map@avg")},
              "seconds": time.perf_counter() - started}
    return {"iterations": [record], "curve": curve}


def _read(path: Path) -> dict[str, Any]:
    """A robustness.json with settings and well-formed runs (each a cell, seed, mode and iterations)."""
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list) or not isinstance(doc.get("settings"), dict):
        raise InputError(f"{path}: not a `copl bench robustness` output (expected 'settings' and 'runs')")
    for i, r in enumerate(doc["runs"]):
        if not (isinstance(r, dict) and r.get("cell") in CELLS and isinstance(r.get("seed"), int)
                and r.get("mode") in MODES and isinstance(r.get("iterations"), list) and r["iterations"]
                and all(isinstance(it, dict) and isinstance(it.get("map@avg"), (int, float)) for it in r["iterations"])):
            raise InputError(f"{path}: run {i} is not a complete run (a cell, seed, mode and iterations with avg mAP)")
    return doc


def _load(path: Path, s: dict[str, Any]) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    doc = _read(path)
    if doc.get("settings") != s:
        raise InputError(f"{path}: written with other settings ({', '.join(SETTINGS)} must match); use another --out")
    return doc["runs"]


def merge(folders: list[str], out: Path, cells: list[str]) -> int:
    """One grid from several outputs of the same settings (cells or seeds split over machines)."""
    docs = []
    for folder in folders:
        path = Path(folder) / "robustness.json"
        if not path.is_file():
            raise InputError(f"{path}: not found (expected a `copl bench robustness` output)")
        doc = _read(path)
        if docs and doc["settings"] != docs[0]["settings"]:
            raise InputError(f"{path}: other settings than {folders[0]}/robustness.json ({', '.join(SETTINGS)} must match)")
        docs.append(doc)
    runs = [r for doc in docs for r in doc["runs"]]
    keys = [(r["cell"], r["seed"], r["mode"]) for r in runs]
    if len(set(keys)) != len(keys):
        raise InputError(f"{', '.join(folders)}: a cell, seed and mode appear in more than one output")
    present = [c for c in cells if any(r["cell"] == c for r in runs)]
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "robustness.json", {"settings": docs[0]["settings"], "runs": runs, "merged_from": list(folders)})
    text = report(runs, docs[0]["settings"], present)
    write_text(out / "robustness.md", text + "\n")
    plot(runs, present, out / "robustness.png")
    print(text)
    return 0


def run(args: argparse.Namespace) -> int:
    cells = parse_list(args.cells, list(CELLS), "cells")
    if args.merge:
        return merge(args.merge, Path(args.out), cells)
    s = settings(args)
    modes = parse_list(args.modes, MODES, "modes")
    for mode in ("utal", "wtal", "baseline"):  # a bad --set fails here, before any corpus is made
        _config(s, mode, args.first_seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "robustness.json"
    runs = _load(path, s)
    write_json(path, {"settings": s, "runs": runs})  # before any corpus: a later call with other settings is refused
    done = {(r["cell"], r["seed"], r["mode"]) for r in runs}
    machine = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
               "load_at_start": [round(v, 2) for v in os.getloadavg()]}
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    for seed in seeds:
        for cell in cells:
            todo = [m for m in modes if (cell, seed, m) not in done]
            if not todo:
                continue
            data = out / "data" / f"{cell}-seed{seed}"
            if not (data / "annotations.json").exists():
                make_i3d_like(data, cell, train_videos=s["train_videos"], test_videos=s["test_videos"],
                              classes=s["classes"], seed=seed, duration_scale=s["duration_scale"],
                              feature_dim=s["feature_dim"])
            stored = out / "data" / f"{cell}-seed{seed}-corpus"
            corpus = Corpus.open(stored) if (stored / MANIFEST).is_file() else import_dataset(data, stored)
            for mode in todo:
                t0 = time.perf_counter()
                record = _asl(corpus, s, seed) if mode == "asl" else _copl(corpus, s, mode, seed)
                record.update({"cell": cell, "seed": seed, "mode": mode, "wall_s": time.perf_counter() - t0,
                               "machine": machine})
                runs.append(record)
                write_json(path, {"settings": s, "runs": runs})
                its = record["iterations"]
                print(f"{cell:16s} seed {seed} {mode:8s} avg mAP " + " -> ".join(f"{it['map@avg']:.2f}" for it in its)
                      + (f"  NMI {its[0]['nmi']:.3f} -> {its[-1]['nmi']:.3f}" if "nmi" in its[0] else "")
                      + f"  ({record['wall_s']:.0f} s)", flush=True)
    text = report(runs, s, cells)
    write_text(out / "robustness.md", text + "\n")
    plot(runs, cells, out / "robustness.png")
    print(text)
    return 0


def _stats(values: list[float]) -> tuple[float, float] | None:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return None
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def _fmt(st: tuple[float, float] | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if st is None else f"{scale * st[0]:.{digits}f} ± {scale * st[1]:.{digits}f}"


def summarize(runs: list[dict[str, Any]], cell: str) -> dict[str, Any]:
    """A cell's figures over its seeds (means; per-seed ratios averaged) and the four checks."""
    def of(mode: str) -> list[dict[str, Any]]:
        return sorted((r for r in runs if r["cell"] == cell and r["mode"] == mode), key=lambda r: r["seed"])

    utal, wtal, asl, base = of("utal"), of("wtal"), of("asl"), of("baseline")
    last = lambda rs, k: [r["iterations"][-1].get(k) for r in rs]  # noqa: E731
    first = lambda rs, k: [r["iterations"][0].get(k) for r in rs]  # noqa: E731
    w_by_seed = {r["seed"]: r["iterations"][-1]["map@avg"] for r in wtal}
    ratio = [r["iterations"][-1]["map@avg"] / w_by_seed[r["seed"]] for r in utal if w_by_seed.get(r["seed"])]
    out: dict[str, Any] = {
        "seeds": len({r["seed"] for r in runs if r["cell"] == cell}),
        "utal_first": _stats(first(utal, "map@avg")), "utal_last": _stats(last(utal, "map@avg")),
        "nmi_first": _stats(first(utal, "nmi")), "nmi_last": _stats(last(utal, "nmi")),
        "wtal": _stats(last(wtal, "map@avg")), "asl": _stats(last(asl, "map@avg")),
        "baseline": _stats(last(base, "map@avg")), "ratio": _stats(ratio),
        "agnostic_first": _stats(first(utal, "agnostic_map@avg")), "agnostic_last": _stats(last(utal, "agnostic_map@avg")),
        "wtal_agnostic": _stats(last(wtal, "agnostic_map@avg")),
        "auc_cs": _stats(last(utal, "auc_a_cs")), "auc_ca": _stats(last(utal, "auc_a_ca")),
    }

    def check(a, b, test):
        return None if a is None or b is None else bool(test(a[0], b[0]))

    out["checks"] = {
        "WTAL within 5 of ASL": check(out["wtal"], out["asl"], lambda w, a: w >= a - 5.0),
        "UTAL >= 80% of WTAL": None if out["ratio"] is None else out["ratio"][0] >= 0.8,
        "NMI rises": check(out["nmi_last"], out["nmi_first"], lambda a, b: a > b),
        "mAP not lower at the end": check(out["utal_last"], out["utal_first"], lambda a, b: a >= b),
    }
    return out


def report(runs: list[dict[str, Any]], s: dict[str, Any], cells: list[str]) -> str:
    sums = {c: summarize(runs, c) for c in cells}
    rows = []
    for c in cells:
        m = sums[c]
        rows.append([c, str(m["seeds"]), f"{_fmt(m['utal_first'])} -> {_fmt(m['utal_last'])}",
                     f"{_fmt(m['nmi_first'], 100, 1)} -> {_fmt(m['nmi_last'], 100, 1)}", _fmt(m["wtal"]), _fmt(m["asl"]),
                     _fmt(m["baseline"]), _fmt(m["ratio"], 100, 0) + ("%" if m["ratio"] else ""),
                     f"{_fmt(m['agnostic_first'])} -> {_fmt(m['agnostic_last'])}", _fmt(m["wtal_agnostic"]),
                     f"{_fmt(m['auc_cs'], 1, 2)} / {_fmt(m['auc_ca'], 1, 2)}"])
    main = table(["cell", "seeds", "UTAL avg mAP first -> last", "NMI x100 first -> last", "WTAL", "ASL", "plain",
                  "UTAL / WTAL", "UTAL agnostic mAP first -> last", "WTAL agnostic", "AUC A_cs / A_ca (last)"], rows)
    names = list(next(iter(sums.values()))["checks"]) if sums else []
    mark = {True: "yes", False: "NO", None: "-"}
    checks = table(["cell", *names], [[c, *(mark[sums[c]["checks"][n]] for n in names)] for c in cells])
    ratios = [sums[c]["ratio"][0] for c in cells if sums[c]["ratio"]]
    median = f"median cell's UTAL / WTAL: {100 * float(np.median(ratios)):.0f}% (target >= 90%)" if ratios else ""
    sizes = " ".join(f"--{k.replace('_', '-')} {s[k]:g}" for k in SIZES["acceptance"])
    seeds = sorted({r["seed"] for r in runs if r["cell"] in cells})
    command = (f"copl bench robustness --cells {','.join(cells)} {sizes} --asl-lr {s['asl_lr']:g} "
               f"--curve-every {s.get('curve_every', 0)}" + "".join(f" --set {x}" for x in s["sets"])
               + f"\nseeds in these tables: {', '.join(map(str, seeds)) or 'none'}")
    curves = _curves_table(runs, cells)
    return "\n\n".join(x for x in [command, "Per cell, mean ± std over seeds (avg mAP over tIoU 0.1:0.7, %):", main,
                                   "Checks (means over seeds):", checks, median,
                                   "Training curves, avg mAP after the epochs each column names (mean over seeds):" if curves else "", curves] if x)


def curve_means(runs: list[dict[str, Any]], cell: str, mode: str) -> dict[int, float]:
    """Epoch -> avg mAP, the mean over the seeds that scored that epoch."""
    points: dict[int, list[float]] = {}
    for r in runs:
        if r["cell"] == cell and r["mode"] == mode:
            for p in r.get("curve", []):
                points.setdefault(int(p["epoch"]), []).append(float(p["map@avg"]))
    return {e: float(np.mean(v)) for e, v in sorted(points.items())}


def _curves_table(runs: list[dict[str, Any]], cells: list[str]) -> str:
    rows = [(c, m, curve_means(runs, c, m)) for c in cells for m in ("wtal", "asl")]
    rows = [r for r in rows if r[2]]
    if not rows:
        return ""
    epochs = sorted({e for _, _, pts in rows for e in pts})
    return table(["cell", "model", *(f"{e}" for e in epochs)],
                 [[c, {"wtal": "WTAL", "asl": "ASL"}[m], *(f"{pts[e]:.1f}" if e in pts else "-" for e in epochs)]
                  for c, m, pts in rows])


def plot(runs: list[dict[str, Any]], cells: list[str], path: Path) -> None:
    """avg mAP per cell (UTAL first / last iteration, WTAL, ASL, plain) and NMI first / last."""
    sums = {c: summarize(runs, c) for c in cells}
    fig = Figure(figsize=(max(6.0, 1.1 * len(cells) + 2), 6.4))
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    bars = [("utal_first", "UTAL iteration 0"), ("utal_last", "UTAL last"), ("wtal", "WTAL"), ("asl", "ASL reference"),
            ("baseline", "plain baseline")]
    x = np.arange(len(cells))
    width = 0.8 / len(bars)
    for i, (key, label) in enumerate(bars):
        vals = [sums[c][key] or (np.nan, 0.0) for c in cells]
        ax1.bar(x + (i - len(bars) / 2 + 0.5) * width, [v[0] for v in vals], width, yerr=[v[1] for v in vals],
                label=label, capsize=2)
    ax1.set_ylabel("avg mAP (%)")
    ax1.legend(fontsize=7, ncol=3)
    for j, (key, label) in enumerate((("nmi_first", "NMI iteration 0"), ("nmi_last", "NMI last"))):
        vals = [sums[c][key] or (np.nan, 0.0) for c in cells]
        ax2.bar(x + (j - 0.5) * 0.35, [v[0] for v in vals], 0.35, yerr=[v[1] for v in vals], label=label, capsize=2)
    ax2.set_ylabel("NMI")
    ax2.set_ylim(0, 1)
    ax2.legend(fontsize=7)
    ax2.set_xticks(x)
    ax2.set_xticklabels(cells, rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
