"""Importers of the formats users have on disk, and the detections JSON.

Layouts `import_dataset` recognises in `src` (METHOD.md, "Interchange formats"):
- an existing corpus (corpus.json): opened as it is;
- ActivityNet-style: one *.json annotation file ({"database": ...}) with features in
  features/VIDEO.npy (T, D), in rgb/VIDEO.npy + flow/VIDEO.npy (T, D/2 each), or VIDEO.npy in src;
- W-TALC bundle: NAME-I3D-JOINTFeatures.npy (object array of (T, 2048)) beside NAME-Annotations/
  (index-aligned videoname, subset, segments, labels, duration[, classlist] .npy files).

Every video is checked before anything is written; features are checked again for NaN/Inf while
they are copied, and a failure then removes the half-written corpus.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from copl_dist.common.atomic import write_text
from copl_dist.common.errors import InputError, parse_number
from copl_dist.common.user_json import read_json
from copl_dist.data.corpus import MANIFEST, Corpus, Segment, VideoRecord, write_corpus

WTALC_FEATURES_SUFFIX = "-I3D-JOINTFeatures.npy"
WTALC_ANNOTATIONS_SUFFIX = "-Annotations"
WTALC_FILES = ("videoname", "subset", "duration", "segments", "labels")


@dataclass(frozen=True)
class AnnotatedVideo:
    """One video as an annotation file describes it (duration None: derive it from features)."""

    video_id: str
    subset: str
    duration_s: float | None
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class _FeaturePart:
    name: str  # the file named in messages
    load: Callable[[], np.ndarray]  # cheap to call: memory-maps .npy files


def import_dataset(
    src: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    allow_pickle: bool = False,
    min_snippets: int = 4,
    snippets_per_second: float = 25 / 16,
    open_corpus: bool = True,
) -> Corpus:
    """Convert `src` into a corpus at `out_dir` (or open `src` if it already is a corpus).

    `snippets_per_second` gives a video's duration as T / rate where its annotation file has no
    duration (gt.json of ASL/AICL/UM); 25/16 is I3D on 16-frame snippets of 25 fps video.
    `open_corpus`: where `src` already is a corpus, return it as it is (`copl run --data`, resume)
    or, False, refuse it: `copl import` promises a corpus at `out_dir` and would write nothing there.
    """
    src = Path(src)
    if not src.exists():
        raise InputError(f"{src}: no such file or directory")
    # ActivityNet JSON states each video's real duration, so a segment that is empty or starts past
    # it is a data error. W-TALC bundles derive durations from feature counts and ship known quirks
    # (30 THUMOS segments start past the recorded end, 10 ActivityNet 1.2 ones are [0, 0]): there
    # such segments are dropped with a warning that counts them.
    strict = True
    if src.is_file() and src.suffix == ".json":
        videos, parts = _activitynet_inputs(src.parent, src, allow_pickle=allow_pickle)
    elif (src / MANIFEST).is_file():
        if not open_corpus:
            raise InputError(
                f"{src}: already a corpus (made by `copl import`), nothing to import; "
                f"`copl run --data {src}` takes it as it is"
            )
        corpus = Corpus.open(src)
        # Its features read now (run and predict read them all anyway), so that NaN written into a
        # shard by hand is refused before the command writes anything.
        corpus.check_features()
        return corpus
    elif (bundle := _find_wtalc(src)) is not None:
        videos, parts = _wtalc_inputs(*bundle, allow_pickle=allow_pickle)
        strict = False
    else:
        jsons = sorted(p for p in src.glob("*.json") if p.name != MANIFEST) if src.is_dir() else []
        if len(jsons) > 1:
            names = ", ".join(p.name for p in jsons)
            raise InputError(f"{src}: {len(jsons)} annotation files ({names}); expected one")
        if not jsons:
            raise InputError(
                f"{src}: unknown layout; expected corpus.json, one ActivityNet-style *.json "
                f"with features, or a W-TALC bundle (*{WTALC_FEATURES_SUFFIX} beside "
                f"*{WTALC_ANNOTATIONS_SUFFIX}/)"
            )
        videos, parts = _activitynet_inputs(src, jsons[0], allow_pickle=allow_pickle)
    return _convert(videos, parts, out_dir, str(src), min_snippets, snippets_per_second, strict)


def _convert(
    videos: list[AnnotatedVideo],
    parts: dict[str, list[_FeaturePart]],
    out_dir: str | os.PathLike[str],
    source: str,
    min_snippets: int,
    snippets_per_second: float,
    strict: bool = True,
) -> Corpus:
    # Pass 1: shapes and dtypes from .npy headers (memory maps), durations, segments.
    videos = sorted(videos, key=lambda v: v.video_id)
    feature_dim = 0
    num_snippets: dict[str, int] = {}
    durations: dict[str, float] = {}
    for video in videos:
        arrays = [(p.name, p.load()) for p in parts[video.video_id]]
        t, width = _check_shapes(video.video_id, arrays, feature_dim)
        feature_dim = feature_dim or width
        if t < min_snippets:
            raise InputError(
                f"{arrays[0][0]}: video '{video.video_id}' has {t} snippets, "
                f"fewer than min_snippets={min_snippets}"
            )
        num_snippets[video.video_id] = t
        durations[video.video_id] = (
            video.duration_s if video.duration_s is not None else t / snippets_per_second
        )
    segments = clip_segments([s for v in videos for s in v.segments], durations, source, strict)
    # A video's labels are all its annotated classes, dropped segments' included: a wrong
    # duration or an empty segment does not make the class absent from the video.
    records = [
        VideoRecord(v.video_id, v.subset, durations[v.video_id], num_snippets[v.video_id],
                    tuple(sorted({s.label for s in v.segments})))
        for v in videos
    ]

    # Pass 2: read each video's values once, while writing it.
    def feature_source(video_id: str) -> np.ndarray:
        arrays = []
        for part in parts[video_id]:
            with np.errstate(over="ignore"):  # float64 beyond float32's range: caught below as Inf
                x = np.asarray(part.load(), dtype=np.float32)
            if not np.isfinite(x).all():
                raise InputError(f"{part.name}: contains NaN or Inf (video '{video_id}')")
            arrays.append(x)
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=1)

    return write_corpus(out_dir, records, segments, feature_source)


def _check_shapes(
    video_id: str, arrays: list[tuple[str, np.ndarray]], feature_dim: int
) -> tuple[int, int]:
    """(T, D) of a video's features, its parts 2-D floats of one length; D as the others'."""
    for name, a in arrays:
        if a.ndim != 2:
            raise InputError(
                f"{name}: features of shape {a.shape}, expected (T, D) (video '{video_id}')"
            )
        if a.dtype.kind != "f":
            raise InputError(
                f"{name}: features of dtype {a.dtype}, expected floating point (video '{video_id}')"
            )
    if len(arrays) == 2 and arrays[0][1].shape != arrays[1][1].shape:
        (rgb_name, rgb), (flow_name, flow) = arrays
        raise InputError(
            f"video '{video_id}': {rgb_name} has shape {rgb.shape} but {flow_name} has {flow.shape}"
        )
    width = sum(a.shape[1] for _, a in arrays)
    name = arrays[0][0]
    if feature_dim and width != feature_dim:
        raise InputError(
            f"{name}: features {width} wide, expected {feature_dim} like the other videos "
            f"(video '{video_id}')"
        )
    if width == 0 or width % 2:
        # The model splits features into [RGB | Flow] halves.
        raise InputError(f"{name}: features {width} wide, expected an even width [RGB | Flow]")
    return int(arrays[0][1].shape[0]), int(width)


def clip_segments(
    segments: Iterable[Segment], durations: Mapping[str, float], source: str, strict: bool = True
) -> list[Segment]:
    """Validate segments against their videos' durations; clip those ending past the end.

    A non-finite time, a negative start or end < start is an InputError. A segment that only ends
    past its video's duration is clipped to it, and one warning counts them. `strict`: a
    zero-length segment or one starting at or after the end is an InputError. Not strict (W-TALC
    bundles): such segments are dropped and counted in warnings (W-TALC's THUMOS test set has 26
    starting past the end, ActivityNet 1.2 has 10 zero-length ones, mostly [0, 0]).
    """
    kept: list[Segment] = []
    past_end = wholly_past = zero_length = 0
    for s in segments:
        where = f"{source}: video '{s.video_id}': segment [{s.start_s}, {s.end_s}] ({s.label})"
        if not (math.isfinite(s.start_s) and math.isfinite(s.end_s)):
            raise InputError(f"{where} is not finite")
        if s.end_s < s.start_s or (strict and s.end_s == s.start_s):
            raise InputError(f"{where} ends {'before' if s.end_s < s.start_s else 'where'} it starts")
        if s.start_s < 0:
            raise InputError(f"{where} starts before 0 s")
        duration = durations[s.video_id]
        if s.end_s > duration:
            past_end += 1
            if s.start_s >= duration:
                if strict:
                    raise InputError(f"{where} starts after the video ends ({duration:g} s)")
                wholly_past += 1
                continue
            s = Segment(s.video_id, s.start_s, float(duration), s.label)
        elif s.end_s == s.start_s:
            zero_length += 1
            continue
        kept.append(s)
    if past_end:
        detail = f" ({wholly_past} of them start after it and were dropped)" if wholly_past else ""
        warnings.warn(
            f"{source}: clipped {past_end} segments that end after their video's duration{detail}",
            stacklevel=2,
        )
    if zero_length:
        warnings.warn(f"{source}: dropped {zero_length} zero-length segments", stacklevel=2)
    return kept


def _activitynet_inputs(
    root: Path, json_path: Path, allow_pickle: bool = False
) -> tuple[list[AnnotatedVideo], dict[str, list[_FeaturePart]]]:
    videos = _parse_database(read_json(json_path), json_path)
    if not videos:
        raise InputError(f"{json_path}: 'database' has no videos; nothing to import")
    if (root / "features").is_dir():
        dirs = [root / "features"]
    elif (root / "rgb").is_dir() or (root / "flow").is_dir():
        for d in ("rgb", "flow"):
            if not (root / d).is_dir():
                raise InputError(f"{root / d}: missing feature folder (rgb/ and flow/ go together)")
        dirs = [root / "rgb", root / "flow"]
    else:
        dirs = [root]
    missing = [d / f"{v.video_id}.npy" for v in videos for d in dirs]
    missing = [p for p in missing if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"{missing[0]}: missing feature file{more}")
    parts = {
        v.video_id: [_npy_part(d / f"{v.video_id}.npy", allow_pickle) for d in dirs] for v in videos
    }
    return videos, parts


def _npy_part(path: Path, allow_pickle: bool) -> _FeaturePart:
    return _FeaturePart(str(path), lambda: load_npy(path, allow_pickle, mmap=True))


def load_ground_truth(path: str | os.PathLike[str]) -> dict[str, Any]:
    """ActivityNet-style ground truth with float segments (and durations where present)."""
    path = Path(path)
    database: dict[str, Any] = {}
    for v in _parse_database(read_json(path), path):
        entry: dict[str, Any] = {"subset": v.subset}
        if v.duration_s is not None:
            entry["duration"] = v.duration_s
        entry["annotations"] = [
            {"segment": [s.start_s, s.end_s], "label": s.label} for s in v.segments
        ]
        database[v.video_id] = entry
    return {"database": database}


def _parse_database(obj: Any, path: Path) -> list[AnnotatedVideo]:
    if not isinstance(obj, dict) or not isinstance(obj.get("database"), dict):
        raise InputError(f"{path}: no 'database' object; not an ActivityNet-style annotation file")
    videos = []
    for vid, entry in obj["database"].items():
        where = f"{path}: video '{vid}'"
        check_video_id(vid, where)
        if not isinstance(entry, dict):
            raise InputError(f"{where}: entry is not an object")
        subset = entry.get("subset")
        if not isinstance(subset, str):
            raise InputError(f"{where}: no 'subset' string")
        duration = None
        if entry.get("duration") is not None:
            duration = _duration(entry["duration"], where)
        annotations = entry.get("annotations", [])
        if not isinstance(annotations, list):
            raise InputError(f"{where}: 'annotations' is not a list")
        segments = []
        for a in annotations:
            seg = a.get("segment") if isinstance(a, dict) else None
            label = a.get("label") if isinstance(a, dict) else None
            if not isinstance(seg, list) or len(seg) != 2 or not isinstance(label, str):
                raise InputError(
                    f"{where}: annotation {a!r} lacks 'segment': [start, end] or 'label'"
                )
            if not label.strip():
                raise InputError(f"{where}: annotation {a!r} has an empty label")
            start, end = (parse_number(x, f"{where}: segment value") for x in seg)
            segments.append(Segment(str(vid), start, end, label))
        videos.append(AnnotatedVideo(str(vid), subset, duration, tuple(segments)))
    return videos


def check_video_id(vid: str, where: str) -> None:
    """A video id names its feature file (`features/ID.npy`): no path separators, no '..', not empty,
    so that an id cannot point at a file outside the data folder."""
    if not vid or vid in (".", "..") or "/" in vid or "\\" in vid or "\x00" in vid:
        raise InputError(f"{where}: not a usable video id (it names a feature file: no '/', '\\' or '..')")


def _duration(value: Any, where: str) -> float:
    duration = parse_number(value, f"{where}: duration")
    # NaN fails every comparison and Inf passes `> 0`: either would reach training as a time scale.
    if not math.isfinite(duration):
        raise InputError(f"{where}: duration {duration} is not finite")
    if duration <= 0:
        raise InputError(f"{where}: duration {duration} is not positive")
    return duration


def _scalar(value: Any) -> Any:
    """A numpy element as a plain Python value (bytes decoded), for parse_number and for messages."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value


def _find_wtalc(src: Path) -> tuple[Path, Path] | None:
    """(features file, annotations folder) of a W-TALC bundle in src, or None."""
    if not src.is_dir():
        return None
    prefixes = {
        p.name.removesuffix(suffix)
        for suffix in (WTALC_FEATURES_SUFFIX, WTALC_ANNOTATIONS_SUFFIX)
        for p in src.glob("*" + suffix)
    }
    if not prefixes:
        return None
    if len(prefixes) > 1:
        names = ", ".join(sorted(prefixes))
        raise InputError(f"{src}: several W-TALC bundles ({names}); expected one")
    prefix = prefixes.pop()
    features = src / (prefix + WTALC_FEATURES_SUFFIX)
    annotations = src / (prefix + WTALC_ANNOTATIONS_SUFFIX)
    if not features.is_file():
        raise InputError(f"{features}: missing feature file of the W-TALC bundle")
    if not annotations.is_dir():
        raise InputError(f"{annotations}: missing annotation folder of the W-TALC bundle")
    return features, annotations


def load_wtalc_annotations(
    ann_dir: str | os.PathLike[str], allow_pickle: bool = False
) -> list[AnnotatedVideo]:
    """The videos of a W-TALC annotation folder, in file (index) order."""
    ann_dir = Path(ann_dir)
    arrays = {name: load_npy(ann_dir / f"{name}.npy", allow_pickle) for name in WTALC_FILES}
    for name, a in arrays.items():
        if a.ndim == 0:  # len() of a 0-d array is a TypeError
            raise InputError(f"{ann_dir / name}.npy: a single value, expected one entry per video")
    names = _texts(arrays["videoname"])
    n = len(names)
    if n == 0:
        raise InputError(f"{ann_dir / 'videoname.npy'}: no videos; nothing to import")
    if len(set(names)) != n:
        raise InputError(f"{ann_dir / 'videoname.npy'}: video names repeat")
    # Converted one by one below, so that a bad value is named with its video.
    durations = arrays["duration"].reshape(-1)
    subsets = _texts(arrays["subset"])
    lengths = {"subset": len(subsets), "duration": len(durations)}
    lengths |= {name: len(arrays[name]) for name in ("segments", "labels")}
    for name, length in lengths.items():
        if length != n:
            raise InputError(f"{ann_dir / name}.npy: {length} entries, videoname.npy has {n}")
    classlist = ann_dir / "classlist.npy"
    classes = set(_texts(load_npy(classlist, allow_pickle))) if classlist.is_file() else None
    videos = []
    for i, vid in enumerate(names):
        where = f"{ann_dir}: video '{vid}'"
        check_video_id(vid, f"{ann_dir / 'videoname.npy'}: video '{vid}'")
        entry = arrays["segments"][i]
        if not isinstance(entry, (list, tuple, np.ndarray)) or getattr(entry, "ndim", 1) == 0:
            raise InputError(
                f"{ann_dir / 'segments.npy'}: video '{vid}': entry {_scalar(entry)!r} is not a list "
                "of [start, end] segments"
            )
        # dtype=object: ragged contents are reported below rather than failing in numpy.
        segs, labels = list(entry), _texts(np.asarray(arrays["labels"][i], dtype=object))
        if len(segs) != len(labels):
            raise InputError(f"{where}: {len(segs)} segments but {len(labels)} labels")
        segments = []
        for seg, label in zip(segs, labels):
            if classes is not None and label not in classes:
                raise InputError(f"{where}: label '{label}' is not in classlist.npy")
            values = np.asarray(seg, dtype=object).reshape(-1)
            if values.size != 2:
                raise InputError(f"{where}: segment {seg!r} is not [start, end]")
            start, end = (parse_number(_scalar(x), f"{where}: segment value") for x in values)
            segments.append(Segment(vid, start, end, label))
        duration = _duration(_scalar(durations[i]), f"{ann_dir / 'duration.npy'}: video '{vid}'")
        videos.append(AnnotatedVideo(vid, subsets[i], duration, tuple(segments)))
    return videos


def _wtalc_inputs(
    features_path: Path, ann_dir: Path, allow_pickle: bool
) -> tuple[list[AnnotatedVideo], dict[str, list[_FeaturePart]]]:
    videos = load_wtalc_annotations(ann_dir, allow_pickle)
    features = load_npy(features_path, allow_pickle)
    if features.ndim == 0:  # len() of a 0-d array is a TypeError
        raise InputError(f"{features_path}: a single value, expected one feature array per video")
    if len(features) != len(videos):
        names_path = ann_dir / "videoname.npy"
        raise InputError(f"{features_path}: {len(features)} videos, {names_path} has {len(videos)}")
    parts: dict[str, list[_FeaturePart]] = {}
    for i, video in enumerate(videos):
        try:
            x = np.asarray(features[i])
        except ValueError:  # ragged nested lists
            raise InputError(f"{features_path}[{i}]: not an array (video '{video.video_id}')") from None
        parts[video.video_id] = [_FeaturePart(f"{features_path}[{i}]", lambda x=x: x)]
    return videos, parts


def _texts(values: np.ndarray) -> list[str]:
    # W-TALC stores names as bytes (|S..) in plain arrays, as str inside object arrays.
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values.reshape(-1)]


def load_npy(path: Path, allow_pickle: bool = False, mmap: bool = False) -> np.ndarray:
    """Load a .npy file; refuse pickled contents unless allowed, before unpickling anything."""
    if not path.is_file():
        raise InputError(f"{path}: missing file")
    try:
        with open(path, "rb") as f:
            if npy_format.read_magic(f) == (1, 0):
                shape, _, dtype = npy_format.read_array_header_1_0(f)
            else:  # 2.0 and 3.0 differ only in the header's text encoding
                shape, _, dtype = npy_format.read_array_header_2_0(f)
        if not dtype.hasobject:
            # An empty array cannot be memory-mapped.
            use_mmap = mmap and math.prod(shape) > 0
            return np.load(path, mmap_mode="r" if use_mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{path}: not a readable .npy file ({e})") from None
    if not allow_pickle:
        raise InputError(
            f"{path}: stores pickled Python objects; loading it runs code from the file. "
            "Pass --allow-pickle if you trust it"
        )
    try:
        return np.load(path, allow_pickle=True)
    except Exception as e:  # unpickling can fail in any way the file's contents choose
        raise InputError(f"{path}: cannot be unpickled ({type(e).__name__}: {e})") from None


def write_detections(
    path: str | os.PathLike[str], results: Mapping[str, list[dict[str, Any]]]
) -> None:
    """Write {"results": {vid: [{"segment": [s, e], "label": name, "score": x}]}} atomically."""
    normalized = {
        str(vid): [
            {"segment": [float(d["segment"][0]), float(d["segment"][1])],
             "label": str(d["label"]), "score": float(d["score"])}
            for d in detections
        ]
        for vid, detections in results.items()
    }
    write_text(path, json.dumps({"results": normalized}, sort_keys=True) + "\n")


def read_detections(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a detections JSON; numbers (possibly strings) become floats."""
    path = Path(path)
    obj = read_json(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("results"), dict):
        raise InputError(f"{path}: no 'results' object; not a detections file")
    results: dict[str, list[dict[str, Any]]] = {}
    for vid, detections in obj["results"].items():
        where = f"{path}: video '{vid}'"
        if not isinstance(detections, list):
            raise InputError(f"{where}: detections are not a list")
        out = []
        for d in detections:
            seg = d.get("segment") if isinstance(d, dict) else None
            if not isinstance(seg, list) or len(seg) != 2 or not isinstance(d.get("label"), str):
                raise InputError(
                    f"{where}: detection {d!r} lacks 'segment': [start, end] or 'label'"
                )
            segment = [parse_number(x, f"{where}: segment value") for x in seg]
            score = parse_number(d.get("score"), f"{where}: score")
            if not all(math.isfinite(x) for x in (*segment, score)):  # "nan", or 1e400 read as inf
                raise InputError(f"{where}: detection {segment} (score {score}) is not finite")
            out.append({"segment": segment, "label": d["label"], "score": score})
        results[str(vid)] = out
    return {"results": results}
