import pytest
import torch
import yaml

from copl_dist.common.errors import InputError
from copl_dist.config import (
    PRESETS,
    config_hash,
    flatten,
    from_dict,
    resolve,
    to_dict,
    to_yaml,
)


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
        (["cluster.knn_pca=-2"], "'cluster.knn_pca' must be >= -1"),
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
    from copl_dist.method.engine import resolve_device

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


# Each bad value, by hand from the rule of its key (config.validate).
BAD_VALUES = [
    ("model.dropout", "1.0", "in [0, 1)"),
    ("model.dropout", "-0.1", "in [0, 1)"),
    ("model.hidden_dim", "0", ">= 1"),
    ("model.feature_dim", "0", ">= 2 and even"),
    ("model.feature_dim", "7", ">= 2 and even"),
    ("train.lr", "-1e-4", ">= 0 and finite"),
    ("train.lr", ".inf", ">= 0 and finite"),
    ("train.lr", ".nan", ">= 0 and finite"),
    ("train.weight_decay", "-1e-4", ">= 0 and finite"),
    ("train.weight_decay", ".inf", ">= 0 and finite"),
    ("train.max_grad_norm", "0", "> 0 (inf: no clipping)"),
    ("train.shift_channels", "-1", ">= 0"),
    ("loss.temperature", "0.0", "> 0 and finite"),
    ("loss.q", "0", "in (0, 1]"),  # Eq. 16 divides by q: FloatingPointError before the check
    ("loss.q", "1.5", "in (0, 1]"),
    ("loss.mu1", "-1", ">= 0 and finite"),
    ("loss.mu2", ".nan", ">= 0 and finite"),
    ("loss.lambda1", "-.inf", ">= 0 and finite"),
    ("loss.lambda2", ".inf", ">= 0 and finite"),
    ("loss.contrast_ratio", "0", "in (0, 1]"),
    ("loss.contrast_ratio", "1.01", "in (0, 1]"),
    ("seed", "-1", ">= 0"),
    ("distributed.workers", "-2", ">= -1"),
    ("distributed.has_actors", "-1", ">= 0"),
    ("distributed.max_failures", "-2", ">= -1"),
    ("distributed.has_actor_cpus", ".inf", "> 0 and finite"),
    ("inference.thetas", "[]", "a non-empty list of values in (0, 1)"),
    ("inference.thetas", "[0.5, 1.0]", "a non-empty list of values in (0, 1)"),
    ("inference.thetas", "[0.0]", "a non-empty list of values in (0, 1)"),
    ("inference.thetas", "[.nan]", "a non-empty list of values in (0, 1)"),
    ("inference.max_detections", "-1", ">= 0"),
    ("inference.class_threshold", "1.2", "in [0, 1]"),
    ("inference.class_threshold", ".nan", "in [0, 1]"),
    ("inference.outer_ratio", "-0.1", ">= 0 and finite"),
    ("inference.class_score_weight", "-0.5", ">= 0 and finite"),
    ("has.gamma", ".inf", ">= 1 and finite"),
    ("data.min_snippets", "0", ">= 1"),
    ("cluster.exact_max_n", "-1", ">= 0"),
]


@pytest.mark.parametrize("key, bad, rule", BAD_VALUES)
def test_out_of_range_values_name_the_key_and_their_source(tmp_path, key, bad, rule):
    fragment = f"config key '{key}' must be {rule}"
    with pytest.raises(InputError) as err:
        resolve("thumos14", sets=[f"{key}={bad}"])
    assert str(err.value).startswith(f"--set: {fragment}") and "\n" not in str(err.value)
    # The same value from a file blames the file, even when --set then fixes another key.
    f = tmp_path / "c.yaml"
    f.write_text(f"{key}: {bad}\n" if "." not in key else "{}:\n  {}: {}\n".format(*key.split("."), bad))
    with pytest.raises(InputError) as err:
        resolve("thumos14", f, ["train.epochs=3"])
    assert str(err.value).startswith(f"{f}: {fragment}")


@pytest.mark.parametrize("key, good", [
    ("model.dropout", "0"), ("train.lr", "0"), ("train.shift_channels", "0"), ("train.weight_decay", "0"), ("loss.q", "1"),
    ("loss.mu1", "0"), ("loss.contrast_ratio", "1"), ("seed", "0"), ("distributed.workers", "-1"),
    ("distributed.max_failures", "-1"), ("inference.max_detections", "0"), ("inference.class_threshold", "1"),
    ("inference.class_score_weight", "0"), ("inference.thetas", "[0.05]"), ("cluster.exact_max_n", "0"),
    ("data.min_snippets", "1"), ("model.feature_dim", "2"),
    ("train.max_grad_norm", ".inf"),  # torch clips nothing at inf: "no clipping"
    ("inference.outer_ratio", "0"),  # the outer margin is still at least one snippet
])
def test_boundary_values_the_code_supports_are_accepted(key, good):
    cfg = resolve("thumos14", sets=[f"{key}={good}"])
    section, _, leaf = key.rpartition(".")
    assert getattr(getattr(cfg, section) if section else cfg, leaf) == yaml.safe_load(good)


def test_every_float_key_refuses_nan_and_inf():
    from copl_dist.tune.space import leaf_types

    floats = [k for k, hint in leaf_types().items() if hint in (float, list[float])]
    assert "train.lr" in floats and "inference.thetas" in floats
    for key in floats:
        for bad in (".nan", "-.inf") if key == "train.max_grad_norm" else (".nan", ".inf", "-.inf"):
            value = f"[{bad}]" if key == "inference.thetas" else bad
            with pytest.raises(InputError, match=f"--set: config key '{key}' must be"):
                resolve("thumos14", sets=[f"{key}={value}"])


def test_bad_value_is_blamed_on_where_it_was_set_last(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.001\nmodel:\n  hidden_dim: 0\n")
    with pytest.raises(InputError, match=rf"^{f}: config key 'model.hidden_dim' must be >= 1, got 0$"):
        resolve("thumos14", f)
    # A later --set of the same key takes the blame (and the file's good keys none).
    with pytest.raises(InputError, match=r"^--set: config key 'model.hidden_dim' must be >= 1, got -3$"):
        resolve("thumos14", f, ["model.hidden_dim=-3"])
    # A command-line flag: the flag's own spelling.
    with pytest.raises(InputError, match=r"^--epochs: config key 'train.epochs' must be >= 1, got 0$"):
        resolve("thumos14", overrides={"train.epochs": 0})
    with pytest.raises(InputError, match=r"^--has-actors: config key 'distributed.has_actors'"):
        resolve("thumos14", overrides={"distributed.has_actors": -1})
    # A file's bad value survives a --set fix of another key; fixed by --set, the file passes.
    assert resolve("thumos14", f, ["model.hidden_dim=8"]).model.hidden_dim == 8


def test_validate_and_from_dict_keep_their_source_for_other_callers():
    from copl_dist.config import CoplConfig, validate

    cfg = CoplConfig()
    cfg.model.hidden_dim = 0  # set by hand: no source recorded, the caller's word is used
    with pytest.raises(InputError, match=r"^checkpoint x: config key 'model.hidden_dim'"):
        validate(cfg, source="checkpoint x")
    data = to_dict(resolve("thumos14"))
    data["loss"]["q"] = 0.0
    with pytest.raises(InputError, match=r"^train config: config key 'loss.q' must be in \(0, 1\], got 0.0$"):
        from_dict(data, source="train config")
    assert from_dict(to_dict(resolve("thumos14"))) == resolve("thumos14")  # sources are not compared


@pytest.mark.parametrize("text, fragment", [
    (b"preset: [1]\n", "unknown preset [1]"),
    (b"preset: {a: 1}\n", "unknown preset {'a': 1}"),
    (b"preset: kinetics\n", "unknown preset 'kinetics'"),
    (b"train:\n  epochs: 3 # caf\xe9\n", "not UTF-8 text (byte 24"),
    (b"\xff\xfe\x00", "not UTF-8 text (byte 0"),
])
def test_unparseable_config_files_are_one_line_errors(tmp_path, text, fragment):
    f = tmp_path / "bad.yaml"
    f.write_bytes(text)
    with pytest.raises(InputError) as err:
        resolve("thumos14", f)
    msg = str(err.value)
    assert msg.startswith(f"{f}: ") and fragment in msg and "\n" not in msg
