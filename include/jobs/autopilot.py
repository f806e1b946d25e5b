"""SageMaker Autopilot (AutoML V2) for the AutoML baseline on the aws backend.

The local backend's search is ``include/scripts/automl.py`` in a processing job; on AWS the same
splits and budget go to Autopilot: :func:`launch` sends the ``CreateAutoMLJobV2`` request that
``requests.autopilot_request`` builds through the Amazon provider's ``SageMakerHook`` client (the
provider's ``SageMakerAutoMLOperator`` / ``SageMakerHook.create_auto_ml_job`` only speak the V1
API), and :func:`wait` polls it with the hook's own ``check_status`` until it completes (boto3
has no AutoML V2 waiter, the provider no V2 trigger: this task holds its worker). Leaving the
wait early (execution timeout, kill, its own limit) stops the job (:func:`stop`). A retried
task finds its job already created (``ResourceInUse``) and waits for that one instead of failing.

boto3 and the provider are imported inside functions: DAG parsing never pays for them.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

log = logging.getLogger(__name__)
NON_TERMINAL = {"InProgress", "Stopping"}


class AutopilotError(RuntimeError):
    """The Autopilot job could not be created, failed, or ended without a best candidate."""


def sagemaker_hook(aws_conn_id: str | None, region_name: str) -> Any:
    """The provider's SageMaker hook (its client honours ``AWS_ENDPOINT_URL``: moto in the tests)."""
    from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

    return SageMakerHook(aws_conn_id=aws_conn_id or None, region_name=region_name)


def launch(request: dict, client: Any, log_fn: Callable[[str], None] = log.info) -> str:
    """Create the Autopilot job of ``request`` (``CreateAutoMLJobV2``); its ARN. A job of that name
    that already exists (the task's earlier attempt) is adopted, not created twice."""
    from botocore.exceptions import ClientError

    name = request["AutoMLJobName"]
    try:
        arn = client.create_auto_ml_job_v2(**request)["AutoMLJobArn"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceInUse":
            raise AutopilotError(f"Autopilot job {name}: CreateAutoMLJobV2 refused: {exc}") from exc
        arn = client.describe_auto_ml_job_v2(AutoMLJobName=name)["AutoMLJobArn"]
        log_fn(f"Autopilot job {name} exists already (an earlier attempt): waiting for it")
        return arn
    log_fn(f"Autopilot job {name} created: {arn}")
    return arn


def wait(name: str, hook: Any, *, check_interval_s: int = 60, max_wait_s: int | None = None,
         log_fn: Callable[[str], None] = log.info) -> dict:
    """Poll the job with the hook's ``check_status`` until it ends; the summary of its best
    candidate (name, objective metric and value, the inference containers' model data). A failed
    or stopped job, or one running past ``max_wait_s``, raises with SageMaker's reason."""
    from airflow.exceptions import AirflowException

    def describe(job_name: str) -> dict:
        res = hook.conn.describe_auto_ml_job_v2(AutoMLJobName=job_name)
        log_fn(f"Autopilot job {job_name}: {res['AutoMLJobStatus']} / {res.get('AutoMLJobSecondaryStatus', '')}")
        return res

    try:
        final = hook.check_status(name, "AutoMLJobStatus", describe, check_interval_s,
                                  max_ingestion_time=max_wait_s, non_terminal_states=NON_TERMINAL)
    except AirflowException as exc:
        raise AutopilotError(f"Autopilot job {name}: {exc}") from exc
    best = final.get("BestCandidate")
    if final["AutoMLJobStatus"] != "Completed" or not best:
        raise AutopilotError(f"Autopilot job {name} ended {final['AutoMLJobStatus']} without a best candidate")
    metric = best.get("FinalAutoMLJobObjectiveMetric", {})
    return {"job_name": name, "job_arn": final["AutoMLJobArn"], "status": final["AutoMLJobStatus"],
            "best_candidate": best["CandidateName"], "metric_name": metric.get("MetricName", ""),
            "metric_value": metric.get("Value"),
            "model_data": [c.get("ModelDataUrl", "") for c in best.get("InferenceContainers", [])]}


def run(request: dict, hook: Any, *, check_interval_s: int = 60, max_wait_s: int | None = None,
        log_fn: Callable[[str], None] = log.info) -> dict:
    """Launch the Autopilot job of ``request`` and wait for it; :func:`wait`'s summary."""
    launch(request, hook.conn, log_fn)
    try:
        return wait(request["AutoMLJobName"], hook, check_interval_s=check_interval_s, max_wait_s=max_wait_s,
                    log_fn=log_fn)
    except BaseException:  # timed out, killed, or past max_wait_s: the job must not run on unpaid-for
        stop(request["AutoMLJobName"], hook.conn, log_fn)
        raise


def stop(name: str, client: Any, log_fn: Callable[[str], None] = log.info) -> None:
    """``StopAutoMLJob`` of ``name`` if it still runs (a finished job is left alone)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        if client.describe_auto_ml_job_v2(AutoMLJobName=name)["AutoMLJobStatus"] in NON_TERMINAL:
            client.stop_auto_ml_job(AutoMLJobName=name)
            log_fn(f"Autopilot job {name} stopped: its task ended before the job")
    except (ClientError, BotoCoreError) as exc:
        log_fn(f"Autopilot job {name} not stopped: {exc}")
