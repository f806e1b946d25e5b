"""One identity: every AWS call of the project runs as the Airflow connection ``aws_conn_id``.

The provider's operators take ``aws_conn_id``; the project's own clients come from one factory,
:meth:`include.common.aws.AwsConfig.client` (the provider's ``AwsBaseHook`` on that connection),
and awswrangler gets the connection's session.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import boto3

from include.common.aws import AwsConfig, load_aws_config
from tests.aws.conftest import BUCKET, REGION

ROOT = Path(__file__).resolve().parents[2]
FACTORY = ROOT / "include" / "common" / "aws.py"
# Ways to make a client or session that bypass the connection.
BYPASS = re.compile(r"boto3\.(client|resource|Session|session\.Session)\(|\.create_client\(|aiobotocore|"
                    r"get_session\(\)\.client\(")


def _sources() -> list[Path]:
    return [p for d in ("include", "plugins", "dags") for p in sorted((ROOT / d).rglob("*.py"))
            if "scripts" not in p.relative_to(ROOT).parts]  # job scripts run inside SageMaker, on its role


def test_no_code_path_creates_a_boto3_client_outside_the_one_factory():
    offenders = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in _sources() if p != FACTORY
                 for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if BYPASS.search(line)]
    assert offenders == []
    calls = [line for p in _sources() for line in p.read_text(encoding="utf-8").split("wr.")[1:]
             if re.match(r"(athena|s3|catalog)\.\w+\(", line)]
    assert calls and all("boto3_session=" in c.split("\n\n")[0] for c in calls)  # awswrangler: the session


def test_the_factory_takes_endpoint_region_and_credentials_from_the_connection(aws_env, monkeypatch):
    # No AWS_* settings left: only the connection says where and who.
    for key in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_REVIEWS_AWS", json.dumps({
        "conn_type": "aws", "login": "AKIAFROMCONNECTION", "password": "secret-from-connection",
        "extra": {"endpoint_url": aws_env, "region_name": "eu-west-1"}}))
    cfg = AwsConfig(aws_conn_id="reviews_aws", bucket=BUCKET)
    s3 = cfg.client("s3")
    assert (s3.meta.endpoint_url, s3.meta.region_name) == (aws_env, "eu-west-1")
    assert s3._request_signer._credentials.access_key == "AKIAFROMCONNECTION"
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    assert BUCKET in [b["Name"] for b in s3.list_buckets()["Buckets"]]  # it reaches moto through the connection
    session = cfg.session()  # what awswrangler gets
    assert (session.region_name, session.get_credentials().access_key) == ("eu-west-1", "AKIAFROMCONNECTION")
    assert cfg.service_endpoint("athena") == aws_env
    assert AwsConfig(aws_conn_id="reviews_aws", region=REGION).client("sts").meta.region_name == REGION  # config wins


def test_the_provider_operators_and_the_factory_name_the_same_connection(aws_account):
    cfg = load_aws_config()
    assert cfg.aws_conn_id == "aws_default"
    assert cfg.hook("s3").aws_conn_id == "aws_default"
    assert cfg.client("s3").meta.endpoint_url == boto3.client("s3").meta.endpoint_url  # moto, via the connection
