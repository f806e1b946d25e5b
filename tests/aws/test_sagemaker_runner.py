"""The SageMaker job runner (include/jobs/runner_sagemaker.py) against moto's server.

moto marks a job Completed at creation and overwrites a job created twice under one name, so
it cannot show that a retry pays twice: these tests assert on the calls the server received
(recorded by the harness, tests/aws/sagemaker_harness.py, which also plays the job: it runs
the same request with the local runner against moto's S3 - see its docstring).
"""
from __future__ import annotations

import asyncio
import io
import json
import tarfile

import pytest
from airflow.sdk.exceptions import TaskDeferred

from include.common.aws import AwsConfigError, config_from_dict, load_aws_config, read_bytes
from include.jobs import requests
from include.jobs.runner import get_runner
from include.jobs.runner_base import JobFailedError
from include.jobs.runner_sagemaker import (
    SageMakerJobRunner,
    complete_request,
    max_poll_attempts,
    scripts_digest,
)
from tests.aws.conftest import BUCKET, REGION

ACCOUNT = {"region": "eu-west-1", "bucket": "rs-bucket", "role_arn": "arn:aws:iam::123456789012:role/sm",
           "subnets": ["subnet-1"], "security_group_ids": ["sg-1"], "kms_key_id": "alias/rs",
           "spot_training": True,
           "steps": {"train": {"instance_type": "ml.g5.2xlarge", "instance_count": 2, "volume_size_gb": 50,
                               "max_runtime_s": 7200},
                     "evaluate": {"instance_type": "ml.m5.large", "image_uri": "my.ecr/eval:1"}}}


def _processing(name: str = "rs-evaluate-20261120-abc") -> dict:
    return requests.evaluation_request(name=name, model_uri="s3://b/train/m/model.tar.gz", test_uri="s3://b/test",
                                       training_output_uri=None, output_uri="s3://b/evaluate", code_uri="s3://b/code/d/scripts")


def _training(name: str = "rs-train-20261120-abc") -> dict:
    return requests.training_request(name=name, train_uri="s3://b/train", validation_uri="s3://b/validation",
                                     output_uri="s3://b/out", checkpoint_uri="s3://b/out/checkpoints",
                                     code_uri="s3://b/code/d/scripts", hyperparameters={"epochs": 1, "lr": 0.1})


# ------------------------------------------------------------------ the request (offline)


def test_training_request_gets_role_image_instances_vpc_kms_and_spot_and_keeps_the_rest():
    cfg = config_from_dict(ACCOUNT)
    built = _training()
    req = complete_request(built, cfg, "train")
    assert req["RoleArn"] == ACCOUNT["role_arn"]
    assert req["AlgorithmSpecification"]["TrainingImage"] == (
        "763104351884.dkr.ecr.eu-west-1.amazonaws.com/huggingface-pytorch-training:"
        "2.5.1-transformers4.49.0-gpu-py311-cu124-ubuntu22.04")
    # no VolumeKmsKeyId: SageMaker refuses one on ml.g5's local NVMe storage (include/jobs/images.py)
    assert req["ResourceConfig"] == {"InstanceCount": 2, "InstanceType": "ml.g5.2xlarge", "VolumeSizeInGB": 50}
    assert req["VpcConfig"] == {"Subnets": ["subnet-1"], "SecurityGroupIds": ["sg-1"]}
    assert req["OutputDataConfig"] == {"S3OutputPath": "s3://b/out", "KmsKeyId": "alias/rs"}
    assert req["EnableManagedSpotTraining"] is True
    assert req["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 14400}
    assert req["HyperParameters"]["sagemaker_submit_directory"] == "s3://b/code/d/sourcedir.tar.gz"
    # everything else is the builder's dict, unchanged
    for key in ("TrainingJobName", "InputDataConfig", "CheckpointConfig", "Environment"):
        assert req[key] == built[key]
    assert {k: v for k, v in req["HyperParameters"].items() if k != "sagemaker_submit_directory"} == \
        {k: v for k, v in built["HyperParameters"].items() if k != "sagemaker_submit_directory"}
    assert built["RoleArn"] == requests.ROLE_ARN, "the builder's dict is not modified in place"


def test_processing_request_takes_the_steps_image_override_and_network_config():
    cfg = config_from_dict(ACCOUNT)
    built = _processing()
    req = complete_request(built, cfg, "evaluate")
    script = built["AppSpecification"]["ContainerEntrypoint"][1]
    assert req["AppSpecification"] == {**built["AppSpecification"], "ImageUri": "my.ecr/eval:1",  # + job_entry.py:
                                       "ContainerEntrypoint": ["python3", script.replace("evaluate.py", "job_entry.py"),
                                                               script]}  # installs requirements.txt first
    assert req["ProcessingResources"] == {"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large",
                                                            "VolumeSizeInGB": 30, "VolumeKmsKeyId": "alias/rs"}}
    assert req["NetworkConfig"] == {"VpcConfig": {"Subnets": ["subnet-1"], "SecurityGroupIds": ["sg-1"]}}
    assert req["ProcessingOutputConfig"]["KmsKeyId"] == "alias/rs"
    assert req["StoppingCondition"] == {"MaxRuntimeInSeconds": 1800}
    assert req["ProcessingInputs"] == built["ProcessingInputs"]
    assert req["AppSpecification"]["ContainerArguments"] == built["AppSpecification"]["ContainerArguments"]


def test_the_default_weights_come_as_one_more_input_where_the_request_names_no_model():
    cfg = config_from_dict(ACCOUNT)
    weights = "s3://rs-bucket/review-sentiment/models/pretrained/abc"
    train = complete_request(_training(), cfg, "train", weights)
    assert train["InputDataConfig"][-1] == {"ChannelName": "pretrained", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": weights, "S3DataDistributionType": "FullyReplicated"}}}
    assert train["HyperParameters"]["model_name_or_path"] == "/opt/ml/input/data/pretrained"
    pre = complete_request(requests.preprocess_request(
        name="p", input_uri="s3://b/x", output_uri="s3://b/y", code_uri="s3://b/code/d/scripts", model_name_or_path="",
        max_seq_length=8, train_split_percentage=0.8, validation_split_percentage=0.1, balance_dataset="false"),
        cfg, "preprocess", weights)
    assert pre["ProcessingInputs"][-1]["S3Input"]["S3Uri"] == weights
    assert pre["AppSpecification"]["ContainerArguments"][-2:] == ["--model-name-or-path",
                                                                  "/opt/ml/processing/input/pretrained"]
    # a model named by the run's params is left alone
    named = _training()
    named["HyperParameters"]["model_name_or_path"] = "/opt/ml/input/data/mine"
    assert complete_request(named, cfg, "train", weights)["InputDataConfig"] == named["InputDataConfig"]


def test_processing_image_is_the_hugging_face_cpu_image_for_the_region():
    cfg = config_from_dict({**ACCOUNT, "steps": {}})
    req = complete_request(_processing(), cfg, "preprocess")
    assert req["AppSpecification"]["ImageUri"] == (
        "763104351884.dkr.ecr.eu-west-1.amazonaws.com/huggingface-pytorch-inference:"
        "2.6.0-transformers4.49.0-cpu-py312-ubuntu22.04")


def test_a_cpu_training_instance_gets_the_pytorch_cpu_training_image():
    # the Hugging Face training DLC is GPU-only; transformers comes from the job's requirements.txt
    cfg = config_from_dict({**ACCOUNT, "steps": {"train": {"instance_type": "ml.c5.xlarge"}}})
    req = complete_request(_training(), cfg, "train")
    assert req["AlgorithmSpecification"]["TrainingImage"] == (
        "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:2.5.1-cpu-py311")
    assert req["ResourceConfig"]["VolumeKmsKeyId"] == "alias/rs"  # ml.c5: an EBS volume, encrypted


def test_the_trigger_may_poll_for_the_whole_allowed_runtime_not_30_minutes():
    req = complete_request(_training(), config_from_dict(ACCOUNT), "train")
    assert max_poll_attempts(req, 30) == 14400 // 30 + 10
    assert max_poll_attempts({"StoppingCondition": {"MaxRuntimeInSeconds": 100}}, 30) == 4 + 10


def test_job_names_are_the_same_on_every_attempt_and_restarts_are_suffixed():
    name = requests.job_name("train", "scheduled__2026-11-20T00:00:00+00:00")
    assert name == requests.job_name("train", "scheduled__2026-11-20T00:00:00+00:00")
    assert name != requests.job_name("train", "manual__2026-11-20T00:00:00+00:00")
    assert requests.restart_name(name, 1) == name and requests.restart_name(name, 2) == f"{name}-r2"
    long = "x" * 63
    assert len(requests.restart_name(long, 5)) == 63


# ------------------------------------------------------------------ against moto


def _runner() -> SageMakerJobRunner:
    runner = get_runner()
    assert isinstance(runner, SageMakerJobRunner)
    return runner


def _proc_request(runner: SageMakerJobRunner, name: str) -> dict:
    req = requests.evaluation_request(name=name, model_uri=f"s3://{BUCKET}/rs/m/model.tar.gz",
                                      test_uri=f"s3://{BUCKET}/rs/test", training_output_uri=None,
                                      output_uri=f"s3://{BUCKET}/rs/evaluate", code_uri=f"s3://{BUCKET}/rs/code")
    return runner.prepare(req, "evaluate")


def test_scripts_are_uploaded_once_per_content_hash(aws_account, sagemaker):
    import boto3

    runner = _runner()
    uri = runner.code_uri()
    digest = scripts_digest()
    assert uri == f"s3://{BUCKET}/rs/code/{digest}/scripts"
    s3 = boto3.client("s3", region_name=REGION)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"rs/code/{digest}/")["Contents"]]
    assert f"rs/code/{digest}/scripts/train.py" in keys and f"rs/code/{digest}/sourcedir.tar.gz" in keys
    with tarfile.open(fileobj=io.BytesIO(read_bytes(runner.cfg, uri.rsplit("/", 1)[0] + "/sourcedir.tar.gz"))) as tar:
        assert {"train.py", "preprocess.py", "evaluate.py"} <= set(tar.getnames())
    before = s3.get_object(Bucket=BUCKET, Key=f"rs/code/{digest}/sourcedir.tar.gz")["LastModified"]
    assert _runner().code_uri() == uri  # a new runner (another task) finds the upload
    assert s3.get_object(Bucket=BUCKET, Key=f"rs/code/{digest}/sourcedir.tar.gz")["LastModified"] == before


def test_no_job_yet_creates_one_under_the_deterministic_name(aws_account, sagemaker):
    runner = _runner()
    req = _proc_request(runner, "rs-evaluate-1-abc")
    sagemaker.force("rs-evaluate-1-abc", "Completed")
    result = runner.run(req)
    created = sagemaker.created("Processing")
    assert [c["ProcessingJobName"] for c in created] == ["rs-evaluate-1-abc"]
    assert created[0] == req, "SageMaker receives the completed request unchanged"
    assert result["job_name"] == "rs-evaluate-1-abc" and result["status"] == "Completed"
    assert result["outputs"] == {"metrics": f"s3://{BUCKET}/rs/evaluate"}


def test_a_completed_job_is_reused_and_nothing_is_created(aws_account, sagemaker):
    runner = _runner()
    req = _proc_request(runner, "rs-evaluate-2-abc")
    sagemaker.force("rs-evaluate-2-abc", "Completed")
    runner.run(req)
    sagemaker.calls.clear()
    result = runner.start(req, context={}, task=None)
    assert sagemaker.actions("Create") == []
    assert sagemaker.actions() == ["DescribeProcessingJob", "ListTags"]  # the owner tags checked before reuse
    assert result["job_name"] == "rs-evaluate-2-abc" and result["status"] == "Completed"


def test_a_running_job_is_waited_on_by_deferring_and_nothing_is_created(aws_account, sagemaker):
    runner = _runner()
    req = _proc_request(runner, "rs-evaluate-3-abc")
    sagemaker.hold("rs-evaluate-3-abc")
    sagemaker.force("rs-evaluate-3-abc", "Completed")
    import boto3

    boto3.client("sagemaker", region_name=REGION).create_processing_job(**req)  # an earlier attempt's job
    sagemaker.calls.clear()
    with pytest.raises(TaskDeferred) as deferred:
        runner.start(req, context={}, task=None)
    assert sagemaker.actions("Create") == []
    trigger = deferred.value.trigger
    assert (trigger.job_name, trigger.job_type, trigger.waiter_delay) == ("rs-evaluate-3-abc", "Processing", 1)
    assert deferred.value.method_name == "execute_complete"
    sagemaker.release("rs-evaluate-3-abc")
    event = asyncio.run(_first_event(trigger))  # the provider's trigger, over aiobotocore, against moto
    assert event == {"status": "success", "job_name": "rs-evaluate-3-abc"}
    assert runner.resume(req, event)["status"] == "Completed"


async def _first_event(trigger) -> dict:
    async for event in trigger.run():
        return event.payload
    raise AssertionError("the trigger fired no event")


@pytest.mark.parametrize("status", ["Failed", "Stopped"])
def test_a_failed_or_stopped_job_is_started_again_under_the_next_name(aws_account, sagemaker, status):
    runner = _runner()
    req = _proc_request(runner, "rs-evaluate-4-abc")
    sagemaker.force("rs-evaluate-4-abc", status, "ClientError: out of memory" if status == "Failed" else "")
    with pytest.raises(JobFailedError, match=f"rs-evaluate-4-abc failed: {status}"):
        runner.run(req)
    sagemaker.force("rs-evaluate-4-abc-r2", "Failed", "AlgorithmError: boom")
    with pytest.raises(JobFailedError, match="AlgorithmError: boom"):
        runner.run(req)
    sagemaker.force("rs-evaluate-4-abc-r3", "Completed")
    sagemaker.calls.clear()
    result = runner.run(req)
    assert [c["ProcessingJobName"] for c in sagemaker.created()] == ["rs-evaluate-4-abc-r3"]
    assert sagemaker.created()[0] == {**req, "ProcessingJobName": "rs-evaluate-4-abc-r3"}
    assert result["job_name"] == "rs-evaluate-4-abc-r3"
    # and the next attempt of the task reuses -r3
    sagemaker.calls.clear()
    assert runner.run(req)["job_name"] == "rs-evaluate-4-abc-r3" and sagemaker.actions("Create") == []


def test_after_five_failed_jobs_no_sixth_is_started(aws_account, sagemaker):
    runner = _runner()
    req = _proc_request(runner, "rs-evaluate-5-abc")
    for name in ["rs-evaluate-5-abc"] + [f"rs-evaluate-5-abc-r{i}" for i in range(2, 6)]:
        sagemaker.force(name, "Failed", "AlgorithmError: again")
        with pytest.raises(JobFailedError):
            runner.run(req)
    sagemaker.calls.clear()
    with pytest.raises(JobFailedError, match="5 jobs of this step failed"):
        runner.run(req)
    assert sagemaker.actions("Create") == []


def test_a_missing_bucket_fails_at_prepare_before_any_job(aws_account, sagemaker, monkeypatch):
    monkeypatch.setenv("REVIEWS_AWS_BUCKET", "no-such-bucket-here")
    runner = SageMakerJobRunner(None, load_aws_config())
    with pytest.raises(AwsConfigError, match="bucket 'no-such-bucket-here' does not exist"):
        runner.prepare(_processing(), "evaluate")
    assert sagemaker.calls == []


def test_a_processing_job_runs_the_real_script_and_its_log_tail_reaches_the_task_log(aws_account, sagemaker, capsys):
    """preprocess.py on 150 synthetic reviews in moto's S3, created by the provider's operator
    (deferrable), waited on by its trigger, finished with the CloudWatch tail printed."""
    from include.common.aws import write_bytes
    from include.data.synthetic import generate_reviews

    runner = _runner()
    cfg = runner.cfg
    write_bytes(cfg, f"s3://{BUCKET}/rs/export/clean.csv", generate_reviews(150, seed=3).to_csv(index=False).encode())
    req = runner.prepare(requests.preprocess_request(
        name="rs-preprocess-6-abc", input_uri=f"s3://{BUCKET}/rs/export", output_uri=f"s3://{BUCKET}/rs/features",
        code_uri=runner.code_uri(), model_name_or_path="", max_seq_length=16, train_split_percentage=0.8,
        validation_split_percentage=0.1, balance_dataset="false"), "preprocess")
    with pytest.raises(TaskDeferred) as deferred:
        runner.start(req, context={}, task=None)
    assert sagemaker.created("Processing") == [req]
    event = asyncio.run(_first_event(deferred.value.trigger))
    assert event["status"] == "success", (event, sagemaker.errors)
    result = runner.resume(req, event)
    assert result["outputs"] == {"features": f"s3://{BUCKET}/rs/features"}
    stats = json.loads(read_bytes(cfg, f"s3://{BUCKET}/rs/features/stats.json"))
    assert sum(split["rows"] for split in stats["splits"].values()) > 100
    tail = sagemaker.job_logs["rs-preprocess-6-abc"][-5:]
    out = capsys.readouterr().out
    assert tail and all(f"[rs-preprocess-6-abc] {line}" in out for line in tail)
