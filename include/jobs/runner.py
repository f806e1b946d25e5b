"""Who executes a job request: the one place the backend is chosen for processing/training.

A :class:`JobRunner` takes the request dict the builders in ``requests.py`` return and runs
it to completion. The local backend executes it as a subprocess under the container
contract (``local_runner.py``); the aws backend hands the same dict to the Amazon
provider's SageMaker operators.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Callable

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


class LocalJobRunner(JobRunner):
    """Subprocesses under the SageMaker container contract, job folders in the state dir."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def code_uri(self) -> str:
        return SCRIPTS_DIR.as_uri()

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
    raise BackendNotReadyError(
        f"backend {settings.backend!r}: SageMaker execution (SageMakerProcessingOperator / "
        "SageMakerTrainingOperator with this same request) is not implemented yet; use REVIEWS_BACKEND=local")
