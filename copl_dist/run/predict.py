"""`copl predict`: detections for new videos from a trained teacher (registered or a teacher.pt).

The data is imported as `copl run` imports it (into OUT/corpus); the teacher runs on every snippet of
each video; localization uses the inference settings the teacher was trained with; cluster ids become
class names through the checkpoint's cluster_to_class (an unmapped cluster is named as runs name it,
`cluster_07`).
New videos need no annotations: their ground truth, if any, is not read.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from copl_dist.common.errors import InputError


def output_labels(ckpt: dict[str, Any]) -> list[str]:
    """Label of each of the teacher's outputs (an unmapped one: its name in cluster_naming.cluster_names)."""
    from copl_dist.cluster.naming import cluster_names

    names = list(ckpt["class_names"])
    own = cluster_names(len(ckpt["cluster_to_class"]))
    return [names[int(k)] if 0 <= int(k) < len(names) else own[c] for c, k in enumerate(ckpt["cluster_to_class"])]


def predict_corpus(
    ckpt: dict[str, Any], corpus: Any, video_ids: list[str], source: str = "teacher", where: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """{video_id: [{"segment": [s, e], "label", "score"}]} for each video, best first."""
    from copl_dist.config import from_dict
    from copl_dist.method.engine import infer_video
    from copl_dist.method.localize import localize_video
    from copl_dist.run.driver import load_teacher

    cfg = from_dict(ckpt["config"], source=f"{source}: config")
    if corpus.feature_dim != cfg.model.feature_dim:
        raise InputError(
            f"{where or corpus.root}: features have {corpus.feature_dim} dimensions, the teacher {source} expects {cfg.model.feature_dim}"
        )
    teacher = load_teacher(ckpt["state_dict"], int(ckpt["num_classes"]), cfg)
    labels = output_labels(ckpt)
    results: dict[str, list[dict[str, Any]]] = {}
    for vid in video_ids:
        out = infer_video(teacher, corpus.features(vid), cfg.train.beta, cfg.train.topl_ratio)
        dets = localize_video(out.h_cs, out.class_scores, corpus.record(vid).duration_s, cfg.inference)
        results[vid] = [
            {"segment": [round(float(s), 3), round(float(e), 3)], "label": labels[int(c)], "score": float(score)}
            for s, e, c, score in dets
        ]
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or a teacher.pt")
    parser.add_argument("--data", required=True, help="dataset root (as for `copl run`) or a converted corpus")
    parser.add_argument("--out", required=True, help="output folder: detections.json (and corpus/ when data is imported)")
    parser.add_argument("--subset", help="only this subset's videos (default: every video)")
    parser.add_argument("--tracking-uri", help="tracking store of a models:/ URI (default $MLFLOW_TRACKING_URI)")
    parser.add_argument("--allow-pickle", action="store_true", help="allow loading pickled W-TALC object arrays (runs code from the file)")


def run(args: argparse.Namespace) -> int:
    from copl_dist.data.formats import import_dataset, write_detections
    from copl_dist.tracking.registry import load_teacher_checkpoint

    ckpt = load_teacher_checkpoint(args.model, args.tracking_uri)
    if not Path(args.data).exists():
        raise InputError(f"{args.data}: data folder not found")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    from copl_dist.common.atomic import output_folder

    with output_folder(out):
        min_snippets = int(ckpt["config"].get("data", {}).get("min_snippets", 4))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            corpus = import_dataset(args.data, out / "corpus", allow_pickle=args.allow_pickle, min_snippets=min_snippets)
        for w in caught:
            print(f"copl: warning: {w.message}", file=sys.stderr)
        if args.subset is not None and args.subset not in corpus.subsets():
            raise InputError(f"--subset {args.subset}: no such subset in {args.data} (it has: {', '.join(corpus.subsets()) or 'none'})")
        video_ids = corpus.video_ids(args.subset)
        if not video_ids:
            raise InputError(f"{args.data}: no videos to predict")
        results = predict_corpus(ckpt, corpus, video_ids, source=args.model, where=args.data)
        path = out / "detections.json"
        write_detections(path, results)
    count = sum(len(d) for d in results.values())
    print(f"{count} detections for {len(results)} videos: {path.resolve()}")
    return 0
