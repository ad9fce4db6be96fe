"""The feature corpus: memory-mapped Arrow IPC feature shards beside Parquet tables.

On-disk layout of a corpus directory:

    corpus.json            manifest: format, version, classes, feature_dim, shards
    videos.parquet         video_id, subset, duration_s, num_snippets, labels, shard, row_offset
    annotations.parquet    video_id, start_s, end_s, label
    features/shard-00000.arrow ...
                           Arrow IPC files (uncompressed); one column "features" of
                           FixedSizeList<float32, D>, one row per snippet, one record batch per
                           video, videos concatenated in video_id order

Feature reads memory-map the shard (Arrow IPC read at ~3.6 GB/s here, Parquet at ~0.13 GB/s,
TOOLING.md), so reading one video pages in only that video's rows. Writing goes to a temporary
sibling directory renamed into place at the end, and is deterministic: the same input gives
byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from copl_dist.common.atomic import atomic_path, temp_sibling
from copl_dist.common.errors import InputError
from copl_dist.common.user_json import read_json

FORMAT_NAME = "copl-corpus"
FORMAT_VERSION = 1
MANIFEST = "corpus.json"
VIDEOS_FILE = "videos.parquet"
ANNOTATIONS_FILE = "annotations.parquet"
FEATURES_DIR = "features"

VIDEOS_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string()),
        pa.field("subset", pa.string()),
        pa.field("duration_s", pa.float64()),
        pa.field("num_snippets", pa.int64()),
        pa.field("labels", pa.list_(pa.string())),
        pa.field("shard", pa.int32()),
        pa.field("row_offset", pa.int64()),
    ]
)
ANNOTATIONS_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string()),
        pa.field("start_s", pa.float64()),
        pa.field("end_s", pa.float64()),
        pa.field("label", pa.string()),
    ]
)


@dataclass(frozen=True)
class VideoRecord:
    video_id: str
    subset: str
    duration_s: float
    num_snippets: int
    labels: tuple[str, ...]  # sorted unique class names


@dataclass(frozen=True)
class Segment:
    video_id: str
    start_s: float
    end_s: float
    label: str


@dataclass(frozen=True)
class _Location:
    shard: int
    row_offset: int


class Corpus:
    """A converted corpus directory, opened read-only."""

    def __init__(
        self,
        root: Path,
        classes: list[str],
        feature_dim: int,
        shards: list[str],
        records: dict[str, VideoRecord],
        locations: dict[str, _Location],
        segments: dict[str, list[Segment]],
    ) -> None:
        self.root = root
        self.classes = classes
        self.feature_dim = feature_dim
        self._shards = shards
        self._records = records
        self._locations = locations
        self._segments = segments
        self._tables: dict[int, pa.Table] = {}

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> Corpus:
        """Open a corpus directory; InputError naming the file at fault if it is not one (a corpus
        edited by hand included). Features are checked per shard when it is first read."""
        root = Path(root)
        manifest = _read_manifest(root)
        classes, feature_dim, shards = manifest["classes"], manifest["feature_dim"], manifest["shards"]
        for shard in shards:
            _check_shard_schema(root / shard, feature_dim)
        videos = _read_table(root / VIDEOS_FILE, VIDEOS_SCHEMA).to_pylist()
        annotations = _read_table(root / ANNOTATIONS_FILE, ANNOTATIONS_SCHEMA).to_pylist()
        known = set(classes)
        records: dict[str, VideoRecord] = {}
        locations: dict[str, _Location] = {}
        for row in videos:
            vid = row["video_id"]
            problem = None
            if vid in records:
                problem = "appears twice"
            elif not (math.isfinite(row["duration_s"]) and row["duration_s"] > 0):
                problem = f"duration_s {row['duration_s']} is not a positive number"
            elif row["num_snippets"] < 1 or row["row_offset"] < 0 or not 0 <= row["shard"] < len(shards):
                problem = (f"no such rows of features (shard {row['shard']} of {len(shards)}, "
                           f"row_offset {row['row_offset']}, num_snippets {row['num_snippets']})")
            elif not known.issuperset(row["labels"]):
                problem = f"labels {row['labels']} are not all among {MANIFEST}'s classes"
            if problem is not None:
                raise InputError(f"{root / VIDEOS_FILE}: video '{vid}': {problem}")
            records[vid] = VideoRecord(
                vid, row["subset"], row["duration_s"], row["num_snippets"], tuple(row["labels"])
            )
            locations[vid] = _Location(row["shard"], row["row_offset"])
        segments: dict[str, list[Segment]] = {vid: [] for vid in records}
        for row in annotations:
            if row["video_id"] not in segments:
                raise InputError(f"{root / ANNOTATIONS_FILE}: unknown video '{row['video_id']}'")
            segment = Segment(row["video_id"], row["start_s"], row["end_s"], row["label"])
            problem = None
            if not (math.isfinite(segment.start_s) and math.isfinite(segment.end_s) and 0 <= segment.start_s <= segment.end_s):
                problem = "is not a span of finite times from 0 s"
            elif segment.label not in known:
                problem = f"has label '{segment.label}', not among {MANIFEST}'s classes"
            if problem is not None:
                raise InputError(
                    f"{root / ANNOTATIONS_FILE}: video '{segment.video_id}': segment "
                    f"[{segment.start_s}, {segment.end_s}] {problem}"
                )
            segments[row["video_id"]].append(segment)
        return cls(root, list(classes), feature_dim, list(shards), records, locations, segments)

    def __reduce__(self) -> tuple[Any, ...]:
        # Memory maps cannot be pickled; a copy sent to another process (Ray) reopens the root.
        return (Corpus.open, (str(self.root),))

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._records

    def digest(self) -> str:
        """A short content identity: SHA-256 of the manifest, the tables and each shard's size.

        Conversion is byte-deterministic, so the same source gives the same digest wherever it was
        converted; the features themselves are not read (gigabytes), only their shards' sizes.
        """
        h = hashlib.sha256()
        for name in (MANIFEST, "videos.parquet", "annotations.parquet"):
            path = self.root / name
            if path.is_file():
                h.update(name.encode() + b"\0" + path.read_bytes())
        for shard in self._shards:
            h.update(f"{shard}:{(self.root / shard).stat().st_size}".encode())
        return h.hexdigest()[:16]

    def subsets(self) -> list[str]:
        return sorted({r.subset for r in self._records.values()})

    def video_ids(self, subset: str | None = None) -> list[str]:
        if subset is None:
            return list(self._records)
        if subset not in self.subsets():
            raise InputError(
                f"unknown subset '{subset}' (corpus has: {', '.join(self.subsets())})"
            )
        return [vid for vid, r in self._records.items() if r.subset == subset]

    def record(self, video_id: str) -> VideoRecord:
        try:
            return self._records[video_id]
        except KeyError:
            raise InputError(f"{self.root}: unknown video '{video_id}'") from None

    def features(self, video_id: str) -> np.ndarray:
        """(T, D) float32, a read-only zero-copy view into the memory-mapped shard."""
        record = self.record(video_id)
        location = self._locations[video_id]
        column = self._shard_table(location.shard).column("features")
        rows = column.slice(location.row_offset, record.num_snippets)
        if rows.num_chunks == 1:
            # flatten() honours the slice offset; to_numpy then views the mapped buffer.
            values = rows.chunk(0).flatten().to_numpy(zero_copy_only=True)
        else:  # only in shards written with other batching; correct but copies
            values = np.concatenate([c.flatten().to_numpy() for c in rows.chunks])
        return values.reshape(record.num_snippets, self.feature_dim)

    def segments(self, video_id: str) -> list[Segment]:
        self.record(video_id)
        return list(self._segments[video_id])

    def ground_truth(self, subset: str) -> dict[str, Any]:
        """ActivityNet-style ground truth of one subset (videos without actions included)."""
        database: dict[str, Any] = {}
        for vid in self.video_ids(subset):
            record = self._records[vid]
            database[vid] = {
                "subset": record.subset,
                "duration": record.duration_s,
                "annotations": [
                    {"segment": [s.start_s, s.end_s], "label": s.label}
                    for s in self._segments[vid]
                ],
            }
        return {"database": database}

    def check_features(self) -> None:
        """Read every shard now, with the checks of a shard's first read (rows, finite values)."""
        for index in range(len(self._shards)):
            self._shard_table(index)

    def _shard_table(self, index: int) -> pa.Table:
        table = self._tables.get(index)
        if table is None:
            path = self.root / self._shards[index]
            try:
                table = ipc.open_file(pa.memory_map(str(path), "r")).read_all()
            except (OSError, pa.ArrowException) as e:
                raise InputError(f"{path}: not a readable feature shard ({e})") from None
            self._check_shard_rows(path, index, table)
            self._tables[index] = table
        return table

    def _check_shard_rows(self, path: Path, index: int, table: pa.Table) -> None:
        """Each of the shard's videos has its rows in it, all finite. Here, when the shard is first
        read, rather than at open: it reads every value, and a run may read a few videos only."""
        spans = sorted(
            (loc.row_offset, loc.row_offset + self._records[vid].num_snippets, vid)
            for vid, loc in self._locations.items() if loc.shard == index
        )
        for start, end, vid in spans:
            if end > table.num_rows:
                raise InputError(
                    f"{path}: {table.num_rows} rows, but {VIDEOS_FILE} puts video '{vid}' at rows {start} to {end}"
                )
        offset = 0
        for chunk in table.column("features").chunks:
            finite = np.isfinite(chunk.flatten().to_numpy(zero_copy_only=False))
            if chunk.null_count or not finite.all():
                row = offset + (0 if chunk.null_count else int(np.argmin(finite)) // self.feature_dim)
                vid = next((v for start, end, v in spans if start <= row < end), "?")
                raise InputError(f"{path}: features of video '{vid}' hold NaN, Inf or empty values")
            offset += len(chunk)


def _read_manifest(root: Path) -> dict[str, Any]:
    """corpus.json, its values of the types a corpus has and its shards inside the corpus folder."""
    path = root / MANIFEST
    if not path.is_file():
        raise InputError(f"{root}: not a corpus (no {MANIFEST})")
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise InputError(f"{path}: not a corpus manifest (format is not '{FORMAT_NAME}')")
    if manifest.get("version") != FORMAT_VERSION or isinstance(manifest.get("version"), bool):
        raise InputError(
            f"{path}: corpus format version {manifest.get('version')!r}, "
            f"this copl_dist reads version {FORMAT_VERSION}"
        )
    for key in ("classes", "feature_dim", "shards"):
        if key not in manifest:
            raise InputError(f"{path}: manifest lacks '{key}'")
    classes, feature_dim, shards = manifest["classes"], manifest["feature_dim"], manifest["shards"]
    if not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes):
        raise InputError(f"{path}: 'classes' is not a list of class names")
    if len(set(classes)) != len(classes):
        raise InputError(f"{path}: 'classes' names a class twice")
    # Below 2**31: Arrow's list width is an int32.
    if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or not 1 <= feature_dim < 2**31:
        raise InputError(f"{path}: 'feature_dim' {str(feature_dim)[:40]!r} is not a feature width")
    if not isinstance(shards, list) or not shards or not all(isinstance(s, str) for s in shards):
        raise InputError(f"{path}: 'shards' is not a list of shard files")
    for shard in shards:
        # Relative and without '..': a shard path must not read a file outside the corpus folder.
        parts = PurePosixPath(shard).parts
        if not parts or PurePosixPath(shard).is_absolute() or ".." in parts or "\\" in shard:
            raise InputError(f"{path}: shard '{shard}' is not a file inside the corpus folder")
    return manifest


def _check_shard_schema(path: Path, feature_dim: int) -> None:
    # The footer only (a memory map reads no values): one "features" column, feature_dim wide.
    try:
        schema = ipc.open_file(pa.memory_map(str(path), "r")).schema
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"{path}: not a readable feature shard ({e})") from None
    expected = pa.schema([pa.field("features", pa.list_(pa.float32(), feature_dim))])
    if not schema.equals(expected):
        found = ", ".join(f"{f.name}: {f.type}" for f in schema)
        raise InputError(f"{path}: holds {found}, expected features: float32 x {feature_dim} ({MANIFEST}'s feature_dim)")


def _read_table(path: Path, schema: pa.Schema) -> pa.Table:
    """A corpus table with `schema`'s columns, of its types, without empty (null) values."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"{path}: not a readable corpus table ({e})") from None
    for field in schema:
        if field.name not in table.column_names:
            raise InputError(f"{path}: no column '{field.name}'")
        column = table.column(field.name)
        if not column.type.equals(field.type):
            raise InputError(f"{path}: column '{field.name}' is {column.type}, expected {field.type}")
        nulls = column.null_count
        if pa.types.is_list(field.type):
            nulls += sum(chunk.flatten().null_count for chunk in column.chunks)
        if nulls:
            raise InputError(f"{path}: column '{field.name}' has empty (null) values")
    return table


def write_corpus(
    out_dir: str | os.PathLike[str],
    records: Sequence[VideoRecord],
    segments: Sequence[Segment],
    feature_source: Callable[[str], np.ndarray],
    shard_bytes: int = 256 << 20,
) -> Corpus:
    """Write a corpus (videos in video_id order) atomically and deterministically.

    `feature_source(video_id)` returns that video's (num_snippets, D) features; it is called once
    per video, so a caller may validate lazily inside it. A video never spans two shards.
    """
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    if not records:
        # It would open, then fail in whatever reads it (no feature width, no subsets).
        raise InputError(f"{out_dir}: no videos to write")
    records = sorted(records, key=lambda r: r.video_id)
    ids = [r.video_id for r in records]
    if len(set(ids)) != len(ids):
        duplicate = next(v for v in ids if ids.count(v) > 1)
        raise InputError(f"video '{duplicate}' appears twice")
    known = set(ids)
    for s in segments:
        if s.video_id not in known:
            raise InputError(f"segment of unknown video '{s.video_id}'")
    classes = sorted({s.label for s in segments} | {c for r in records for c in r.labels})

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out_dir)
    try:
        tmp.mkdir()
    except OSError as exc:  # a read-only or full folder: named as the folder the user asked for
        raise OSError(exc.errno, exc.strerror, str(out_dir)) from None
    try:
        (tmp / FEATURES_DIR).mkdir(parents=True)
        feature_dim, shards, locations = _write_shards(tmp, records, feature_source, shard_bytes)
        write_table(
            tmp / VIDEOS_FILE,
            pa.table(
                {
                    "video_id": ids,
                    "subset": [r.subset for r in records],
                    "duration_s": [float(r.duration_s) for r in records],
                    "num_snippets": [int(r.num_snippets) for r in records],
                    "labels": [list(r.labels) for r in records],
                    "shard": [loc.shard for loc in locations],
                    "row_offset": [loc.row_offset for loc in locations],
                },
                schema=VIDEOS_SCHEMA,
            ),
        )
        ordered = sorted(segments, key=lambda s: (s.video_id, s.start_s, s.end_s, s.label))
        write_table(
            tmp / ANNOTATIONS_FILE,
            pa.table(
                {
                    "video_id": [s.video_id for s in ordered],
                    "start_s": [float(s.start_s) for s in ordered],
                    "end_s": [float(s.end_s) for s in ordered],
                    "label": [s.label for s in ordered],
                },
                schema=ANNOTATIONS_SCHEMA,
            ),
        )
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "classes": classes,
            "feature_dim": feature_dim,
            "shards": shards,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Corpus.open(out_dir)


def _write_shards(
    tmp: Path,
    records: Sequence[VideoRecord],
    feature_source: Callable[[str], np.ndarray],
    shard_bytes: int,
) -> tuple[int, list[str], list[_Location]]:
    feature_dim = 0
    schema: pa.Schema | None = None
    shards: list[str] = []
    locations: list[_Location] = []
    writer: ipc.RecordBatchFileWriter | None = None
    rows_in_shard = 0
    bytes_in_shard = 0
    try:
        for record in records:
            x = np.ascontiguousarray(feature_source(record.video_id), dtype=np.float32)
            if x.ndim != 2 or (feature_dim and x.shape[1] != feature_dim):
                expected = f"({record.num_snippets}, {feature_dim or 'D'})"
                raise InputError(
                    f"video '{record.video_id}': features of shape {x.shape}, expected {expected}"
                )
            if x.shape[0] != record.num_snippets or x.shape[0] == 0:
                raise InputError(
                    f"video '{record.video_id}': {x.shape[0]} snippets of features, "
                    f"record says {record.num_snippets}"
                )
            if schema is None:
                feature_dim = int(x.shape[1])
                schema = pa.schema([pa.field("features", pa.list_(pa.float32(), feature_dim))])
            # Start a new shard at a video boundary once this one would overflow.
            if writer is None or (rows_in_shard and bytes_in_shard + x.nbytes > shard_bytes):
                if writer is not None:
                    writer.close()
                name = f"{FEATURES_DIR}/shard-{len(shards):05d}.arrow"
                writer = ipc.new_file(str(tmp / name), schema)
                shards.append(name)
                rows_in_shard = bytes_in_shard = 0
            column = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), feature_dim)
            writer.write_batch(pa.record_batch([column], schema=schema))
            locations.append(_Location(len(shards) - 1, rows_in_shard))
            rows_in_shard += x.shape[0]
            bytes_in_shard += x.nbytes
    finally:
        if writer is not None:
            writer.close()
    return feature_dim, shards, locations


def _check_replaceable(out_dir: Path) -> None:
    # Refuse early, before any work, to replace a directory that holds something else.
    if out_dir.exists():
        if not out_dir.is_dir():
            raise InputError(f"{out_dir}: exists and is not a directory")
        if not (out_dir / MANIFEST).is_file() and any(out_dir.iterdir()):
            raise InputError(
                f"{out_dir}: exists, is not empty and is not a corpus; not replacing it"
            )


def _publish(tmp: Path, out_dir: Path) -> None:
    """Rename tmp to out_dir; an existing corpus there is moved aside first, then removed."""
    _check_replaceable(out_dir)
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex}")
    os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        os.replace(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_table(path: str | os.PathLike[str], rows: list[dict[str, Any]] | pa.Table) -> None:
    """Write a Parquet table atomically (temporary name, then rename)."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows)
    with atomic_path(path) as tmp:
        pq.write_table(table, str(tmp))
