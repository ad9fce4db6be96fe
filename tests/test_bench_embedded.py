"""`copl bench embedded`: the embedded default of `copl run` per seed and mode, sized where `copl run` sizes it."""

from __future__ import annotations

import json

import pytest
import yaml

from copl_dist.bench import embedded
from copl_dist.cli import main
from copl_dist.run import plan

# A tiny embedded default: the corpus shrunk where `copl run` reads its size, the schedule by --set.
TINY_SYNTH = {"videos": 6, "classes": 3, "duration_scale": 0.15}
TINY_SETS = ["iterations=2", "train.epochs=1", "data.snippets=16", "model.hidden_dim=32", "train.shift_channels=64",
             "train.batch_size=4", "cluster.delta=-1", "tracking.enabled=false"]


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("embedded")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in TINY_SYNTH.items():
            mp.setitem(plan.EMBEDDED_SYNTH, key, value)
        argv = ["bench", "embedded", "--seeds", "1", "--first-seed", "1", "--out", str(out)]
        assert main([*argv, *(a for item in TINY_SETS for a in ("--set", item))]) == 0
    return out


def test_each_mode_runs_as_copl_run_runs_it(bench_out, capsys):
    doc = json.loads((bench_out / "embedded.json").read_text())
    assert [(r["seed"], r["mode"]) for r in doc["runs"]] == [(1, "utal"), (1, "wtal"), (1, "baseline")]
    runs = {r["mode"]: r for r in doc["runs"]}
    assert [it["iteration"] for it in runs["utal"]["iterations"]] == [0, 1]
    assert all(it["nmi"] is not None and it["map@avg"] is not None for it in runs["utal"]["iterations"])
    for mode in embedded.MODES:
        folder = bench_out / f"seed1-{mode}"
        assert (folder / "synthetic-data-thumos14-seed1" / "annotations.json").is_file()  # the run made its own corpus
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        assert cfg["mode"] == mode and cfg["seed"] == 1 and cfg["train"]["epochs"] == 1
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["final"]["map@avg"] == pytest.approx(runs[mode]["final"]["map@avg"])
    text = (bench_out / "embedded.md").read_text()
    ratio = 100 * runs["utal"]["iterations"][-1]["map@avg"] / runs["wtal"]["final"]["map@avg"]
    seed_row = next(line for line in text.splitlines() if line.strip().startswith("seed 1 "))
    assert f"{ratio:.0f}" in seed_row.split()
    assert "mean ± std" in text and "seeds done: 1 of 1" in text
    assert "copl run --out OUT/seedS-MODE --overwrite --seed S --mode MODE --no-progress --set iterations=2" in text


def test_sizes_come_from_the_embedded_default():
    """No size of its own: what the bench reports is what `copl run` with no data resolves."""
    sizes = embedded.sizes([])
    cfg = plan.resolve_config(plan.RunRequest())
    assert {k: sizes[k] for k in plan.EMBEDDED_SYNTH} == plan.EMBEDDED_SYNTH
    assert (sizes["iterations"], sizes["epochs"], sizes["snippets"], sizes["vote_last"]) == (
        cfg.iterations, cfg.train.epochs, cfg.data.snippets, cfg.has.vote_last)
    for key, value in plan.EMBEDDED_OVERRIDES.items():
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        assert node == value, key
    assert embedded.sizes(["train.epochs=2"])["epochs"] == 2  # a --set wins, as in `copl run`


def test_bad_modes_and_sets_fail_before_any_run(tmp_path, capsys):
    assert main(["bench", "embedded", "--modes", "wtal", "--out", str(tmp_path / "a")]) == 2
    assert "expected utal" in capsys.readouterr().err
    assert main(["bench", "embedded", "--set", "train.epochs=0", "--out", str(tmp_path / "b")]) == 2
    assert "train.epochs" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
