"""The corpus store: round trip, memory-mapped zero-copy reads, shards, atomic and deterministic writes."""

from __future__ import annotations

import gc
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from copl_dist.common.errors import InputError
from copl_dist.data.corpus import (
    Corpus,
    Segment,
    VideoRecord,
    write_corpus,
    write_table,
)

D = 8


def _features(video_id: str, t: int) -> np.ndarray:
    # Distinct, recognisable values per video and snippet.
    seed = int(hashlib.sha256(video_id.encode()).hexdigest()[:8], 16)
    return np.random.default_rng(seed).standard_normal((t, D)).astype(np.float32)


RECORDS = [
    VideoRecord("v_b", "train", 10.0, 7, ("jump",)),
    VideoRecord("v_a", "train", 5.0, 4, ("jump", "run")),
    VideoRecord("v_c", "test", 8.0, 12, ()),
    VideoRecord("v_d", "test", 6.0, 5, ("run",)),
]
SEGMENTS = [
    Segment("v_a", 3.0, 4.0, "run"),
    Segment("v_a", 1.0, 2.0, "jump"),
    Segment("v_b", 0.5, 9.5, "jump"),
    Segment("v_d", 2.0, 6.0, "run"),
]
FEATURES = {r.video_id: _features(r.video_id, r.num_snippets) for r in RECORDS}


def _write(out: Path, **kwargs) -> Corpus:
    return write_corpus(out, RECORDS, SEGMENTS, FEATURES.__getitem__, **kwargs)


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_round_trip(tmp_path):
    corpus = _write(tmp_path / "c")
    assert corpus.classes == ["jump", "run"]
    assert corpus.feature_dim == D
    assert corpus.subsets() == ["test", "train"]
    assert corpus.video_ids() == ["v_a", "v_b", "v_c", "v_d"]
    assert corpus.video_ids("train") == ["v_a", "v_b"]
    assert len(corpus) == 4 and "v_c" in corpus and "v_x" not in corpus
    assert corpus.record("v_a") == RECORDS[1]
    for vid, x in FEATURES.items():
        np.testing.assert_array_equal(corpus.features(vid), x)
        assert corpus.features(vid).dtype == np.float32
    # Segments come back sorted by start.
    assert corpus.segments("v_a") == [SEGMENTS[1], SEGMENTS[0]]
    assert corpus.segments("v_c") == []
    reopened = Corpus.open(tmp_path / "c")
    np.testing.assert_array_equal(reopened.features("v_d"), FEATURES["v_d"])


def test_ground_truth_is_activitynet_style(tmp_path):
    gt = _write(tmp_path / "c").ground_truth("test")
    assert gt == {
        "database": {
            "v_c": {"subset": "test", "duration": 8.0, "annotations": []},
            "v_d": {
                "subset": "test",
                "duration": 6.0,
                "annotations": [{"segment": [2.0, 6.0], "label": "run"}],
            },
        }
    }


def test_unknown_subset_and_video(tmp_path):
    corpus = _write(tmp_path / "c")
    with pytest.raises(InputError, match=r"unknown subset 'val' \(corpus has: test, train\)"):
        corpus.video_ids("val")
    with pytest.raises(InputError, match="unknown video 'nope'"):
        corpus.features("nope")


def test_features_are_zero_copy_read_only_views(tmp_path):
    corpus = _write(tmp_path / "c")
    gc.collect()  # earlier tests' Arrow buffers may be freed meanwhile: only growth would be a copy
    allocated = pa.total_allocated_bytes()
    x = corpus.features("v_c")
    # The values live in the memory-mapped file, not in Arrow's heap or a numpy copy.
    assert pa.total_allocated_bytes() <= allocated
    assert not x.flags.writeable and not x.flags.owndata
    assert np.shares_memory(x, corpus.features("v_c"))  # the shard is mapped once, cached
    with pytest.raises(ValueError):
        x[0, 0] = 1.0
    # ... and the address is inside a mapping of the shard's file (a heap copy, say a buffer read
    # whole from the file, would pass the checks above).
    addr = x.ctypes.data
    mapped = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(v, 16) for v in fields[0].split("-"))
        if lo <= addr < hi and len(fields) == 6:
            mapped.add(Path(fields[5].strip()))
    shard = (tmp_path / "c" / "features" / "shard-00000.arrow").resolve()
    assert shard in {m.resolve() for m in mapped if m.is_absolute()}


def test_shards_split_at_video_boundaries(tmp_path):
    # 4 + 7 snippets of 8 float32 = 352 bytes fit one 400-byte shard; 12 + 5 do not.
    corpus = _write(tmp_path / "c", shard_bytes=400)
    manifest = json.loads((tmp_path / "c" / "corpus.json").read_text())
    assert manifest["shards"] == [
        "features/shard-00000.arrow",
        "features/shard-00001.arrow",
        "features/shard-00002.arrow",
    ]
    videos = pq.read_table(tmp_path / "c" / "videos.parquet").to_pydict()
    assert videos["shard"] == [0, 0, 1, 2]
    assert videos["row_offset"] == [0, 4, 0, 0]
    for vid, x in FEATURES.items():
        np.testing.assert_array_equal(corpus.features(vid), x)
    reader = ipc.open_file(pa.memory_map(str(tmp_path / "c" / manifest["shards"][0])))
    assert reader.schema.field("features").type == pa.list_(pa.float32(), D)
    assert reader.read_all().num_rows == 11


def test_manifest_and_tables(tmp_path):
    _write(tmp_path / "c")
    manifest = json.loads((tmp_path / "c" / "corpus.json").read_text())
    assert manifest == {
        "format": "copl-corpus",
        "version": 1,
        "classes": ["jump", "run"],
        "feature_dim": D,
        "shards": ["features/shard-00000.arrow"],
    }
    videos = pq.read_table(tmp_path / "c" / "videos.parquet")
    assert videos.column_names == [
        "video_id", "subset", "duration_s", "num_snippets", "labels", "shard", "row_offset"
    ]
    assert videos.column("labels").to_pylist() == [["jump", "run"], ["jump"], [], ["run"]]
    annotations = pq.read_table(tmp_path / "c" / "annotations.parquet")
    assert annotations.column_names == ["video_id", "start_s", "end_s", "label"]
    assert annotations.num_rows == 4


def test_writing_is_deterministic(tmp_path):
    _write(tmp_path / "a", shard_bytes=400)
    # A different input order gives the same bytes too.
    write_corpus(tmp_path / "b", RECORDS[::-1], SEGMENTS[::-1], FEATURES.__getitem__, shard_bytes=400)
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    assert len(_hashes(tmp_path / "a")) == 6
    a, b = Corpus.open(tmp_path / "a"), Corpus.open(tmp_path / "b")
    assert a.digest() == b.digest() and len(a.digest()) == 16
    # Another corpus (different shard sizes, so different shard files) has another digest.
    assert _write(tmp_path / "c").digest() != a.digest()


def test_failed_write_leaves_nothing(tmp_path):
    def failing(video_id: str) -> np.ndarray:
        if video_id == "v_c":
            raise InputError("v_c.npy: contains NaN or Inf")
        return FEATURES[video_id]

    with pytest.raises(InputError, match="v_c.npy"):
        write_corpus(tmp_path / "c", RECORDS, SEGMENTS, failing)
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_old_corpus(tmp_path):
    _write(tmp_path / "c")
    before = _hashes(tmp_path / "c")
    with pytest.raises(InputError):
        write_corpus(tmp_path / "c", RECORDS, SEGMENTS, lambda v: np.zeros((3, D), np.float32))
    assert _hashes(tmp_path / "c") == before and _leftovers(tmp_path) == []


def test_rewrite_replaces_a_corpus_but_not_other_folders(tmp_path):
    _write(tmp_path / "c")
    corpus = write_corpus(tmp_path / "c", RECORDS[:1], [SEGMENTS[2]], FEATURES.__getitem__)
    assert corpus.video_ids() == ["v_b"] and _leftovers(tmp_path) == []
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a corpus; not replacing it"):
        _write(tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    assert _write(tmp_path / "empty").video_ids() == ["v_a", "v_b", "v_c", "v_d"]


def test_bad_records_are_refused(tmp_path):
    with pytest.raises(InputError, match="'v_a' appears twice"):
        write_corpus(tmp_path / "c", RECORDS + RECORDS[1:2], [], FEATURES.__getitem__)
    with pytest.raises(InputError, match="segment of unknown video 'v_z'"):
        write_corpus(tmp_path / "c", RECORDS, [Segment("v_z", 0, 1, "run")], FEATURES.__getitem__)
    with pytest.raises(InputError, match=r"video 'v_b': features of shape \(7, 9\)"):
        write_corpus(
            tmp_path / "c",
            RECORDS,
            [],
            lambda v: np.zeros((7, 9), np.float32) if v == "v_b" else FEATURES[v],
        )
    assert list(tmp_path.iterdir()) == []


def test_no_videos_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"c: no videos to write$"):
        write_corpus(tmp_path / "c", [], [], FEATURES.__getitem__)
    assert list(tmp_path.iterdir()) == []


def test_open_refuses_what_is_not_a_corpus(tmp_path):
    with pytest.raises(InputError, match="not a corpus"):
        Corpus.open(tmp_path)
    _write(tmp_path / "c")
    manifest = tmp_path / "c" / "corpus.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "version": 99}))
    with pytest.raises(InputError, match="version 99"):
        Corpus.open(tmp_path / "c")
    manifest.write_text("{not json")
    with pytest.raises(InputError, match="corpus.json: not valid JSON"):
        Corpus.open(tmp_path / "c")


def test_corpus_pickles_by_reopening(tmp_path):
    corpus = _write(tmp_path / "c")
    corpus.features("v_a")  # a cached memory map must not stop pickling (Ray ships the corpus)
    copy = pickle.loads(pickle.dumps(corpus))
    np.testing.assert_array_equal(copy.features("v_a"), FEATURES["v_a"])


def test_write_table_is_atomic(tmp_path):
    path = tmp_path / "tables" / "pseudo_labels.parquet"
    write_table(path, [{"video_id": "a", "cluster": 1}, {"video_id": "b", "cluster": 0}])
    assert pq.read_table(path).to_pylist()[1] == {"video_id": "b", "cluster": 0}
    write_table(path, pa.table({"x": [1.5]}))
    assert pq.read_table(path).to_pydict() == {"x": [1.5]}
    with pytest.raises(Exception):
        write_table(path, [{"x": object()}])  # unconvertible: the old file stays
    assert pq.read_table(path).to_pydict() == {"x": [1.5]}
    assert _leftovers(path.parent) == []
