"""The local backend's model registry: :class:`MlflowModelRegistry` on MLflow's model registry
(SQLite backend store, local artifact root under ``Settings.mlflow_dir``); how a version is
stored is described in ``registry_base.py``."""
from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

from include.common.locks import file_lock
from include.model.registry_base import (
    _LINEAGE,
    _METRIC,
    _SERVING,
    APPROVED,
    DEPLOYED_ALIAS,
    EXPERIMENT_NAME,
    MODEL_NAME,
    PENDING,
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
