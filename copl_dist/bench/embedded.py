"""`copl bench embedded`: the embedded default of `copl run` (no --data) over seeds, UTAL beside its references.

Each seed runs `copl run --out OUT/seedS-MODE --overwrite --seed S --mode MODE --no-progress` (plus
any --set) for each mode, in this process and through the same plan -> prepare -> execute as the
command, so the corpus and the schedule are the ones `copl run` sizes from run/plan.py
(EMBEDDED_SYNTH, EMBEDDED_OVERRIDES); no size is set here. Printed per seed and as mean ± std: NMI
and avg mAP per iteration of the UTAL run, the weakly-supervised (wtal) and plain-baseline avg mAP,
the last iteration's UTAL / WTAL ratio, and each run's wall seconds (plan to outputs; the `copl`
command adds its start-up). Written to OUT/embedded.json and OUT/embedded.md after every seed.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from copl_dist.common.atomic import write_json, write_text
from copl_dist.common.errors import InputError
from copl_dist.run.plan import (
    EMBEDDED_SYNTH,
    RunRequest,
    execute,
    plan_run,
    prepare,
    resolve_config,
)
from copl_dist.run.report import table

MODES = ("utal", "wtal", "baseline")


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or "utal" not in modes:
        raise InputError(f"--modes {text}: expected utal and any of {', '.join(MODES[1:])}, comma-separated")
    return list(dict.fromkeys(modes))


def run_request(out: Path, seed: int, mode: str, sets: list[str]) -> RunRequest:
    """`copl run --out OUT --overwrite --seed S --mode MODE --no-progress [--set ...]` as a request."""
    return RunRequest(out=out, sets=tuple(sets), overrides={"mode": mode, "seed": seed}, overwrite=True, progress=False)


def command_line(seed: int | str, mode: str, sets: list[str], out: str = "OUT") -> str:
    return (f"copl run --out {out}/seed{seed}-{mode} --overwrite --seed {seed} --mode {mode} --no-progress"
            + "".join(f" --set {item}" for item in sets))


def sizes(sets: list[str]) -> dict[str, Any]:
    """What the runs are sized to: the embedded corpus and the schedule the plan resolves (with --set)."""
    cfg = resolve_config(run_request(Path("unused"), 0, "utal", sets))
    return {**EMBEDDED_SYNTH, "preset": cfg.preset, "iterations": cfg.iterations, "epochs": cfg.train.epochs,
            "snippets": cfg.data.snippets, "vote_last": cfg.has.vote_last, "workers": cfg.distributed.workers}


def run(args: argparse.Namespace) -> int:
    modes = parse_modes(args.modes)
    out = Path(args.out)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    size = sizes(args.sets)  # a bad --set fails here, before any corpus is made
    machine = {"cpus": os.cpu_count(), "processor": _processor(),
               "load_at_start": [round(v, 2) for v in os.getloadavg()]}
    out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    for seed in seeds:
        for mode in modes:
            t0 = time.perf_counter()
            plan = plan_run(run_request(out / f"seed{seed}-{mode}", seed, mode, args.sets))
            outcome = execute(prepare(plan))
            wall_s = time.perf_counter() - t0
            iterations = [{k: it.get(k) for k in ("iteration", "nmi", "map@avg", "seconds")} for it in outcome.iterations]
            runs.append({"seed": seed, "mode": mode, "iterations": iterations, "final": outcome.final, "wall_s": wall_s})
            print(_run_line(runs[-1]), flush=True)
        machine["load_at_end"] = [round(v, 2) for v in os.getloadavg()]
        doc = {"command": _header(args), "sets": list(args.sets), "sizes": size, "modes": modes, "seeds": seeds, "machine": machine,
               "runs": runs, "seconds": time.perf_counter() - started}
        text = report(doc)
        write_text(out / "embedded.md", text + "\n")
        write_json(out / "embedded.json", doc)
    print(text)
    return 0


def _header(args: argparse.Namespace) -> str:
    return (f"copl bench embedded --seeds {args.seeds} --first-seed {args.first_seed} --modes {args.modes}"
            + "".join(f" --set {item}" for item in args.sets))


def _run_line(r: dict[str, Any]) -> str:
    nmi = " ".join(f"{it['nmi']:.3f}" for it in r["iterations"] if it.get("nmi") is not None)
    maps = " ".join(f"{it['map@avg']:.2f}" for it in r["iterations"])
    return f"seed {r['seed']} {r['mode']:8s}  NMI {nmi or '-':17s}  avg mAP {maps:20s}  {r['wall_s']:.0f} s"


def _mean_std(values: list[float | None], spec: str) -> str:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return "-"
    return f"{format(arr.mean(), spec)} ± {format(arr.std(ddof=1) if arr.size > 1 else 0.0, spec)}"


def report(doc: dict[str, Any]) -> str:
    """The per-seed table and its mean ± std row, under the command, the sizes and the machine."""
    size, modes = doc["sizes"], doc["modes"]
    by = {(r["seed"], r["mode"]): r for r in doc["runs"]}
    seeds = [s for s in doc["seeds"] if all((s, m) in by for m in modes)]
    iters = size["iterations"]
    headers = [*(f"NMI it{i}" for i in range(iters)), *(f"mAP it{i}" for i in range(iters))]
    if "wtal" in modes:
        headers += ["WTAL mAP", "UTAL/WTAL"]
    if "baseline" in modes:
        headers += ["baseline mAP"]
    headers += [f"{m} s" for m in modes]
    columns: list[list[float | None]] = []
    for seed in seeds:
        utal = by[(seed, "utal")]["iterations"]
        row: list[float | None] = [*(it.get("nmi") for it in utal), *(it.get("map@avg") for it in utal)]
        if "wtal" in modes:
            wtal = by[(seed, "wtal")]["final"].get("map@avg")
            row += [wtal, 100.0 * utal[-1]["map@avg"] / wtal if wtal else None]
        if "baseline" in modes:
            row += [by[(seed, "baseline")]["final"].get("map@avg")]
        row += [by[(seed, m)]["wall_s"] for m in modes]
        columns.append(row)
    specs = [*([".3f"] * iters), *([".2f"] * iters)] + ([".2f", ".0f"] if "wtal" in modes else []) \
        + ([".2f"] if "baseline" in modes else []) + [".0f"] * len(modes)
    rows = [[f"seed {s}", *(format(v, f) if v is not None else "-" for v, f in zip(row, specs))] for s, row in zip(seeds, columns)]
    rows.append(["mean ± std", *(_mean_std([row[i] for row in columns], f) for i, f in enumerate(specs))])
    machine = doc["machine"]
    lines = [
        doc["command"],
        f"each run: {command_line('S', 'MODE', doc['sets'])}",
        (f"embedded default: synthetic {size['preset']} corpus, {size['videos']} videos per subset, {size['classes']} classes, "
         f"duration scale {size['duration_scale']:g}; {size['iterations']} iterations of {size['epochs']} epochs at "
         f"{size['snippets']} snippets, has.vote_last {size['vote_last']}, workers {size['workers']}"),
        (f"machine: {machine['cpus']} CPUs ({machine['processor']}), load average {_load(machine.get('load_at_start'))} "
         f"at the start, {_load(machine.get('load_at_end'))} at the end"),
        "",
        "avg mAP in % (tIoU 0.1-0.7); UTAL/WTAL in % of the last iteration; s: wall seconds per run",
        "",
        table(["seed", *headers], rows),
        "",
        f"seeds done: {len(seeds)} of {len(doc['seeds'])}; total time {doc['seconds']:.0f} s",
    ]
    return "\n".join(lines)


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load(values: list[float] | None) -> str:
    return " / ".join(f"{v:.2f}" for v in values) if values else "-"
