"""Steps 7-9 of ``review_sentiment_pipeline``: register, approve or reject, deploy.

Each is idempotent (a re-run of the same Airflow run registers no second version; deploying
the version already served only smoke-tests it) and returns a small JSON-able dict for XCom.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from include.common.errors import NonRetriableError
from include.common.io import local_copy, read_json
from include.model.packaging import build_package, extract_package, model_dir_from_artifact
from include.model.registry import get_registry
from include.model.registry_base import (
    APPROVED,
    PENDING,
    REJECTED,
    REQUIRED_LINEAGE,
    ModelVersion,
    RegistryError,
    flatten_evaluation,
)
from include.pipeline.context import RunInfo, git_commit
from include.serving import quantization
from include.serving.endpoint import get_endpoint
from include.serving.endpoint_base import EndpointDeployError
from include.serving.protocol import PRECISIONS, SMOKE_REVIEWS

log = logging.getLogger("airflow.task")


class ModelNotApprovedError(NonRetriableError, RegistryError):
    """A version that is not Approved was asked to be deployed."""


class RollbackError(NonRetriableError, RegistryError):
    """There is no version to roll back to."""


def summary(version: ModelVersion, created: bool | None = None) -> dict:
    """The XCom-sized view of a registered version."""
    out = {"model_name": version.name, "version": version.version, "approval_status": version.approval_status,
           "package_uri": version.package_uri, "metrics": version.metrics}
    if created is not None:
        out["created"] = created
    return out


def run_lineage(info: RunInfo, registered: dict, features: dict, trained: dict, evaluation: dict) -> dict:
    """What a registered version records about the run that made it."""
    return {
        "dag_id": info.dag_id, "run_id": info.run_id, "ds": info.ds,
        "partitions": ",".join(registered["partitions"]),
        "feature_group": features["feature_snapshot"]["feature_group"],
        "feature_snapshot_id": features["feature_snapshot"]["snapshot_id"],
        "git_commit": git_commit(),
        "preprocess_job": features["job"]["job_name"], "training_job": trained["job"]["job_name"],
        "evaluation_job": evaluation["job"]["job_name"], "evaluation_uri": evaluation["evaluation_uri"],
        "train_data_uri": features["train_uri"], "clean_data_uri": features["export_uri"],
        # what the approval request and the registry entry show a reviewer
        "data_from": features.get("data_from", ""), "data_to": features.get("data_to", ""),
        "clean_rows": str(features.get("clean_rows", "")),
        "evaluation_report_uri": evaluation.get("report_uri", ""),
        "evaluation_report_url": evaluation.get("report_url", ""),
    }


def register_model(model_artifact_uri: str, evaluation: dict, lineage: dict, auto_approve: bool,
                   package_dest_uri: str) -> dict:
    """Step 7: package the trained model and register it as a new version (once per dag run).

    ``lineage`` must carry ``dag_id`` and ``run_id`` (see :func:`run_lineage`). Returns
    ``{"model_name", "version", "approval_status", "package_uri", "metrics", "created"}``;
    ``created`` is false when this run had already registered its version (the package is
    then not rebuilt, so a registered version's package never changes).
    """
    missing = [k for k in REQUIRED_LINEAGE if not (lineage or {}).get(k)]
    if missing:
        raise RegistryError(f"lineage lacks {', '.join(missing)}: pass the Airflow dag_id and run_id")
    registry = get_registry()
    existing = registry.find_by_run(lineage["dag_id"], lineage["run_id"])
    if existing is not None:
        log.info("run %s already registered version %s (%s); nothing to do",
                 lineage["run_id"], existing.version, existing.approval_status)
        return summary(existing, created=False)
    metrics = flatten_evaluation(evaluation)
    with tempfile.TemporaryDirectory(prefix="register-model-") as tmp:
        # the int8 ONNX model is built here, once per version, and pinned by the package manifest;
        # whether it may serve is decided at each deploy (choose_precision)
        package_uri = build_package(model_dir_from_artifact(model_artifact_uri, Path(tmp)), package_dest_uri,
                                    int8_onnx=True)
    status = APPROVED if auto_approve else PENDING
    version = registry.register(package_uri, metrics,
                                {**lineage, "model_artifact_uri": model_artifact_uri, "package_uri": package_uri,
                                 "auto_approve": str(bool(auto_approve)).lower()}, status)
    log.info("registered version %s as %s with %d metrics (accuracy %s)", version.version,
             version.approval_status, len(metrics), metrics.get("accuracy"))
    return summary(version, created=True)


def register_run_model(info: RunInfo, registered: dict, features: dict, trained: dict, evaluation: dict,
                       auto_approve: bool) -> dict:
    """Step 7 for a pipeline run: the run's model, evaluation report and lineage."""
    from include.pipeline.automl_steps import read_decision

    report = read_json(evaluation["evaluation_uri"])
    lineage = run_lineage(info, registered, features, trained, evaluation)
    # check_accuracy's champion/challenger decision and its three numbers go into the registry entry.
    lineage.update({f"gate_{k}": v for k, v in read_decision(info).items()
                    if k in ("decision", "note", "accuracy", "champion", "champion_version", "baseline",
                             "baseline_version", "min_improvement")})
    return register_model(trained["model_uri"], report, lineage, auto_approve,
                          info.uri("register_model") + "/model.tar.gz")


def approve_model(version: str, note: str = "") -> dict:
    """Step 8 (Approve): mark ``version`` Approved."""
    return summary(get_registry().set_approval(version, APPROVED, note))


def reject_model(version: str, note: str = "") -> dict:
    """Step 8 (Reject): mark ``version`` Rejected with the reviewer's note; it can never be deployed."""
    return summary(get_registry().set_approval(version, REJECTED, note))


def deployed_accuracy() -> float | None:
    """Test accuracy of the version the endpoint serves now (None when nothing is deployed)."""
    deployed = get_registry().deployed_version()
    return deployed.metrics.get("accuracy") if deployed else None


def test_split_uri(mv: ModelVersion) -> str | None:
    """Where the run that made ``mv`` left its test split (beside its training split)."""
    train = mv.lineage.get("train_data_uri", "")
    return train[: -len("/train")] + "/test" if train.endswith("/train") else None


def choose_precision(mv: ModelVersion, max_drop_points: float = quantization.MAX_DROP_POINTS) -> dict:
    """fp32 or int8 for ``mv``: int8 only within ``max_drop_points`` of fp32 on the run's test split."""
    test_uri = test_split_uri(mv)
    try:
        if not test_uri:
            raise FileNotFoundError("no train_data_uri in the lineage")
        with local_copy(test_uri) as folder:  # s3://: downloaded for the check
            if not folder.is_dir():
                raise FileNotFoundError(test_uri)
            texts, labels = quantization.load_test_split(folder.as_uri())
    except FileNotFoundError:
        log.warning("version %s: no test split recorded (%s); serving fp32 without the int8 check", mv.version, test_uri)
        return {"precision": "fp32", "reason": f"no test split at {test_uri}"}
    with tempfile.TemporaryDirectory(prefix="precision-check-") as tmp:
        model_dir = extract_package(mv.package_uri, Path(tmp) / "model")
        decision = quantization.choose_precision(model_dir, texts, labels, max_drop_points)
    return {**decision, "test_uri": test_uri}


def deploy_model(version: str, smoke_texts: list[str] | tuple[str, ...] = SMOKE_REVIEWS, port: int | None = None,
                 timeout_s: float = 120, precision: str = "auto") -> dict:
    """Step 9: serve an Approved ``version`` on the endpoint and record it as deployed.

    ``precision="auto"`` measures the int8 model against fp32 on the run's test split and serves
    int8 only when it is within half a point (the decision and both accuracies are written to the
    registry entry, ``serving.*`` tags, and to the log); ``fp32``/``int8`` force it.
    Refuses (:class:`ModelNotApprovedError`) unless the registry says Approved. On a failed
    load or smoke test the previous version keeps serving and the error propagates (the
    task fails with the reason). Returns the endpoint info (url, pid, version, smoke answers).
    """
    if precision not in ("auto", *PRECISIONS):
        raise EndpointDeployError(f"precision={precision!r}: use auto, {' or '.join(PRECISIONS)}")
    registry = get_registry()
    mv = registry.get(version)
    if mv.approval_status != APPROVED:
        raise ModelNotApprovedError(f"version {version} of {mv.name} is {mv.approval_status}, not Approved; "
                                    "approve it (approve_model task) before deploying")
    decision = choose_precision(mv) if precision == "auto" else {"precision": precision, "reason": "forced"}
    info = get_endpoint().deploy(mv.package_uri, mv.version, list(smoke_texts or SMOKE_REVIEWS), port=port,
                                 timeout_s=timeout_s, precision=decision["precision"])
    registry.mark_deployed(mv.version)
    registry.set_serving(mv.version, decision)
    log.info("version %s serves at %s (pid %s, %s, %s in %.1fs); precision decision: %s", mv.version, info["url"],
             info["pid"], decision["precision"], info["mode"], info["seconds"], json.dumps(decision))
    return {**info, "model_name": mv.name, "approval_status": mv.approval_status, "precision_decision": decision}


def trained_through(mv: ModelVersion) -> str:
    """The last data day (``YYYY-MM-DD``) a version was trained on, from its registry lineage."""
    return mv.lineage.get("data_to") or mv.lineage.get("ds") or ""


def deploy_run_model(version: str, **kwargs) -> dict:
    """Step 9 for a pipeline run: :func:`deploy_model`, unless the deployed version was trained on
    newer data than ``version`` - a backfill (a run for an older logical date) registers its model
    but never moves production backwards. Then nothing is deployed, the log says why and the
    result has ``deployed: false`` with the reason. Equal days deploy (a re-run of the same day).
    """
    registry = get_registry()
    candidate, current = registry.get(version), registry.deployed_version()
    if current is not None and current.version != candidate.version:
        ours, theirs = trained_through(candidate), trained_through(current)
        if ours and theirs and ours < theirs:
            reason = (f"version {candidate.version} was trained on data up to ds={ours}, older than the deployed "
                      f"version {current.version} (data up to ds={theirs}): registered, not deployed - a backfill "
                      "never moves production backwards")
            log.warning("%s", reason)
            return {"deployed": False, "version": candidate.version, "model_name": candidate.name,
                    "approval_status": candidate.approval_status, "serving_version": current.version,
                    "reason": reason}
        if not (ours and theirs):
            log.info("version %s or the deployed %s records no data_to/ds: deploying without the recency check",
                     candidate.version, current.version)
    return {**deploy_model(version, **kwargs), "deployed": True}


def rollback_model(to_version: str = "", port: int | None = None, timeout_s: float = 120) -> dict:
    """Serve the newest Approved version older than the deployed one again (``make rollback``).

    ``to_version`` picks another (older, Approved) version instead. Its precision is re-decided
    like any deploy. Raises :class:`RollbackError` when nothing is deployed or no older Approved
    version exists (:class:`ModelNotApprovedError` for a ``to_version`` that is not Approved).
    """
    registry = get_registry()
    current = registry.deployed_version()
    if current is None:
        raise RollbackError("nothing is deployed yet, so there is nothing to roll back from")
    if to_version:
        target = registry.get(to_version)
        if int(target.version) >= int(current.version):
            raise RollbackError(f"to_version={to_version}: a rollback goes to a version older than the deployed "
                                f"{current.version}; deploy newer versions through the pipeline")
    else:
        target = registry.previous_approved(current.version)
    if target is None:
        raise RollbackError(f"version {current.version} is deployed and no older version is Approved; "
                            "nothing to roll back to")
    log.info("rolling back from version %s to version %s", current.version, target.version)
    return {**deploy_model(target.version, port=port, timeout_s=timeout_s), "rolled_back_from": current.version}
