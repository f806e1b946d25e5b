"""Model registry: versions of ``review-sentiment-bert`` with metrics, lineage and approval status.

:class:`ModelRegistry` (this module) is the small interface the pipeline uses, with the helpers both
backends share; :class:`include.model.registry_mlflow.MlflowModelRegistry` implements it on
MLflow's model registry (SQLite backend store and local artifact root under
``Settings.mlflow_dir``); :class:`include.model.registry_sagemaker.SageMakerModelRegistry` on the
SageMaker Model Registry (model package group, ``ModelApprovalStatus``) for the aws backend.
:func:`include.model.registry.get_registry` picks one from the backend.

Approval statuses use SageMaker's model package vocabulary: ``PendingManualApproval``,
``Approved``, ``Rejected``.

How a version is stored in MLflow:

* the model version's ``source`` is the package URI (``model.tar.gz``); it is linked to an
  MLflow run (experiment ``review-sentiment-bert-registry``) holding the metrics as run metrics;
* version tags: ``approval_status``, ``approval_note``, ``approval_updated_at``,
  ``approval_history`` (JSON list), ``package_uri``, ``registration_key``,
  ``lineage.<key>`` for each lineage item (dag_id, run_id, ds, feature snapshot, git commit,
  job names, ...) and ``metric.<name>`` for each metric;
* the alias ``deployed`` points at the version the endpoint serves.

Registration is idempotent per (dag_id, run_id): ``registration_key`` is a hash of the pair,
looked up under a file lock before a version is created.
"""
from __future__ import annotations

import hashlib
import logging
import math
import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field

logger = logging.getLogger(__name__)

MODEL_NAME = "review-sentiment-bert"
BASELINE_MODEL_NAME = "review-sentiment-baseline"  # the AutoML baselines (review_automl_baseline DAG)
EXPERIMENT_NAME = "review-sentiment-bert-registry"
PENDING, APPROVED, REJECTED = "PendingManualApproval", "Approved", "Rejected"
APPROVAL_STATUSES = (PENDING, APPROVED, REJECTED)
REQUIRED_LINEAGE = ("dag_id", "run_id")
DEPLOYED_ALIAS = "deployed"
_LINEAGE, _METRIC, _SERVING = "lineage.", "metric.", "serving."


class RegistryError(RuntimeError):
    """The registry cannot do what was asked; the message says why and what to do."""


class ModelVersionNotFoundError(RegistryError, LookupError):
    """No such version of the registered model."""


class InvalidApprovalStatusError(RegistryError, ValueError):
    """An approval status outside PendingManualApproval / Approved / Rejected."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered version, as the pipeline sees it (backend-neutral)."""

    name: str
    version: str
    package_uri: str
    approval_status: str
    metrics: dict[str, float] = field(default_factory=dict)
    lineage: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    approval_note: str = ""
    approval_updated_at: float | None = None
    approval_history: list[dict] = field(default_factory=list)
    deployed: bool = False
    deployed_at: float | None = None
    tracking_run_id: str | None = None  # the backend's own run / job id, when it has one
    serving: dict[str, str] = field(default_factory=dict)  # how a deploy serves it (precision + its evidence)

    def to_dict(self) -> dict:
        """Plain dict (JSON-serialisable, e.g. for XCom)."""
        return asdict(self)


def check_status(status: str) -> str:
    """``status`` if it is a known approval status, else :class:`InvalidApprovalStatusError`."""
    if status not in APPROVAL_STATUSES:
        raise InvalidApprovalStatusError(
            f"approval status {status!r} is not one of {', '.join(APPROVAL_STATUSES)}")
    return status


def registration_key(dag_id: str, run_id: str) -> str:
    """Stable id of one pipeline run's registration (any characters in the run id are fine)."""
    return hashlib.sha256(f"{dag_id}\0{run_id}".encode()).hexdigest()[:32]


def flatten_evaluation(evaluation: dict) -> dict[str, float]:
    """Numeric leaves of ``evaluation.json`` as flat metric names.

    ``{"metrics": {"accuracy": {"value": 0.7}}}`` -> ``{"accuracy": 0.7}``; other sections keep
    their path (``multiclass_classification_metrics.negative.f1``); lists (the confusion
    matrix) are left out. An already-flat ``{"accuracy": 0.7}`` passes through.
    """
    out: dict[str, float] = {}

    def walk(prefix: str, node: object) -> None:
        if isinstance(node, bool):
            return
        if isinstance(node, (int, float)):
            if math.isfinite(node):
                out[re.sub(r"[^0-9A-Za-z_.\-/ ]", "_", prefix)] = float(node)
        elif isinstance(node, dict):
            if isinstance(node.get("value"), (int, float)) and not isinstance(node.get("value"), bool):
                walk(prefix, node["value"])
                return
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)

    for key, value in (evaluation or {}).items():
        walk("" if key == "metrics" else key, value)
    return out


def _clean_metrics(metrics: dict) -> dict[str, float]:
    out = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RegistryError(f"metric {key!r}={value!r}: metrics must be finite numbers "
                                "(flatten evaluation.json first, e.g. accuracy -> 0.69)")
        out[str(key)] = float(value)
    return out


def _clean_lineage(lineage: dict) -> dict[str, str]:
    missing = [k for k in REQUIRED_LINEAGE if not (lineage or {}).get(k)]
    if missing:
        raise RegistryError(f"lineage lacks {', '.join(missing)}: pass the Airflow dag_id and run_id "
                            "(they make registration idempotent)")
    return {str(k): "" if v is None else str(v) for k, v in lineage.items()}


class ModelRegistry(ABC):
    """What the pipeline needs from a model registry (one registered model)."""

    name: str = MODEL_NAME

    @abstractmethod
    def register(self, package_uri: str, metrics: dict, lineage: dict,
                 approval_status: str = PENDING) -> ModelVersion:
        """Add the package as a new version, or return the version already registered for
        ``(lineage["dag_id"], lineage["run_id"])``."""

    @abstractmethod
    def find_by_run(self, dag_id: str, run_id: str) -> ModelVersion | None:
        """The version registered by this pipeline run, if any."""

    @abstractmethod
    def set_approval(self, version: str, status: str, note: str = "") -> ModelVersion:
        """Set a version's approval status (with a note saying who/why)."""

    @abstractmethod
    def get(self, version: str) -> ModelVersion:
        """One version; :class:`ModelVersionNotFoundError` if there is none."""

    @abstractmethod
    def list_versions(self) -> list[ModelVersion]:
        """All versions, oldest first."""

    @abstractmethod
    def mark_deployed(self, version: str) -> ModelVersion:
        """Record that the endpoint now serves ``version`` (must be Approved)."""

    @abstractmethod
    def deployed_version(self) -> ModelVersion | None:
        """The version the endpoint serves, if one was ever deployed."""

    @abstractmethod
    def set_serving(self, version: str, decision: dict) -> ModelVersion:
        """Record how the endpoint serves ``version`` (``precision``, both accuracies, ...)."""

    def previous_approved(self, version: str) -> ModelVersion | None:
        """The newest Approved version older than ``version`` (the rollback target), if any."""
        older = [v for v in self.list_versions()
                 if v.approval_status == APPROVED and int(v.version) < int(version)]
        return older[-1] if older else None

    def latest_approved(self) -> ModelVersion | None:
        """The newest Approved version, if any."""
        approved = [v for v in self.list_versions() if v.approval_status == APPROVED]
        return approved[-1] if approved else None

    def get_approval(self, version: str) -> str:
        """A version's approval status."""
        return self.get(version).approval_status
