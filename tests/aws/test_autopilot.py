"""The AutoML baseline on the aws backend: SageMaker Autopilot (AutoML V2) through the provider's hook.

Creating the job runs against moto's server on loopback (moto implements create/describe_auto_ml_job_v2
and botocore validates the request against the real API model). moto's Autopilot job never leaves
``InProgress`` and does not refuse a duplicate name, so the job's progression (InProgress -> Completed
/ Failed) and the ``ResourceInUse`` answer to a retried task are stubbed at the boto3 level with
botocore's Stubber - only those calls; the responses are validated against the API model too.
"""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from botocore.stub import Stubber

from include.jobs import autopilot, requests
from tests.aws.conftest import REGION, ROLE_ARN

BUDGET = 600


def _request(name: str = "rs-automl-20261125-ab12") -> dict:
    return requests.autopilot_request(name=name, train_csv_uri="s3://review-sentiment-test/rs/f/train.csv",
                                      validation_csv_uri="s3://review-sentiment-test/rs/f/validation.csv",
                                      output_uri="s3://review-sentiment-test/rs/autopilot", time_budget_s=BUDGET,
                                      max_candidates=3, role_arn=ROLE_ARN)


def _described(req: dict, status: str, **extra) -> dict:
    now = datetime(2026, 11, 25, tzinfo=timezone.utc)
    return {"AutoMLJobName": req["AutoMLJobName"], "AutoMLJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:"
            f"automl-job/{req['AutoMLJobName']}", "AutoMLJobInputDataConfig": req["AutoMLJobInputDataConfig"],
            "OutputDataConfig": req["OutputDataConfig"], "RoleArn": req["RoleArn"],
            "AutoMLProblemTypeConfig": req["AutoMLProblemTypeConfig"], "CreationTime": now,
            "LastModifiedTime": now, "AutoMLJobStatus": status, "AutoMLJobSecondaryStatus": "Training", **extra}


BEST = {"CandidateName": "rs-automl-trial-1", "ObjectiveStatus": "Succeeded", "CandidateSteps": [],
        "CandidateStatus": "Completed", "CreationTime": datetime(2026, 11, 25, tzinfo=timezone.utc),
        "LastModifiedTime": datetime(2026, 11, 25, tzinfo=timezone.utc),
        "FinalAutoMLJobObjectiveMetric": {"MetricName": "Accuracy", "Value": 0.62},
        "InferenceContainers": [{"Image": "img", "ModelDataUrl": "s3://review-sentiment-test/rs/autopilot/model.tar.gz"}]}


def test_launch_creates_the_v2_job_on_moto_with_our_splits_and_budget(aws_env):
    hook = autopilot.sagemaker_hook(None, REGION)
    req = _request()
    lines: list[str] = []
    arn = autopilot.launch(req, hook.conn, lines.append)
    assert arn.endswith(f"automl-job/{req['AutoMLJobName']}") and "created" in lines[0]
    described = hook.conn.describe_auto_ml_job_v2(AutoMLJobName=req["AutoMLJobName"])  # moto's own state
    assert described["AutoMLJobStatus"] == "InProgress"
    assert [c["ChannelType"] for c in described["AutoMLJobInputDataConfig"]] == ["training", "validation"]
    tabular = described["AutoMLProblemTypeConfig"]["TabularJobConfig"]
    assert tabular["CompletionCriteria"] == {"MaxCandidates": 3, "MaxAutoMLJobRuntimeInSeconds": BUDGET}
    assert described["RoleArn"] == ROLE_ARN


def test_wait_returns_the_best_candidate_when_the_job_completes(aws_env):
    hook = autopilot.sagemaker_hook(None, REGION)
    req = _request()
    lines: list[str] = []
    with Stubber(hook.conn) as stub:  # stubbed: moto's job never completes
        for status in ("InProgress", "InProgress"):
            stub.add_response("describe_auto_ml_job_v2", _described(req, status), {"AutoMLJobName": req["AutoMLJobName"]})
        stub.add_response("describe_auto_ml_job_v2", _described(req, "Completed", BestCandidate=BEST),
                          {"AutoMLJobName": req["AutoMLJobName"]})
        summary = autopilot.wait(req["AutoMLJobName"], hook, check_interval_s=0, log_fn=lines.append)
        stub.assert_no_pending_responses()
    assert summary["best_candidate"] == "rs-automl-trial-1" and summary["status"] == "Completed"
    assert summary["metric_name"] == "Accuracy" and summary["metric_value"] == pytest.approx(0.62)
    assert summary["model_data"] == ["s3://review-sentiment-test/rs/autopilot/model.tar.gz"]
    assert sum("InProgress" in line for line in lines) == 2  # one progress line per poll


def test_a_failed_job_raises_with_sagemakers_reason(aws_env):
    hook = autopilot.sagemaker_hook(None, REGION)
    req = _request()
    with Stubber(hook.conn) as stub:  # stubbed: moto's job never fails
        stub.add_response("describe_auto_ml_job_v2",
                          _described(req, "Failed", FailureReason="ClientError: no rows in the training channel"),
                          {"AutoMLJobName": req["AutoMLJobName"]})
        with pytest.raises(autopilot.AutopilotError, match="no rows in the training channel"):
            autopilot.wait(req["AutoMLJobName"], hook, check_interval_s=0, log_fn=lambda m: None)


def test_a_retried_task_adopts_the_job_its_earlier_attempt_created(aws_env):
    hook = autopilot.sagemaker_hook(None, REGION)
    req = _request()
    lines: list[str] = []
    with Stubber(hook.conn) as stub:  # stubbed: moto accepts a duplicate name silently
        stub.add_client_error("create_auto_ml_job_v2", service_error_code="ResourceInUse",
                              service_message=f"Job {req['AutoMLJobName']} already exists", http_status_code=400)
        stub.add_response("describe_auto_ml_job_v2", _described(req, "InProgress"),
                          {"AutoMLJobName": req["AutoMLJobName"]})
        arn = autopilot.launch(req, hook.conn, lines.append)
    assert arn.endswith(req["AutoMLJobName"]) and "exists already" in lines[0]


def test_a_refused_request_names_the_job_and_the_reason(aws_env):
    hook = autopilot.sagemaker_hook(None, REGION)
    req = _request()
    with Stubber(hook.conn) as stub:  # stubbed: moto does not check the role's permissions
        stub.add_client_error("create_auto_ml_job_v2", service_error_code="ValidationException",
                              service_message="Could not assume role", http_status_code=400)
        with pytest.raises(autopilot.AutopilotError, match=f"{req['AutoMLJobName']}.*Could not assume role"):
            autopilot.launch(req, hook.conn)
