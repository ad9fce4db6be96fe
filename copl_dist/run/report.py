"""Plain-text tables printed at the end of a run and by the benchmarks."""

from __future__ import annotations

from typing import Any

from copl_dist.config import CoplConfig


def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def results_table(result: Any, cfg: CoplConfig) -> str:
    """Per-iteration clustering and mAP, then the final mAP at each tIoU."""
    headers = ["iter", "purity", "NMI", "ARI", "|P|", "|U|", "loss", "avg mAP", "sec"]
    rows = []
    for it in result.iterations:
        rows.append(
            [
                str(it["iteration"]),
                _fmt(it.get("purity")),
                _fmt(it.get("nmi")),
                _fmt(it.get("ari")),
                _fmt(it.get("num_pseudo_labelled")),
                _fmt(it.get("num_unlabelled")),
                _fmt(it.get("losses", {}).get("loss")),
                _fmt(it.get("map@avg"), ".2f"),
                _fmt(it.get("seconds"), ".0f"),
            ]
        )
    parts = [f"COPL {cfg.mode} ({cfg.preset}, seed {cfg.seed})", table(headers, rows)]
    if result.final:
        keys = [k for k in result.final if k != "map@avg"] + ["map@avg"]
        parts.append(table([k.replace("map@", "mAP@") for k in keys], [[_fmt(result.final.get(k), ".2f") for k in keys]]))
    elif result.iterations and "agnostic_map@avg" in result.iterations[-1]:
        # An annotated test subset, clusters without class names (naming.naming_note).
        last = result.iterations[-1]
        keys = [k for k in last if k.startswith("agnostic_map@") and k != "agnostic_map@avg"] + ["agnostic_map@avg"]
        parts.append("class-agnostic mAP (the clusters have no class names to score by class):")
        parts.append(table([k.replace("agnostic_map@", "mAP@") for k in keys], [[_fmt(last[k], ".2f") for k in keys]]))
    else:
        parts.append("(no mAP: the test subset has no annotations)")
    return "\n".join(parts)
