"""The KMS key of the aws config encrypts what the project writes: puts, copies, Athena results."""
from __future__ import annotations

import boto3
import pandas as pd

from include.common import aws
from include.common.aws import load_aws_config
from tests.aws.conftest import BUCKET, REGION


def _key_id() -> str:
    return boto3.client("kms", region_name=REGION).create_key(Description="review-sentiment")["KeyMetadata"]["KeyId"]


def test_a_copied_object_keeps_sse_kms_when_a_key_is_configured(aws_account):
    from dataclasses import replace

    key_id = _key_id()
    cfg = replace(load_aws_config(), kms_key_id=key_id)
    s3 = boto3.client("s3", region_name=REGION)
    s3.put_object(Bucket=BUCKET, Key="rs/plain.bin", Body=b"x")  # written unencrypted (by hand, say)
    aws.copy_object(cfg, f"s3://{BUCKET}/rs/plain.bin", f"s3://{BUCKET}/rs/copy.bin")
    head = s3.head_object(Bucket=BUCKET, Key="rs/copy.bin")
    assert head["ServerSideEncryption"] == "aws:kms" and key_id in head["SSEKMSKeyId"]
    aws.write_bytes(cfg, f"s3://{BUCKET}/rs/put.bin", b"y")
    assert key_id in s3.head_object(Bucket=BUCKET, Key="rs/put.bin")["SSEKMSKeyId"]
    aws.copy_object(load_aws_config(), f"s3://{BUCKET}/rs/plain.bin", f"s3://{BUCKET}/rs/copy2.bin")  # no key
    assert "SSEKMSKeyId" not in s3.head_object(Bucket=BUCKET, Key="rs/copy2.bin")


def test_athena_results_are_encrypted_with_the_configured_key(aws_account, reviews_home, monkeypatch):
    from dataclasses import replace

    import awswrangler as wr

    from include.common.config import get_settings
    from include.data.catalog_glue import GlueCatalog

    seen = {}

    def read_sql_query(sql, **kwargs):
        seen.update(kwargs)
        return pd.DataFrame({"n": [1]})

    monkeypatch.setattr(wr.athena, "read_sql_query", read_sql_query)
    cfg = replace(load_aws_config(), kms_key_id="arn:aws:kms:us-east-1:123456789012:key/abc")
    GlueCatalog(get_settings(), cfg).query("SELECT 1 AS n", {})
    assert (seen["encryption"], seen["kms_key"]) == ("SSE_KMS", cfg.kms_key_id)
    assert seen["s3_output"] == cfg.athena_output and seen["boto3_session"] is not None
    seen.clear()
    GlueCatalog(get_settings(), load_aws_config()).query("SELECT 1 AS n", {})
    assert "encryption" not in seen
