"""The aws backend's settings, checks and clients: the one place that knows the account side.

Read from a JSON or YAML file named by ``REVIEWS_AWS_CONF`` (or the Airflow Variable
``reviews_aws_conf`` holding the same document as JSON), with environment overrides for the
few values that differ per machine (``REVIEWS_AWS_REGION``, ``REVIEWS_AWS_BUCKET``,
``REVIEWS_AWS_ROLE_ARN``, ``REVIEWS_AWS_DEPLOYMENT_ID``, ``AWS_ENDPOINT_URL``). :meth:`AwsConfig.validate` checks everything
that can be checked offline (region, bucket name, role ARN, instance types against the
SageMaker API's own enums) and :func:`preflight` what needs the account (the bucket and the
role exist), so that a typo fails at task start, before any job is created.

Every client comes from :meth:`AwsConfig.client` (the provider's ``AwsBaseHook`` on the
Airflow connection ``aws_conn_id``), so the project's own calls and the provider's operators
run as one identity. boto3 and the provider are imported inside functions: DAG parsing never
pays for them.
"""
from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from include.common.errors import ConfigError

CONF_ENV = "REVIEWS_AWS_CONF"
CONF_VARIABLE = "reviews_aws_conf"
# Which SageMaker API enum each step's instance type must belong to.
JOB_STEPS = {"preprocess": "ProcessingInstanceType", "train": "TrainingInstanceType",
             "evaluate": "ProcessingInstanceType", "automl": "ProcessingInstanceType"}
ENDPOINT_ENUM = "ProductionVariantInstanceType"
_ROLE_ARN = re.compile(r"^arn:aws(-[a-z]+)*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_BUCKET = re.compile(r"^(?!xn--)(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_DEPLOYMENT = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_ACCOUNT_IN_ARN = re.compile(r":(\d{12}):")


class AwsConfigError(ConfigError):
    """The aws backend's configuration cannot work; the message lists every problem found."""


@dataclass(frozen=True)
class StepResources:
    """Compute for one job step (processing or training)."""

    instance_type: str
    instance_count: int = 1
    volume_size_gb: int = 30
    max_runtime_s: int = 3600
    image_uri: str = ""  # empty: the framework image for the region (sagemaker.core.image_uris)


DEFAULT_STEPS = {
    "preprocess": StepResources("ml.c5.2xlarge", max_runtime_s=1800),
    "train": StepResources("ml.g5.xlarge", max_runtime_s=3600),
    "evaluate": StepResources("ml.c5.2xlarge", max_runtime_s=1800),
    "automl": StepResources("ml.c5.2xlarge", max_runtime_s=3600),
}


@dataclass(frozen=True)
class AwsConfig:
    """Everything the aws backend needs to know about the account it runs in."""

    region: str = ""
    bucket: str = ""
    role_arn: str = ""
    prefix: str = "review-sentiment"
    aws_conn_id: str = "aws_default"
    endpoint_url: str = ""  # moto / LocalStack; empty: the real AWS endpoints
    steps: dict[str, StepResources] = field(default_factory=lambda: dict(DEFAULT_STEPS))
    glue_database: str = "review_sentiment"
    athena_workgroup: str = "primary"
    athena_output_uri: str = ""  # empty: s3://<bucket>/<prefix>/athena-results/
    model_package_group: str = "review-sentiment"
    feature_group: str = "reviews-features"
    offline_store_wait_s: int = 1800  # longest an ingestion waits for SageMaker's offline store to show its records
    endpoint_name: str = "review-sentiment"
    endpoint_instance_type: str = "ml.m5.xlarge"
    endpoint_instance_count: int = 1
    endpoint_image_uri: str = ""  # empty: the Hugging Face inference image for the region
    endpoint_wait_s: int = 1800  # longest a deploy waits for the endpoint to be InService
    subnets: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    kms_key_id: str = ""
    spot_training: bool = False
    spot_max_wait_s: int = 0  # 0: twice the training step's max runtime
    transformers_version: str = "4.49.0"
    pytorch_version: str = "2.5.1"  # the training image (Hugging Face training DLCs are GPU-only)
    py_version: str = "py311"
    processing_pytorch_version: str = "2.6.0"  # the processing image: HF inference DLC, cpu or gpu
    processing_py_version: str = "py312"
    job_check_interval_s: int = 30  # how often the deferred task's trigger polls a job
    # Who owns the jobs: hashed into every job name and written as a tag (include/jobs/runner_sagemaker.py).
    # Empty: the Airflow Variable reviews_deployment_id, created at random on first use (one per metadata DB).
    deployment_id: str = ""

    # ----------------------------------------------------------------- addresses

    @property
    def root_uri(self) -> str:
        """``s3://<bucket>/<prefix>``: everything the project writes lives below it."""
        return f"s3://{self.bucket}/{self.prefix.strip('/')}" if self.prefix.strip("/") else f"s3://{self.bucket}"

    def s3_uri(self, key: str) -> str:
        """The S3 URI of ``key`` (a path relative to the project's prefix)."""
        return f"{self.root_uri}/{key.lstrip('/')}"

    @property
    def athena_output(self) -> str:
        """Where Athena writes query results."""
        return self.athena_output_uri or self.s3_uri("athena-results/")

    @property
    def account_id(self) -> str:
        """The account of the role ARN (the one the jobs run in)."""
        m = _ACCOUNT_IN_ARN.search(self.role_arn)
        return m.group(1) if m else ""

    def step(self, name: str) -> StepResources:
        """Resources of job step ``name`` (a config error for an unknown step)."""
        try:
            return self.steps[name]
        except KeyError:
            raise AwsConfigError(f"aws config: no resources for step {name!r} (known: {', '.join(self.steps)})") from None

    def vpc_config(self) -> dict | None:
        """``VpcConfig`` / ``NetworkConfig.VpcConfig`` for the jobs, or None without subnets."""
        if not self.subnets:
            return None
        return {"Subnets": list(self.subnets), "SecurityGroupIds": list(self.security_group_ids)}

    # ----------------------------------------------------------------- checks

    def problems(self) -> list[str]:
        """Every problem that can be found without calling AWS (empty: none)."""
        found: list[str] = []
        if not self.region:
            found.append("region is not set (REVIEWS_AWS_REGION or 'region' in the aws config)")
        elif self.region not in known_regions():
            close = difflib.get_close_matches(self.region, sorted(known_regions()), n=1)
            found.append(f"region {self.region!r} is not a region SageMaker runs in"
                         + (f" (did you mean {close[0]!r}?)" if close else ""))
        if not self.bucket:
            found.append("bucket is not set (REVIEWS_AWS_BUCKET or 'bucket' in the aws config)")
        elif not _BUCKET.match(self.bucket):
            found.append(f"bucket {self.bucket!r} is not a valid S3 bucket name")
        if not self.role_arn:
            found.append("role_arn is not set (REVIEWS_AWS_ROLE_ARN or 'role_arn': the SageMaker execution role)")
        elif not _ROLE_ARN.match(self.role_arn):
            found.append(f"role_arn {self.role_arn!r} is not an IAM role ARN (arn:aws:iam::<12 digits>:role/<name>)")
        for name, enum in JOB_STEPS.items():
            res = self.steps.get(name)
            if res is None:
                found.append(f"steps.{name} is missing")
                continue
            found += _instance_problems(f"steps.{name}.instance_type", res.instance_type, enum)
            if res.instance_count < 1:
                found.append(f"steps.{name}.instance_count must be >= 1 (got {res.instance_count})")
            if res.max_runtime_s < 60:
                found.append(f"steps.{name}.max_runtime_s must be >= 60 (got {res.max_runtime_s})")
        found += _instance_problems("endpoint_instance_type", self.endpoint_instance_type, ENDPOINT_ENUM)
        if self.security_group_ids and not self.subnets:
            found.append("security_group_ids are set but subnets are not (a VPC config needs both)")
        if self.job_check_interval_s < 1:
            found.append(f"job_check_interval_s must be >= 1 (got {self.job_check_interval_s})")
        if self.deployment_id and not _DEPLOYMENT.match(self.deployment_id):
            found.append(f"deployment_id {self.deployment_id!r}: 1-64 of letters, digits, '.', '_', '-'")
        if self.endpoint_url and urlparse(self.endpoint_url).scheme not in ("http", "https"):
            found.append(f"endpoint_url {self.endpoint_url!r} is not an http(s) URL")
        return found

    def validate(self) -> AwsConfig:
        """Raise :class:`AwsConfigError` listing every offline problem; return self when none."""
        found = self.problems()
        if found:
            raise AwsConfigError("aws config is not usable:\n  - " + "\n  - ".join(found))
        return self

    # ----------------------------------------------------------------- clients

    def hook(self, service: str | None = None):
        """The Amazon provider's hook on the Airflow connection ``aws_conn_id``: the one identity
        every AWS call of the project runs as (the provider's operators use the same connection).

        Credentials, role assumption, region and endpoint come from the connection (its extra:
        ``region_name``, ``endpoint_url``, ``role_arn``, ...); without such a connection the hook
        falls back to boto3's default chain. This config's ``region`` wins over the connection's.
        """
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

        return AwsBaseHook(aws_conn_id=self.aws_conn_id or None, client_type=service,
                           region_name=self.region or None)

    def session(self):
        """The connection's boto3 session (for awswrangler's ``boto3_session=``)."""
        hook = self.hook()
        return hook.get_session(region_name=hook.region_name)

    def service_endpoint(self, service: str) -> str | None:
        """Where ``service``'s calls go: the connection's endpoint for it, else ``endpoint_url``
        (moto / LocalStack), else None (the real AWS endpoint, or ``AWS_ENDPOINT_URL``)."""
        return self.hook(service).conn_config.get_service_endpoint_url(service_name=service) or self.endpoint_url or None

    def client(self, service: str):
        """A boto3 client for ``service`` on the connection's session (the only place that creates one).

        What ``AwsBaseHook.get_client_type`` builds (the connection's session, endpoint, botocore
        config and TLS setting) without its user-agent tag, whose stack walk costs 0.1-0.6 s per
        client. A new client per call (the modules that make many calls keep theirs): a cached one
        would outlive a test's botocore Stubber or a changed connection.
        """
        hook = self.hook(service)
        endpoint = hook.conn_config.get_service_endpoint_url(service_name=service) or self.endpoint_url or None
        session = hook.get_session(region_name=hook.region_name)
        session._session.register_component("data_loader", _shared_loader())
        return session.client(service, endpoint_url=endpoint, config=hook.config, verify=hook.verify)

    def sse(self) -> dict[str, str]:
        """S3 write arguments that encrypt with the configured KMS key (empty without one): every
        put, upload and copy passes them, since a copy does not keep its source's encryption."""
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id} if self.kms_key_id else {}

    def athena_encryption(self) -> dict[str, str]:
        """awswrangler's arguments for Athena's ``ResultConfiguration.EncryptionConfiguration``:
        query results encrypted with the configured KMS key (empty without one)."""
        return {"encryption": "SSE_KMS", "kms_key": self.kms_key_id} if self.kms_key_id else {}

    def to_dict(self) -> dict:
        """A JSON-able copy (what ``make validate-aws`` prints)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["steps"] = {k: vars(v) for k, v in self.steps.items()}
        out["subnets"], out["security_group_ids"] = list(self.subnets), list(self.security_group_ids)
        return out


@lru_cache(maxsize=1)
def _shared_loader():
    """One botocore data loader for every session: it caches the parsed service models, which
    a fresh session would read from JSON again (~0.3 s a client)."""
    import botocore.loaders

    return botocore.loaders.create_loader()


def _instance_problems(where: str, value: str, enum: str) -> list[str]:
    allowed = instance_types(enum)
    if value in allowed:
        return []
    close = difflib.get_close_matches(value, sorted(allowed), n=1)
    return [f"{where} {value!r} is not a SageMaker {enum} value" + (f" (did you mean {close[0]!r}?)" if close else "")]


@lru_cache(maxsize=None)
def instance_types(enum: str) -> frozenset[str]:
    """The instance types SageMaker's API model allows for ``enum`` (offline, from botocore)."""
    import botocore.session

    return frozenset(botocore.session.get_session().get_service_model("sagemaker").shape_for(enum).enum)


@lru_cache(maxsize=None)
def known_regions() -> frozenset[str]:
    """Regions SageMaker runs in, in every partition botocore knows (offline)."""
    import botocore.session

    ses = botocore.session.get_session()
    return frozenset(r for part in ses.get_available_partitions()
                     for r in ses.get_available_regions("sagemaker", partition_name=part))


# --------------------------------------------------------------------- loading


def _read_document(text: str, source: str) -> dict:
    try:
        if source.endswith((".yaml", ".yml")):
            import yaml

            doc = yaml.safe_load(text)
        else:
            doc = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
        raise AwsConfigError(f"aws config {source}: cannot be parsed: {exc}") from None
    if not isinstance(doc, dict):
        raise AwsConfigError(f"aws config {source}: must be a mapping of settings, got {type(doc).__name__}")
    return doc


def _variable() -> str | None:
    try:
        from airflow.sdk import Variable

        return Variable.get(CONF_VARIABLE, default=None)
    except Exception:  # noqa: BLE001 - no Airflow context: no variable
        return None


def config_from_dict(doc: dict, source: str = "<dict>") -> AwsConfig:
    """An :class:`AwsConfig` from a settings mapping; unknown keys are an error (typos)."""
    known = {f.name for f in fields(AwsConfig)}
    unknown = sorted(set(doc) - known)
    if unknown:
        hints = [f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, n=1)) else "")
                 for k in unknown]
        raise AwsConfigError(f"aws config {source}: unknown setting(s) {', '.join(hints)}")
    values = dict(doc)
    steps = dict(DEFAULT_STEPS)
    step_fields = {f.name for f in fields(StepResources)}
    for name, res in (doc.get("steps") or {}).items():
        if not isinstance(res, dict) or set(res) - step_fields:
            raise AwsConfigError(f"aws config {source}: steps.{name} must be a mapping of {sorted(step_fields)}")
        steps[name] = replace(steps.get(name, StepResources(instance_type="")), **res)
    values["steps"] = steps
    for key in ("subnets", "security_group_ids"):
        if key in values:
            values[key] = tuple(values[key] or ())
    return AwsConfig(**values)


def load_aws_config(path: str | Path | None = None) -> AwsConfig:
    """The aws config: ``path``, else ``REVIEWS_AWS_CONF``, else the Airflow Variable, then env overrides.

    Not validated here (``validate()`` / :func:`preflight` do that at task start), so that
    ``make validate-aws`` can list every problem at once.
    """
    path = path or os.environ.get(CONF_ENV)
    if path:
        p = Path(path)
        if not p.is_file():
            raise AwsConfigError(f"aws config file {p} does not exist ({CONF_ENV})")
        doc = _read_document(p.read_text(encoding="utf-8"), str(p))
    elif text := _variable():
        doc = _read_document(text, f"Airflow Variable {CONF_VARIABLE}")
    else:
        doc = {}
    overrides = {"region": os.environ.get("REVIEWS_AWS_REGION"), "bucket": os.environ.get("REVIEWS_AWS_BUCKET"),
                 "role_arn": os.environ.get("REVIEWS_AWS_ROLE_ARN"), "endpoint_url": os.environ.get("AWS_ENDPOINT_URL"),
                 "deployment_id": os.environ.get("REVIEWS_AWS_DEPLOYMENT_ID")}
    doc.update({k: v for k, v in overrides.items() if v})
    doc.setdefault("region", os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "")
    return config_from_dict(doc, str(path or CONF_VARIABLE))


def preflight(cfg: AwsConfig) -> AwsConfig:
    """Offline checks, then the account checks: the bucket and the role exist and are reachable.

    Run at task start, before anything is written or any job is created.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    cfg.validate()
    problems = []
    try:
        cfg.client("s3").head_bucket(Bucket=cfg.bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        problems.append(f"bucket {cfg.bucket!r} " + ("does not exist" if code in ("404", "NoSuchBucket")
                                                     else f"is not accessible ({code})"))
    except BotoCoreError as exc:
        problems.append(f"bucket {cfg.bucket!r}: cannot reach S3 ({exc})")
    role_name = cfg.role_arn.rsplit("/", 1)[-1]
    try:
        cfg.client("iam").get_role(RoleName=role_name)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "NoSuchEntity":
            problems.append(f"role {cfg.role_arn!r} does not exist")
        elif code not in ("AccessDenied", "AccessDeniedException"):  # may pass a role it cannot read
            problems.append(f"role {cfg.role_arn!r}: {code}")
    except BotoCoreError as exc:
        problems.append(f"role {cfg.role_arn!r}: cannot reach IAM ({exc})")
    if problems:
        raise AwsConfigError("aws account check failed:\n  - " + "\n  - ".join(problems))
    return cfg


# --------------------------------------------------------------------- S3 objects


def split_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of an ``s3://`` URI."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(f"{uri!r} is not an s3:// URI")
    return parsed.netloc, parsed.path.lstrip("/")


def read_bytes(cfg: AwsConfig, uri: str) -> bytes:
    """The object at ``uri``."""
    bucket, key = split_s3_uri(uri)
    return cfg.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()


def write_bytes(cfg: AwsConfig, uri: str, data: bytes, content_type: str = "application/octet-stream") -> str:
    """Put ``data`` at ``uri`` (one PUT is atomic on S3: readers see the old or the new object)."""
    bucket, key = split_s3_uri(uri)
    cfg.client("s3").put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type, **cfg.sse())
    return uri


def copy_object(cfg: AwsConfig, src_uri: str, dest_uri: str, s3=None) -> str:
    """Copy ``src_uri`` to ``dest_uri`` server-side, encrypted with the configured KMS key."""
    src_bucket, src_key = split_s3_uri(src_uri)
    bucket, key = split_s3_uri(dest_uri)
    (s3 or cfg.client("s3")).copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": src_bucket, "Key": src_key},
                                         **cfg.sse())
    return dest_uri


def list_keys(cfg: AwsConfig, uri: str) -> list[str]:
    """Every object key under the prefix ``uri``."""
    bucket, prefix = split_s3_uri(uri)
    keys: list[str] = []
    for page in cfg.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def upload_dir(cfg: AwsConfig, src: Path, uri: str) -> list[str]:
    """Upload every file below ``src`` to the prefix ``uri``, replacing what was there.

    Objects of an earlier upload that the new one does not have are deleted after the new
    ones are in place, so a re-run replaces and never mixes two versions' files.
    """
    bucket, prefix = split_s3_uri(uri.rstrip("/") + "/")
    s3 = cfg.client("s3")
    extra = cfg.sse() or None
    written = []
    for path in sorted(p for p in Path(src).rglob("*") if p.is_file()):
        key = prefix + path.relative_to(src).as_posix()
        s3.upload_file(str(path), bucket, key, ExtraArgs=extra)
        written.append(key)
    stale = sorted(set(list_keys(cfg, f"s3://{bucket}/{prefix}")) - set(written))
    for i in range(0, len(stale), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in stale[i:i + 1000]]})
    return [f"s3://{bucket}/{k}" for k in written]


def delete_prefix(cfg: AwsConfig, uri: str) -> int:
    """Delete every object under the prefix ``uri``; how many were deleted."""
    bucket, _ = split_s3_uri(uri)
    keys = list_keys(cfg, uri)
    s3 = cfg.client("s3")
    for i in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})
    return len(keys)


def download_prefix(cfg: AwsConfig, uri: str, dest: Path) -> list[Path]:
    """Download every object under ``uri`` (a prefix, or one object) into ``dest``."""
    bucket, prefix = split_s3_uri(uri)
    s3 = cfg.client("s3")
    out = []
    for key in list_keys(cfg, uri):
        rel = key[len(prefix):].lstrip("/") or Path(key).name
        target = Path(dest) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(target))
        out.append(target)
    return out
