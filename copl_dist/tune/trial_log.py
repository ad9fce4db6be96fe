"""`copl tune`'s driver-side trial log: a Ray Tune Callback that records every trial (for
tune_results.json) and mirrors it to MLflow, one run per trial nested under the "tune" run.

Trials themselves never touch MLflow: all writes happen here, in the driver, so that a SQLite store
never sees two writers, and each is shielded from Ctrl-C (deferred_interrupt) so that an interrupted
search can still end its runs.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from copl_dist.common.interrupts import deferred_interrupt
from copl_dist.tracking.runs import mlflow_key
from copl_dist.tune.space import plain_value

# Numbers reported by a trial besides "iteration" and "objective" (diagnostics, never selected on).
REPORTED = ("silhouette", "agreement", "map@avg", "map@0.5", "purity", "nmi", "ari", "num_pseudo_labelled", "loss")


def make_trial_log(max_iterations: int, mlflow_target: tuple[str, str, str] | None, echo: bool) -> Any:
    """A Tune Callback that records every trial (for tune_results.json) and mirrors it to MLflow.

    mlflow_target = (tracking_uri, experiment_id, parent_run_id): all MLflow writes happen here, in the
    driver, so a SQLite store never sees two writers.
    """
    from ray.tune import Callback


    class TrialLog(Callback):
        def __init__(self) -> None:
            self.records: dict[str, dict[str, Any]] = {}
            self.client = None
            if mlflow_target is not None:
                import mlflow

                with deferred_interrupt():  # opens the store (MLflow caches it per URI)
                    self.client = mlflow.MlflowClient(tracking_uri=mlflow_target[0])
                self.experiment_id, self.parent_run_id = mlflow_target[1], mlflow_target[2]

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if trial.trial_id in self.records:
                return
            params = {k: plain_value(v) for k, v in trial.config.items()}
            rec = {"trial_id": trial.trial_id, "params": params, "history": [], "status": "running", "error": None, "mlflow_run_id": None}
            self.records[trial.trial_id] = rec
            if self.client is not None:
                with deferred_interrupt():
                    run = self.client.create_run(
                        self.experiment_id,
                        run_name=f"trial-{trial.trial_id}",
                        tags={"mlflow.parentRunId": self.parent_run_id, "copl.trial_id": trial.trial_id, "copl.kind": "tune-trial"},
                    )
                    rec["mlflow_run_id"] = run.info.run_id
                    for key, value in params.items():
                        self.client.log_param(run.info.run_id, key, str(value)[:500])

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            rec = self.records[trial.trial_id]
            step = int(result["iteration"])
            entry = {"iteration": step, "objective": float(result["objective"])}
            entry.update({k: float(result[k]) for k in REPORTED if k in result})
            rec["history"].append(entry)
            if self.client is not None:
                from mlflow.entities import Metric

                now = int(time.time() * 1000)
                metrics = [Metric(mlflow_key(k), v, now, step) for k, v in entry.items() if k != "iteration" and math.isfinite(v)]
                with deferred_interrupt():
                    self.client.log_batch(rec["mlflow_run_id"], metrics=metrics)
            if echo:
                print(f"copl tune: trial {trial.trial_id} iteration {step}/{max_iterations}: "
                      f"objective {entry['objective']:.6g}", file=sys.stderr)

        def _end(self, trial: Any, failed: bool) -> None:
            rec = self.records.get(trial.trial_id)
            if rec is None:
                return
            done = rec["history"][-1]["iteration"] if rec["history"] else 0
            rec["status"] = "error" if failed else ("completed" if done >= max_iterations else "stopped_early")
            self._close(rec, "FAILED" if failed else "FINISHED")

        def _close(self, rec: dict[str, Any], mlflow_status: str) -> None:
            """The trial's MLflow run: its copl status as a tag, its end."""
            if self.client is None or rec["mlflow_run_id"] is None:  # no store, or stopped before its run was created
                return
            with deferred_interrupt():
                self.client.set_tag(rec["mlflow_run_id"], "copl.status", rec["status"])
                self.client.set_terminated(rec["mlflow_run_id"], mlflow_status)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._end(trial, failed=False)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._end(trial, failed=True)

        def end_unfinished(self, status: str) -> None:
            """A search that stops (Ctrl-C, an error) calls no trial's end: its runs would stay RUNNING."""
            for rec in self.records.values():
                if rec["status"] != "running":
                    continue
                rec["status"] = "interrupted" if status == "KILLED" else "error"
                try:
                    self._close(rec, status)
                except Exception:  # noqa: BLE001  (the caller re-raises what stopped the search; this must not replace it)
                    pass

    return TrialLog()
