"""Who executes a job request: the one place the backend (local | aws) is chosen for
processing and training jobs. The interface is ``runner_base.py``; the local runner
(``runner_local.py``) is imported here, the SageMaker one (``runner_sagemaker.py``) only on the
aws backend, so DAG parsing on the local backend never imports the aws SDKs.
"""
from __future__ import annotations

from include.common.config import Settings, get_settings
from include.jobs.runner_base import BackendNotReadyError, JobRunner
from include.jobs.runner_local import LocalJobRunner


def get_runner(settings: Settings | None = None) -> JobRunner:
    """The runner of the configured backend."""
    settings = settings or get_settings()
    if settings.backend == "local":
        return LocalJobRunner(settings)
    if settings.backend == "aws":
        from include.jobs.runner_sagemaker import SageMakerJobRunner

        return SageMakerJobRunner(settings)
    raise BackendNotReadyError(f"backend {settings.backend!r} has no job runner")
