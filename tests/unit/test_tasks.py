"""The one failure policy of both DAGs (include/pipeline/tasks.py), decided by exception type."""
from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException

from include.common.config import ConfigError
from include.data.catalog_base import RegistrationError
from include.data.quality import DataQualityError
from include.jobs.runner_base import BackendNotReadyError, JobFailedError
from include.jobs.runner_local import JobInputError
from include.pipeline.context import PipelineError
from include.pipeline.model_steps import ModelNotApprovedError
from include.pipeline.tasks import airflow_step
from include.serving.endpoint_base import EndpointDeployError


def _raising(exc: BaseException):
    @airflow_step
    def step() -> dict:
        raise exc
    return step


@pytest.mark.parametrize("exc", [
    RegistrationError("day.csv: missing column star_rating"),
    DataQualityError("12% bad rows > 5%"),
    PipelineError("param ds='x'"),
    ConfigError("REVIEWS_BACKEND='gcp'"),
    BackendNotReadyError("aws"),
    JobInputError("rs-train-1", "exit code 2", ["ERROR: learning_rate=-1"]),
    ModelNotApprovedError("version 3 is Rejected"),
    EndpointDeployError("smoke test failed"),
    ValueError("bad value"),
], ids=lambda e: type(e).__name__)
def test_errors_a_retry_cannot_fix_fail_the_task_at_once_with_the_message(exc):
    with pytest.raises(AirflowFailException, match=type(exc).__name__) as info:
        _raising(exc)()
    assert str(exc).splitlines()[0] in str(info.value)


@pytest.mark.parametrize("exc", [
    JobFailedError("rs-train-1", "exit code 1", ["Killed"]),
    OSError("disk full"),
    RuntimeError("database is locked"),
], ids=lambda e: type(e).__name__)
def test_other_errors_propagate_so_the_task_retries_with_back_off(exc):
    with pytest.raises(type(exc)):
        _raising(exc)()


def test_the_local_runner_raises_job_input_error_for_exit_code_2(tmp_path):
    from include.jobs.runner_local import run_processing_job

    script = tmp_path / "bad.py"
    script.write_text("import sys\nprint('ERROR: bad input', file=sys.stderr)\nsys.exit(2)\n")
    request = {"ProcessingJobName": "bad-input", "ProcessingInputs": [],
               "AppSpecification": {"ImageUri": "x", "ContainerEntrypoint": ["python3", str(script)]}}
    with pytest.raises(JobInputError, match="exit code 2"):
        run_processing_job(request, tmp_path / "jobs", log=lambda line: None)
