"""The shipped cluster files are valid for their tools and say what a user relies on."""

import copy
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "cluster_configs"


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0].lower()


def _load(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


@pytest.mark.parametrize("name, provider", [("aws-gpu.yaml", "aws"), ("gcp-gpu.yaml", "gcp")])
def test_cluster_launcher_files(name, provider):
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _load(name)
    validate_config(prepare_config(copy.deepcopy(cfg)))  # the launcher's own schema check (`ray up`)
    assert cfg["provider"]["type"] == provider
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    # Ray schedules nothing on the head; the driver clusters there, on the head machine's GPU.
    assert head["resources"] == {"CPU": 0, "GPU": 0}
    workers = [t for n, t in types.items() if n != cfg["head_node_type"]]
    # A GPU node is up when a job starts: `--workers -1` fits what it sees and HAS actors need CPUs.
    assert any(t["resources"].get("GPU", 0) >= 1 and t["min_workers"] >= 1 for t in workers)
    assert cfg["docker"]["image"].startswith("rayproject/ray:")
    # The dashboard (job API, no authentication) stays on the head's loopback: `ray dashboard FILE`.
    assert not any("0.0.0.0" in c for c in cfg["head_start_ray_commands"])
    # `ray job stop` gives a job 30 s, not 3, between SIGTERM and SIGKILL (the supervisors' head's env).
    assert any(c.startswith("RAY_JOB_STOP_WAIT_TIME_S=30 ray start --head") for c in cfg["head_start_ray_commands"])


def test_kuberay_manifests():
    cluster = _load("kuberay-raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    worker = cluster["spec"]["workerGroupSpecs"][0]
    assert worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["minReplicas"] >= 1
    job = _load("kuberay-rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["entrypoint"].startswith("exec python -m copl_dist run ")
    job_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert job_env["env_vars"]["MLFLOW_TRACKING_URI"].startswith("http")
    assert job_env["pip"] == _load("runtime_env.yaml")["pip"]
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:  # GPU node pools are tainted
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in group["template"]["spec"]["tolerations"]
        head = spec["headGroupSpec"]
        assert head["rayStartParams"]["num-gpus"] == "0"  # the head's GPU is the driver's, not Ray's
        assert head["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert {"name": "RAY_JOB_STOP_WAIT_TIME_S", "value": "30"} in head["template"]["spec"]["containers"][0]["env"]


def test_runtime_env_is_valid_for_ray_and_follows_pyproject():
    from ray.runtime_env import RuntimeEnv

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    shipped = _load("runtime_env.yaml")
    env = RuntimeEnv(**shipped)
    assert "MLFLOW_TRACKING_URI" in env["env_vars"]
    assert shipped["working_dir"] == "."  # this checkout, uploaded by `ray job submit` from the root
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    # pyproject's dependencies, less Ray (the image's) and with FAISS's GPU build for its CPU one.
    expected = [d for d in deps if _name(d) != "ray"]
    expected = [d.replace("faiss-cpu", "faiss-gpu-cu12") for d in expected]
    assert shipped["pip"] == expected
