"""``make validate-aws``: the dry run renders every job request of a run and lists every config
problem, without calling AWS (include/pipeline/validate_aws.py)."""
from __future__ import annotations

import json

import pytest

from include.pipeline import validate_aws

GOOD = {"region": "eu-west-1", "bucket": "acme-rs", "role_arn": "arn:aws:iam::123456789012:role/sm", "prefix": "p",
        "steps": {"train": {"instance_type": "ml.g5.xlarge", "max_runtime_s": 600}}}


@pytest.fixture(autouse=True)
def no_aws(monkeypatch):
    """Any botocore API call fails the test: a dry run makes none."""
    import botocore.client

    def refuse(self, operation, params):
        raise AssertionError(f"validate-aws called AWS: {operation}")

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", refuse)
    for key in ("REVIEWS_BACKEND", "REVIEWS_AWS_CONF", "AWS_ENDPOINT_URL", "REVIEWS_AWS_BUCKET"):
        monkeypatch.delenv(key, raising=False)


def _requests(text: str) -> dict[str, dict]:
    out, lines = {}, text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("## ") and ": Create" in line:
            step = line[3:].split(":")[0]
            start = next(j for j in range(i + 1, len(lines)) if lines[j] == "{")
            end = next(j for j in range(start, len(lines)) if lines[j] == "}")
            out[step] = json.loads("\n".join(lines[start:end + 1]))
    return out


def test_a_good_config_renders_the_three_job_requests_of_the_run(tmp_path, capsys):
    conf = tmp_path / "aws.json"
    conf.write_text(json.dumps(GOOD))
    rc = validate_aws.main(["--conf", str(conf), "--ds", "2026-11-20", "--params", '{"profile": "quick", "epochs": 3}'])
    text = capsys.readouterr().out
    assert rc == 0 and "## problems\nnone" in text
    reqs = _requests(text)
    assert set(reqs) == {"preprocess", "train", "evaluate"}
    train = reqs["train"]
    assert train["RoleArn"] == GOOD["role_arn"] and train["HyperParameters"]["epochs"] == "3"
    assert train["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge"
    assert train["StoppingCondition"] == {"MaxRuntimeInSeconds": 600}
    run = "s3://acme-rs/p/runs/review_sentiment_pipeline/scheduled__2026-11-21T00_00_00_00_00"
    assert train["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == f"{run}/preprocess/channels/train"
    assert reqs["evaluate"]["ProcessingInputs"][1]["S3Input"]["S3Uri"] == \
        f"{run}/train/{train['TrainingJobName']}/output/model.tar.gz"
    assert reqs["preprocess"]["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"] == f"{run}/preprocess/features"


def test_every_problem_is_listed_and_the_exit_code_says_so(tmp_path, capsys):
    conf = tmp_path / "aws.json"
    conf.write_text(json.dumps({"region": "eu-west-9", "bucket": "Bad_Bucket", "role_arn": "sm-role",
                                "steps": {"train": {"instance_type": "ml.g5.xlarg"}}}))
    assert validate_aws.main(["--conf", str(conf), "--ds", "2026-11-20"]) == 1
    text = capsys.readouterr().out
    problems = text.split("## problems\n", 1)[1].split("\n\n", 1)[0]
    for needle in ("region 'eu-west-9'", "did you mean 'eu-west-3'", "bucket 'Bad_Bucket'", "role_arn 'sm-role'",
                   "steps.train.instance_type 'ml.g5.xlarg'", "did you mean 'ml.g5.xlarge'"):
        assert needle in problems


def test_an_unknown_setting_is_named(tmp_path, capsys):
    conf = tmp_path / "aws.json"
    conf.write_text(json.dumps({**GOOD, "buckett": "x"}))
    assert validate_aws.main(["--conf", str(conf)]) == 1
    assert "'buckett' (did you mean 'bucket'?)" in capsys.readouterr().err


def test_the_example_config_passes_and_the_nvme_training_instance_gets_no_volume_kms_key(capsys):
    from include.common.iam import run_actions

    rc = validate_aws.main(["--conf", "docs/aws-config.example.yaml", "--ds", "2026-11-20"])
    text = capsys.readouterr().out
    assert rc == 0 and "## problems\nnone" in text
    reqs = _requests(text)
    assert reqs["train"]["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge"
    assert "VolumeKmsKeyId" not in reqs["train"]["ResourceConfig"]  # refused by SageMaker on NVMe storage
    assert reqs["train"]["OutputDataConfig"]["KmsKeyId"]  # the outputs stay encrypted
    assert reqs["preprocess"]["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"]  # ml.c5: an EBS volume
    assert reqs["preprocess"]["AppSpecification"]["ContainerEntrypoint"][1].endswith("/job_entry.py")
    iam_lines = text.split("## IAM actions", 1)[1].split("\n\n", 1)[0]
    for action in ("sagemaker:CreateTrainingJob", "iam:PassRole", "sagemaker:AddTags", "s3:ListBucket"):
        assert action in iam_lines
    assert set(run_actions("review_sentiment_pipeline")) <= set(iam_lines.split())
    assert "NOT granted" not in iam_lines


def test_a_volume_kms_key_on_local_instance_storage_is_reported():
    from include.jobs.images import request_problems

    request = {"TrainingJobName": "rs-train-x", "ResourceConfig": {
        "InstanceCount": 1, "InstanceType": "ml.g5.xlarge", "VolumeSizeInGB": 30,
        "VolumeKmsKeyId": "arn:aws:kms:eu-west-1:123456789012:key/k"},
        "AlgorithmSpecification": {"TrainingImage": "x/huggingface-pytorch-training:2.5.1-transformers4.49.0-gpu-py311"}}
    found = request_problems("train", request)
    assert len(found) == 1 and "VolumeKmsKeyId" in found[0] and "ml.g5.xlarge" in found[0]
    request["ResourceConfig"]["InstanceType"] = "ml.c5.4xlarge"
    found = request_problems("train", request)
    assert len(found) == 1 and "GPU-only image" in found[0], found


def test_a_gpu_image_on_a_cpu_instance_and_a_missing_image_are_reported(tmp_path, capsys):
    from include.jobs.images import image_problems

    conf = tmp_path / "aws.json"
    conf.write_text(json.dumps({**GOOD, "steps": {"evaluate": {
        "instance_type": "ml.c5.2xlarge",
        "image_uri": "763104351884.dkr.ecr.eu-west-1.amazonaws.com/huggingface-pytorch-inference:"
                     "2.6.0-transformers4.49.0-gpu-py312-cu124-ubuntu22.04"}}}))
    assert validate_aws.main(["--conf", str(conf), "--ds", "2026-11-20"]) == 1
    problems = capsys.readouterr().out.split("## problems\n", 1)[1].split("\n\n", 1)[0]
    assert "evaluate: GPU-only image" in problems and "ml.c5.2xlarge" in problems
    assert image_problems("train", "", "ml.g5.xlarge") and "no image" in image_problems("train", "", "ml.g5.xlarge")[0]


def test_a_cpu_training_instance_gets_the_pytorch_cpu_image(tmp_path, capsys):
    conf = tmp_path / "aws.json"
    conf.write_text(json.dumps({**GOOD, "steps": {"train": {"instance_type": "ml.c5.4xlarge"}}}))
    assert validate_aws.main(["--conf", str(conf), "--ds", "2026-11-20"]) == 0
    image = _requests(capsys.readouterr().out)["train"]["AlgorithmSpecification"]["TrainingImage"]
    assert "/pytorch-training:" in image and "cpu" in image
