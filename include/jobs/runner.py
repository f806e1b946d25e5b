"""Who executes a job request: the one place the backend is chosen for processing/training.

A :class:`JobRunner` takes the request dict the builders in ``requests.py`` return and runs
it to completion. The local backend executes it as a subprocess under the container
contract (``local_runner.py``); the aws backend hands the same dict to the Amazon
provider's SageMaker operators.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any, Callable

from include.common.config import PROJECT_ROOT, ConfigError, Settings, get_settings

SCRIPTS_DIR = PROJECT_ROOT / "include" / "scripts"
Log = Callable[[str], None]


class BackendNotReadyError(ConfigError):
    """The configured backend cannot run this yet."""


class JobRunner(ABC):
    """Runs ``CreateProcessingJob`` / ``CreateTrainingJob`` requests on one backend."""

    @abstractmethod
    def code_uri(self) -> str:
        """Where the jobs read ``include/scripts`` from."""

    @abstractmethod
    def run(self, request: dict, log: Log | None = None) -> dict:
        """Run ``request`` to completion; its result (job name, wall time, output URIs)."""

    def prepare(self, request: dict, step: str) -> dict:
        """The builder's request with what the backend adds (aws: role, image, instances)."""
        return request

    def tracking_environment(self, experiment: str, run_name: str) -> dict[str, str]:
        """Environment that tells a training job where to track its metrics (none: no tracking)."""
        return {}

    def start(self, request: dict, context: Any = None, task: Any = None, log: Log | None = None) -> dict:
        """Run ``request`` from inside a task. A backend whose jobs run elsewhere may raise
        Airflow's ``TaskDeferred`` here; the task then calls :meth:`resume` with the event."""
        return self.run(request, log)

    def resume(self, request: dict, event: dict | None) -> dict:
        """The result of a job :meth:`start` deferred on."""
        raise NotImplementedError(f"{type(self).__name__} never defers")


class LocalJobRunner(JobRunner):
    """Subprocesses under the SageMaker container contract, job folders in the state dir."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def code_uri(self) -> str:
        return SCRIPTS_DIR.as_uri()

    def tracking_environment(self, experiment: str, run_name: str) -> dict[str, str]:
        import mlflow

        self.settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
        client = mlflow.MlflowClient(tracking_uri=self.settings.mlflow_tracking_uri)
        if client.get_experiment_by_name(experiment) is None:  # artifact root in the state dir, not ./mlruns
            client.create_experiment(experiment, artifact_location=(self.settings.mlflow_dir / "artifacts").as_uri())
        return {"MLFLOW_TRACKING_URI": self.settings.mlflow_tracking_uri, "MLFLOW_EXPERIMENT_NAME": experiment,
                "MLFLOW_RUN_NAME": run_name}

    def run(self, request: dict, log: Log | None = None) -> dict:
        from include.jobs.local_runner import run_processing_job, run_training_job

        log = log or logging.getLogger("airflow.task").info
        execute = run_training_job if "TrainingJobName" in request else run_processing_job
        return execute(request, self.settings.jobs_dir, log).to_dict()


def get_runner(settings: Settings | None = None) -> JobRunner:
    """The runner of the configured backend."""
    settings = settings or get_settings()
    if settings.backend == "local":
        return LocalJobRunner(settings)
    if settings.backend == "aws":
        from include.jobs.sagemaker_runner import SageMakerJobRunner

        return SageMakerJobRunner(settings)
    raise BackendNotReadyError(f"backend {settings.backend!r} has no job runner")
