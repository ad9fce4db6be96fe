"""`copl bench quality`: every ablation row measured, seeds split over processes merge into one table."""

from __future__ import annotations

import json
import statistics

import pytest

from copl_dist.bench.quality import (
    ABLATION_ROWS,
    NO_PROJECTION_ROW,
    PAPER_ROW,
    VARIANTS,
)
from copl_dist.cli import main

SMALL = ["--videos", "6", "--classes", "3", "--epochs", "1", "--snippets", "16", "--iterations", "2",
         "--duration-scale", "0.15", "--set", "model.hidden_dim=32", "--set", "train.shift_channels=64",
         "--set", "train.batch_size=4",
         # Every video in P, so that iteration 1 can fit the projection on 6 videos (see below).
         "--set", "cluster.delta=-1"]


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    """One real run of seed 1 (--first-seed 1); a second "half" for seed 0 is its output relabelled
    (merging reads only quality.json, and a second real run would double this module's time)."""
    root = tmp_path_factory.mktemp("quality")
    assert main(["bench", "quality", "--seeds", "1", "--first-seed", "1", "--out", str(root / "s1"), *SMALL]) == 0
    doc = json.loads((root / "s1" / "quality.json").read_text())
    for rows in doc["runs"].values():
        for r in rows:
            r["seed"] = 0
            r["final"] = {k: v / 2 for k, v in r["final"].items()}
    (root / "s0").mkdir()
    (root / "s0" / "quality.json").write_text(json.dumps(doc))
    return root


def test_each_variant_runs_on_its_seed(halves):
    doc = json.loads((halves / "s1" / "quality.json").read_text())
    assert set(doc["runs"]) == set(VARIANTS)
    for name, rows in doc["runs"].items():
        assert [r["seed"] for r in rows] == [1], name
        assert 0.0 <= rows[0]["final"]["map@avg"] <= 100.0
        expected = 2 if VARIANTS[name][0] == "utal" else 1
        assert len(rows[0]["iterations"]) == expected, name
    # the variant's switches reach its runs: only the mean-feature row starts like the plain baseline
    nmi0 = {name: rows[0]["iterations"][0].get("nmi") for name, rows in doc["runs"].items()}
    assert nmi0[PAPER_ROW] == pytest.approx(nmi0["plain baseline (no training)"])
    for name in (NO_PROJECTION_ROW, PAPER_ROW):  # iteration 1 clusters the 2048-d features themselves
        assert doc["runs"][name][0]["iterations"][1]["cluster_dim"] == 2048
    # ... where COPL's own row clusters their projection (fitted clusters - 1: 1 or 2 dims here)
    assert doc["runs"]["COPL (HAS + PLRI)"][0]["iterations"][1]["cluster_dim"] in (1, 2)


def test_merge_gives_one_table_over_both_seeds(halves, capsys):
    out = halves / "merged"
    assert main(["bench", "quality", "--merge", str(halves / "s0"), str(halves / "s1"), "--out", str(out)]) == 0
    doc = json.loads((out / "quality.json").read_text())
    assert sorted(r["seed"] for r in doc["runs"]["COPL (HAS + PLRI)"]) == [0, 1]
    text = (out / "quality.md").read_text()
    assert "seeds done: 2 of 2" in text
    for row in ABLATION_ROWS:
        assert row in text
    # mean ± std over the two seeds, as printed
    maps = [r["final"]["map@avg"] for r in doc["runs"]["weakly supervised"]]
    assert maps[0] != maps[1]  # seed 0's half is seed 1's halved: a non-zero spread to print
    assert f"{statistics.mean(maps):.2f} ± {statistics.stdev(maps):.2f}" in text


def test_merge_refuses_repeated_seeds_and_other_settings(halves, tmp_path, capsys):
    assert main(["bench", "quality", "--merge", str(halves / "s0"), str(halves / "s0"), "--out", str(tmp_path / "m")]) == 2
    assert "a seed appears in more than one output" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    doc = json.loads((halves / "s1" / "quality.json").read_text())
    doc["args"]["epochs"] = 99
    (other / "quality.json").write_text(json.dumps(doc))
    assert main(["bench", "quality", "--merge", str(halves / "s0"), str(other), "--out", str(tmp_path / "m")]) == 2
    assert "other settings" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
