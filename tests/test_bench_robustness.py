"""`copl bench robustness` at its smoke size: every cell and mode measured, the table, the plot, a
second call that skips what is done, and refused settings."""

from __future__ import annotations

import json

import pytest
from one_line import one_line_error

from copl_dist.bench.robustness import MODES, summarize
from copl_dist.cli import main

SMOKE = ["--size", "smoke", "--cells", "base,sparse", "--seeds", "1", "--curve-every", "1"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("robustness") / "out"
    assert main(["bench", "robustness", *SMOKE, "--out", str(out)]) == 0
    return out


def test_every_cell_and_mode_is_measured_and_reported(grid):
    doc = json.loads((grid / "robustness.json").read_text())
    assert sorted((r["cell"], r["mode"]) for r in doc["runs"]) == sorted(
        (c, m) for c in ("base", "sparse") for m in MODES)
    utal = [r for r in doc["runs"] if r["mode"] == "utal"]
    assert all(len(r["iterations"]) == 2 and {"nmi", "map@avg", "agnostic_map@avg", "auc_a_cs", "auc_a_ca"}
               <= r["iterations"][-1].keys() for r in utal)
    curves = [r for r in doc["runs"] if r["mode"] in ("asl", "wtal")]
    assert len(curves) == 4 and all([p["epoch"] for p in r["curve"]] == [1, 2] for r in curves)  # --curve-every 1
    text = (grid / "robustness.md").read_text()
    assert text.startswith("copl bench robustness --cells base,sparse --train-videos 12 ")
    assert "--curve-every 1\nseeds in these tables: 0\n" in text
    for fragment in ("UTAL / WTAL", "WTAL within 5 of ASL", "NMI rises", "median cell's UTAL / WTAL"):
        assert fragment in text
    assert (grid / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checks = summarize(doc["runs"], "base")["checks"]
    assert set(checks) == {"WTAL within 5 of ASL", "UTAL >= 80% of WTAL", "NMI rises", "mAP not lower at the end"}


def test_a_second_call_skips_what_is_done(grid, capsys):
    before = (grid / "robustness.json").read_text()
    assert main(["bench", "robustness", *SMOKE, "--out", str(grid)]) == 0
    assert (grid / "robustness.json").read_text() == before
    assert " seed 0 " not in capsys.readouterr().out  # no run printed: only the tables


@pytest.mark.parametrize("args, fragments", [
    (["--cells", "base,nowhere"], ["--cells base,nowhere", "base, context-strong"]),
    (["--modes", "utal,fancy"], ["--modes utal,fancy"]),
    (["--set", "train.lr=-1"], ["train.lr"]),
    (["--set", "train.epochs=5"], ["--set train.epochs=5: train.epochs is the benchmark's own (--epochs)"]),
])
def test_bad_arguments_fail_before_anything_is_written(tmp_path, capsys, args, fragments):
    out = tmp_path / "out"
    assert main(["bench", "robustness", "--size", "smoke", "--seeds", "1", "--out", str(out), *args]) != 0
    one_line_error(capsys, *fragments)
    assert not out.exists()


def test_other_settings_in_the_same_folder_are_refused(grid, capsys):
    assert main(["bench", "robustness", *SMOKE, "--epochs", "3", "--out", str(grid)]) != 0
    one_line_error(capsys, "robustness.json: written with other settings", "use another --out")


def test_scoring_the_curve_leaves_the_run_as_it_is(grid):
    """The weakly supervised run scored every epoch ends where the same run unscored ends."""
    import argparse

    from copl_dist.bench.robustness import _copl, settings
    from copl_dist.data.corpus import Corpus

    corpus = Corpus.open(grid / "data" / "base-seed0-corpus")

    def sized(every):
        return settings(argparse.Namespace(size="smoke", asl_lr=1e-4, curve_every=every, sets=[]))

    scored, plain = _copl(corpus, sized(1), "wtal", 0), _copl(corpus, sized(0), "wtal", 0)
    assert [p["epoch"] for p in scored["curve"]] == [1, 2] and "curve" not in plain
    assert scored["iterations"][0]["map@avg"] == plain["iterations"][0]["map@avg"]
    # The last point is scored by the curve's own hook: it must agree with the run's own scoring.
    assert scored["curve"][-1]["map@avg"] == pytest.approx(plain["iterations"][0]["map@avg"], abs=1e-9)


def test_outputs_split_over_machines_merge_into_one_grid(grid, tmp_path, capsys):
    doc = json.loads((grid / "robustness.json").read_text())
    for cell in ("base", "sparse"):
        (tmp_path / cell).mkdir()
        part = {**doc, "runs": [r for r in doc["runs"] if r["cell"] == cell]}
        (tmp_path / cell / "robustness.json").write_text(json.dumps(part))
    out = tmp_path / "merged"
    assert main(["bench", "robustness", "--merge", str(tmp_path / "base"), str(tmp_path / "sparse"), "--out", str(out)]) == 0
    merged = json.loads((out / "robustness.json").read_text())
    assert sorted(map(json.dumps, merged["runs"])) == sorted(map(json.dumps, doc["runs"]))
    assert (out / "robustness.md").read_text() == (grid / "robustness.md").read_text()
    capsys.readouterr()
    assert main(["bench", "robustness", "--merge", str(grid), str(tmp_path / "base"), "--out", str(tmp_path / "twice")]) != 0
    one_line_error(capsys, "a cell, seed and mode appear in more than one output")
    other = json.loads((tmp_path / "sparse" / "robustness.json").read_text())
    other["settings"]["epochs"] = 99
    (tmp_path / "sparse" / "robustness.json").write_text(json.dumps(other))
    assert main(["bench", "robustness", "--merge", str(tmp_path / "base"), str(tmp_path / "sparse"), "--out", str(tmp_path / "x")]) != 0
    one_line_error(capsys, "sparse/robustness.json: other settings than")


def test_a_stopped_grid_runs_only_what_is_missing(tmp_path, capsys):
    out = str(tmp_path / "out")
    small = ["bench", "robustness", "--size", "smoke", "--cells", "base", "--seeds", "1", "--out", out]
    assert main([*small, "--modes", "baseline"]) == 0
    capsys.readouterr()
    assert main([*small, "--modes", "baseline,asl"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if " seed 0 " in line]
    assert len(printed) == 1 and " asl " in printed[0]
    doc = json.loads((tmp_path / "out" / "robustness.json").read_text())
    assert [r["mode"] for r in doc["runs"]] == ["baseline", "asl"]


def test_a_broken_output_file_is_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "robustness.json").write_text(json.dumps({"settings": {}, "runs": [{"cell": "base", "seed": 0}]}))
    assert main(["bench", "robustness", "--size", "smoke", "--seeds", "1", "--out", str(out)]) != 0
    one_line_error(capsys, "robustness.json: run 0 is not a complete run")
    assert main(["bench", "robustness", "--merge", str(out), "--out", str(tmp_path / "m")]) != 0
    one_line_error(capsys, "robustness.json: run 0 is not a complete run")
