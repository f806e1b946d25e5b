"""The aws config: offline validation names every problem; the account check runs against moto."""
from __future__ import annotations

import json

import pytest

from include.common import aws
from tests.aws.conftest import BUCKET, REGION, ROLE_ARN

GOOD = {"region": REGION, "bucket": BUCKET, "role_arn": ROLE_ARN}


def test_a_good_config_validates_and_addresses_its_prefix():
    cfg = aws.config_from_dict({**GOOD, "prefix": "team/rs"}).validate()
    assert cfg.s3_uri("reviews/ds=2024-01-01/") == f"s3://{BUCKET}/team/rs/reviews/ds=2024-01-01/"
    assert cfg.athena_output == f"s3://{BUCKET}/team/rs/athena-results/"
    assert cfg.account_id == "123456789012"
    assert cfg.step("train").instance_type == aws.DEFAULT_STEPS["train"].instance_type


def test_every_offline_problem_is_named_at_once():
    bad = {"region": "us-est-1", "bucket": "Bad_Bucket", "role_arn": "arn:aws:iam::12:role/x",
           "steps": {"train": {"instance_type": "ml.g5.xlarg"}, "preprocess": {"instance_count": 0}},
           "endpoint_instance_type": "ml.m5.large.x", "security_group_ids": ["sg-1"]}
    with pytest.raises(aws.AwsConfigError) as err:
        aws.config_from_dict(bad).validate()
    msg = str(err.value)
    assert "region 'us-est-1' is not a region SageMaker runs in (did you mean" in msg
    assert "bucket 'Bad_Bucket' is not a valid S3 bucket name" in msg
    assert "role_arn 'arn:aws:iam::12:role/x' is not an IAM role ARN" in msg
    assert "steps.train.instance_type 'ml.g5.xlarg'" in msg and "did you mean 'ml.g5.xlarge'" in msg
    assert "steps.preprocess.instance_count must be >= 1" in msg
    assert "endpoint_instance_type 'ml.m5.large.x'" in msg
    assert "security_group_ids are set but subnets are not" in msg


def test_missing_settings_and_unknown_keys_are_errors(monkeypatch):
    for key in ("REVIEWS_AWS_REGION", "REVIEWS_AWS_BUCKET", "REVIEWS_AWS_ROLE_ARN", "AWS_DEFAULT_REGION", "AWS_REGION",
                "REVIEWS_AWS_CONF"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(aws.AwsConfigError, match="region is not set.*\n.*bucket is not set.*\n.*role_arn is not set"):
        aws.load_aws_config().validate()
    with pytest.raises(aws.AwsConfigError, match=r"unknown setting\(s\) 'buckett' \(did you mean 'bucket'\?\)"):
        aws.config_from_dict({**GOOD, "buckett": "x"})


def test_file_then_environment_overrides(tmp_path, monkeypatch):
    conf = tmp_path / "aws.yaml"
    conf.write_text(f"region: {REGION}\nbucket: from-file\nrole_arn: {ROLE_ARN}\nsteps:\n  train:\n"
                    "    instance_type: ml.m5.xlarge\n    max_runtime_s: 7200\nsubnets: [subnet-1]\n")
    monkeypatch.setenv("REVIEWS_AWS_BUCKET", "from-env")
    cfg = aws.load_aws_config(conf).validate()
    assert cfg.bucket == "from-env" and cfg.subnets == ("subnet-1",)
    assert cfg.step("train") == aws.StepResources("ml.m5.xlarge", max_runtime_s=7200)
    assert cfg.vpc_config() == {"Subnets": ["subnet-1"], "SecurityGroupIds": []}
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(aws.AwsConfigError, match="broken.json: cannot be parsed"):
        aws.load_aws_config(tmp_path / "broken.json")
    with pytest.raises(aws.AwsConfigError, match="does not exist"):
        aws.load_aws_config(tmp_path / "absent.json")


def test_preflight_against_moto_finds_a_missing_bucket_and_role(aws_account):
    cfg = aws.load_aws_config()
    assert aws.preflight(cfg) is cfg
    with pytest.raises(aws.AwsConfigError) as err:
        aws.preflight(aws.config_from_dict({**GOOD, "bucket": "no-such-bucket",
                                            "role_arn": "arn:aws:iam::123456789012:role/absent",
                                            "endpoint_url": cfg.endpoint_url}))
    assert "bucket 'no-such-bucket' does not exist" in str(err.value)
    assert "role 'arn:aws:iam::123456789012:role/absent' does not exist" in str(err.value)


def test_s3_objects_roundtrip_and_upload_replaces(aws_account, tmp_path):
    cfg = aws.load_aws_config()
    uri = cfg.s3_uri("x/report.json")
    aws.write_bytes(cfg, uri, json.dumps({"a": 1}).encode(), "application/json")
    assert json.loads(aws.read_bytes(cfg, uri)) == {"a": 1}
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    aws.upload_dir(cfg, src, cfg.s3_uri("dir"))
    (src / "a.txt").unlink()
    aws.upload_dir(cfg, src, cfg.s3_uri("dir"))
    assert aws.list_keys(cfg, cfg.s3_uri("dir/")) == ["rs/dir/sub/b.txt"]
    got = aws.download_prefix(cfg, cfg.s3_uri("dir/"), tmp_path / "out")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in got] == ["sub/b.txt"]


def test_settings_and_io_address_s3_on_the_aws_backend(aws_account, tmp_path):
    from include.common import io
    from include.common.config import get_settings

    settings = get_settings()
    assert settings.uri("landing/reviews") == f"s3://{BUCKET}/rs/landing/reviews"
    assert settings.run_uri("dag", "manual__2024-01-01T00:00:00+00:00", "train") == \
        f"s3://{BUCKET}/rs/runs/dag/manual__2024-01-01T00_00_00_00_00/train"
    uri = settings.uri("x/doc.json")
    io.write_bytes(uri, b'{"ok": true}')
    assert io.read_json(uri) == {"ok": True}
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_text("f")
    assert io.publish_dir(tmp_path / "d", settings.uri("pub/")) == settings.uri("pub")
    assert io.read_bytes(settings.uri("pub/f.txt")) == b"f"
    local = tmp_path / "local.json"
    io.write_bytes(local.as_uri(), b"[1]")
    assert io.read_json(str(local)) == [1]
