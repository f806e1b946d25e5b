"""The job runner's interface: what executes a job request, and the errors both backends raise.

A :class:`JobRunner` takes the request dict the builders in ``requests.py`` return and runs
it to completion. The local backend executes it as a subprocess under the container
contract (``runner_local.py``); the aws backend hands the same dict to the Amazon
provider's SageMaker operators (``runner_sagemaker.py``); ``runner.py`` chooses.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

from include.common.config import PROJECT_ROOT, ConfigError
from include.common.errors import NonRetriableError

SCRIPTS_DIR = PROJECT_ROOT / "include" / "scripts"
Log = Callable[[str], None]


class BackendNotReadyError(ConfigError):
    """The configured backend cannot run this yet."""


class JobRequestError(NonRetriableError, ValueError):
    """The request dict is malformed or names an input that does not exist."""


class JobFailedError(RuntimeError):
    """The job exited non-zero or ran past its stopping condition."""

    def __init__(self, job_name: str, reason: str, log_tail: list[str]):
        self.job_name, self.reason, self.log_tail = job_name, reason, log_tail
        tail = "\n".join(f"    {line}" for line in log_tail[-15:])
        super().__init__(f"job {job_name} failed: {reason}\n  last log lines:\n{tail}")


class DeterministicJobError(JobFailedError, NonRetriableError):
    """The job failed in a way the next job would repeat (``include/jobs/failures.py``):
    the task fails at once instead of paying for its retries."""


class JobRunner(ABC):
    """Runs ``CreateProcessingJob`` / ``CreateTrainingJob`` requests on one backend."""

    @abstractmethod
    def code_uri(self) -> str:
        """Where the jobs read ``include/scripts`` from."""

    @abstractmethod
    def run(self, request: dict, log: Log | None = None) -> dict:
        """Run ``request`` to completion; its result (job name, wall time, output URIs)."""

    def prepare(self, request: dict, step: str, run: str = "") -> dict:
        """The builder's request with what the backend adds (aws: role, image, instances, and
        the tags naming the deployment and ``run``, ``<dag_id>/<run_id>``)."""
        return request

    def deployment_id(self) -> str:
        """The identity this backend's job names carry (empty: names need none, e.g. local)."""
        return ""

    def stop(self, request: dict) -> None:
        """Stop the job of ``request`` if it runs elsewhere and still runs (nothing locally: the
        job is the task's own subprocess and ends with it)."""
        return None

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
