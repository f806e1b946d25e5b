"""review_sentiment_pipeline end to end on the aws backend, with dag.test(), against moto's server.

The same DAG file and job scripts as the local run, with ``REVIEWS_BACKEND=aws``: real reviews
landed on S3 -> Glue partitions (write-audit-publish) -> the quality gate -> preprocess, train and
evaluate as SageMaker jobs (deferred on the provider's trigger) -> SageMaker Feature Store ->
the accuracy gate -> a model package in the SageMaker Model Registry -> a SageMaker endpoint,
smoke-tested through sagemaker-runtime.

What is PLAYED, because moto cannot do it (and only that):

* SageMaker Processing / Training execution - ``tests/aws/sagemaker_harness.py``: on
  ``CreateProcessingJob`` / ``CreateTrainingJob`` it runs the very request with the local runner
  against moto's S3 (real preprocess.py, train.py, evaluate.py on the tiny budget of the
  integration tests), uploads the outputs where SageMaker puts them, writes the CloudWatch log
  and sets the job status; every SageMaker call the server received is recorded;
* ``sagemaker-featurestore-runtime`` PutRecord - a botocore Stubber on that operation only
  (tests/aws/sagemaker_fakes.py) that writes each record to the offline store in moto's S3 as
  SageMaker does;
* ``sagemaker-runtime`` InvokeEndpoint - a Stubber that runs the deployed package's own
  handler (moto runs no model); ``UpdateEndpoint`` likewise (not called on a first deploy).

Every AWS call of the run is recorded (tests/aws/aws_calls.py) and checked against the shipped
IAM policies (aws/iam/*.json, include/common/iam.py): the Airflow worker's calls against
airflow-worker.json, the S3 and CloudWatch Logs calls SageMaker's side makes with the execution
role (the jobs' inputs and outputs, their logs, the offline store) against its two policies.
"""
from __future__ import annotations

import json
from datetime import date

import boto3
import pytest

from include.common import aws, iam
from include.common.config import safe_name
from include.data.catalog import get_catalog
from include.data.landing import land_daily_drops
from include.jobs import requests
from include.serving.protocol import JSONLINES, SMOKE_REVIEWS
from tests.aws.conftest import BUCKET, DEPLOYMENT, REGION, ROLE_ARN
from tests.integration.conftest import DEPLOY, DS, run_dag

DAG_ID = "review_sentiment_pipeline"


@pytest.fixture
def aws_calls(monkeypatch):
    """Every AWS call made while ``recording`` is on, by identity (set up before the fakes)."""
    from tests.aws.aws_calls import CallRecorder

    recorder = CallRecorder().install(monkeypatch)
    recorder.paused = True
    return recorder


@pytest.fixture
def played_services(aws_account, monkeypatch, tmp_path):
    """The feature-store and endpoint calls moto lacks, played at the boto3 level
    (tests/aws/sagemaker_fakes.py): PutRecord writes moto's offline store; InvokeEndpoint runs
    the deployed package's own handler; UpdateEndpoint switches moto's endpoint."""
    from tests.aws.sagemaker_fakes import install

    monkeypatch.setattr("include.data.feature_store_sagemaker.POLL_S", 0.05, raising=False)
    return install(monkeypatch, REGION, tmp_path / "endpoint")


def test_the_whole_dag_runs_on_sagemaker_glue_and_s3(aws_calls, aws_account, sagemaker, played_services,
                                                     reviews_home, airflow_db, tmp_path):
    feature_store, endpoint_fake = played_services
    cfg = aws.load_aws_config()
    drops = land_daily_drops(tmp_path / "landing", date.fromisoformat(DS), days=2, limit=600)
    aws.upload_dir(cfg, tmp_path / "landing", cfg.s3_uri("landing/reviews"))

    aws_calls.paused = False
    dr, states = run_dag(DAG_ID, **DEPLOY, auto_approve=True)
    aws_calls.paused = True
    assert str(dr.state).endswith("success"), (states, sagemaker.errors)
    for task in ("register_dataset", "validate_dataset", "preprocess", "train", "evaluate", "check_accuracy",
                 "register_model", "deploy_model"):
        assert states[task].endswith("success"), (task, states)
    run = cfg.s3_uri(f"runs/{DAG_ID}/{safe_name(dr.run_id)}")

    # ---- the catalog: Glue table and partitions over S3
    assert get_catalog().registered_partitions() == sorted(d.ds for d in drops)
    glue = boto3.client("glue", region_name=REGION)
    parts = glue.get_partitions(DatabaseName=cfg.glue_database, TableName="reviews_raw")["Partitions"]
    assert sorted(p["Values"][0] for p in parts) == sorted(d.ds for d in drops)
    assert sum(int(p["Parameters"]["rows"]) for p in parts) == 600

    # ---- the jobs: one of each, the exact requests, deferred on the provider's trigger
    names = {step: requests.job_name(step, dr.run_id, DEPLOYMENT) for step in ("preprocess", "train", "evaluate")}
    created = sagemaker.created()
    assert [c.get("ProcessingJobName") or c.get("TrainingJobName") for c in created] == list(names.values())
    pre, train, evaluate = created
    code = pre["ProcessingInputs"][0]["S3Input"]["S3Uri"]
    assert code.startswith(f"s3://{BUCKET}/rs/code/") and code.endswith("/scripts")
    assert pre["ProcessingInputs"][1]["S3Input"]["S3Uri"] == f"{run}/export"
    assert pre["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"] == f"{run}/preprocess/features"
    assert pre["AppSpecification"]["ContainerArguments"][pre["AppSpecification"]["ContainerArguments"].index(
        "--max-seq-length") + 1] == str(DEPLOY["max_seq_length"])
    assert pre["ProcessingResources"] == {"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.c5.2xlarge",
                                                            "VolumeSizeInGB": 30}}
    assert {r["RoleArn"] for r in created} == {ROLE_ARN}
    hps = train["HyperParameters"]
    assert (hps["epochs"], hps["max_seq_length"], hps["train_batch_size"], hps["max_train_samples"]) == (
        "1", "32", "16", "96")
    assert hps["sagemaker_program"] == "train.py" and hps["sagemaker_submit_directory"] == \
        code.rsplit("/", 1)[0] + "/sourcedir.tar.gz"
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in train["InputDataConfig"]}
    weights = channels.pop("pretrained")  # the default weights: the images lack the local package
    assert weights.startswith(f"s3://{BUCKET}/rs/models/pretrained/") and hps["model_name_or_path"] == \
        "/opt/ml/input/data/pretrained"
    assert channels == {"train": f"{run}/preprocess/channels/train",
                        "validation": f"{run}/preprocess/channels/validation"}
    assert pre["ProcessingInputs"][2]["S3Input"]["S3Uri"] == weights
    assert train["ResourceConfig"] == {"InstanceCount": 1, "InstanceType": "ml.g5.xlarge", "VolumeSizeInGB": 30}
    assert train["Environment"] == {"HF_HUB_OFFLINE": "1"}
    model_uri = f"{run}/train/{names['train']}/output/model.tar.gz"
    assert {i["InputName"]: i["S3Input"]["S3Uri"] for i in evaluate["ProcessingInputs"]} == {
        "code": code, "model": model_uri, "data": f"{run}/preprocess/channels/test",
        "training": f"{run}/train/{names['train']}/output/output.tar.gz"}
    polled = {p.get("TrainingJobName") or p.get("ProcessingJobName") for _, p in sagemaker.async_calls}
    assert polled == set(names.values()), "each job task deferred and the trigger polled its job"

    # ---- the objects on S3
    keys = set(aws.list_keys(cfg, run + "/"))
    prefix = run[len(f"s3://{BUCKET}/"):]
    for key in (f"train/{names['train']}/output/model.tar.gz", "evaluate/evaluation.json",
                "evaluate/confusion_matrix.png", "evaluate/report.html", "validate/validation_report.html",
                "_jobs/train.json", "_lineage/deploy_model.json"):
        assert f"{prefix}/{key}" in keys, key
    assert not [k for k in keys if "/train/checkpoints/" in k], "checkpoints dropped once the model is published"
    for split in ("train", "validation", "test"):
        assert [k for k in keys if f"/preprocess/channels/{split}/" in k], split
    evaluation = json.loads(aws.read_bytes(cfg, f"{run}/evaluate/evaluation.json"))
    assert 0.0 <= evaluation["metrics"]["accuracy"]["value"] <= 1.0

    # ---- the feature store: every feature row went through PutRecord
    stats = json.loads(aws.read_bytes(cfg, f"{run}/preprocess/features/stats.json"))
    assert len(feature_store.puts) == sum(s["rows"] for s in stats["splits"].values())

    # ---- the model registry: one package, Approved, metrics on S3
    sm = boto3.client("sagemaker", region_name=REGION)
    packages = sm.list_model_packages(ModelPackageGroupName=cfg.model_package_group)["ModelPackageSummaryList"]
    assert len(packages) == 1
    package = sm.describe_model_package(ModelPackageName=packages[0]["ModelPackageArn"])
    assert package["ModelApprovalStatus"] == "Approved"
    assert package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"] == f"{run}/evaluate/evaluation.json"

    spec = package["InferenceSpecification"]
    package_uri = spec["Containers"][0]["ModelDataUrl"]
    assert package_uri.startswith(run + "/") and package_uri[len(f"s3://{BUCKET}/"):] in keys
    assert "application/jsonlines" in spec["SupportedContentTypes"]

    # ---- the endpoint: created from the package and smoke-tested with JSON Lines
    endpoint = sm.describe_endpoint(EndpointName=cfg.endpoint_name)
    assert endpoint["EndpointStatus"] == "InService"
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    model = sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    assert model["PrimaryContainer"]["ModelDataUrl"] == package_uri
    assert config["ProductionVariants"][0]["InstanceType"] == cfg.endpoint_instance_type
    # the smoke test: one JSON Lines request, answered by the package's own handler
    assert len(endpoint_fake.invocations) == 1
    call = endpoint_fake.invocations[0]
    assert (call["EndpointName"], call["ContentType"], call["Accept"]) == (cfg.endpoint_name, JSONLINES, JSONLINES)
    body = call["Body"].decode() if isinstance(call["Body"], bytes) else call["Body"]
    assert [json.loads(line)["features"] for line in body.splitlines()] == [[t] for t in SMOKE_REVIEWS]
    deployed = json.loads(aws.read_bytes(cfg, f"{run}/_lineage/deploy_model.json"))["result"]
    assert (deployed["mode"], deployed["endpoint_name"], deployed["version"]) == ("created", cfg.endpoint_name, "1")
    assert deployed["endpoint_config"] == endpoint["EndpointConfigName"]
    assert len(deployed["smoke"]) == len(SMOKE_REVIEWS)
    assert all(a["predicted_label"] in (-1, 0, 1) for a in deployed["smoke"]), deployed["smoke"]

    # ---- IAM: every call of the run is one the shipped policies allow
    worker = aws_calls.calls["worker"]
    assert len(worker) > 100, "the recorder saw the run's calls"
    unlisted = aws_calls.operations() - set(iam.RUN_OPERATIONS[DAG_ID])
    assert not unlisted, f"operations missing from include/common/iam.py RUN_OPERATIONS: {sorted(unlisted)}"
    assert iam.denied(worker, cfg, iam.WORKER) == []
    played = [c for c in aws_calls.calls["execution_role"] if c[0] in ("s3", "logs")]  # the rest: moto bookkeeping
    assert played, "the harness's jobs read and wrote S3 as the execution role"
    assert iam.denied(played, cfg, iam.EXECUTION_ROLE) == []
