"""The aws backend's model registry: SageMaker Model Registry (a model package group, one
versioned model package per registered model).

:class:`SageMakerModelRegistry` implements :class:`include.model.registry.ModelRegistry`;
:func:`include.model.registry.get_registry` picks it on ``REVIEWS_BACKEND=aws``. We call the
SageMaker API directly rather than the provider's ``SageMakerRegisterModelVersionOperator``
because that operator hard-codes ``text/csv`` content types and drops the group description;
``SageMakerHook`` has no model-package methods but ``create_model_package_group``, which sends
no ``Tags``. The client is the factory's (:meth:`AwsConfig.client`): the Airflow connection's
identity, as the provider's. boto3 has no model-package waiter and nothing here waits.

How a version is stored:

* the group ``AwsConfig.model_package_group`` (``-baseline`` appended for the AutoML
  baselines) is created with a description the first time a version is registered;
* the package's ``InferenceSpecification`` names the Hugging Face inference image of the
  region and ``ModelDataUrl`` = our ``model.tar.gz`` on S3, with JSON Lines (and JSON) in and
  out - what ``include/scripts/inference.py`` speaks;
* ``ModelMetrics.ModelQuality.Statistics`` points at the run's ``evaluation.json`` on S3;
* ``ModelApprovalStatus`` is the approval status; ``ApprovalDescription`` the reviewer's note;
* ``CustomerMetadataProperties`` hold the lineage (``lineage.<key>``), the headline metrics
  (``metric.<name>``), ``registration_key``, ``approval_history``, ``deployed_at`` and
  ``serving.<key>``. SageMaker allows 50 entries of at most 256 characters from
  ``[letters digits space _.:/=+-@]``; other values are stored base64-encoded (``b64:``
  prefix) and decoded on read.

Registration is idempotent per (dag_id, run_id): the package whose ``registration_key``
matches is returned instead of creating another, and the create call carries the key as
``ClientToken`` so SageMaker itself refuses a duplicate of a request that raced us.
"""
from __future__ import annotations

import base64
import logging
import re
import time
from functools import cached_property

from include.common.aws import AwsConfig, AwsConfigError
from include.model.registry_base import (
    APPROVED,
    MODEL_NAME,
    PENDING,
    REQUIRED_LINEAGE,
    ModelRegistry,
    ModelVersion,
    ModelVersionNotFoundError,
    RegistryError,
    _clean_lineage,
    _clean_metrics,
    check_status,
    registration_key,
)

logger = logging.getLogger(__name__)

# What include/scripts/inference.py accepts and answers (JSON Lines first: the lab's format).
CONTENT_TYPES = ["application/jsonlines", "application/json"]
GROUP_DESCRIPTIONS = {
    MODEL_NAME: "BERT (all-MiniLM-L6-v2) review sentiment classifier: negative / neutral / positive. "
                "Registered by the review_sentiment_pipeline DAG.",
}
MAX_PROPERTIES, MAX_VALUE = 50, 256
_VALUE_OK = re.compile(r"^[\w .:/=+\-@]{1,256}$")
_B64 = "b64:"
_HISTORY_KEEP = 6  # approval_history entries kept (status@epoch, newest last) within 256 characters
# Order in which properties are kept when more than 50 would be stored (the rest are logged and dropped).
_PRIORITY = ("registration_key", "approval_history", "deployed_at", "serving.",
             *(f"lineage.{k}" for k in REQUIRED_LINEAGE), "lineage.", "metric.")


def _encode(value: str) -> str:
    if _VALUE_OK.match(value) and not value.startswith(_B64):
        return value
    encoded = _B64 + base64.b64encode(value.encode()).decode()
    if len(encoded) > MAX_VALUE:  # keep what fits, say it was cut
        cut = value.encode()[: (MAX_VALUE - len(_B64)) * 3 // 4 - 8].decode(errors="ignore") + " [cut]"
        encoded = _B64 + base64.b64encode(cut.encode()).decode()
    return encoded


def _decode(value: str) -> str:
    return base64.b64decode(value[len(_B64):]).decode() if value.startswith(_B64) else value


def encode_properties(props: dict[str, str]) -> dict[str, str]:
    """``props`` as CustomerMetadataProperties: empty values left out, others encoded to fit,
    at most 50 kept in :data:`_PRIORITY` order (what is dropped is logged)."""
    items = [(k[:128], _encode(str(v))) for k, v in props.items() if v not in (None, "")]

    def rank(key: str) -> int:
        return next((i for i, p in enumerate(_PRIORITY) if key == p or (p.endswith(".") and key.startswith(p))),
                    len(_PRIORITY))

    items.sort(key=lambda kv: rank(kv[0]))  # stable: definition order within a rank
    if len(items) > MAX_PROPERTIES:
        logger.warning("model package metadata: %d properties, SageMaker keeps %d; dropped %s", len(items),
                       MAX_PROPERTIES, ", ".join(k for k, _ in items[MAX_PROPERTIES:]))
    return dict(items[:MAX_PROPERTIES])


def decode_properties(props: dict | None) -> dict[str, str]:
    """Inverse of :func:`encode_properties` (for what was kept)."""
    return {k: _decode(v) for k, v in (props or {}).items()}


def inference_image_uri(cfg: AwsConfig) -> str:
    """The serving image: ``endpoint_image_uri`` when configured, else the Hugging Face PyTorch
    inference image of the region for ``transformers_version`` (bundled SDK data, offline)."""
    if cfg.endpoint_image_uri:
        return cfg.endpoint_image_uri
    from sagemaker.core import image_uris

    versions = image_uris.config_for_framework("huggingface")["inference"]["versions"]
    entry = versions.get(cfg.transformers_version) or versions.get(
        image_uris.config_for_framework("huggingface")["inference"].get("version_aliases", {})
        .get(cfg.transformers_version, ""))
    if not entry:
        raise AwsConfigError(f"transformers_version {cfg.transformers_version!r} has no Hugging Face inference "
                             f"image (known: {', '.join(sorted(versions))}); set endpoint_image_uri")
    bases = sorted(k for k in entry if k.startswith("pytorch"))
    wanted = f"pytorch{cfg.pytorch_version}"
    # Inference images are built for fewer PyTorch versions than training images: the newest
    # one for these transformers is as close as the region offers.
    base = wanted if wanted in bases else bases[-1]
    if base != wanted:
        logger.info("no %s inference image for transformers %s; serving on %s", wanted, cfg.transformers_version, base)
    return image_uris.retrieve("huggingface", region=cfg.region, version=cfg.transformers_version,
                               base_framework_version=base, py_version=entry[base].get("py_versions", [None])[-1],
                               instance_type=cfg.endpoint_instance_type, image_scope="inference")


def serving_environment(version: str = "") -> dict[str, str]:
    """The serving container's environment: our handler ``code/inference.py`` in the package."""
    env = {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
           "SAGEMAKER_CONTAINER_LOG_LEVEL": "20"}
    if version:
        env["MODEL_VERSION"] = version
    return env


def is_not_found(exc: Exception) -> bool:
    """Whether ``exc`` is SageMaker saying the named resource does not exist."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    err = exc.response.get("Error", {})
    return err.get("Code") in ("ResourceNotFound", "ValidationException") and (
        "not exist" in err.get("Message", "") or "not found" in err.get("Message", "").lower()
        or "Could not find" in err.get("Message", ""))


class SageMakerModelRegistry(ModelRegistry):
    """:class:`ModelRegistry` on a SageMaker model package group."""

    def __init__(self, cfg: AwsConfig, name: str = MODEL_NAME, client=None) -> None:
        self.cfg = cfg
        self.name = name
        self.group = cfg.model_package_group if name == MODEL_NAME else (
            f"{cfg.model_package_group}-{name.rsplit('-', 1)[-1]}")
        self._client = client

    @cached_property
    def sm(self):
        """The SageMaker client on the Airflow connection (moto's server in tests)."""
        return self._client or self.cfg.client("sagemaker")

    # ------------------------------------------------------------ helpers
    def _ensure_group(self) -> None:
        try:
            self.sm.describe_model_package_group(ModelPackageGroupName=self.group)
        except Exception as exc:  # noqa: BLE001 - only "does not exist" is handled
            if not is_not_found(exc):
                raise
            self.sm.create_model_package_group(
                ModelPackageGroupName=self.group,
                ModelPackageGroupDescription=GROUP_DESCRIPTIONS.get(self.name, f"{self.name} models"),
                Tags=[{"Key": "project", "Value": "review-sentiment"}, {"Key": "model", "Value": self.name}])
            logger.info("created model package group %s", self.group)

    def _summaries(self) -> list[dict]:
        out: list[dict] = []
        pages = self.sm.get_paginator("list_model_packages").paginate(
            ModelPackageGroupName=self.group, ModelPackageType="Versioned")
        try:
            for page in pages:
                out += page.get("ModelPackageSummaryList", [])
        except Exception as exc:  # noqa: BLE001 - no group yet: no versions
            if not is_not_found(exc):
                raise
            return []
        return sorted(out, key=lambda s: int(s.get("ModelPackageVersion") or 0))

    def _descriptions(self) -> list[dict]:
        return [self.sm.describe_model_package(ModelPackageName=s["ModelPackageArn"]) for s in self._summaries()]

    def _describe(self, version: str) -> dict:
        for s in self._summaries():
            if str(s.get("ModelPackageVersion")) == str(version):
                return self.sm.describe_model_package(ModelPackageName=s["ModelPackageArn"])
        raise ModelVersionNotFoundError(f"model package group {self.group!r} has no version {version!r}; "
                                        "list them with list_versions()")

    @staticmethod
    def _to_version(desc: dict, name: str, deployed_arn: str | None = None) -> ModelVersion:
        props = decode_properties(desc.get("CustomerMetadataProperties"))
        history = []
        for item in props.get("approval_history", "").split():
            status, _, at = item.partition("@")
            history.append({"status": status, "note": "", "at": float(at or 0)})
        if history:
            history[-1]["note"] = desc.get("ApprovalDescription", "") or ""
        modified = desc.get("LastModifiedTime") or desc.get("CreationTime")
        containers = desc.get("InferenceSpecification", {}).get("Containers") or [{}]
        deployed = deployed_arn is not None and desc["ModelPackageArn"] == deployed_arn
        return ModelVersion(
            name=name, version=str(desc.get("ModelPackageVersion")),
            package_uri=containers[0].get("ModelDataUrl", ""), approval_status=desc.get("ModelApprovalStatus", PENDING),
            metrics={k[len("metric."):]: float(v) for k, v in props.items() if k.startswith("metric.")},
            lineage={k[len("lineage."):]: v for k, v in props.items() if k.startswith("lineage.")},
            created_at=desc["CreationTime"].timestamp() if desc.get("CreationTime") else 0.0,
            approval_note=desc.get("ApprovalDescription", "") or "",
            approval_updated_at=history[-1]["at"] if history else (modified.timestamp() if modified else None),
            approval_history=history, deployed=deployed,
            deployed_at=float(props["deployed_at"]) if deployed and props.get("deployed_at") else None,
            tracking_run_id=props.get("lineage.training_job") or None,
            serving={k[len("serving."):]: v for k, v in props.items() if k.startswith("serving.")})

    @staticmethod
    def _deployed_arn(descs: list[dict]) -> str | None:
        # The deployed version is the one most recently marked deployed (a rollback marks an older one later).
        marked = [(float(p["deployed_at"]), d["ModelPackageArn"]) for d in descs
                  if (p := decode_properties(d.get("CustomerMetadataProperties"))).get("deployed_at")]
        return max(marked)[1] if marked else None

    def _update(self, desc: dict, props: dict[str, str], **changes) -> None:
        # CustomerMetadataProperties merges on SageMaker; moto replaces them: send them all.
        current = decode_properties(desc.get("CustomerMetadataProperties"))
        if desc.get("ModelApprovalStatus"):  # moto clears a status an update leaves out; SageMaker keeps it
            changes.setdefault("ModelApprovalStatus", desc["ModelApprovalStatus"])
        self.sm.update_model_package(ModelPackageArn=desc["ModelPackageArn"],
                                     CustomerMetadataProperties=encode_properties({**current, **props}),
                                     ApprovalDescription=changes.pop("ApprovalDescription",
                                                                     desc.get("ApprovalDescription", "") or ""),
                                     **changes)

    # ------------------------------------------------------------ interface
    def register(self, package_uri: str, metrics: dict, lineage: dict,
                 approval_status: str = PENDING) -> ModelVersion:
        """See :meth:`ModelRegistry.register`. ``lineage["evaluation_uri"]`` (evaluation.json on
        S3), when given, becomes the package's ModelMetrics."""
        check_status(approval_status)
        metrics, lineage = _clean_metrics(metrics), _clean_lineage(lineage)
        evaluation_uri = lineage.get("evaluation_uri", "")
        if not package_uri.startswith("s3://") or (evaluation_uri and not evaluation_uri.startswith("s3://")):
            raise RegistryError(f"package_uri {package_uri!r} and lineage evaluation_uri {evaluation_uri!r} must be "
                                "s3:// URIs: SageMaker serves the package and reads the metrics from S3")
        key = registration_key(lineage["dag_id"], lineage["run_id"])
        existing = self.find_by_run(lineage["dag_id"], lineage["run_id"])
        if existing is not None:
            logger.info("run %s of %s already registered as version %s of %s; not adding another",
                        lineage["run_id"], lineage["dag_id"], existing.version, self.group)
            return existing
        self._ensure_group()
        now = time.time()
        props = {"registration_key": key, "approval_history": f"{approval_status}@{now:.0f}",
                 **{f"lineage.{k}": v for k, v in lineage.items()},
                 # headline metrics only (accuracy, macro_f1, ...): the full set is evaluation.json
                 **{f"metric.{k}": repr(v) for k, v in metrics.items() if "." not in k}}
        request = {
            "ModelPackageGroupName": self.group,
            "ModelPackageDescription": f"{lineage['dag_id']} run {lineage['run_id']}"[:1024],
            "InferenceSpecification": {
                "Containers": [{"Image": inference_image_uri(self.cfg), "ModelDataUrl": package_uri,
                                "Environment": serving_environment()}],
                "SupportedContentTypes": CONTENT_TYPES, "SupportedResponseMIMETypes": CONTENT_TYPES,
                "SupportedRealtimeInferenceInstanceTypes": [self.cfg.endpoint_instance_type]},
            "ModelApprovalStatus": approval_status,
            "CustomerMetadataProperties": encode_properties(props),
            "Domain": "NATURAL_LANGUAGE_PROCESSING", "Task": "CLASSIFICATION",
            "ClientToken": key,
        }
        if evaluation_uri:
            request["ModelMetrics"] = {"ModelQuality": {"Statistics": {"ContentType": "application/json",
                                                                       "S3Uri": evaluation_uri}}}
        else:
            logger.warning("registering without ModelMetrics: the lineage names no evaluation_uri")
        if lineage.get("git_commit"):
            request["MetadataProperties"] = {"CommitId": lineage["git_commit"][:1024],
                                             "GeneratedBy": lineage.get("training_job", "")[:1024] or "unknown"}
        arn = self.sm.create_model_package(**request)["ModelPackageArn"]
        version = self._to_version(self.sm.describe_model_package(ModelPackageName=arn), self.name)
        logger.info("registered %s version %s (%s) from %s", self.group, version.version, approval_status, package_uri)
        return version

    def find_by_run(self, dag_id: str, run_id: str) -> ModelVersion | None:
        """See :meth:`ModelRegistry.find_by_run` (looks at ``registration_key``)."""
        key = registration_key(dag_id, run_id)
        for desc in reversed(self._descriptions()):
            if decode_properties(desc.get("CustomerMetadataProperties")).get("registration_key") == key:
                return self._to_version(desc, self.name)
        return None

    def set_approval(self, version: str, status: str, note: str = "") -> ModelVersion:
        """See :meth:`ModelRegistry.set_approval`: ``ModelApprovalStatus`` + ``ApprovalDescription``."""
        check_status(status)
        desc = self._describe(version)
        props = decode_properties(desc.get("CustomerMetadataProperties"))
        history = (props.get("approval_history", "").split() + [f"{status}@{time.time():.0f}"])[-_HISTORY_KEEP:]
        self._update(desc, {"approval_history": " ".join(history)}, ModelApprovalStatus=status,
                     ApprovalDescription=note[:1024])
        logger.info("%s version %s: %s -> %s (%s)", self.group, version, desc.get("ModelApprovalStatus"), status, note)
        return self.get(version)

    def get(self, version: str) -> ModelVersion:
        """See :meth:`ModelRegistry.get`."""
        desc = self._describe(version)
        deployed = self._deployed_arn(self._descriptions()) if decode_properties(
            desc.get("CustomerMetadataProperties")).get("deployed_at") else None
        return self._to_version(desc, self.name, deployed)

    def list_versions(self) -> list[ModelVersion]:
        """See :meth:`ModelRegistry.list_versions`."""
        descs = self._descriptions()
        deployed = self._deployed_arn(descs)
        return [self._to_version(d, self.name, deployed) for d in descs]

    def mark_deployed(self, version: str) -> ModelVersion:
        """See :meth:`ModelRegistry.mark_deployed` (``deployed_at`` metadata; the newest one is deployed)."""
        desc = self._describe(version)
        if desc.get("ModelApprovalStatus") != APPROVED:
            raise RegistryError(f"version {version} is {desc.get('ModelApprovalStatus')}, not Approved; "
                                "approve it before marking it deployed")
        self._update(desc, {"deployed_at": f"{time.time():.6f}"})
        return self.get(version)

    def set_serving(self, version: str, decision: dict) -> ModelVersion:
        """See :meth:`ModelRegistry.set_serving` (``serving.<key>`` metadata)."""
        desc = self._describe(version)
        self._update(desc, {f"serving.{k}": "" if v is None else str(v) for k, v in decision.items()})
        return self.get(version)

    def deployed_version(self) -> ModelVersion | None:
        """See :meth:`ModelRegistry.deployed_version`."""
        descs = self._descriptions()
        arn = self._deployed_arn(descs)
        return next((self._to_version(d, self.name, arn) for d in descs if d["ModelPackageArn"] == arn), None)
