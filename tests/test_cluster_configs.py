"""The shipped cluster files parse and say what a user relies on."""

from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "cluster_configs"


def _load(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


@pytest.mark.parametrize("name, provider", [("aws-gpu.yaml", "aws"), ("gcp-gpu.yaml", "gcp")])
def test_cluster_launcher_files(name, provider):
    cfg = _load(name)
    assert cfg["provider"]["type"] == provider
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values())
    assert any("copl-dist[gpu]" in c for c in cfg["setup_commands"])
    assert cfg["docker"]["image"].startswith("rayproject/ray:")


def test_kuberay_manifests():
    cluster = _load("kuberay-raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    worker = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    job = _load("kuberay-rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["entrypoint"].startswith("copl run ")
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["MLFLOW_TRACKING_URI"].startswith("http")


def test_runtime_env_is_valid_for_ray():
    from ray.runtime_env import RuntimeEnv

    env = RuntimeEnv(**_load("runtime_env.yaml"))
    assert "MLFLOW_TRACKING_URI" in env["env_vars"]
