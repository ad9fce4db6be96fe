"""The run plan (copl_dist/run/plan.py): every check that writes nothing happens once, before
anything is written, and what it resolved is what the run uses."""

from __future__ import annotations

import pytest
from tiny_corpus import TINY, tiny_synthetic

from copl_dist.cli.parser import build_parser
from copl_dist.cli.run import run_request
from copl_dist.common.errors import InputError
from copl_dist.run import plan
from copl_dist.tracking import runs


def _request(*argv: str):
    return run_request(build_parser().parse_args(["run", *argv]))


def test_each_check_runs_once_per_run(tmp_path, monkeypatch):
    """`copl run` with tracking on: the store resolved once, the data checked once, the registry name
    checked once. (CoplRun cannot check again: the checks live in run/plan.py, which imports it.)"""
    calls = {"resolve_tracking_uri": 0, "check_run_inputs": 0, "check_registry_names": 0, "check_tracking_store": 0}

    def counting(module, name):
        real = getattr(module, name)

        def spy(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)

    for name in ("resolve_tracking_uri", "check_run_inputs", "check_registry_names", "check_tracking_store"):
        counting(plan, name)
    counting(runs, "resolve_tracking_uri")  # a Tracker that resolved the store again would call this
    data = tiny_synthetic(tmp_path / "data", videos=4)
    request = _request("--data", str(data), "--out", str(tmp_path / "out"), *TINY, "--iterations", "1")
    prepared = plan.prepare(plan.plan_run(request))
    outcome = plan.execute(prepared)
    assert calls == {"resolve_tracking_uri": 1, "check_run_inputs": 1, "check_registry_names": 1, "check_tracking_store": 1}
    assert outcome.registered == "models:/copl-teacher/1"
    assert prepared.plan.tracking_uri == f"sqlite:///{(tmp_path / 'out' / 'mlflow.db').resolve()}"


def test_plan_writes_nothing_and_holds_what_it_resolved(tmp_path, monkeypatch):
    monkeypatch.delenv("COPL_WORKERS", raising=False)
    data = tiny_synthetic(tmp_path / "data", videos=4)
    p = plan.plan_run(_request("--data", str(data), "--out", str(tmp_path / "out"), "--epochs", "3", "--workers", "0"))
    assert not (tmp_path / "out").exists()
    assert p.cfg.train.epochs == 3 and p.cfg.distributed.workers == 0 and p.ray_address is None
    assert p.dataset == str(data.resolve()) and p.registered_model == "copl-teacher" and p.init_checkpoint is None
    embedded = plan.plan_run(_request("--out", str(tmp_path / "e"), "--set", "tracking.enabled=false"))
    assert embedded.synthetic and embedded.tracking_uri is None and embedded.dataset == "synthetic:thumos14:seed0"
    assert embedded.cfg.iterations == plan.EMBEDDED_OVERRIDES["iterations"]
    assert embedded.cfg.distributed.workers == plan.RUN_DEFAULT_WORKERS and embedded.ray_address == "local"
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data", "{tmp}/missing"], "data folder not found"),
        (["--out", "{tmp}/file"], "exists and is not a folder"),
        (["--mode", "baseline", "--init-from", "{tmp}/t.pt"], "mode 'baseline' trains no model"),
        (["--set", "tracking.registered_model=bad/name"], "tracking.registered_model"),
        (["--workers", "1", "--set", "distributed.ray_address=http://head:8265"], "dashboard.s address"),
    ],
)
def test_plan_refuses_before_writing(tmp_path, argv, message):
    (tmp_path / "file").write_text("")
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(InputError, match=message):
        plan.plan_run(_request(*argv))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_device_the_machine_lacks_is_refused_before_the_corpus_is_converted(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    data = tiny_synthetic(tmp_path / "data", videos=4)
    with pytest.raises(InputError, match="'train.device' is 'cuda', but torch sees no CUDA device"):
        plan.plan_run(_request("--data", str(data), "--out", str(tmp_path / "out"), "--set", "train.device=cuda"))
    assert not (tmp_path / "out").exists()
