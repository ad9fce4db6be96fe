import pytest
import torch

from copl_dist.config import PRESETS, config_hash, flatten, from_dict, resolve, to_dict, to_yaml
from copl_dist.errors import InputError


def test_presets_follow_the_paper():
    th = resolve("thumos14")
    assert (th.has.gamma, th.has.alpha, th.train.beta, th.train.topl_ratio) == (20.0, 0.9, 1 / 3, 1 / 8)
    assert (th.loss.lambda2, th.train.batch_size, th.train.epochs, th.data.snippets) == (10.0, 16, 300, 750)
    an = resolve("anet12")
    assert (an.has.gamma, an.has.alpha, an.train.beta, an.train.topl_ratio) == (2.0, 0.5, 0.5, 0.5)
    assert (an.loss.lambda2, an.train.batch_size, an.train.epochs, an.data.snippets) == (1.0, 128, 30, 50)
    assert (an.data.train_subset, an.data.test_subset) == ("training", "validation")
    for cfg in (th, an):
        assert (cfg.loss.mu1, cfg.loss.mu2, cfg.loss.lambda1, cfg.loss.q, cfg.cluster.delta) == (5.0, 0.1, 0.01, 0.7, 0.0)
        assert (cfg.train.lr, cfg.train.weight_decay, cfg.iterations) == (1e-4, 5e-4, 3)


def test_precedence_file_then_set_then_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("has:\n  gamma: 7\ntrain:\n  epochs: 5\n")
    cfg = resolve("thumos14", f, ["train.epochs=9", "has.branch=cs"], {"train.epochs": 11, "seed": None})
    assert cfg.has.gamma == 7.0 and cfg.train.epochs == 11 and cfg.has.branch == "cs" and cfg.seed == 0


def test_yaml_round_trip_and_hash(tmp_path):
    cfg = resolve("anet12", sets=["loss.co=false", "inference.thetas=[0.2,0.4]"])
    f = tmp_path / "r.yaml"
    f.write_text(to_yaml(cfg))
    again = resolve("thumos14", f)
    assert to_dict(again) == to_dict(cfg)
    assert config_hash(again) == config_hash(cfg)
    assert again.inference.thetas == [0.2, 0.4] and again.loss.co is False
    assert from_dict(to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "sets, fragment",
    [
        (["train.epoc=3"], "unknown config key 'train.epoc'"),
        (["nope=1"], "unknown config key 'nope'"),
        (["train.epochs=abc"], "'train.epochs' expects int"),
        (["has.branch=xx"], "'has.branch' must be one of"),
        (["has.alpha=1.5"], "'has.alpha' must be in [0, 1)"),
        (["cluster.knn_pca=-1"], "'cluster.knn_pca' must be >= 0"),
        (["cluster.knn=0"], "'cluster.knn' must be >= 1"),
        (["train=3"], "'train' expects a mapping"),
        (["novalue"], "expected key=value"),
    ],
)
def test_bad_keys_and_values_are_named(sets, fragment):
    with pytest.raises(InputError) as err:
        resolve("thumos14", sets=sets)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_in_file_names_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  epochz: 3\n")
    with pytest.raises(InputError, match=r"bad.yaml: unknown config key 'train.epochz'"):
        resolve("thumos14", f)
    with pytest.raises(InputError, match="config file not found"):
        resolve("thumos14", tmp_path / "missing.yaml")
    with pytest.raises(InputError, match="unknown preset"):
        resolve("kinetics")


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
    assert set(PRESETS) == {"thumos14", "anet12"}


def test_train_device_values():
    from copl_dist.engine import resolve_device

    for ok in ("auto", "cpu", "cuda", "cuda:1"):
        assert resolve(sets=[f"train.device={ok}"]).train.device == ok
    with pytest.raises(InputError, match="train.device"):
        resolve(sets=["train.device=gpu"])
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            resolve_device("cuda")


def test_has_init_values():
    assert resolve().has.init == "novelty"
    assert resolve(sets=["has.init=mean"]).has.init == "mean"
    with pytest.raises(InputError, match="has.init"):
        resolve(sets=["has.init=median"])


def test_distributed_use_gpu_values(tmp_path):
    assert resolve().distributed.use_gpu == "auto"
    assert resolve(sets=["distributed.use_gpu=true"]).distributed.use_gpu == "true"
    f = tmp_path / "c.yaml"
    f.write_text("distributed:\n  use_gpu: false\n")  # YAML's boolean reads as the choice
    assert resolve(config_file=f).distributed.use_gpu == "false"
    with pytest.raises(InputError, match="distributed.use_gpu' must be one of"):
        resolve(sets=["distributed.use_gpu=sometimes"])


@pytest.mark.parametrize("key, bad", [("distributed.has_actor_cpus", "0"), ("distributed.has_actor_threads", "-1")])
def test_has_actor_resources_are_checked(key, bad):
    with pytest.raises(InputError, match=key):
        resolve(sets=[f"{key}={bad}"])
