"""The SageMaker endpoint deploy against moto's server.

moto runs CreateModel, CreateEndpointConfig, CreateEndpoint, DescribeEndpoint(-Config),
DescribeModel and DeleteEndpoint. Stubbed at the boto3 level (botocore Stubber, only these
operations, see tests/aws/stubs.py), because moto cannot do them:

* ``sagemaker.UpdateEndpoint`` - moto 5.2 raises NotImplementedError; the stub's hook applies
  the update to moto's endpoint as SageMaker would (or, for a failed update, leaves the old
  config and sets a FailureReason, as SageMaker's automatic rollback does);
* ``sagemaker-runtime.InvokeEndpoint`` - moto runs no container, so no model answers.
"""
from __future__ import annotations

import json

import boto3
import pytest

from include.common.aws import load_aws_config
from include.model.registry import get_registry
from include.model.registry_base import APPROVED
from include.pipeline import model_steps
from include.serving.endpoint import get_endpoint
from include.serving.endpoint_base import EndpointDeployError
from include.serving.endpoint_sagemaker import SageMakerEndpoint
from include.serving.protocol import JSONLINES, SMOKE_REVIEWS
from tests.aws.conftest import BUCKET, REGION
from tests.aws.stubs import OperationStubber, moto_sagemaker, streaming

TEXTS = list(SMOKE_REVIEWS)
ENDPOINT_ARN = f"arn:aws:sagemaker:{REGION}:123456789012:endpoint/review-sentiment"


def _package(version: str) -> str:
    key = f"rs/runs/review_sentiment_pipeline/r{version}/register_model/model.tar.gz"
    boto3.client("s3", region_name=REGION).put_object(Bucket=BUCKET, Key=key, Body=b"not read by moto")
    return f"s3://{BUCKET}/{key}"


def _answers(n: int = len(TEXTS), label: int = 1) -> bytes:
    return "\n".join(json.dumps({"predicted_label": label, "probability": 0.9}) for _ in range(n)).encode()


def _jsonl_request() -> bytes:
    return "\n".join(json.dumps({"features": [t]}) for t in TEXTS).encode()


def _apply_update(op: str, params: dict) -> None:
    """What SageMaker does on UpdateEndpoint (moto cannot): switch the endpoint to the new config."""
    backend = moto_sagemaker(REGION)
    ep = backend.endpoints[params["EndpointName"]]
    config = backend.endpoint_configs[params["EndpointConfigName"]]
    ep.endpoint_config_name = params["EndpointConfigName"]
    ep.production_variants = ep._process_production_variants(config.production_variants)


def _fail_update(op: str, params: dict) -> None:
    """SageMaker's automatic rollback of a failed update: old config, InService, FailureReason."""
    moto_sagemaker(REGION).endpoints[params["EndpointName"]].failure_reason = (
        "The primary container for production variant AllTraffic did not pass the ping health check.")


class Harness:
    """A SageMakerEndpoint on moto whose UpdateEndpoint and InvokeEndpoint are stubbed."""

    def __init__(self) -> None:
        self.cfg = load_aws_config().validate()
        self.sm = self.cfg.client("sagemaker")
        self.runtime = self.cfg.client("sagemaker-runtime")
        self.endpoint = SageMakerEndpoint(self.cfg, sm=self.sm, runtime=self.runtime, poll_s=0.01)
        self.invoke = OperationStubber(self.runtime, "InvokeEndpoint")
        self.invoke.activate()

    def expect_invoke(self, body: bytes | None = None, error: str = "") -> None:
        params = {"EndpointName": "review-sentiment", "ContentType": JSONLINES, "Accept": JSONLINES,
                  "Body": _jsonl_request()}
        if error:
            self.invoke.add_client_error("invoke_endpoint", service_error_code="ModelError", service_message=error,
                                         http_status_code=424, expected_params=params)
        else:
            self.invoke.add_response("invoke_endpoint", {"Body": streaming(body or _answers()),
                                                         "ContentType": JSONLINES}, params)

    def stub_update(self, *configs: str, on_call=_apply_update) -> OperationStubber:
        stub = OperationStubber(self.sm, "UpdateEndpoint", on_call=on_call)
        for config in configs:
            stub.add_response("update_endpoint", {"EndpointArn": ENDPOINT_ARN},
                              {"EndpointName": "review-sentiment", "EndpointConfigName": config})
        stub.activate()
        return stub

    def described(self) -> dict:
        return self.sm.describe_endpoint(EndpointName="review-sentiment")


@pytest.fixture
def harness(aws_account) -> Harness:
    h = Harness()
    yield h
    h.invoke.assert_no_pending_responses()


def test_first_deploy_creates_model_config_and_endpoint_and_smoke_tests_with_json_lines(harness):
    harness.expect_invoke()
    out = harness.endpoint.deploy(_package("1"), "1", TEXTS)
    assert (out["mode"], out["version"], out["previous_version"]) == ("created", "1", None)
    assert [a["predicted_label"] for a in out["smoke"]] == [1, 1, 1]
    desc = harness.described()
    assert (desc["EndpointStatus"], desc["EndpointConfigName"]) == ("InService", out["endpoint_config"])
    config = harness.sm.describe_endpoint_config(EndpointConfigName=out["endpoint_config"])
    variant = config["ProductionVariants"][0]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.m5.xlarge", 1)
    model = harness.sm.describe_model(ModelName=variant["ModelName"])
    assert model["PrimaryContainer"]["ModelDataUrl"] == _package("1")
    assert model["PrimaryContainer"]["Environment"]["MODEL_VERSION"] == "1"
    assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert model["ExecutionRoleArn"] == harness.cfg.role_arn


def test_deploying_the_served_version_again_only_smoke_tests(harness):
    harness.expect_invoke()
    first = harness.endpoint.deploy(_package("1"), "1", TEXTS)
    harness.expect_invoke()
    stub = harness.stub_update()  # no UpdateEndpoint expected: an unexpected call would fail
    again = harness.endpoint.deploy(_package("1"), "1", TEXTS)
    assert (again["mode"], again["endpoint_config"]) == ("unchanged", first["endpoint_config"])
    stub.assert_no_pending_responses()


def test_a_new_version_updates_the_endpoint_to_a_new_config(harness):
    harness.expect_invoke()
    first = harness.endpoint.deploy(_package("1"), "1", TEXTS)
    harness.expect_invoke()
    stub = harness.stub_update(_config_name(harness, "2"))
    out = harness.endpoint.deploy(_package("2"), "2", TEXTS)
    stub.assert_no_pending_responses()
    assert (out["mode"], out["previous_version"], out["previous_endpoint_config"]) == (
        "updated", "1", first["endpoint_config"])
    assert harness.described()["EndpointConfigName"] == out["endpoint_config"] != first["endpoint_config"]
    assert harness.endpoint.status()["version"] == "2"


def test_a_failed_update_keeps_the_previous_config_and_fails_with_the_reason(harness):
    harness.expect_invoke()
    first = harness.endpoint.deploy(_package("1"), "1", TEXTS)
    harness.stub_update(_config_name(harness, "2"), on_call=_fail_update)
    with pytest.raises(EndpointDeployError, match="did not pass the ping health check.*version 1\\) still serves"):
        harness.endpoint.deploy(_package("2"), "2", TEXTS)
    assert harness.described()["EndpointConfigName"] == first["endpoint_config"]


def test_a_failed_smoke_test_after_an_update_rolls_back_to_the_previous_config(harness):
    harness.expect_invoke()
    first = harness.endpoint.deploy(_package("1"), "1", TEXTS)
    harness.expect_invoke(error="CUDA error: device-side assert triggered")
    stub = harness.stub_update(_config_name(harness, "2"), first["endpoint_config"])
    with pytest.raises(EndpointDeployError, match="device-side assert.*rolled back.*version 1\\) serves again"):
        harness.endpoint.deploy(_package("2"), "2", TEXTS)
    stub.assert_no_pending_responses()  # the update, then the update back
    assert harness.described()["EndpointConfigName"] == first["endpoint_config"]


def test_answers_without_labels_fail_the_smoke_test(harness):
    harness.expect_invoke(body=_answers(n=2))
    with pytest.raises(EndpointDeployError, match="3 reviews sent, 2 answers"):
        harness.endpoint.deploy(_package("1"), "1", TEXTS)


def test_a_missing_package_fails_before_anything_is_created(harness):
    with pytest.raises(EndpointDeployError, match="not readable on S3"):
        harness.endpoint.deploy(f"s3://{BUCKET}/rs/nothing/model.tar.gz", "1", TEXTS)
    assert harness.sm.list_models()["Models"] == []
    assert harness.endpoint.status() is None


def test_deploy_model_step_deploys_an_approved_package_and_marks_it_deployed(aws_account, monkeypatch):
    # The pipeline's step, through endpoint.deploy's backend switch and the SageMaker registry.
    h = Harness()
    monkeypatch.setattr(SageMakerEndpoint, "runtime", property(lambda self: h.runtime))
    h.expect_invoke()
    eval_uri = f"s3://{BUCKET}/rs/runs/review_sentiment_pipeline/r1/evaluate/evaluation.json"
    get_registry().register(_package("1"), {"accuracy": 0.7},
                            {"dag_id": "review_sentiment_pipeline", "run_id": "r1", "evaluation_uri": eval_uri},
                            APPROVED)
    out = model_steps.deploy_model("1", precision="fp32")
    assert (out["mode"], out["endpoint_name"], out["url"]) == (
        "created", "review-sentiment",
        f"https://runtime.sagemaker.{REGION}.amazonaws.com/endpoints/review-sentiment/invocations")
    assert get_registry().deployed_version().version == "1"
    assert get_endpoint().status()["version"] == "1"
    assert get_endpoint().stop() is True and get_endpoint().status() is None


def _config_name(harness: Harness, version: str) -> str:
    return harness.endpoint.config_name(_package(version), version)


def test_a_real_package_is_deployed_updated_and_answers_through_its_own_handler(aws_account, classifier_dir,
                                                                                 tmp_path, monkeypatch):
    # InvokeEndpoint runs the package's code/inference.py (tests/aws/sagemaker_fakes.py plays the
    # container), so the smoke test and predict() exercise the real wire format end to end.
    from include.model.packaging import build_package
    from tests.aws.sagemaker_fakes import install

    monkeypatch.setenv("INFERENCE_NUM_THREADS", "1")
    _, fake = install(monkeypatch, REGION, tmp_path / "container")
    v1 = build_package(classifier_dir, f"s3://{BUCKET}/rs/runs/review_sentiment_pipeline/a/register_model/")
    v2 = build_package(classifier_dir, f"s3://{BUCKET}/rs/runs/review_sentiment_pipeline/b/register_model/")
    first = get_endpoint().deploy(v1, "1", TEXTS)
    assert first["mode"] == "created"
    assert {a["predicted_label"] for a in first["smoke"]} <= {-1, 0, 1}
    assert all(0.0 <= a["probability"] <= 1.0 for a in first["smoke"])
    second = get_endpoint().deploy(v2, "2", TEXTS, precision="int8")
    assert (second["mode"], second["previous_version"]) == ("updated", "1")
    assert [u["EndpointConfigName"] for u in fake.updates] == [second["endpoint_config"]]
    answers = get_endpoint().predict(["I love this dress, it fits perfectly."])
    assert answers[0]["model_version"] == "2" and answers[0]["label"] in ("negative", "neutral", "positive")
    assert fake.invocations[-1]["ContentType"] == "application/json"
    fake.fail_updates = "The primary container for production variant AllTraffic did not pass the ping health check."
    with pytest.raises(EndpointDeployError, match="ping health check.*version 2\\) still serves"):
        get_endpoint().deploy(v1, "1", TEXTS)
    assert get_endpoint().status()["version"] == "2"


def test_the_int8_decision_reads_the_package_and_the_test_split_from_s3(aws_account, classifier_dir, monkeypatch):
    # deploy_model(precision="auto") on aws: both the package and the run's test split live on S3.
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from include.model.packaging import build_package

    monkeypatch.setenv("INFERENCE_NUM_THREADS", "1")
    channels = f"s3://{BUCKET}/rs/runs/review_sentiment_pipeline/r1/preprocess/channels"
    buf = io.BytesIO()
    pq.write_table(pa.table({"review_body": TEXTS * 2, "label_id": pa.array([2, 1, 0] * 2, pa.int8())}), buf)
    boto3.client("s3", region_name=REGION).put_object(
        Bucket=BUCKET, Key="rs/runs/review_sentiment_pipeline/r1/preprocess/channels/test/part-00000.parquet",
        Body=buf.getvalue())
    package = build_package(classifier_dir, f"s3://{BUCKET}/rs/runs/review_sentiment_pipeline/r1/register_model/")
    mv = get_registry().register(package, {"accuracy": 0.7}, {"dag_id": "review_sentiment_pipeline", "run_id": "r1",
                                                              "train_data_uri": f"{channels}/train"}, APPROVED)
    decision = model_steps.choose_precision(mv)
    assert decision["test_uri"] == f"{channels}/test"
    assert decision["eval_rows"] == 6  # measured on the split downloaded from S3
    assert decision["precision"] == ("int8" if decision["accuracy_drop_points"] <= decision["max_drop_points"]
                                     else "fp32")


def test_deploy_and_stop_call_the_sagemaker_hook_and_wait_with_boto3_waiters(harness, monkeypatch):
    from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

    hook_calls, waiters = [], []
    for method in ("create_model", "create_endpoint_config", "create_endpoint", "update_endpoint"):
        original = getattr(SageMakerHook, method)
        monkeypatch.setattr(SageMakerHook, method, lambda self, config, *a, _m=method, _o=original, **kw: (
            hook_calls.append((_m, kw.get("wait_for_completion"))), _o(self, config, *a, **kw))[1])
    get_waiter = harness.sm.get_waiter
    monkeypatch.setattr(harness.sm, "get_waiter", lambda name: (waiters.append(name), get_waiter(name))[1])
    harness.expect_invoke()
    harness.endpoint.deploy(_package("1"), "1", TEXTS)
    assert hook_calls == [("create_model", None), ("create_endpoint_config", None), ("create_endpoint", False)]
    assert harness.endpoint.hook.get_conn() is harness.sm  # the hook calls through the factory's client
    assert harness.endpoint.stop() is True
    assert waiters == ["endpoint_in_service", "endpoint_deleted"]
    assert harness.endpoint.status() is None


def test_an_update_that_never_settles_fails_after_endpoint_wait_s_naming_the_status(harness):
    from dataclasses import replace

    harness.expect_invoke()
    harness.endpoint.deploy(_package("1"), "1", TEXTS)
    harness.endpoint.cfg = replace(harness.cfg, endpoint_wait_s=1)

    def stuck(op: str, params: dict) -> None:
        moto_sagemaker(REGION).endpoints[params["EndpointName"]].endpoint_status = "Updating"

    harness.stub_update(_config_name(harness, "2"), on_call=stuck)
    with pytest.raises(EndpointDeployError, match="still Updating after \\d+s .endpoint_wait_s."):
        harness.endpoint.deploy(_package("2"), "2", TEXTS)
