"""Atomic outputs: whole or absent, and as readable as any file the user writes (umask, not 0600)."""

from __future__ import annotations

import os
import stat

import pytest

from copl_dist.common.atomic import atomic_path, default_dir_mode, write_json
from copl_dist.data.synth import make_synthetic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_file_follows_the_umask(tmp_path, umask_022):
    write_json(tmp_path / "a.json", {"x": 1})
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert default_dir_mode() == 0o755


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "b.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_synthetic_corpus_folder_is_not_private(tmp_path, umask_022):
    root = make_synthetic(tmp_path / "c", videos=1, classes=1, feature_dim=8, duration_scale=0.1)
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "annotations.json").stat().st_mode) == 0o644
