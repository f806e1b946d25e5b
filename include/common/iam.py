"""The IAM side of the aws backend: which action each AWS call needs, and whether the shipped
policies (``aws/iam/*.json``) allow it.

Three policy files are the project's IAM, and ``aws/cloudformation.yaml`` attaches them:

- ``airflow-worker.json``: the identity the Airflow workers' AWS calls run as (the ``aws_conn_id``
  connection, or the machine's role);
- ``sagemaker-execution-role.json``: the role the SageMaker jobs and the endpoint run as
  (``role_arn``), which also passes itself to the jobs Autopilot starts;
- ``feature-store.json``: the same role's rights as Feature Store's offline-store writer (the
  feature group is created with ``RoleArn`` = ``role_arn``): S3, Glue and the KMS key.

The files hold CloudFormation ``Fn::Sub`` variables (``${BucketName}``, ``${AWS::AccountId}``,
``${SageMakerExecutionRole.Arn}``, ...): the template substitutes them on deploy, and
:func:`policy_variables` fills them from an :class:`~include.common.aws.AwsConfig` for the
checks here.

:func:`needs` maps one botocore operation and its parameters to what IAM checks for it - the
action (``ListObjectsV2`` is ``s3:ListBucket``, ``HeadObject`` is ``s3:GetObject``, ...), the
resource ARN(s) and the condition context, plus what a call implies beyond its own action:
``iam:PassRole`` for a request that names a role, ``sagemaker:AddTags`` for a ``Create*``
with ``Tags``, KMS for an encrypted write. :func:`evaluate` is a small policy evaluator (Allow /
Deny statements, ``Action`` and ``Resource`` wildcards, ``StringEquals`` / ``StringLike`` /
``Bool`` conditions, ``...IfExists``): enough for these files, not IAM's whole grammar.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from include.common.errors import ConfigError

JOB_NAME_PREFIX = "rs-"  # every SageMaker job this project starts is named so (include/jobs/requests.job_name)
POLICY_DIR = Path(__file__).resolve().parents[2] / "aws" / "iam"
WORKER = ("airflow-worker",)
EXECUTION_ROLE = ("sagemaker-execution-role", "feature-store")
POLICY_NAMES = WORKER + EXECUTION_ROLE
SAGEMAKER_SERVICE = "sagemaker.amazonaws.com"
_VARIABLE = re.compile(r"\$\{([A-Za-z0-9:.]+)\}")

# botocore service name -> IAM service prefix, where they differ
SERVICE_PREFIX = {"sagemaker-featurestore-runtime": "sagemaker", "sagemaker-runtime": "sagemaker",
                  "sagemaker-a2i-runtime": "sagemaker"}
# the operations whose IAM action is not <prefix>:<OperationName>
ACTIONS: dict[tuple[str, str], str] = {
    ("s3", "ListObjectsV2"): "s3:ListBucket", ("s3", "ListObjects"): "s3:ListBucket",
    ("s3", "HeadBucket"): "s3:ListBucket", ("s3", "HeadObject"): "s3:GetObject",
    ("s3", "CreateMultipartUpload"): "s3:PutObject", ("s3", "UploadPart"): "s3:PutObject",
    ("s3", "CompleteMultipartUpload"): "s3:PutObject", ("s3", "DeleteObjects"): "s3:DeleteObject",
    ("s3", "ListObjectVersions"): "s3:ListBucketVersions", ("s3", "GetObjectAcl"): "s3:GetObjectAcl",
    ("s3", "CopyObject"): "s3:PutObject",  # plus s3:GetObject on the source (needs())
}
# SageMaker parameters that name a resource, and the resource type in its ARN
_SAGEMAKER_NAMES = (("ProcessingJobName", "processing-job"), ("TrainingJobName", "training-job"),
                    ("AutoMLJobName", "automl-job"), ("EndpointConfigName", "endpoint-config"),
                    ("EndpointName", "endpoint"), ("ModelPackageGroupName", "model-package-group"),
                    ("ModelName", "model"), ("FeatureGroupName", "feature-group"))


class PolicyError(ConfigError):
    """A policy file cannot be read or names a variable nobody fills."""


@dataclass(frozen=True)
class Need:
    """What IAM checks for (part of) one call: an action on a resource, in a condition context."""

    action: str
    resource: str = "*"
    context: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        ctx = f" {self.context}" if self.context else ""
        return f"{self.action} on {self.resource}{ctx}"


# --------------------------------------------------------------------- policies


def policy_variables(cfg: Any) -> dict[str, str]:
    """The ``Fn::Sub`` variables of the policy files for configuration ``cfg`` (what the
    CloudFormation template's parameters and resources are, for that account)."""
    region, account = cfg.region, cfg.account_id
    return {"AWS::Region": region, "AWS::AccountId": account, "AWS::Partition": "aws",
            "BucketName": cfg.bucket, "Prefix": cfg.prefix.strip("/"), "GlueDatabase": cfg.glue_database,
            "AthenaWorkGroup": cfg.athena_workgroup, "ModelPackageGroup": cfg.model_package_group,
            "EndpointName": cfg.endpoint_name, "FeatureGroup": cfg.feature_group, "JobNamePrefix": JOB_NAME_PREFIX,
            "ProjectName": cfg.model_package_group, "SageMakerExecutionRole.Arn": cfg.role_arn,
            "DataKey.Arn": cfg.kms_key_id or f"arn:aws:kms:{region}:{account}:key/not-configured"}


@lru_cache(maxsize=None)
def policy_text(name: str) -> str:
    """The raw text of ``aws/iam/<name>.json``."""
    path = POLICY_DIR / f"{name}.json"
    if not path.is_file():
        raise PolicyError(f"no policy file {path} (known: {', '.join(POLICY_NAMES)})")
    return path.read_text(encoding="utf-8")


def load_policy(name: str, variables: dict[str, str] | None = None) -> dict:
    """``aws/iam/<name>.json`` as a policy document, its variables filled from ``variables``
    (None: left as they are, as the CloudFormation template takes them)."""
    text = policy_text(name)
    if variables is not None:
        def fill(m: re.Match) -> str:
            if m.group(1) not in variables:
                raise PolicyError(f"aws/iam/{name}.json: variable ${{{m.group(1)}}} has no value "
                                  f"(known: {', '.join(sorted(variables))})")
            return variables[m.group(1)]
        text = _VARIABLE.sub(fill, text)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise PolicyError(f"aws/iam/{name}.json is not JSON: {exc}") from None


def policies(cfg: Any, names: Iterable[str]) -> list[dict]:
    """The documents ``names`` for ``cfg``."""
    variables = policy_variables(cfg)
    return [load_policy(n, variables) for n in names]


def granted_actions(names: Iterable[str] = POLICY_NAMES) -> list[str]:
    """Every action the policy files ``names`` allow (as written: wildcards stay wildcards)."""
    out: set[str] = set()
    for name in names:
        for st in _statements(load_policy(name)):
            if st.get("Effect") == "Allow":
                out.update(_as_list(st.get("Action")))
    return sorted(out)


# --------------------------------------------------------------------- calls -> needs


def action(service: str, operation: str) -> str:
    """The IAM action of botocore operation ``service.operation``."""
    return ACTIONS.get((service, operation), f"{SERVICE_PREFIX.get(service, service)}:{operation}")


def needs(service: str, operation: str, params: dict, cfg: Any) -> list[Need]:
    """What IAM checks for one call of ``service.operation`` with ``params`` (see the module doc)."""
    act = action(service, operation)
    out = [Need(act, r) for r in _resources(service, operation, params, cfg)]
    if service == "s3" and operation == "CopyObject":
        src = params.get("CopySource")
        src = f"{src['Bucket']}/{src['Key']}" if isinstance(src, dict) else str(src or "").split("?")[0].lstrip("/")
        out.append(Need("s3:GetObject", f"arn:aws:s3:::{src}"))
    if service == "sagemaker" and operation.startswith("Create"):
        for key in ("RoleArn", "ExecutionRoleArn"):
            if params.get(key):
                out.append(Need("iam:PassRole", params[key], {"iam:PassedToService": SAGEMAKER_SERVICE}))
        if params.get("Tags"):
            out += [Need("sagemaker:AddTags", n.resource) for n in out[:1]]
    for key in sorted(set(_kms_keys(params))):
        if service == "s3":
            out.append(Need("kms:GenerateDataKey" if act == "s3:PutObject" else "kms:Decrypt", key))
        elif service == "athena":  # results encrypted and read back with the caller's rights
            out += [Need("kms:GenerateDataKey", key), Need("kms:Decrypt", key)]
        else:  # a SageMaker resource encrypted with the key: SageMaker takes a grant on it
            out += [Need("kms:DescribeKey", key),
                    Need("kms:CreateGrant", key, {"kms:GrantIsForAWSResource": "true"})]
    return out


def _kms_keys(params: Any) -> Iterable[str]:
    if isinstance(params, dict):
        for k, v in params.items():
            # KmsKeyId (SageMaker), SSEKMSKeyId (S3), KmsKey (Athena's EncryptionConfiguration)
            if (k.lower().endswith("kmskeyid") or k == "KmsKey") and isinstance(v, str) and v:
                yield v
            else:
                yield from _kms_keys(v)
    elif isinstance(params, list):
        for v in params:
            yield from _kms_keys(v)


def _resources(service: str, operation: str, p: dict, cfg: Any) -> list[str]:
    region, account = cfg.region, cfg.account_id
    if service == "s3":
        bucket = p.get("Bucket", "")
        if operation == "DeleteObjects":
            return [f"arn:aws:s3:::{bucket}/{o['Key']}" for o in (p.get("Delete") or {}).get("Objects", [])]
        return [f"arn:aws:s3:::{bucket}/{p['Key']}" if "Key" in p else f"arn:aws:s3:::{bucket}"]
    if service.startswith("sagemaker"):
        return [_sagemaker_arn(operation, p, region, account)]
    if service == "glue":
        glue = f"arn:aws:glue:{region}:{account}"
        db = p.get("DatabaseName") or (p.get("DatabaseInput") or {}).get("Name") or p.get("Name", "")
        out = [f"{glue}:catalog"]
        if db:
            out.append(f"{glue}:database/{db}")
        table = p.get("TableName") or (p.get("TableInput") or {}).get("Name") or (
            p.get("Name") if "DatabaseName" in p else None)
        if table:
            out.append(f"{glue}:table/{db}/{table}")
        elif operation in ("GetTables", "GetPartitions"):
            out.append(f"{glue}:table/{db}/*")
        return out
    if service == "athena":
        return [f"arn:aws:athena:{region}:{account}:workgroup/{p.get('WorkGroup') or cfg.athena_workgroup}"]
    if service == "logs":
        group = f"arn:aws:logs:{region}:{account}:log-group:{p.get('logGroupName', '*')}"
        return [f"{group}:log-stream:{p['logStreamName']}" if "logStreamName" in p else
                group if operation == "CreateLogGroup" else f"{group}:*"]
    if service == "iam" and "RoleName" in p:
        return [f"arn:aws:iam::{account}:role/{p['RoleName']}"]
    return ["*"]


def _sagemaker_arn(operation: str, p: dict, region: str, account: str) -> str:
    if operation in ("AddTags", "ListTags"):  # on the tagged resource (ListTags: a job's owner check)
        return p.get("ResourceArn", "*")
    if operation.startswith("List"):
        return "*"
    arn = f"arn:aws:sagemaker:{region}:{account}"
    ref = p.get("ModelPackageName") or p.get("ModelPackageArn")
    if ref:
        return ref if ref.startswith("arn:") else f"{arn}:model-package/{ref.lower()}"
    if operation == "CreateModelPackage":
        return f"{arn}:model-package/{p.get('ModelPackageGroupName', '').lower()}/new"
    present = [(k, kind) for k, kind in _SAGEMAKER_NAMES if p.get(k)]
    for key, kind in sorted(present, key=lambda kv: -len(kv[0])):  # the noun the operation is about
        if key[:-len("Name")] in operation:
            return f"{arn}:{kind}/{p[key].lower()}"  # SageMaker ARNs are lower-case
    return f"{arn}:{present[0][1]}/{p[present[0][0]].lower()}" if present else "*"


# --------------------------------------------------------------------- evaluation


def _as_list(value: Any) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _statements(doc: dict) -> list[dict]:
    return _as_list(doc.get("Statement"))


def _match(pattern: str, value: str, case: bool) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, 0 if case else re.IGNORECASE) is not None


def _conditions_hold(conditions: dict, context: dict[str, str]) -> bool:
    for op, tests in (conditions or {}).items():
        if_exists = op.endswith("IfExists")
        base = op[:-len("IfExists")] if if_exists else op
        for key, wanted in tests.items():
            if key not in context:
                if if_exists:
                    continue
                return False
            got = context[key]
            if base == "StringEquals":
                ok = any(got == w for w in _as_list(wanted))
            elif base == "StringLike":
                ok = any(_match(w, got, True) for w in _as_list(wanted))
            elif base == "Bool":
                ok = any(str(got).lower() == str(w).lower() for w in _as_list(wanted))
            else:
                raise PolicyError(f"condition operator {op} is not supported by this evaluator")
            if not ok:
                return False
    return True


def _statement_matches(st: dict, need: Need) -> bool:
    if "NotAction" in st or "NotResource" in st:
        raise PolicyError(f"statement {st.get('Sid', '?')}: NotAction / NotResource are not supported here")
    return (any(_match(a, need.action, False) for a in _as_list(st.get("Action")))
            and any(_match(r, need.resource, True) for r in _as_list(st.get("Resource")))
            and _conditions_hold(st.get("Condition") or {}, need.context))


def evaluate(docs: list[dict], need: Need) -> bool:
    """True when ``docs`` allow ``need``: an Allow statement matches and no Deny does."""
    matching = [st for doc in docs for st in _statements(doc) if _statement_matches(st, need)]
    return any(st.get("Effect") == "Allow" for st in matching) and not any(
        st.get("Effect") == "Deny" for st in matching)


def denied(calls: Iterable[tuple[str, str, dict]], cfg: Any, names: Iterable[str] = WORKER) -> list[str]:
    """Every (service, operation, params) call in ``calls`` that policies ``names`` do not
    allow, one line per refused need (empty: all allowed)."""
    docs = policies(cfg, names)
    out: list[str] = []
    seen: set[str] = set()
    for service, operation, params in calls:
        for need in needs(service, operation, params, cfg):
            line = f"{service}.{operation}: {need} is not allowed by aws/iam/{{{','.join(names)}}}.json"
            if line not in seen and not evaluate(docs, need):
                seen.add(line)
                out.append(line)
    return out


# The operations one run of each DAG makes on the aws backend, as the Airflow worker (the moto
# end-to-end test fails when its run makes one not listed here). make validate-aws prints
# their actions.
RUN_OPERATIONS: dict[str, tuple[str, ...]] = {
    "review_sentiment_pipeline": (
        "glue.CreateDatabase", "glue.CreatePartition", "glue.CreateTable", "glue.DeletePartition",
        "glue.GetPartitions", "glue.GetTable", "glue.GetTables", "glue.UpdatePartition", "iam.GetRole",
        "logs.DescribeLogStreams", "logs.GetLogEvents", "s3.CompleteMultipartUpload", "s3.CopyObject",
        "s3.CreateMultipartUpload", "s3.DeleteObject", "s3.DeleteObjects", "s3.GetObject", "s3.HeadBucket",
        "s3.HeadObject", "s3.ListObjectsV2", "s3.PutObject", "s3.UploadPart", "s3.AbortMultipartUpload",
        "sagemaker-featurestore-runtime.PutRecord", "sagemaker-featurestore-runtime.GetRecord",
        "sagemaker-featurestore-runtime.BatchGetRecord", "sagemaker-runtime.InvokeEndpoint",
        "sagemaker.CreateEndpoint", "sagemaker.CreateEndpointConfig", "sagemaker.CreateFeatureGroup",
        "sagemaker.CreateModel", "sagemaker.CreateModelPackage", "sagemaker.CreateModelPackageGroup",
        "sagemaker.CreateProcessingJob", "sagemaker.CreateTrainingJob", "sagemaker.DescribeEndpoint",
        "sagemaker.DescribeEndpointConfig", "sagemaker.DescribeFeatureGroup", "sagemaker.DescribeModel",
        "sagemaker.DescribeModelPackage", "sagemaker.DescribeModelPackageGroup",
        "sagemaker.DescribeProcessingJob", "sagemaker.DescribeTrainingJob", "sagemaker.ListTags",
        "sagemaker.ListFeatureGroups",
        "sagemaker.ListModelPackages", "sagemaker.UpdateEndpoint", "sagemaker.UpdateFeatureGroup",
        "sagemaker.UpdateModelPackage"),
    "review_catalog_analysis": ("athena.StartQueryExecution", "athena.GetQueryExecution",
                                "athena.GetQueryResults", "glue.GetTable", "glue.GetPartitions",
                                "s3.GetObject", "s3.PutObject", "s3.ListObjectsV2"),
    "review_automl_baseline": ("sagemaker.CreateProcessingJob", "sagemaker.DescribeProcessingJob", "sagemaker.ListTags",
                               "sagemaker.CreateAutoMLJobV2", "sagemaker.DescribeAutoMLJobV2",
                               "s3.GetObject", "s3.PutObject", "s3.ListObjectsV2", "s3.HeadObject"),
}


def run_actions(dag_id: str | None = None) -> list[str]:
    """The IAM actions the worker needs for one run of ``dag_id`` (None: of every DAG), from
    :data:`RUN_OPERATIONS` and the actions they imply (PassRole, AddTags, the copy's read)."""
    ops = {op for d, o in RUN_OPERATIONS.items() if dag_id in (None, d) for op in o}
    out = {action(*op.split(".", 1)) for op in ops}
    if any(op.startswith("sagemaker.Create") for op in ops):
        out |= {"iam:PassRole", "sagemaker:AddTags"}
    if "s3.CopyObject" in ops:
        out.add("s3:GetObject")
    return sorted(out)
