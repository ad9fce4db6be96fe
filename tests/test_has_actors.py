"""HAS over Ray actors (distributed/has_actors.py) equals the in-process path bit for bit."""

from __future__ import annotations

import cloudpickle
import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from copl_dist.common.errors import InputError  # noqa: E402
from copl_dist.config import resolve  # noqa: E402
from copl_dist.data.formats import import_dataset  # noqa: E402
from copl_dist.data.synth import make_synthetic  # noqa: E402
from copl_dist.distributed.has_actors import HASActorPool, contiguous_shards  # noqa: E402
from copl_dist.method.engine import LocalVoter  # noqa: E402
from copl_dist.method.model import IOCNet  # noqa: E402
from copl_dist.run import driver  # noqa: E402

NUM_CLASSES = 3
TINY = {"model.hidden_dim": 32, "tracking.enabled": False}


def test_contiguous_shards_balance_work_and_cover_everything():
    assert contiguous_shards([10, 10, 10, 10], 2) == [(0, 2), (2, 4)]
    assert contiguous_shards([100, 1, 1, 1], 2) == [(0, 1), (1, 4)]  # balanced by work, not count
    assert contiguous_shards([5, 5, 5], 3) == [(0, 1), (1, 2), (2, 3)]
    assert contiguous_shards([1, 1, 1, 100], 3) == [(0, 2), (2, 3), (3, 4)]  # the heavy video alone
    assert contiguous_shards([7], 1) == [(0, 1)]
    with pytest.raises(ValueError):
        contiguous_shards([1, 2], 3)


@pytest.fixture(scope="module")
def ray_local():
    from copl_dist.config import DistributedConfig
    from copl_dist.distributed.ray_runtime import ensure_ray

    ensure_ray(DistributedConfig(ray_address="local"), num_cpus=2)  # a local Ray on 127.0.0.1 only
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("has_actors")
    make_synthetic(tmp / "raw", videos=8, classes=NUM_CLASSES, duration_scale=0.15, seed=0)
    return import_dataset(tmp / "raw", tmp / "corpus")


@pytest.fixture(scope="module")
def cfg():
    return resolve("thumos14", overrides=TINY)


@pytest.fixture(scope="module")
def ids(corpus, cfg):
    return corpus.video_ids(cfg.data.train_subset)


@pytest.fixture(scope="module")
def pool(ray_local, corpus, cfg, ids):
    p = HASActorPool(corpus.root, ids, cfg, num_actors=2)
    yield p
    p.shutdown()


def _teacher(epoch: int, hidden_dim: int = 32) -> IOCNet:
    torch.manual_seed(1000 + epoch)  # fixed random weights, different in every epoch
    return IOCNet(NUM_CLASSES, 2048, hidden_dim).eval()


def _vote_both(local: LocalVoter, pool: HASActorPool, epochs: int, hidden_dim: int = 32) -> None:
    for epoch in range(epochs):
        teacher = _teacher(epoch, hidden_dim)
        local.vote(epoch, teacher)
        pool.vote(epoch, teacher)


def _assert_votes_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for vid in a:
        assert a[vid].dtype == b[vid].dtype
        assert np.array_equal(a[vid], b[vid]), vid


@pytest.mark.ray
def test_pool_shards_and_threads(pool, corpus, ids):
    assert pool.num_actors == 2
    assert [v for shard in pool.shards for v in shard] == ids  # contiguous, every video once
    info = pool.info()
    assert len({i["pid"] for i in info}) == 2
    # Same torch thread count as this process: the condition for bit-equal convolutions.
    assert all(i["torch_threads"] == torch.get_num_threads() for i in info)


@pytest.mark.ray
def test_votes_and_features_bit_equal(pool, corpus, cfg, ids):
    pool.restore({})
    local = LocalVoter(corpus, ids, cfg)
    _vote_both(local, pool, epochs=3)
    state = pool.state()
    _assert_votes_equal(local.state(), state)
    assert np.any([np.any(v) for v in state.values()])

    expected = driver.has_features(corpus, ids, local.votes, cfg.has.centre)
    got = pool.global_features(ids)
    assert got.dtype == expected.dtype == np.float32
    assert np.array_equal(got, expected)
    assert np.array_equal(pool.global_features(ids[::-1]), expected[::-1])  # rows follow the request order
    for init in ("mean", "novelty"):
        assert np.array_equal(pool.initial_features(ids, init, 4.0), driver.initial_features(corpus, ids, init, 4.0))
    test_ids = corpus.video_ids(cfg.data.test_subset)  # outside the pool: read by any actor
    assert np.array_equal(
        pool.initial_features(test_ids, "novelty", 4.0), driver.initial_features(corpus, test_ids, "novelty", 4.0)
    )


@pytest.mark.ray
def test_votes_bit_equal_at_paper_width(pool, corpus, cfg, ids):
    # hidden_dim 512: here the 1x1 convolutions' results depend on torch's thread count (module
    # docstring); the actors match this process's count, so the votes still agree bit for bit.
    pool.restore({})
    local = LocalVoter(corpus, ids, cfg)
    _vote_both(local, pool, epochs=2, hidden_dim=512)
    _assert_votes_equal(local.state(), pool.state())


@pytest.mark.ray
def test_restore_then_continue(pool, corpus, cfg, ids):
    pool.restore({})
    local = LocalVoter(corpus, ids, cfg)
    _vote_both(local, pool, epochs=1)
    saved = local.state()

    pool.restore({})
    assert pool.state() == {}
    pool.restore(saved)  # each actor gets its shard's part
    _assert_votes_equal(saved, pool.state())
    _vote_both(local, pool, epochs=1)
    _assert_votes_equal(local.state(), pool.state())
    with pytest.raises(ValueError, match="outside this pool"):
        pool.restore({"no_such_video": np.zeros(3)})


@pytest.mark.ray
def test_pool_pickles_and_still_works(pool, corpus, cfg, ids):
    pool.restore({})
    copy = cloudpickle.loads(cloudpickle.dumps(pool))
    local = LocalVoter(corpus, ids, cfg)
    for epoch in range(2):
        teacher = _teacher(epoch)
        local.vote(epoch, teacher)
        copy.vote(epoch, teacher)  # the copy drives the same actors
    _assert_votes_equal(local.state(), pool.state())
    assert np.array_equal(copy.global_features(ids), driver.has_features(corpus, ids, local.votes, cfg.has.centre))


def _run_metrics(corpus, has_actors: int) -> tuple[list[dict], dict]:
    cfg = resolve(
        "thumos14",
        overrides={
            **TINY,
            "iterations": 2,
            "train.epochs": 2,
            "data.snippets": 32,
            "train.batch_size": 4,
            "distributed.has_actors": has_actors,
        },
    )
    run = driver.CoplRun(cfg, corpus, tracker=None, progress=False)
    result = run.execute()
    assert run._has_pool is None  # shut down at the end
    return [{k: v for k, v in r.items() if k != "seconds"} for r in result.iterations], result.final


def test_has_pool_options_follow_the_config():
    cfg = resolve("thumos14", sets=["distributed.has_actor_cpus=0.5", "distributed.has_actor_threads=1"])
    assert driver.has_pool_options(cfg, remote=True) == {
        "num_cpus_per_actor": 0.5, "torch_threads": 1, "autoscaling": True}
    assert driver.has_pool_options(resolve("thumos14"), remote=False) == {
        "num_cpus_per_actor": 1.0, "torch_threads": None, "autoscaling": False}


@pytest.mark.ray
def test_pool_larger_than_cluster_is_refused(ray_local, corpus, cfg, ids):
    with pytest.raises(InputError, match="has_actors"):
        HASActorPool(corpus.root, ids, cfg, num_actors=3)  # 3 CPUs on a 2-CPU Ray: would hang


@pytest.mark.ray
def test_pool_on_a_cluster_waits_for_the_autoscaler_then_refuses(ray_local, corpus, cfg, ids, monkeypatch, capsys):
    """Joined by address, a pool too big for the cluster asks the autoscaler for the CPUs and waits;
    when none come (this Ray has no autoscaler) it refuses instead of leaving the actors pending."""
    from copl_dist.distributed import has_actors

    monkeypatch.setattr(has_actors, "AUTOSCALE_WAIT_S", 0.2)
    with pytest.raises(InputError, match="need 3 CPUs, the Ray cluster has 2"):
        HASActorPool(corpus.root, ids, cfg, num_actors=3, autoscaling=True)
    assert "waiting up to 0.2 s for the autoscaler" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.slow
def test_copl_run_with_actors_matches_in_process(ray_local, corpus, pool):
    pool.shutdown()  # frees the module pool's 2 CPUs for the run's own pool (last test of the module)
    in_process, final_a = _run_metrics(corpus, 0)
    actors, final_b = _run_metrics(corpus, 2)
    assert [r["nmi"] for r in actors] == [r["nmi"] for r in in_process]
    assert final_b == final_a and "map@avg" in final_a
    assert actors == in_process  # every record: cluster metrics, losses, mAPs
