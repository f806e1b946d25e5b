"""Experiment tracking for train.py: MLflow when ``MLFLOW_TRACKING_URI`` is set, else nothing.

MLflow is an optional import: a SageMaker training container may not have it. Without the
env var no MLflow code runs at all; with it but without the package the job says so once
and trains anyway (tracking is not what the job is for).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from common import write_json_atomic

log = logging.getLogger("train.tracking")
DEFAULT_EXPERIMENT = "review-sentiment"


class Tracker:
    """Thin wrapper over one MLflow run; every method is a no-op when tracking is off."""

    def __init__(self) -> None:
        self.mlflow = None
        self.run_id: str | None = None
        self.experiment: str | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, run_id: str | None = None) -> "Tracker":
        """Start (or, with ``run_id`` from a checkpoint, continue) a run if MLFLOW_TRACKING_URI is set."""
        env = os.environ if environ is None else environ
        tracker = cls()
        uri = env.get("MLFLOW_TRACKING_URI")
        if not uri:
            return tracker
        try:
            import mlflow
        except ImportError:
            log.warning("MLFLOW_TRACKING_URI is set but mlflow is not installed here: metrics are not tracked")
            return tracker
        mlflow.set_tracking_uri(uri)
        tracker.experiment = env.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        mlflow.set_experiment(tracker.experiment)
        if run_id:
            run = mlflow.start_run(run_id=run_id)
        else:
            run = mlflow.start_run(run_name=env.get("MLFLOW_RUN_NAME") or None)
        tracker.mlflow, tracker.run_id = mlflow, run.info.run_id
        log.info("tracking to MLflow %s, experiment %r, run %s", uri, tracker.experiment, tracker.run_id)
        return tracker

    @property
    def active(self) -> bool:
        return self.mlflow is not None

    def log_params(self, params: dict[str, Any]) -> None:
        """Hyper-parameters (values as strings, MLflow's 6000-char limit respected)."""
        if self.active:
            existing = self.mlflow.get_run(self.run_id).data.params  # a resumed run already has them
            new = {k: str(v)[:6000] for k, v in params.items() if k not in existing}
            if new:
                self.mlflow.log_params(new)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Numeric metrics; non-numeric values are skipped."""
        if self.active:
            clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.mlflow.log_metrics(clean, step=step)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.active:
            self.mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        if self.active and folder.is_dir():
            self.mlflow.log_artifacts(str(folder), artifact_path=artifact_path)

    def write_run_file(self, out_dir: Path) -> Path | None:
        """``mlflow_run.json`` with the run id, for the steps after training."""
        if not self.active:
            return None
        return write_json_atomic(out_dir / "mlflow_run.json", {
            "run_id": self.run_id, "experiment_name": self.experiment,
            "tracking_uri": self.mlflow.get_tracking_uri()})

    def end(self, status: str = "FINISHED") -> None:
        if self.active:
            self.mlflow.end_run(status=status)
