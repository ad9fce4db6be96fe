"""Suite-wide settings."""

import os

# `copl run` defaults to workers fitted to the machine (Ray Train where that is more than one CPU
# worker); the suite's many tiny runs train in-process unless a test asks for workers
# (tests/test_ray_train.py). Export COPL_WORKERS=1 to run them all on Ray Train.
os.environ.setdefault("COPL_WORKERS", "0")

import pytest


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri():
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI: whatever a test leaves there is undone, so
    no later test inherits its store (a module fixture's own setting is kept)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
