"""The account as code: aws/cloudformation.yaml and aws/iam/*.json (include/common/iam.py).

cfn-lint on the template; the template created in moto (in-process ``mock_aws``: no server,
no network); the policy blocks in the template are the policy files; and the small policy
evaluator refuses what the policies do not grant.
"""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml

from include.common import iam
from include.common.aws import config_from_dict
from tools import aws_bootstrap

ACCOUNT = "123456789012"
CFG = config_from_dict({"region": "us-east-1", "bucket": "acme-reviews", "prefix": "rs",
                        "role_arn": f"arn:aws:iam::{ACCOUNT}:role/review-sentiment-sagemaker"})


def test_the_template_passes_cfn_lint():
    from cfnlint.api import ManualArgs, lint

    # cfn-lint's defaults (errors and warnings), in the regions the example config and moto use
    matches = lint(aws_bootstrap.TEMPLATE.read_text(encoding="utf-8"),
                   config=ManualArgs(regions=["us-east-1", "eu-west-1"]))
    assert not matches, "\n".join(str(m) for m in matches)


def test_the_templates_policies_are_the_policy_files():
    text = aws_bootstrap.TEMPLATE.read_text(encoding="utf-8")
    assert aws_bootstrap.render(text) == text, "run: python tools/aws_bootstrap.py render"
    for name in iam.POLICY_NAMES:
        assert f"# BEGIN aws/iam/{name}.json" in text, name


def test_no_policy_grants_deletes_by_wildcard_or_passes_roles_if_exists():
    for name in iam.POLICY_NAMES:
        text = iam.policy_text(name)
        for st in iam.load_policy(name)["Statement"]:
            for action in iam._as_list(st["Action"]):
                assert "*" not in action, f"{name}.json {st['Sid']}: wildcard action {action}"
            if "iam:PassRole" in iam._as_list(st["Action"]):
                assert st["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
        assert "IfExists" not in text, name


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (``!Sub x`` -> ``{"Sub": x}``)."""


_CfnLoader.add_multi_constructor("!", lambda loader, tag, node: {tag: loader.construct_scalar(node) if isinstance(
    node, yaml.ScalarNode) else loader.construct_sequence(node)})


@pytest.fixture
def moto_cfn(monkeypatch):
    from moto import mock_aws

    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        yield


def test_the_template_creates_the_bucket_roles_and_key_in_moto(moto_cfn):
    import boto3

    cfn = boto3.client("cloudformation", region_name="us-east-1")
    body = aws_bootstrap.render(aws_bootstrap.TEMPLATE.read_text(encoding="utf-8"))
    cfn.create_stack(StackName="rs", TemplateBody=body, Capabilities=["CAPABILITY_NAMED_IAM"],
                     Parameters=[{"ParameterKey": "BucketName", "ParameterValue": "acme-reviews"}])
    stack = cfn.describe_stacks(StackName="rs")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    s3 = boto3.client("s3", region_name="us-east-1")
    enc = s3.get_bucket_encryption(Bucket="acme-reviews")["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert enc["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert enc["ApplyServerSideEncryptionByDefault"]["KMSMasterKeyID"] == outputs["KmsKeyId"]
    iam_client = boto3.client("iam", region_name="us-east-1")
    assert outputs["RoleArn"].endswith(":role/review-sentiment-sagemaker")
    attached = {p["PolicyName"] for p in iam_client.list_attached_role_policies(
        RoleName="review-sentiment-sagemaker")["AttachedPolicies"]}
    assert attached == {"review-sentiment-sagemaker-execution", "review-sentiment-feature-store"}
    worker = iam_client.list_attached_role_policies(RoleName="review-sentiment-airflow-worker")["AttachedPolicies"]
    version = iam_client.get_policy(PolicyArn=worker[0]["PolicyArn"])["Policy"]["DefaultVersionId"]
    doc = iam_client.get_policy_version(PolicyArn=worker[0]["PolicyArn"], VersionId=version)["PolicyVersion"]["Document"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    assert json.dumps(doc).count("arn:aws:s3:::acme-reviews/review-sentiment/*") >= 1, "Fn::Sub filled the bucket"
    assert boto3.client("ecr", region_name="us-east-1").describe_repositories(
        repositoryNames=["review-sentiment"])["repositories"]
    # moto 5.2's CloudFormation does not create AWS::Glue::Database, AWS::Athena::WorkGroup or
    # AWS::SageMaker::ModelPackageGroup (it skips them with a warning) nor apply a bucket's
    # LifecycleConfiguration: those are checked in the template instead
    resources = yaml.load(body, Loader=_CfnLoader)["Resources"]
    rules = resources["Bucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    assert [r for r in rules if r.get("Prefix") == {"Sub": "${Prefix}/athena-results/"} and r["ExpirationInDays"]]
    workgroup = resources["WorkGroup"]["Properties"]["WorkGroupConfiguration"]
    assert workgroup["EnforceWorkGroupConfiguration"] is True
    assert workgroup["ResultConfiguration"]["EncryptionConfiguration"]["EncryptionOption"] == "SSE_KMS"
    assert resources["Database"]["Type"] == "AWS::Glue::Database"
    assert resources["ModelPackageGroupResource"]["Type"] == "AWS::SageMaker::ModelPackageGroup"


# ------------------------------------------------------------------ the evaluator


def _denied(service, op, params):
    return iam.denied([(service, op, params)], CFG)


def test_the_worker_may_write_below_the_prefix_only():
    assert _denied("s3", "PutObject", {"Bucket": "acme-reviews", "Key": "rs/runs/x.json"}) == []
    assert _denied("s3", "PutObject", {"Bucket": "acme-reviews", "Key": "other/x.json"})
    assert _denied("s3", "PutObject", {"Bucket": "another-bucket", "Key": "rs/x.json"})


def test_non_one_to_one_operations_map_to_their_iam_action():
    assert iam.action("s3", "ListObjectsV2") == "s3:ListBucket"
    assert iam.action("s3", "HeadObject") == "s3:GetObject"
    assert iam.action("sagemaker-featurestore-runtime", "PutRecord") == "sagemaker:PutRecord"
    assert iam.action("sagemaker", "CreateAutoMLJobV2") == "sagemaker:CreateAutoMLJobV2"
    copy = iam.needs("s3", "CopyObject", {"Bucket": "b", "Key": "rs/new", "CopySource": {"Bucket": "b", "Key": "rs/old"}},
                     CFG)
    assert {(n.action, n.resource) for n in copy} == {("s3:PutObject", "arn:aws:s3:::b/rs/new"),
                                                      ("s3:GetObject", "arn:aws:s3:::b/rs/old")}


def test_kms_encrypted_copies_and_athena_results_need_the_data_key_which_the_worker_has():
    key = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    cfg = replace(CFG, kms_key_id=key)
    copy = {"Bucket": "acme-reviews", "Key": "rs/reviews/new", "CopySource": {"Bucket": "acme-reviews", "Key": "rs/old"},
            "ServerSideEncryption": "aws:kms", "SSEKMSKeyId": key}
    assert iam.Need("kms:GenerateDataKey", key) in iam.needs("s3", "CopyObject", copy, cfg)
    query = {"QueryString": "SELECT 1", "WorkGroup": "primary", "ResultConfiguration": {
        "OutputLocation": "s3://acme-reviews/rs/athena-results/",
        "EncryptionConfiguration": {"EncryptionOption": "SSE_KMS", "KmsKey": key}}}
    assert {n.action for n in iam.needs("athena", "StartQueryExecution", query, cfg)} >= {
        "kms:GenerateDataKey", "kms:Decrypt"}
    assert iam.denied([("s3", "CopyObject", copy), ("athena", "StartQueryExecution", query)], cfg) == []


def test_deletes_of_registry_and_tables_are_refused():
    assert _denied("sagemaker", "DeleteModelPackage", {"ModelPackageName": "review-sentiment/1"})
    assert _denied("glue", "DeleteTable", {"DatabaseName": "review_sentiment", "Name": "reviews_raw"})


def test_created_with_tags_needs_add_tags_and_the_role_is_passed_to_sagemaker_only():
    params = {"ModelName": "review-sentiment-v1-abc", "ExecutionRoleArn": CFG.role_arn,
              "Tags": [{"Key": "version", "Value": "1"}], "PrimaryContainer": {"Image": "x"}}
    needs = {n.action for n in iam.needs("sagemaker", "CreateModel", params, CFG)}
    assert needs == {"sagemaker:CreateModel", "sagemaker:AddTags", "iam:PassRole"}
    assert _denied("sagemaker", "CreateModel", params) == []
    other = iam.Need("iam:PassRole", CFG.role_arn, {"iam:PassedToService": "ec2.amazonaws.com"})
    assert not iam.evaluate(iam.policies(CFG, iam.WORKER), other)


def test_an_unknown_operation_is_refused_with_its_action_named():
    found = _denied("sagemaker", "CreateNotebookInstance", {"NotebookInstanceName": "nb"})
    assert found and "sagemaker:CreateNotebookInstance" in found[0]


def test_every_operation_of_a_run_maps_to_an_action_the_worker_policy_names():
    granted = set(iam.granted_actions(iam.WORKER))
    assert set(iam.run_actions()) - granted == set()
