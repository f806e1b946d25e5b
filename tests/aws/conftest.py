"""moto's server on 127.0.0.1 for the aws backend's tests: never the network.

The server (not in-process ``mock_aws``) because the provider's deferrable triggers use
aiobotocore, which ``mock_aws`` does not patch; boto3, awswrangler, the provider's hooks and
aiobotocore all honour ``AWS_ENDPOINT_URL``. One server per test session, its state reset
before each test.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.conftest import _free_port

REGION = "us-east-1"
BUCKET = "review-sentiment-test"
ROLE_NAME = "review-sentiment-sagemaker"
ROLE_ARN = f"arn:aws:iam::123456789012:role/{ROLE_NAME}"
DEPLOYMENT = "moto-test"  # the aws config's deployment_id: hashed into the job names, tagged on the jobs
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_SECURITY_TOKEN": "testing", "AWS_SESSION_TOKEN": "testing"}


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server on a free loopback port; yields its URL."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(moto_server, monkeypatch) -> str:
    """Fake credentials, the region and ``AWS_ENDPOINT_URL`` -> moto, with moto's state reset; the
    Airflow connection ``aws_default`` (what the project's clients and the provider's operators
    use) points at moto too."""
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"), timeout=10)
    connection = json.dumps({"conn_type": "aws", "extra": {"endpoint_url": moto_server, "region_name": REGION}})
    for key, value in {**FAKE_CREDENTIALS, "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": moto_server,
                       "AIRFLOW_CONN_AWS_DEFAULT": connection}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    return moto_server


@pytest.fixture
def aws_account(aws_env, tmp_path, monkeypatch) -> Path:
    """A moto account with the project's bucket and SageMaker role, and a config file naming
    them; ``REVIEWS_BACKEND=aws`` and ``REVIEWS_AWS_CONF`` point at it. Yields the file."""
    import boto3

    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
    boto3.client("iam", region_name=REGION).create_role(
        RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                    "Principal": {"Service": "sagemaker.amazonaws.com"}}]}))
    conf = tmp_path / "aws.json"
    conf.write_text(json.dumps({"region": REGION, "bucket": BUCKET, "role_arn": ROLE_ARN, "prefix": "rs",
                                "job_check_interval_s": 1, "deployment_id": DEPLOYMENT}))
    monkeypatch.setenv("REVIEWS_AWS_CONF", str(conf))
    monkeypatch.setenv("REVIEWS_BACKEND", "aws")
    return conf


@pytest.fixture
def sagemaker(aws_account, tmp_path, monkeypatch):
    """The harness that plays SageMaker behind moto (tests/aws/sagemaker_harness.py)."""
    from tests.aws.sagemaker_harness import SageMakerHarness

    harness = SageMakerHarness(tmp_path / "sagemaker").install(monkeypatch)
    harness.work_dir.mkdir(parents=True, exist_ok=True)
    yield harness
    for event in harness.held.values():
        event.set()
    harness.wait_idle(120)
