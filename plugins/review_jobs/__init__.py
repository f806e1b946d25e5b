"""Local execution of SageMaker-shaped job requests (the ``local`` backend's job runner)."""
from review_jobs.local_runner import (
    JobFailedError,
    JobRequestError,
    JobResult,
    run_processing_job,
    run_training_job,
)

__all__ = ["JobFailedError", "JobRequestError", "JobResult", "run_processing_job", "run_training_job"]
