"""Shape of the AutoML job requests: the local search job and SageMaker Autopilot (CreateAutoMLJobV2).

The Autopilot request is sent to moto's SageMaker (which implements create/describe_auto_ml_job_v2;
botocore validates the request against the real API model on the way). Running it on AWS needs the
aws backend (issue #12): nothing here reaches a network.
"""
from __future__ import annotations

import pytest

from include.jobs import requests

BUDGET = 600


def test_automl_processing_request_stages_the_three_splits_and_bounds_the_runtime():
    req = requests.automl_request(name="rs-automl-x", train_uri="s3://b/f/train", validation_uri="s3://b/f/validation",
                                  test_uri="s3://b/f/test", output_uri="s3://b/o/leaderboard",
                                  model_output_uri="s3://b/o/model", code_uri="s3://b/code", time_budget_s=BUDGET)
    inputs = {i["InputName"]: i["S3Input"] for i in req["ProcessingInputs"]}
    assert set(inputs) == {"code", "train", "validation", "test"}
    assert inputs["train"]["LocalPath"] == "/opt/ml/processing/input/train"
    args = req["AppSpecification"]["ContainerArguments"]
    assert args[0] == "search" and args[args.index("--time-budget-s") + 1] == str(BUDGET)
    assert req["StoppingCondition"]["MaxRuntimeInSeconds"] > BUDGET
    outs = {o["OutputName"] for o in req["ProcessingOutputConfig"]["Outputs"]}
    assert outs == {"automl", "model"}


def test_autopilot_v2_request_is_accepted_by_the_sagemaker_api_model():
    boto3 = pytest.importorskip("boto3")
    moto = pytest.importorskip("moto")
    req = requests.autopilot_request(name="rs-automl-20261120-abcdef1234-a1", train_csv_uri="s3://b/f/train.csv",
                                     validation_csv_uri="s3://b/f/validation.csv", output_uri="s3://b/autopilot",
                                     time_budget_s=BUDGET, max_candidates=3)
    assert len(req["AutoMLJobName"]) <= 32
    tabular = req["AutoMLProblemTypeConfig"]["TabularJobConfig"]
    assert tabular["CompletionCriteria"] == {"MaxCandidates": 3, "MaxAutoMLJobRuntimeInSeconds": BUDGET}
    with moto.mock_aws():
        client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="testing",
                              aws_secret_access_key="testing")
        arn = client.create_auto_ml_job_v2(**req)["AutoMLJobArn"]
        described = client.describe_auto_ml_job_v2(AutoMLJobName=req["AutoMLJobName"])
    assert arn.endswith(f"automl-job/{req['AutoMLJobName']}")
    assert described["AutoMLJobInputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://b/f/train.csv"
    assert described["AutoMLProblemTypeConfig"]["TabularJobConfig"]["TargetAttributeName"] == "sentiment"
    assert described["AutoMLJobObjective"] == {"MetricName": "Accuracy"}


def test_autopilot_request_with_a_wrong_field_is_refused_by_botocore():
    boto3 = pytest.importorskip("boto3")
    moto = pytest.importorskip("moto")
    from botocore.exceptions import ParamValidationError

    req = requests.autopilot_request(name="x", train_csv_uri="s3://b/t.csv", validation_csv_uri="s3://b/v.csv",
                                     output_uri="s3://b/o", time_budget_s=BUDGET)
    req["AutoMLProblemTypeConfig"]["TabularJobConfig"]["CompletionCriteria"]["MaxCandidate"] = 3  # typo
    with moto.mock_aws():
        client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="testing",
                              aws_secret_access_key="testing")
        with pytest.raises(ParamValidationError, match="MaxCandidate"):
            client.create_auto_ml_job_v2(**req)
