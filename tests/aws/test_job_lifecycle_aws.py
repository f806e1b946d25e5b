"""Never pay twice, never pay forever: the SageMaker job lifecycle against moto's server.

A deterministic failure (an algorithm or client error, a missing module) fails the task once,
without retry; a capacity error is retried under the next job name; a killed, timed-out or
cancelled task stops its job (moto 5.2 has no StopTrainingJob: the harness plays it and records
it, tests/aws/sagemaker_harness.py); job names carry the deployment id and a Completed job of
another deployment is refused; every task timeout exceeds the waits inside it.
"""
from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
import yaml

from include.common.aws import config_from_dict
from include.common.config import PROJECT_ROOT
from include.jobs import failures, requests
from include.jobs.runner import get_runner
from include.jobs.runner_base import DeterministicJobError, JobFailedError
from include.jobs.runner_sagemaker import (
    TAG_DEPLOYMENT,
    TAG_RUN,
    ForeignJobError,
    SageMakerJobRunner,
    deployment_id,
    owner_tags,
)
from include.jobs.triggers import StoppingSageMakerTrigger
from include.pipeline import defaults
from tests.aws.conftest import BUCKET, DEPLOYMENT, REGION

# ------------------------------------------------------------------ the failure table (offline)


@pytest.mark.parametrize("reason, policy", [
    ("AlgorithmError: ExecuteUserScriptError: ModuleNotFoundError: No module named 'pandas'", failures.FAIL),
    ("ImportError: cannot import name 'x' from 'onnxruntime'", failures.FAIL),
    ("AlgorithmError: exit code 1", failures.FAIL),
    ("ClientError: Please ensure the S3 prefix contains data", failures.FAIL),
    ("ClientError: Resource Limit Exceeded? no: a ClientError first", failures.FAIL),
    ("ValidationException: instance type not supported", failures.FAIL),
    ("CapacityError: Unable to provision requested ML compute capacity", failures.RETRY),
    ("InternalServerError: We encountered an internal error", failures.RETRY),
    ("ThrottlingException: Rate exceeded", failures.RETRY),
    ("ResourceLimitExceeded: The account-level service limit", failures.RETRY),
    ("something nobody has seen", failures.RETRY),
])
def test_failure_reasons_map_to_fail_or_retry(reason, policy):
    assert failures.classify(reason).policy == policy


def test_a_job_stopped_by_its_runtime_limit_is_not_retried_and_a_spot_wait_is():
    assert failures.classify("", "MaxRuntimeExceeded").policy == failures.FAIL
    assert failures.classify("", "MaxWaitTimeExceeded").policy == failures.RETRY


# ------------------------------------------------------------------ failures in a DAG run

DAG_FILE = """
from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG, task

from include.pipeline.tasks import JobStepOperator

with DAG("aws_job_lifecycle", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
         params={params!r}, default_args={{"retries": 2, "retry_delay": timedelta(0)}}) as dag:
    feats = task(task_id="features")(lambda: {features!r})()
    JobStepOperator(task_id="train", step="train", inputs={{"features": feats}})
"""
TINY = {"profile": "quick", "max_seq_length": 32, "epochs": 1, "ds": "2026-11-20"}
LOGICAL = datetime(2026, 11, 21, tzinfo=timezone.utc)


def _run_train_dag(folder: Path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from include.common.aws import load_aws_config, write_bytes

    features = {k: f"s3://{BUCKET}/rs/seed/features/{k[:-4]}" for k in ("train_uri", "validation_uri", "test_uri")}
    for uri in features.values():  # the operator checks that the channels exist; the job is forced
        write_bytes(load_aws_config(), f"{uri}/part-0.parquet", b"forced job: never read")
    folder.mkdir()
    (folder / "aws_job_lifecycle.py").write_text(DAG_FILE.format(features=features, params=TINY))
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps([{
        "name": "aws-job-lifecycle", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
        "kwargs": {"path": str(folder), "refresh_interval": 0}}]))
    bag = DagBag(dag_folder=str(folder))
    assert not bag.import_errors, bag.import_errors
    dr = bag.dags["aws_job_lifecycle"].test(logical_date=LOGICAL)
    with create_session() as session:
        ti = session.scalars(select(TaskInstance).where(TaskInstance.run_id == dr.run_id,
                                                        TaskInstance.task_id == "train")).one()
        return dr, str(ti.state), ti.try_number


def test_an_algorithm_error_fails_the_task_once_without_a_second_job(aws_account, sagemaker, reviews_home,
                                                                     airflow_db, tmp_path, monkeypatch):
    sagemaker.force_next("rs-train-", [("Failed", "AlgorithmError: ModuleNotFoundError: No module named 'pandas'")])
    dr, state, tries = _run_train_dag(tmp_path / "dags", monkeypatch)
    name = requests.job_name("train", dr.run_id, DEPLOYMENT)
    assert [c["TrainingJobName"] for c in sagemaker.created("Training")] == [name], "one paid job, not three"
    assert (state, tries) == ("failed", 1)


def test_a_capacity_error_is_retried_under_the_next_job_name(aws_account, sagemaker, reviews_home, airflow_db,
                                                             tmp_path, monkeypatch):
    sagemaker.force_next("rs-train-", [("Failed", "CapacityError: Unable to provision requested ML compute capacity"),
                                       ("Completed", "")])
    dr, state, tries = _run_train_dag(tmp_path / "dags", monkeypatch)
    name = requests.job_name("train", dr.run_id, DEPLOYMENT)
    assert [c["TrainingJobName"] for c in sagemaker.created("Training")] == [name, f"{name}-r2"]
    assert (state, tries) == ("success", 2)


# ------------------------------------------------------------------ stopping a job whose task is gone


def _runner() -> SageMakerJobRunner:
    runner = get_runner()
    assert isinstance(runner, SageMakerJobRunner)
    return runner


def _held_training_job(runner: SageMakerJobRunner, sagemaker, name: str, run: str = "d/r") -> dict:
    req = runner.prepare(requests.training_request(
        name=name, train_uri=f"s3://{BUCKET}/rs/train", validation_uri=f"s3://{BUCKET}/rs/validation",
        output_uri=f"s3://{BUCKET}/rs/out", checkpoint_uri=f"s3://{BUCKET}/rs/out/checkpoints",
        code_uri=f"s3://{BUCKET}/rs/code/d/scripts", hyperparameters={"epochs": 1}), "train", run)
    sagemaker.hold(name)
    boto3.client("sagemaker", region_name=REGION).create_training_job(**req)
    return req


def _status(name: str) -> str:
    return boto3.client("sagemaker", region_name=REGION).describe_training_job(TrainingJobName=name)["TrainingJobStatus"]


def test_killing_the_task_on_its_worker_stops_its_training_job(aws_account, sagemaker):
    from include.pipeline.tasks import JobStepOperator

    runner = _runner()
    req = _held_training_job(runner, sagemaker, "rs-train-kill-1")
    op = JobStepOperator(task_id="train", step="train")
    op._job_request = req  # what _start keeps once the job is planned
    op.on_kill()  # SIGTERM / execution_timeout while running on the worker
    assert sagemaker.actions("Stop") == ["StopTrainingJob"]
    assert _status("rs-train-kill-1") == "Stopped"


def test_a_deferral_that_timed_out_stops_the_job_before_the_task_fails(aws_account, sagemaker, reviews_home):
    from airflow.sdk.bases.operator import TriggerFailureReason
    from airflow.sdk.exceptions import TaskDeferralTimeout

    from include.common.io import write_json
    from include.pipeline import steps
    from include.pipeline.context import RunInfo
    from include.pipeline.tasks import JobStepOperator

    runner = _runner()
    info = RunInfo("aws_job_lifecycle", "manual__x", "2026-11-20")
    req = _held_training_job(runner, sagemaker, info.job("train"), info.run_tag)
    write_json(steps._plan_uri(info, "train"), {"step": "train", "request": req, "state": {}})
    context = {"ti": SimpleNamespace(dag_id=info.dag_id, try_number=1), "run_id": info.run_id,
               "params": {"ds": info.ds}, "data_interval_start": None}
    with pytest.raises(TaskDeferralTimeout):
        JobStepOperator(task_id="train", step="train").resume_execution(
            "__fail__", {"error": TriggerFailureReason.TRIGGER_TIMEOUT}, context)
    assert sagemaker.actions("Stop") == ["StopTrainingJob"]
    assert _status(info.job("train")) == "Stopped"


def test_cancelling_the_deferred_task_makes_its_trigger_stop_the_job(aws_account, sagemaker):
    runner = _runner()
    _held_training_job(runner, sagemaker, "rs-train-kill-3")
    trigger = runner._trigger("Training", "rs-train-kill-3", {"StoppingCondition": {"MaxRuntimeInSeconds": 60}})
    assert isinstance(trigger, StoppingSageMakerTrigger)
    classpath, kwargs = trigger.serialize()
    assert classpath == "include.jobs.triggers.StoppingSageMakerTrigger"  # what the triggerer re-creates
    asyncio.run(trigger.on_kill())  # what the triggerer calls on mark-failed / clear of the deferred task
    assert [a for a, _ in sagemaker.async_calls] == ["StopTrainingJob"]
    assert _status("rs-train-kill-3") == "Stopped"


def test_a_blocking_wait_that_is_interrupted_stops_its_job(aws_account, sagemaker, monkeypatch):
    runner = _runner()
    req = _held_training_job(runner, sagemaker, "rs-train-kill-4")

    def timed_out(*_):
        raise TimeoutError("execution_timeout")  # what AirflowTaskTimeout does, raised inside the wait
    monkeypatch.setattr(runner, "wait", timed_out)
    with pytest.raises(TimeoutError):
        runner.run(req)
    assert sagemaker.actions("Stop") == ["StopTrainingJob"] and _status("rs-train-kill-4") == "Stopped"


def test_the_blocking_path_waits_with_boto3s_waiter_and_classifies_the_failure(aws_account, sagemaker):
    runner = _runner()
    req = runner.prepare(requests.evaluation_request(
        name="rs-evaluate-w-1", model_uri=f"s3://{BUCKET}/rs/m/model.tar.gz", test_uri=f"s3://{BUCKET}/rs/test",
        training_output_uri=None, output_uri=f"s3://{BUCKET}/rs/evaluate", code_uri=f"s3://{BUCKET}/rs/code"),
        "evaluate")
    sagemaker.force("rs-evaluate-w-1", "Failed", "ClientError: No S3 objects found under the prefix")
    with pytest.raises(DeterministicJobError, match="not retried"):
        runner.run(req)
    sagemaker.force("rs-evaluate-w-1-r2", "Failed", "InternalServerError: try again")
    with pytest.raises(JobFailedError) as retriable:
        runner.run(req)
    assert not isinstance(retriable.value, DeterministicJobError)


# ------------------------------------------------------------------ whose job it is


def test_job_names_differ_between_deployments_and_stay_within_the_limits():
    run = "scheduled__2026-11-20T00:00:00+00:00"
    a, b = requests.job_name("train", run, "deploy-a"), requests.job_name("train", run, "deploy-b")
    assert a != b and a == requests.job_name("train", run, "deploy-a")
    assert len(requests.job_name("autopilot", run, "deploy-a")) == 32  # Autopilot's limit keeps the hash
    assert requests.job_name("train", run) != a, "the local backend (no deployment id) keeps its names"


def test_the_deployment_id_defaults_to_an_airflow_variable_made_once(monkeypatch):
    from airflow.sdk import Variable

    from include.jobs import runner_sagemaker

    store: dict[str, str] = {}
    monkeypatch.setattr(Variable, "get", classmethod(lambda cls, key, default=None: store.get(key, default)))
    monkeypatch.setattr(Variable, "set", classmethod(lambda cls, key, value, description=None: store.update({key: value})))
    monkeypatch.setattr(runner_sagemaker, "_deployment_cache", {})
    cfg = config_from_dict({"region": REGION})
    first = deployment_id(cfg)
    assert len(first) == 8 and store == {"reviews_deployment_id": first}
    runner_sagemaker._deployment_cache.clear()
    assert deployment_id(cfg) == first, "stable for one metadata database"
    assert deployment_id(config_from_dict({"region": REGION, "deployment_id": "prod-1"})) == "prod-1"


def test_a_completed_job_of_another_deployment_is_refused_not_reused(aws_account, sagemaker):
    runner = _runner()
    name = requests.job_name("evaluate", "manual__y", DEPLOYMENT)
    req = runner.prepare(requests.evaluation_request(
        name=name, model_uri=f"s3://{BUCKET}/rs/m/model.tar.gz", test_uri=f"s3://{BUCKET}/rs/test",
        training_output_uri=None, output_uri=f"s3://{BUCKET}/rs/evaluate", code_uri=f"s3://{BUCKET}/rs/code"),
        "evaluate", "review_sentiment_pipeline/manual__y")
    assert {t["Key"]: t["Value"] for t in req["Tags"]} == {TAG_DEPLOYMENT: DEPLOYMENT,
                                                          TAG_RUN: "review_sentiment_pipeline/manual__y"}
    sagemaker.force(name, "Completed")
    boto3.client("sagemaker", region_name=REGION).create_processing_job(
        **{**req, "Tags": owner_tags("other-airflow", "review_sentiment_pipeline/manual__y")})
    sagemaker.wait_idle()
    sagemaker.calls.clear()
    with pytest.raises(ForeignJobError, match=f"{TAG_DEPLOYMENT}=other-airflow.*{TAG_DEPLOYMENT}={DEPLOYMENT}"):
        runner.start(req, context={}, task=None)
    assert sagemaker.actions("Create") == []


def test_our_own_completed_job_is_still_reused(aws_account, sagemaker):
    runner = _runner()
    req = runner.prepare(requests.evaluation_request(
        name="rs-evaluate-own-1", model_uri=f"s3://{BUCKET}/rs/m/model.tar.gz", test_uri=f"s3://{BUCKET}/rs/test",
        training_output_uri=None, output_uri=f"s3://{BUCKET}/rs/evaluate", code_uri=f"s3://{BUCKET}/rs/code"),
        "evaluate", "d/r")
    sagemaker.force("rs-evaluate-own-1", "Completed")
    runner.run(req)
    sagemaker.calls.clear()
    assert runner.start(req, context={}, task=None)["job_name"] == "rs-evaluate-own-1"
    assert sagemaker.actions("Create") == []


# ------------------------------------------------------------------ timeouts vs the waits inside them


def _configs() -> dict[str, object]:
    example = yaml.safe_load((PROJECT_ROOT / "docs" / "aws-config.example.yaml").read_text())
    return {"default": config_from_dict({"region": REGION}), "example": config_from_dict(example),
            "spot + long": config_from_dict({"region": REGION, "spot_training": True, "endpoint_wait_s": 3600,
                                             "offline_store_wait_s": 5400,
                                             "steps": {"train": {"instance_type": "ml.g5.xlarge",
                                                                 "max_runtime_s": 14400}}})}


@pytest.mark.parametrize("which", ["default", "example", "spot + long"])
def test_every_task_timeout_exceeds_its_waits_plus_the_margin(which):
    cfg = _configs()[which]
    timeouts, waits = defaults.task_timeouts(cfg), defaults.aws_waits(cfg)
    for kind, wait_s in waits.items():
        assert timeouts[kind] >= timedelta(seconds=wait_s) + defaults.TIMEOUT_MARGIN, (which, kind)
    assert timeouts["deploy"] > timedelta(seconds=cfg.endpoint_wait_s), "the deploy outlasts its endpoint wait"
    assert timeouts["training"] > timedelta(seconds=cfg.step("train").max_runtime_s)


def test_the_aws_dags_get_the_derived_timeouts(aws_account, monkeypatch):
    import importlib

    conf = json.loads(Path(aws_account).read_text())
    Path(aws_account).write_text(json.dumps({**conf, "endpoint_wait_s": 3000}))
    try:
        reloaded = importlib.reload(defaults)
        assert reloaded.TASK_TIMEOUTS["deploy"] == timedelta(seconds=2 * 3000) + defaults.TIMEOUT_MARGIN
    finally:
        monkeypatch.setenv("REVIEWS_BACKEND", "local")
        importlib.reload(defaults)


def test_an_autopilot_budget_that_would_outlast_the_task_is_refused_before_any_job(aws_account, sagemaker):
    from include.pipeline import automl_steps
    from include.pipeline.context import RunInfo

    with pytest.raises(automl_steps.EngineError, match="exceeds the task's execution_timeout"):
        automl_steps.autopilot_search(RunInfo("d", "r", "2026-11-20"), {"train_csv_uri": "s3://x/t.csv"},
                                      time_budget_s=7200, max_candidates=2, task_timeout_s=5400)
    assert sagemaker.calls == []
