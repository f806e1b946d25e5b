"""The aws backend's endpoint: a SageMaker real-time endpoint serving the registered package.

``include/serving/endpoint.py`` chooses :class:`SageMakerEndpoint` on ``REVIEWS_BACKEND=aws``
(the interface is ``endpoint_base.py``). A deploy:

The calls go through the Amazon provider's ``SageMakerHook`` (``create_model``,
``create_endpoint_config``, ``create_endpoint`` / ``update_endpoint``, the describes) on the
Airflow connection; the waits are boto3's waiters, not the hook's sleep loop (whose failure is
a bare ``AirflowException`` without our rollback report).

1. creates the SageMaker model (the Hugging Face inference image, ``ModelDataUrl`` = our
   ``model.tar.gz``, ``code/inference.py`` as the handler) and an endpoint config, both named
   after the version and a hash of what they hold, so a retry reuses them;
2. creates the endpoint, or updates it to the new endpoint config (SageMaker's blue/green
   update: requests in flight finish on the old fleet);
3. waits (boto3's ``endpoint_in_service`` waiter) until it is ``InService`` *with the new
   config* (an update that fails is rolled back by SageMaker: the endpoint returns to
   ``InService`` on the old config with a ``FailureReason``, which the task reports);
4. smoke-tests it through ``sagemaker-runtime`` ``InvokeEndpoint`` with the lab's JSON Lines
   request; when that fails after an update, the endpoint is updated back to the previous
   endpoint config and the task fails with the reason.

So on any failure the previous endpoint config keeps serving and :class:`EndpointDeployError`
names the reason.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from functools import cached_property

from include.common.aws import AwsConfig
from include.model.registry_sagemaker import inference_image_uri, is_not_found, serving_environment
from include.serving.endpoint_base import (
    Endpoint,
    EndpointDeployError,
    EndpointNotRunningError,
    EndpointRequestError,
    check_deploy,
)
from include.serving.protocol import JSONLINES

logger = logging.getLogger(__name__)

VARIANT = "AllTraffic"
VERSION_TAG = "model-version"  # tag on the model and config (for people browsing the console)
SETTLED = ("InService", "Failed", "OutOfService")
POLL_S = 30.0  # the waiters' DescribeEndpoint interval (boto3's own default for these waiters)


def _name(*parts: str, limit: int = 63) -> str:
    # SageMaker names: [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}
    text = "-".join(parts)
    clean = "".join(c if c.isalnum() else "-" for c in text).strip("-")
    while "--" in clean:
        clean = clean.replace("--", "-")
    return clean[:limit].rstrip("-")


class SageMakerEndpoint(Endpoint):
    """One SageMaker endpoint (``AwsConfig.endpoint_name``): deploy, status, stop, predict."""

    def __init__(self, cfg: AwsConfig, sm=None, runtime=None, poll_s: float = POLL_S) -> None:
        self.cfg = cfg
        self.name = cfg.endpoint_name
        self._sm, self._runtime = sm, runtime
        self.poll_s = poll_s

    @cached_property
    def sm(self):
        """The SageMaker control-plane client."""
        return self._sm or self.cfg.client("sagemaker")

    @cached_property
    def hook(self):
        """The Amazon provider's ``SageMakerHook`` on the Airflow connection, calling through ``sm``
        (the factory's client on the same connection, or a test's stubbed one)."""
        from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

        hook = SageMakerHook(aws_conn_id=self.cfg.aws_conn_id or None, region_name=self.cfg.region)
        hook.__dict__["conn"] = self.sm  # its cached client: one client, one identity
        return hook

    @cached_property
    def runtime(self):
        """The ``sagemaker-runtime`` client (InvokeEndpoint)."""
        return self._runtime or self.cfg.client("sagemaker-runtime")

    # ------------------------------------------------------------ reads
    def describe(self) -> dict | None:
        """DescribeEndpoint, or None when the endpoint does not exist."""
        try:
            return self.hook.describe_endpoint(self.name)
        except Exception as exc:  # noqa: BLE001 - only "does not exist" is handled
            if is_not_found(exc):
                return None
            raise

    def config_version(self, config_name: str) -> str | None:
        """The model version an endpoint config serves (its model's ``MODEL_VERSION``)."""
        try:
            variants = self.hook.describe_endpoint_config(config_name)["ProductionVariants"]
            model = self.hook.describe_model(variants[0]["ModelName"])
        except Exception as exc:  # noqa: BLE001 - a config or model deleted by hand: version unknown
            if is_not_found(exc):
                return None
            raise
        return (model.get("PrimaryContainer") or {}).get("Environment", {}).get("MODEL_VERSION")

    @property
    def url(self) -> str:
        """The endpoint's invocation URL."""
        return f"https://runtime.sagemaker.{self.cfg.region}.amazonaws.com/endpoints/{self.name}/invocations"

    # ------------------------------------------------------------ resources
    def config_name(self, package_uri: str, version: str, precision: str = "fp32") -> str:
        """The model and endpoint config name of a deploy: the version plus a hash of what they
        hold (package, precision, image, instances), so a retry reuses them and a change makes new ones."""
        digest = hashlib.sha256(json.dumps([package_uri, precision, inference_image_uri(self.cfg),
                                            self.cfg.endpoint_instance_type, self.cfg.endpoint_instance_count])
                                .encode()).hexdigest()[:10]
        return _name(self.name, f"v{version}", digest)

    def _package_exists(self, package_uri: str) -> None:
        from include.common.aws import split_s3_uri

        bucket, key = split_s3_uri(package_uri)
        try:
            self.cfg.client("s3").head_object(Bucket=bucket, Key=key)
        except Exception as exc:  # noqa: BLE001 - any failure means SageMaker could not read it either
            raise EndpointDeployError(f"{package_uri}: the model package is not readable on S3 ({exc})") from None

    def _ensure_model(self, name: str, package_uri: str, version: str, precision: str) -> None:
        try:
            self.hook.describe_model(name)
            return  # same name = same package, image and settings (the name hashes them)
        except Exception as exc:  # noqa: BLE001
            if not is_not_found(exc):
                raise
        env = {**serving_environment(version), "INFERENCE_PRECISION": precision}
        request = {"ModelName": name, "ExecutionRoleArn": self.cfg.role_arn,
                   "PrimaryContainer": {"Image": inference_image_uri(self.cfg), "ModelDataUrl": package_uri,
                                        "Environment": env},
                   "Tags": [{"Key": VERSION_TAG, "Value": version}]}
        if self.cfg.vpc_config():
            request["VpcConfig"] = self.cfg.vpc_config()
        self.hook.create_model(request)

    def _ensure_config(self, name: str, model_name: str, version: str) -> None:
        try:
            self.hook.describe_endpoint_config(name)
            return
        except Exception as exc:  # noqa: BLE001
            if not is_not_found(exc):
                raise
        request = {"EndpointConfigName": name,
                   "ProductionVariants": [{"VariantName": VARIANT, "ModelName": model_name,
                                           "InstanceType": self.cfg.endpoint_instance_type,
                                           "InitialInstanceCount": self.cfg.endpoint_instance_count,
                                           "InitialVariantWeight": 1.0}],
                   "Tags": [{"Key": VERSION_TAG, "Value": version}]}
        if self.cfg.kms_key_id:
            request["KmsKeyId"] = self.cfg.kms_key_id
        self.hook.create_endpoint_config(request)

    def _waiter_config(self, timeout_s: float) -> dict:
        return {"Delay": self.poll_s, "MaxAttempts": max(1, math.ceil(timeout_s / self.poll_s))}

    def wait(self, timeout_s: float) -> dict:
        """Wait with boto3's ``endpoint_in_service`` waiter until the endpoint settles (InService,
        or Failed / OutOfService, which the caller reports with the ``FailureReason``)."""
        from botocore.exceptions import WaiterError

        started = time.monotonic()
        logger.info("endpoint %s: waiting up to %.0fs for InService (DescribeEndpoint every %gs)", self.name,
                    timeout_s, self.poll_s)
        try:
            self.sm.get_waiter("endpoint_in_service").wait(EndpointName=self.name,
                                                            WaiterConfig=self._waiter_config(timeout_s))
        except WaiterError:
            pass  # Failed, gone or out of time: told apart below
        desc = self.describe()
        if desc is None:
            raise EndpointDeployError(f"endpoint {self.name} disappeared while waiting for it")
        if desc["EndpointStatus"] not in SETTLED:
            raise EndpointDeployError(f"endpoint {self.name} still {desc['EndpointStatus']} after "
                                      f"{time.monotonic() - started:.0f}s (endpoint_wait_s); it keeps going in "
                                      "SageMaker - look at it in the console and re-run the task")
        return desc

    # ------------------------------------------------------------ smoke test
    def invoke(self, texts: list[str], content_type: str = JSONLINES) -> list[dict]:
        """Classify ``texts`` through InvokeEndpoint (JSON Lines in and out by default)."""
        if content_type == JSONLINES:
            body = "\n".join(json.dumps({"features": [t]}) for t in texts).encode()
        else:
            body = json.dumps(list(texts)).encode()
        resp = self.runtime.invoke_endpoint(EndpointName=self.name, ContentType=content_type, Accept=content_type,
                                            Body=body)
        text = resp["Body"].read().decode()
        if content_type == JSONLINES:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return json.loads(text)

    def smoke(self, version: str, texts: list[str]) -> list[dict]:
        """InvokeEndpoint with the lab's JSON Lines request; every review must get a label."""
        try:
            answers = self.invoke(texts)
        except Exception as exc:  # noqa: BLE001 - any failure of the call is a failed smoke test
            raise EndpointDeployError(f"smoke test of version {version} on endpoint {self.name}: "
                           f"{type(exc).__name__}: {exc}") from exc
        if len(answers) != len(texts):
            raise EndpointDeployError(f"smoke test of version {version}: {len(texts)} reviews sent, {len(answers)} answers")
        bad = [a for a in answers if not isinstance(a, dict) or a.get("predicted_label") not in (-1, 0, 1)]
        if bad:
            raise EndpointDeployError(f"smoke test of version {version}: answers without a label in -1/0/1: {bad[:2]}")
        return [{"text": t, **a} for t, a in zip(texts, answers)]

    # ------------------------------------------------------------ deploy
    def deploy(self, package_uri: str, version: str, smoke_texts: list[str] | tuple[str, ...],
               port: int | None = None, timeout_s: float | None = None, precision: str = "fp32") -> dict:
        """Serve ``version`` from ``package_uri``; see the module docstring. Returns what
        :meth:`Endpoint.deploy` returns (``url``, ``version``, ``mode``, ``smoke``, ...) plus
        ``endpoint_name`` and ``endpoint_config``. ``port`` and ``timeout_s`` are the local
        server's: SageMaker owns the URL, and the wait is the aws config's ``endpoint_wait_s``."""
        smoke_texts = check_deploy(version, smoke_texts, precision)
        timeout_s = float(self.cfg.endpoint_wait_s)
        started = time.monotonic()
        self._package_exists(package_uri)
        model_name = config_name = self.config_name(package_uri, version, precision)
        current = self.describe()
        if current is not None and current["EndpointStatus"] not in SETTLED:
            logger.info("endpoint %s is %s: waiting for it before deploying", self.name, current["EndpointStatus"])
            current = self.wait(timeout_s)
        previous_config = current["EndpointConfigName"] if current else None
        previous_version = self.config_version(previous_config) if previous_config else None
        result = {"url": self.url, "port": None, "pid": None, "endpoint_name": self.name, "version": version,
                  "precision": precision, "previous_version": previous_version, "endpoint_config": config_name,
                  "previous_endpoint_config": previous_config}
        if current is not None and previous_config == config_name and current["EndpointStatus"] == "InService":
            smoke = self.smoke(version, smoke_texts)
            return {**result, "mode": "unchanged", "smoke": smoke, "seconds": round(time.monotonic() - started, 2)}
        self._ensure_model(model_name, package_uri, version, precision)
        self._ensure_config(config_name, model_name, version)
        if current is None:
            mode = "created"
            self.hook.create_endpoint({"EndpointName": self.name, "EndpointConfigName": config_name,
                                       "Tags": [{"Key": "project", "Value": "review-sentiment"}]},
                                      wait_for_completion=False)  # waited below, with boto3's waiter
        elif current["EndpointStatus"] != "InService":
            raise EndpointDeployError(f"endpoint {self.name} is {current['EndpointStatus']} "
                               f"({current.get('FailureReason') or 'no reason given'}); it cannot be updated - "
                               "delete it (make stop) and deploy again")
        else:
            mode = "updated"
            self.hook.update_endpoint({"EndpointName": self.name, "EndpointConfigName": config_name},
                                      wait_for_completion=False)
        logger.info("endpoint %s: %s with %s (version %s), waiting for InService", self.name, mode, config_name,
                    version)
        desc = self.wait(timeout_s)
        if desc["EndpointStatus"] != "InService" or desc["EndpointConfigName"] != config_name:
            reason = desc.get("FailureReason") or f"status {desc['EndpointStatus']}"
            kept = (f"endpoint config {desc['EndpointConfigName']} (version {previous_version}) still serves"
                    if mode == "updated" else "the endpoint does not serve")
            raise EndpointDeployError(f"deploying version {version} to endpoint {self.name} failed: {reason}; {kept}")
        try:
            smoke = self.smoke(version, smoke_texts)
        except EndpointDeployError as exc:
            if mode == "created":
                raise EndpointDeployError(f"{exc}; the new endpoint {self.name} serves nothing usable - fix the package "
                                   "and deploy again (make stop deletes it)") from exc
            self._roll_back(previous_config, previous_version, timeout_s, exc)
        return {**result, "mode": mode, "smoke": smoke, "seconds": round(time.monotonic() - started, 2)}

    def _roll_back(self, previous_config: str, previous_version: str | None, timeout_s: float,
                   cause: Exception) -> None:
        logger.warning("smoke test failed (%s): updating endpoint %s back to %s", cause, self.name, previous_config)
        try:
            self.hook.update_endpoint({"EndpointName": self.name, "EndpointConfigName": previous_config},
                                      wait_for_completion=False)
            desc = self.wait(timeout_s)
        except Exception as exc:  # noqa: BLE001 - report both failures
            raise EndpointDeployError(f"{cause}; rolling back to endpoint config {previous_config} ALSO failed ({exc})") \
                from cause
        if desc["EndpointConfigName"] != previous_config or desc["EndpointStatus"] != "InService":
            raise EndpointDeployError(f"{cause}; rolling back to {previous_config} did not take: the endpoint is "
                               f"{desc['EndpointStatus']} on {desc['EndpointConfigName']}") from cause
        raise EndpointDeployError(f"{cause}; rolled back, endpoint config {previous_config} (version {previous_version}) "
                           "serves again") from cause

    # ------------------------------------------------------------ status / stop / predict
    def status(self) -> dict | None:
        """What the endpoint serves, or None when there is none."""
        desc = self.describe()
        if desc is None:
            return None
        config = desc.get("EndpointConfigName", "")
        return {"url": self.url, "endpoint_name": self.name, "status": desc["EndpointStatus"],
                "healthy": desc["EndpointStatus"] == "InService", "endpoint_config": config,
                "version": self.config_version(config) if config else None, "serving_version": None,
                "failure_reason": desc.get("FailureReason"), "port": None, "pid": None}

    def stop(self) -> bool:
        """Delete the endpoint and wait (boto3's ``endpoint_deleted`` waiter) until it is gone; its
        configs and models stay, for a later redeploy. True if one existed."""
        if self.describe() is None:
            return False
        self.sm.delete_endpoint(EndpointName=self.name)  # SageMakerHook has no delete_endpoint
        self.sm.get_waiter("endpoint_deleted").wait(EndpointName=self.name,
                                                    WaiterConfig=self._waiter_config(self.cfg.endpoint_wait_s))
        return True

    def predict(self, texts: list[str], timeout_s: float = 60) -> list[dict]:
        """Classify ``texts`` through InvokeEndpoint (JSON); one answer dict per text."""
        if self.describe() is None:
            raise EndpointNotRunningError(f"SageMaker endpoint {self.name} does not exist; deploy a model first")
        try:
            return self.invoke(list(texts), "application/json")
        except Exception as exc:  # noqa: BLE001 - botocore's errors carry the container's message
            status_code = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            raise EndpointRequestError(status_code, f"{self.name}: {exc}") from exc
