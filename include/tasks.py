"""Glue between Airflow task contexts and ``include.pipeline`` (keeps the DAG file thin).

Data errors (bad files, failed quality gate, bad parameters) raise ``AirflowFailException``:
retrying cannot fix them, so they fail at once with the readable message; anything else
(a crashed job, a busy database) goes through the task's retries with back-off.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable

from airflow.sdk import get_current_context
from airflow.sdk.exceptions import AirflowFailException

from include import catalog, pipeline, quality
from include.scripts.preprocess import PreprocessError

log = logging.getLogger("airflow.task")
NON_RETRIABLE = (catalog.RegistrationError, quality.DataQualityError, pipeline.PipelineError, PreprocessError, ValueError)


# Failures a retry cannot fix, named rather than imported to keep DAG parsing light.
NON_RETRIABLE_NAMES = {"EndpointDeployError", "ModelNotApprovedError"}


def _job_exit_is_bad_input(exc: Exception) -> bool:
    # Job scripts exit with code 2 for bad input / bad hyper-parameters: not worth a retry.
    return type(exc).__name__ == "JobFailedError" and getattr(exc, "reason", "") == "exit code 2"


def fail_fast(fn: Callable) -> Callable:
    """Turn data errors into AirflowFailException (no retry); keep other errors retriable.

    The step's result is also recorded in the run's lineage folder.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            result = fn(*args, **kwargs)
            _, info = context_info()
            pipeline.record_step(info, fn.__name__, result)
            return result
        except NON_RETRIABLE as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
        except RuntimeError as exc:
            if _job_exit_is_bad_input(exc) or type(exc).__name__ in NON_RETRIABLE_NAMES:
                raise AirflowFailException(str(exc)) from exc
            raise
    return wrapper


def context_info() -> tuple[dict, pipeline.RunInfo]:
    """The current task's params and ``RunInfo``."""
    ctx = get_current_context()
    return ctx["params"], pipeline.run_info(ctx)


@fail_fast
def register_dataset() -> dict:
    """Task: step 1."""
    params, info = context_info()
    return pipeline.register_dataset(info, params.get("input_data_uri") or "")


@fail_fast
def validate_dataset(registered: dict) -> dict:
    """Task: step 2."""
    params, info = context_info()
    return pipeline.validate_dataset(info, registered["partitions"], params["max_bad_row_fraction"])


@fail_fast
def preprocess(validated: dict) -> dict:
    """Task: step 3 (``validated`` orders it after the gate)."""
    params, info = context_info()
    return pipeline.preprocess(info, params)


@fail_fast
def train(features: dict) -> dict:
    """Task: step 4."""
    params, info = context_info()
    return pipeline.train(info, params, features)


@fail_fast
def evaluate(features: dict, trained: dict) -> dict:
    """Task: step 5."""
    _, info = context_info()
    return pipeline.evaluate(info, features, trained)


def check_accuracy(evaluation: dict, pass_task: str, fail_task: str) -> str:
    """Task: step 6 (branch); logs why it chose what it chose."""
    params, _ = context_info()
    deployed = pipeline.deployed_accuracy()
    tolerance = params.get("max_accuracy_drop", 0.02)
    ok, note = pipeline.accuracy_gate(evaluation, params["min_accuracy"],
                                      None if deployed is None else deployed - tolerance)
    log.info(note)
    return pass_task if ok else fail_task


@fail_fast
def register_model(registered: dict, features: dict, trained: dict, evaluation: dict) -> dict:
    """Task: step 7."""
    params, info = context_info()
    return pipeline.register_model(info, registered, features, trained, evaluation, bool(params["auto_approve"]))


def approval_gate(registration: dict, manual_task: str, auto_task: str) -> str:
    """Branch: a version registered as Approved (auto_approve) skips the human approval."""
    from include.registry import APPROVED

    status = registration["approval_status"]
    log.info("model version %s is %s", registration["version"], status)
    return auto_task if status == APPROVED else manual_task


@fail_fast
def deploy_model(registration: dict) -> dict:
    """Task: step 9."""
    return pipeline.deploy_model(registration["version"])
