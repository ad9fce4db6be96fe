"""The ablation switches (the paper's rows "w/o HAS", "w/o voting", "w/o PLRI" and the single-branch
HAS variants) change what their rows say, observed on tiny `copl run`s.

Every run here clusters without the LDA projection (cluster.project=none), so that what an iteration
clusters depends only on the HAS global features, which is what the switches act on. The corpus has
128-dimensional features (the tiny corpus' layout, narrower) to keep the seven runs quick.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from tiny_corpus import TINY

from copl_dist.cli import main
from copl_dist.cluster.videos import cluster_videos
from copl_dist.common.seeding import STREAM_CLUSTER, derive_seed
from copl_dist.config import resolve
from copl_dist.data.corpus import Corpus
from copl_dist.data.synth import make_synthetic
from copl_dist.method.has import has_attention, initial_feature

VIDEOS = 8  # per subset, in 3 classes
DIM = 128

VARIANTS = {
    "full": [],
    "no_has": ["has.enabled=false"],
    "no_voting": ["has.voting=false"],
    "vote_last_1": ["has.vote_last=1"],
    "cs": ["has.branch=cs"],
    "ca": ["has.branch=ca"],
    "no_plri": ["cluster.plri=false"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """run(name) -> OUT of that variant's 2-iteration run; each variant runs once, when first asked."""
    root = tmp_path_factory.mktemp("ablations")
    data = make_synthetic(root / "synth", preset="thumos14", videos=VIDEOS, classes=3, seed=0, duration_scale=0.15, feature_dim=DIM)
    done: dict[str, Path] = {}

    def run(name: str) -> Path:
        if name not in done:
            out = root / name
            sets = [a for s in ["tracking.enabled=false", "cluster.project=none", f"model.feature_dim={DIM}", *VARIANTS[name]] for a in ("--set", s)]
            assert main(["run", "--data", str(data), "--out", str(out), "--workers", "0", *TINY, *sets]) == 0
            done[name] = out
        return done[name]

    return run


def _iterations(out: Path) -> list[dict]:
    return json.loads((out / "metrics.json").read_text())["iterations"]


def _table(out: Path) -> dict[str, np.ndarray]:
    """The last clustering (pseudo_labels.parquet) as columns in video order."""
    rows = sorted(pq.read_table(out / "pseudo_labels.parquet").to_pylist(), key=lambda r: r["video_id"])
    return {k: np.array([r[k] for r in rows]) for k in ("video_id", "cluster", "plri_score", "pseudo_labelled")}


def _same_clustering(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return (
        np.array_equal(a["video_id"], b["video_id"])
        and np.array_equal(a["cluster"], b["cluster"])
        and np.array_equal(a["pseudo_labelled"], b["pseudo_labelled"])
        and np.allclose(a["plri_score"], b["plri_score"], atol=1e-9)
    )


CLUSTER_FIGURES = ("purity", "nmi", "ari", "num_pseudo_labelled", "num_unlabelled")


def test_without_has_every_iteration_clusters_iteration_0s_features(runs):
    out = runs("no_has")
    its = _iterations(out)
    assert len(its) == 2
    assert [{k: it[k] for k in CLUSTER_FIGURES} for it in its[1:]] == [{k: its[0][k] for k in CLUSTER_FIGURES}]
    # The last clustering is that of iteration 0's features (has.init, novelty-pooled by default),
    # computed here straight from the converted corpus.
    cfg = resolve("thumos14", out / "config.yaml")
    corpus = Corpus.open(out / "corpus")
    ids = sorted(corpus.video_ids(cfg.data.train_subset))
    features = np.stack([initial_feature(corpus.features(v), cfg.has.init, cfg.has.gamma) for v in ids])
    labels, scores, mask = cluster_videos(features, 3, derive_seed(cfg.seed, STREAM_CLUSTER, 1), cfg.cluster.delta, cfg.cluster.plri)
    expected = {"video_id": np.array(ids), "cluster": labels, "plri_score": scores, "pseudo_labelled": mask}
    assert _same_clustering(_table(out), expected)
    # With HAS the second iteration clusters the teacher's global features instead: another clustering.
    full = runs("full")
    assert not _same_clustering(_table(full), expected)
    assert [_iterations(full)[1][k] for k in CLUSTER_FIGURES] != [_iterations(full)[0][k] for k in CLUSTER_FIGURES]


def test_without_voting_the_last_epoch_alone_makes_the_global_features(runs):
    # Eq. 4 without voting keeps the last epoch's A_HAS: the same votes as voting over the last epoch
    # only, so the same second clustering; voting over both epochs (the default) gives another one.
    no_voting, last_only, full = (_table(runs(n)) for n in ("no_voting", "vote_last_1", "full"))
    assert _same_clustering(no_voting, last_only)
    assert not _same_clustering(no_voting, full)
    # Iteration 0 has no model yet: voting cannot change it.
    first = [[_iterations(runs(n))[0][k] for k in CLUSTER_FIGURES] for n in ("no_voting", "full")]
    assert first[0] == first[1]


def test_single_branch_has_keeps_only_that_branchs_snippets():
    # a_cs is high on even snippets, a_ca on odd ones: the branches never agree, so Eq. 2 keeps
    # nothing, while each single branch keeps its own top k = 8 / 4 = 2 values (not A_c).
    a_cs = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4])
    a_ca = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6])
    np.testing.assert_allclose(has_attention(a_cs, a_ca, 4.0, branch="both"), np.zeros(8))
    np.testing.assert_allclose(has_attention(a_cs, a_ca, 4.0, branch="cs"), [0.9, 0, 0.8, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(has_attention(a_cs, a_ca, 4.0, branch="ca"), [0, 0.9, 0, 0.8, 0, 0, 0, 0])
    # Whatever the other branch says, a single-branch A_HAS does not move; the paper's filter keeps
    # snippets once the branches agree.
    rng = np.random.default_rng(0)
    for _ in range(5):
        other = rng.random(8)
        np.testing.assert_array_equal(has_attention(a_cs, other, 4.0, branch="cs"), has_attention(a_cs, a_ca, 4.0, branch="cs"))
        np.testing.assert_array_equal(has_attention(other, a_ca, 4.0, branch="ca"), has_attention(a_cs, a_ca, 4.0, branch="ca"))
    np.testing.assert_allclose(has_attention(a_cs, a_cs.copy(), 4.0, branch="both"), [0.9, 0, 0.8, 0, 0, 0, 0, 0])


def test_has_branch_reaches_the_global_features_of_a_run(runs):
    tables = {b: _table(runs(b)) for b in ("full", "cs", "ca")}
    for a, b in (("full", "cs"), ("full", "ca"), ("cs", "ca")):
        assert not _same_clustering(tables[a], tables[b]), f"has.branch {a} and {b} clustered alike"
    # The branch acts through the votes only, so iteration 0 is the same for all three.
    first = {b: [_iterations(runs(b))[0][k] for k in CLUSTER_FIGURES] for b in tables}
    assert first["cs"] == first["full"] == first["ca"]


def test_without_plri_every_video_is_pseudo_labelled(runs):
    without, with_plri = runs("no_plri"), runs("full")
    for it in _iterations(without):
        assert (it["num_pseudo_labelled"], it["num_unlabelled"]) == (VIDEOS, 0)
    table = _table(without)
    assert table["pseudo_labelled"].all()
    # ... even those whose silhouette-like score would put them in U (Eqs. 9-10, delta 0).
    assert (table["plri_score"] < 0).any()
    # With PLRI, the videos under delta are left unlabelled.
    assert any(it["num_unlabelled"] > 0 for it in _iterations(with_plri))
    for it in _iterations(with_plri):
        assert it["num_pseudo_labelled"] + it["num_unlabelled"] == VIDEOS
    full = _table(with_plri)
    np.testing.assert_array_equal(full["pseudo_labelled"], full["plri_score"] >= 0)
