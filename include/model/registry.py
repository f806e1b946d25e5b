"""Model registry: versions of ``review-sentiment-bert`` with metrics, lineage and approval status.

:class:`ModelRegistry` is the small interface the pipeline uses; :class:`MlflowModelRegistry`
implements it on MLflow's model registry (SQLite backend store and local artifact root under
``Settings.mlflow_dir``); :class:`include.model.sagemaker_registry.SageMakerModelRegistry` on the
SageMaker Model Registry (model package group, ``ModelApprovalStatus``) for the aws backend.
:func:`get_registry` picks one from the backend.

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

import contextlib
import hashlib
import json
import logging
import math
import re
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path

from include.common.config import get_settings
from include.common.locks import file_lock

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


class MlflowModelRegistry(ModelRegistry):
    """:class:`ModelRegistry` on MLflow's model registry (SQLite backend, local artifacts)."""

    def __init__(self, tracking_uri: str, artifact_root: Path, name: str = MODEL_NAME,
                 lock_path: Path | None = None) -> None:
        from mlflow.tracking import MlflowClient  # heavy import: only when a registry is used

        self.name = name
        self.tracking_uri = tracking_uri
        self.artifact_root = Path(artifact_root)
        self.artifact_root.mkdir(parents=True, exist_ok=True)
        self._lock_path = lock_path or self.artifact_root.parent / "registry.lock"
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # ------------------------------------------------------------ helpers
    def _locked(self) -> contextlib.AbstractContextManager:
        # Check-then-create must not interleave between two processes registering the same run.
        return file_lock(self._lock_path)

    def _ensure_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self._client.get_registered_model(self.name)
        except MlflowException:
            self._client.create_registered_model(
                self.name, description="BERT (all-MiniLM-L6-v2) review sentiment classifier: "
                                       "negative / neutral / positive")

    def _experiment_id(self) -> str:
        exp = self._client.get_experiment_by_name(EXPERIMENT_NAME)
        if exp is not None:
            return exp.experiment_id
        return self._client.create_experiment(EXPERIMENT_NAME, artifact_location=self.artifact_root.as_uri())

    def _search(self, extra: str = "") -> list:
        query = f"name = '{self.name}'" + (f" and {extra}" if extra else "")
        return list(self._client.search_model_versions(query, max_results=10_000))

    def _deployed_number(self) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            aliases = self._client.get_registered_model(self.name).aliases or {}
        except MlflowException:
            return None
        return str(aliases[DEPLOYED_ALIAS]) if DEPLOYED_ALIAS in aliases else None

    def _to_version(self, mv, deployed_number: str | None = None) -> ModelVersion:
        # search results carry no aliases; callers listing many versions pass the alias target once
        tags = dict(mv.tags or {})
        deployed = DEPLOYED_ALIAS in (getattr(mv, "aliases", None) or []) or str(mv.version) == deployed_number

        def _float(key: str) -> float | None:
            return float(tags[key]) if tags.get(key) else None

        return ModelVersion(
            name=mv.name, version=str(mv.version), package_uri=tags.get("package_uri", mv.source),
            approval_status=tags.get("approval_status", PENDING),
            metrics={k[len(_METRIC):]: float(v) for k, v in tags.items() if k.startswith(_METRIC)},
            lineage={k[len(_LINEAGE):]: v for k, v in tags.items() if k.startswith(_LINEAGE)},
            created_at=(mv.creation_timestamp or 0) / 1000.0,
            approval_note=tags.get("approval_note", ""),
            approval_updated_at=_float("approval_updated_at"),
            approval_history=json.loads(tags.get("approval_history", "[]")),
            deployed=deployed, deployed_at=_float("deployed_at") if deployed else None,
            tracking_run_id=mv.run_id or None,
            serving={k[len(_SERVING):]: v for k, v in tags.items() if k.startswith(_SERVING)})

    def _raw(self, version: str):
        from mlflow.exceptions import MlflowException

        try:
            return self._client.get_model_version(self.name, str(version))
        except MlflowException:
            raise ModelVersionNotFoundError(
                f"model {self.name!r} has no version {version!r} (registry {self.tracking_uri}); "
                "list them with list_versions()") from None

    # ------------------------------------------------------------ interface
    def register(self, package_uri: str, metrics: dict, lineage: dict,
                 approval_status: str = PENDING) -> ModelVersion:
        """See :meth:`ModelRegistry.register`; also logs an MLflow run with the metrics."""
        from mlflow.entities import Metric, RunTag

        check_status(approval_status)
        metrics, lineage = _clean_metrics(metrics), _clean_lineage(lineage)
        key = registration_key(lineage["dag_id"], lineage["run_id"])
        with self._locked():
            existing = self._search(f"tags.registration_key = '{key}'")
            if existing:
                mv = max(existing, key=lambda m: int(m.version))
                logger.info("run %s of %s already registered as version %s; not adding another",
                            lineage["run_id"], lineage["dag_id"], mv.version)
                return self.get(mv.version)
            self._ensure_model()
            exp_id = self._experiment_id()
            # Reuse the run of an attempt that died before creating the version.
            runs = self._client.search_runs([exp_id], f"tags.registration_key = '{key}'", max_results=1)
            now = time.time()
            if runs:
                run_id = runs[0].info.run_id
            else:
                run = self._client.create_run(exp_id, run_name=f"register {lineage['dag_id']} {lineage['run_id']}",
                                              tags={"registration_key": key})
                run_id = run.info.run_id
                self._client.log_batch(
                    run_id, metrics=[Metric(k, v, int(now * 1000), 0) for k, v in metrics.items()],
                    tags=[RunTag(_LINEAGE + k, v) for k, v in lineage.items()]
                    + [RunTag("package_uri", package_uri)])
                self._client.set_terminated(run_id)
            history = [{"status": approval_status, "note": "registered", "at": now}]
            tags = {"approval_status": approval_status, "approval_note": "", "approval_updated_at": str(now),
                    "approval_history": json.dumps(history), "package_uri": package_uri,
                    "registration_key": key,
                    **{_LINEAGE + k: v for k, v in lineage.items()},
                    **{_METRIC + k: repr(v) for k, v in metrics.items()}}
            mv = self._client.create_model_version(
                self.name, source=package_uri, run_id=run_id, tags=tags,
                description=f"{lineage['dag_id']} run {lineage['run_id']}" + "".join(
                    f"; evaluation report: {lineage[k]}" for k in ("evaluation_report_url", "evaluation_report_uri")
                    if lineage.get(k)))
        logger.info("registered %s version %s (%s) from %s", self.name, mv.version, approval_status, package_uri)
        return self._to_version(mv)

    def find_by_run(self, dag_id: str, run_id: str) -> ModelVersion | None:
        """See :meth:`ModelRegistry.find_by_run`."""
        found = self._search(f"tags.registration_key = '{registration_key(dag_id, run_id)}'")
        return self.get(max(found, key=lambda m: int(m.version)).version) if found else None

    def set_approval(self, version: str, status: str, note: str = "") -> ModelVersion:
        """See :meth:`ModelRegistry.set_approval`; every change is appended to ``approval_history``."""
        check_status(status)
        with self._locked():
            current = self._to_version(self._raw(version))
            now = time.time()
            history = current.approval_history + [{"status": status, "note": note, "at": now}]
            for key, value in (("approval_status", status), ("approval_note", note),
                               ("approval_updated_at", str(now)), ("approval_history", json.dumps(history))):
                self._client.set_model_version_tag(self.name, str(version), key, value)
        logger.info("%s version %s: %s -> %s (%s)", self.name, version, current.approval_status, status, note)
        return self.get(version)

    def get(self, version: str) -> ModelVersion:
        """See :meth:`ModelRegistry.get`."""
        return self._to_version(self._raw(version))

    def list_versions(self) -> list[ModelVersion]:
        """See :meth:`ModelRegistry.list_versions`."""
        deployed = self._deployed_number()
        return sorted((self._to_version(mv, deployed) for mv in self._search()), key=lambda v: int(v.version))

    def mark_deployed(self, version: str) -> ModelVersion:
        """See :meth:`ModelRegistry.mark_deployed`; moves the ``deployed`` alias."""
        with self._locked():
            current = self.get(version)
            if current.approval_status != APPROVED:
                raise RegistryError(f"version {version} is {current.approval_status}, not Approved; "
                                    "approve it before marking it deployed")
            self._client.set_model_version_tag(self.name, str(version), "deployed_at", str(time.time()))
            self._client.set_registered_model_alias(self.name, DEPLOYED_ALIAS, str(version))
        return self.get(version)

    def set_serving(self, version: str, decision: dict) -> ModelVersion:
        """See :meth:`ModelRegistry.set_serving`; version tags ``serving.<key>`` (replaced per deploy)."""
        with self._locked():
            self._raw(version)  # a clear error for an unknown version
            for key, value in decision.items():
                self._client.set_model_version_tag(self.name, str(version), _SERVING + str(key),
                                                   "" if value is None else str(value))
        return self.get(version)

    def deployed_version(self) -> ModelVersion | None:
        """See :meth:`ModelRegistry.deployed_version`."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self._client.get_model_version_by_alias(self.name, DEPLOYED_ALIAS)
        except MlflowException:
            return None
        return self._to_version(mv)


def registry_exists() -> bool:
    """Whether there can be any version yet: on ``local``, whether MLflow's store was created (asking
    would create it); on ``aws`` the SageMaker registry is asked (a missing group lists none)."""
    settings = get_settings()
    return settings.backend != "local" or (settings.mlflow_dir / "mlflow.db").exists()


def get_registry(name: str = MODEL_NAME) -> ModelRegistry:
    """The registry of the configured backend (``local``: MLflow under the state dir; ``aws``:
    the SageMaker Model Registry group of the aws config).

    ``name`` picks the registered model: the BERT models (default) or ``BASELINE_MODEL_NAME``.
    """
    settings = get_settings()
    if settings.backend == "local":
        settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
        return MlflowModelRegistry(settings.mlflow_tracking_uri, settings.mlflow_dir / "artifacts", name=name)
    from include.common.aws import load_aws_config
    from include.model.sagemaker_registry import SageMakerModelRegistry

    return SageMakerModelRegistry(load_aws_config().validate(), name=name)
