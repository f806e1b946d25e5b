"""The SageMaker Model Registry backend against moto's server (no stubs: moto has every call used)."""
from __future__ import annotations

import json

import boto3
import pytest

from include.model.registry import get_registry
from include.model.registry_base import APPROVED, PENDING, REJECTED, RegistryError
from include.model.registry_sagemaker import (
    SageMakerModelRegistry,
    decode_properties,
    encode_properties,
)
from include.pipeline import model_steps
from tests.aws.conftest import BUCKET, REGION

EVAL_URI = f"s3://{BUCKET}/rs/runs/review_sentiment_pipeline/r1/evaluate/evaluation.json"
PACKAGE_URI = f"s3://{BUCKET}/rs/runs/review_sentiment_pipeline/r1/register_model/model.tar.gz"


def _lineage(run_id: str = "manual__2024-01-01") -> dict:
    return {"dag_id": "review_sentiment_pipeline", "run_id": run_id, "ds": "2024-01-01",
            "partitions": "ds=2024-01-01,ds=2024-01-02",  # a comma: not allowed raw in SageMaker metadata
            "evaluation_uri": EVAL_URI, "training_job": "rs-train-abc", "git_commit": "0123abc",
            "gate_note": "accuracy 0.70 >= 0.60 (champion: none)"}


@pytest.fixture
def registry(aws_account) -> SageMakerModelRegistry:
    boto3.client("s3", region_name=REGION).put_object(
        Bucket=BUCKET, Key=EVAL_URI.split(f"{BUCKET}/", 1)[1],
        Body=json.dumps({"metrics": {"accuracy": {"value": 0.7}}}).encode())
    reg = get_registry()
    assert isinstance(reg, SageMakerModelRegistry)
    return reg


def _sm():
    return boto3.client("sagemaker", region_name=REGION)


def test_register_creates_the_group_and_a_package_with_json_lines_metrics_and_lineage(registry):
    mv = registry.register(PACKAGE_URI, {"accuracy": 0.7, "macro_f1": 0.69, "per_class.negative.f1": 0.6},
                           _lineage())
    assert (mv.version, mv.approval_status, mv.package_uri) == ("1", PENDING, PACKAGE_URI)
    group = _sm().describe_model_package_group(ModelPackageGroupName="review-sentiment")
    assert "review sentiment classifier" in group["ModelPackageGroupDescription"]
    desc = _sm().describe_model_package(ModelPackageName=_sm().list_model_packages(
        ModelPackageGroupName="review-sentiment")["ModelPackageSummaryList"][0]["ModelPackageArn"])
    spec = desc["InferenceSpecification"]
    assert spec["SupportedContentTypes"][0] == "application/jsonlines"
    assert spec["SupportedResponseMIMETypes"][0] == "application/jsonlines"
    assert "text/csv" not in spec["SupportedContentTypes"]
    assert spec["Containers"][0]["ModelDataUrl"] == PACKAGE_URI
    assert "huggingface-pytorch-inference" in spec["Containers"][0]["Image"]
    assert desc["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"] == EVAL_URI
    assert desc["ModelApprovalStatus"] == PENDING
    props = decode_properties(desc["CustomerMetadataProperties"])
    assert props["lineage.partitions"] == "ds=2024-01-01,ds=2024-01-02"
    assert desc["CustomerMetadataProperties"]["lineage.partitions"].startswith("b64:")
    assert props["lineage.run_id"] == "manual__2024-01-01"
    # headline metrics in the metadata; the per-class ones stay in evaluation.json
    assert mv.metrics == {"accuracy": 0.7, "macro_f1": 0.69}
    assert mv.lineage["gate_note"] == "accuracy 0.70 >= 0.60 (champion: none)"


def test_a_rerun_of_the_same_dag_run_adds_no_second_package(registry):
    first = registry.register(PACKAGE_URI, {"accuracy": 0.7}, _lineage())
    again = registry.register(PACKAGE_URI, {"accuracy": 0.7}, _lineage())
    assert again.version == first.version
    assert len(_sm().list_model_packages(ModelPackageGroupName="review-sentiment")["ModelPackageSummaryList"]) == 1
    other = registry.register(PACKAGE_URI, {"accuracy": 0.71}, _lineage("scheduled__2024-01-02"))
    assert other.version == "2"
    assert registry.find_by_run("review_sentiment_pipeline", "scheduled__2024-01-02").version == "2"
    assert registry.find_by_run("review_sentiment_pipeline", "never") is None


def test_auto_approve_registers_approved(registry):
    assert registry.register(PACKAGE_URI, {"accuracy": 0.7}, _lineage(), APPROVED).approval_status == APPROVED


def test_automl_baselines_go_to_their_own_group_without_model_metrics_when_no_evaluation_is_named(aws_account):
    from include.model.registry_base import BASELINE_MODEL_NAME

    baseline = get_registry(BASELINE_MODEL_NAME)
    mv = baseline.register(PACKAGE_URI, {"accuracy": 0.68}, {"dag_id": "review_automl_baseline", "run_id": "a1"})
    assert (baseline.group, mv.version) == ("review-sentiment-baseline", "1")
    desc = _sm().describe_model_package(ModelPackageName=_sm().list_model_packages(
        ModelPackageGroupName="review-sentiment-baseline")["ModelPackageSummaryList"][0]["ModelPackageArn"])
    assert "ModelMetrics" not in desc
    assert get_registry().list_versions() == []  # the BERT group is another group


def test_approval_decisions_update_the_package_status_and_keep_the_lineage(registry):
    registry.register(PACKAGE_URI, {"accuracy": 0.7}, _lineage())
    registry.register(PACKAGE_URI, {"accuracy": 0.6}, _lineage("r2"))
    out = model_steps.approve_model("1", note="looks good (alice)")
    assert out["approval_status"] == APPROVED
    model_steps.reject_model("2", note="worse than v1")
    arns = [s["ModelPackageArn"] for s in _sm().list_model_packages(
        ModelPackageGroupName="review-sentiment")["ModelPackageSummaryList"]]
    descs = {str(d["ModelPackageVersion"]): d for d in (_sm().describe_model_package(ModelPackageName=a)
                                                        for a in arns)}
    assert descs["1"]["ModelApprovalStatus"] == APPROVED
    assert descs["1"]["ApprovalDescription"] == "looks good (alice)"
    assert descs["2"]["ModelApprovalStatus"] == REJECTED
    v1 = registry.get("1")
    assert [h["status"] for h in v1.approval_history] == [PENDING, APPROVED]
    assert v1.lineage["run_id"] == "manual__2024-01-01"  # the status update did not wipe the metadata
    with pytest.raises(RegistryError, match="not one of"):
        registry.set_approval("1", "Maybe")


def test_deployed_version_and_the_previous_approved_one_for_rollback(registry):
    for run in ("r1", "r2", "r3"):
        registry.register(PACKAGE_URI, {"accuracy": 0.7}, _lineage(run), APPROVED)
    registry.set_approval("2", REJECTED, "bad")
    assert registry.deployed_version() is None
    with pytest.raises(RegistryError, match="not Approved"):
        registry.mark_deployed("2")
    registry.mark_deployed("3")
    registry.set_serving("3", {"precision": "int8", "reason": "within 0.5 points (fp32 0.70, int8 0.70)"})
    deployed = registry.deployed_version()
    assert (deployed.version, deployed.deployed) == ("3", True)
    assert deployed.serving["reason"] == "within 0.5 points (fp32 0.70, int8 0.70)"
    assert registry.previous_approved("3").version == "1"
    registry.mark_deployed("1")  # a rollback marks the older version later: it is the deployed one
    assert registry.deployed_version().version == "1"
    assert [v.deployed for v in registry.list_versions()] == [True, False, False]


def test_register_refuses_local_uris_and_missing_lineage(registry):
    with pytest.raises(RegistryError, match="s3://"):
        registry.register("file:///tmp/model.tar.gz", {"accuracy": 0.7}, _lineage())
    with pytest.raises(RegistryError, match="s3://"):
        registry.register(PACKAGE_URI, {"accuracy": 0.7}, {**_lineage(), "evaluation_uri": "file:///tmp/e.json"})
    with pytest.raises(RegistryError, match="run_id"):
        registry.register(PACKAGE_URI, {"accuracy": 0.7}, {"dag_id": "d", "evaluation_uri": EVAL_URI})
    with pytest.raises(RegistryError, match="no version"):
        registry.get("9")


def test_metadata_encoding_keeps_50_properties_in_priority_order():
    props = {"registration_key": "k", **{f"metric.m{i}": "1.0" for i in range(30)},
             **{f"lineage.l{i}": "x" for i in range(30)}, "lineage.run_id": "a b", "lineage.dag_id": "d"}
    encoded = encode_properties(props)
    assert len(encoded) == 50
    assert {"registration_key", "lineage.run_id", "lineage.dag_id", "lineage.l29"} <= set(encoded)
    assert decode_properties(encode_properties({"x": "é {json}", "y": "b64:literal"})) == {
        "x": "é {json}", "y": "b64:literal"}
    long = decode_properties(encode_properties({"u": "s3://b/" + "k" * 400}))["u"]
    assert long.endswith("[cut]") and len(encode_properties({"u": "s3://b/" + "k" * 400})["u"]) <= 256


def test_register_model_step_packages_the_s3_artifact_to_s3_and_registers_it_once(registry, tiny_dir, tmp_path):
    # The pipeline's step 7 on aws: the training job's model.tar.gz on S3 in, the package on S3 out.
    import tarfile

    from include.model.packaging import extract_package

    artifact = tmp_path / "model.tar.gz"
    with tarfile.open(artifact, "w:gz") as tar:
        for f in tiny_dir.iterdir():
            tar.add(f, arcname=f.name)
    key = "rs/runs/review_sentiment_pipeline/r1/train/output/model.tar.gz"
    boto3.client("s3", region_name=REGION).upload_file(str(artifact), BUCKET, key)
    evaluation = {"metrics": {"accuracy": {"value": 0.7}}}
    out = model_steps.register_model(f"s3://{BUCKET}/{key}", evaluation, _lineage(), auto_approve=False,
                                     package_dest_uri=PACKAGE_URI)
    assert (out["version"], out["approval_status"], out["package_uri"], out["created"]) == (
        "1", PENDING, PACKAGE_URI, True)
    unpacked = extract_package(PACKAGE_URI, tmp_path / "unpacked")  # the manifest checks every file
    assert (unpacked / "code" / "inference.py").is_file() and (unpacked / "model.safetensors").is_file()
    again = model_steps.register_model(f"s3://{BUCKET}/{key}", evaluation, _lineage(), auto_approve=False,
                                       package_dest_uri=PACKAGE_URI)
    assert (again["version"], again["created"]) == ("1", False)
    lineage = registry.get("1").lineage
    assert (lineage["model_artifact_uri"], lineage["package_uri"]) == (f"s3://{BUCKET}/{key}", PACKAGE_URI)
