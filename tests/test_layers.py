"""The package's architecture, enforced: subpackages form layers and imports point down only.

    cli -> api -> bench / tune -> run -> tracking / distributed -> cluster -> method -> data -> config -> common

An AST walk of every module (module-level and deferred imports alike) fails on an import of a
higher layer, of a sibling subpackage of the same layer, or on any cycle between modules. A second
test runs the paths that need neither Ray nor MLflow nor FAISS with the three made unimportable, as
on GPU machines that carry only torch.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_corpus import TINY, tiny_synthetic

PACKAGE = Path(__file__).resolve().parents[1] / "copl_dist"

# Rank of each top-level part of the package; an import may only go to a lower rank or stay in its
# own subpackage. Parts of equal rank are independent of each other.
RANKS = {
    "common": 0,
    "config": 1,
    "data": 2,
    "method": 3,
    "cluster": 4,
    "tracking": 5,
    "distributed": 5,
    "run": 6,
    "bench": 7,
    "tune": 7,
    "api": 8,
    "cli": 9,
    "__main__": 10,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """copl_dist modules imported anywhere in the file (`from copl_dist.x import y` counts as x.y when
    y is a module, else as x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "copl_dist")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "copl_dist":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return found


def _part(module: str) -> str:
    """The layer part of a module: copl_dist.run.plan -> run, copl_dist.config -> config."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_every_part_of_the_package_has_a_layer():
    parts = {_part(m) for m in _modules()} - {""}
    assert parts <= set(RANKS), f"parts without a layer in RANKS: {sorted(parts - set(RANKS))}"


def test_imports_point_down_the_layers():
    bad = []
    for module, targets in _graph().items():
        src = _part(module)
        if not src:
            continue  # copl_dist/__init__.py imports nothing (checked below)
        for target in targets:
            dst = _part(target)
            if dst == src:
                continue
            if not dst or RANKS[dst] >= RANKS[src]:
                bad.append(f"{module} -> {target}")
    assert not bad, "imports that do not point down the layers:\n" + "\n".join(sorted(bad))


def test_the_package_root_imports_nothing_of_its_own():
    assert _graph()["copl_dist"] == set()


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle():
    graph = _graph()
    # A package's __init__ is imported with any of its modules: an edge to a package is an edge to it.
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_walk_sees_an_upward_import_and_a_cycle():
    """The checks above can fail: an upward edge and a two-module cycle are found."""
    graph = {"copl_dist.method.a": {"copl_dist.run.b"}, "copl_dist.run.b": {"copl_dist.method.a"}}
    assert _cycle(graph) == ["copl_dist.method.a", "copl_dist.run.b", "copl_dist.method.a"]
    assert RANKS[_part("copl_dist.run.b")] > RANKS[_part("copl_dist.method.a")]
    found = _imports(PACKAGE / "run" / "plan.py", _modules())
    assert "copl_dist.run.driver" in found and "copl_dist.tracking.runs" in found


# -- without Ray, MLflow and FAISS -----------------------------------------------------------------

# Loaded by every Python process of the test (the benchmarks start worker processes): Ray, MLflow
# and FAISS cannot be imported, as where they are not installed.
BLOCK = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ray", "mlflow", "faiss"):
            raise ModuleNotFoundError(f"No module named '{name}' (blocked by the test)")
        return None
sys.meta_path.insert(0, _Block())
"""


def _without_heavy(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    block = cwd / "block"
    block.mkdir(exist_ok=True)
    (block / "sitecustomize.py").write_text(BLOCK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), str(PACKAGE.parent)])}
    return subprocess.run([sys.executable, "-m", "copl_dist", *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.timeout(900)
def test_in_process_paths_run_without_ray_mlflow_faiss(tmp_path):
    data = tiny_synthetic(tmp_path / "data")
    run = _without_heavy(
        "run", "--data", str(data), "--out", str(tmp_path / "run"), "--workers", "0", *TINY,
        "--set", "tracking.enabled=false", cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["complete"] is True
    cluster = _without_heavy("bench", "cluster", "--n", "300", "--dim", "16", "--clusters", "3", "--paths", "knn",
                             "--backend", "torch", "--out", str(tmp_path / "cluster"), cwd=tmp_path)
    assert cluster.returncode == 0, cluster.stderr[-2000:]
    train = _without_heavy("bench", "train", "--videos", "8", "--classes", "2", "--epochs", "2", "--snippets", "16",
                           "--modes", "in-process", "--out", str(tmp_path / "train"), cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-2000:]


def test_the_block_really_blocks(tmp_path):
    """Without the block the same check would pass vacuously: a path that needs MLflow fails under it."""
    proc = _without_heavy("registry", "list", "--tracking-uri", str(tmp_path / "mlflow.db"), cwd=tmp_path)
    assert proc.returncode != 0 and "blocked by the test" in proc.stderr
