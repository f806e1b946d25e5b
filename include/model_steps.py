"""Task-level steps of the model's path to production: register, approve/reject, deploy.

The DAG's ``register_model``, ``approve_model`` and ``deploy_model`` tasks call these; each
is idempotent (a re-run of the same Airflow run registers no second version; deploying the
version already served only smoke-tests it) and returns a small JSON-able dict for XCom.
"""
from __future__ import annotations

import logging
import math
import re
import tarfile
import tempfile
from pathlib import Path

from include import endpoint
from include.config import uri_to_path
from include.packaging import PackagingError, build_package
from include.registry import APPROVED, PENDING, REJECTED, REQUIRED_LINEAGE, RegistryError, get_registry

logger = logging.getLogger(__name__)

# Real reviews from the Women's E-Commerce Clothing Reviews data (CC0): 5, 3 and 1 stars.
SMOKE_REVIEWS = [
    "I love, love, love this jumpsuit. it's fun, flirty, and fabulous! every time i wear it, "
    "i get nothing but great compliments!",
    "This tank fit well and i loved the ruffle in the back and how it layed. but the front was not "
    "a good look and i will be retuning it.",
    "These run very small!! they are also short, almost like a crop pant. the fit was so weird that "
    "i won't even exchange for a bigger size.",
]


class ModelNotApprovedError(RegistryError):
    """A version that is not Approved was asked to be deployed."""


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


def _model_dir_from_artifact(model_artifact_uri: str, workdir: Path) -> Path:
    """Unpack the training job's model.tar.gz; the save_pretrained folder is at its root."""
    src = uri_to_path(model_artifact_uri)
    if not src.is_file():
        raise PackagingError(f"{model_artifact_uri}: no such model artifact (the training job's model.tar.gz)")
    try:
        with tarfile.open(src, "r:*") as tar:
            tar.extractall(workdir, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise PackagingError(f"{model_artifact_uri}: cannot be unpacked ({exc})") from None
    if (workdir / "config.json").is_file():
        return workdir
    nested = [p.parent for p in workdir.glob("*/config.json")]
    if len(nested) == 1:  # tolerate a tarball holding one folder
        return nested[0]
    raise PackagingError(f"{model_artifact_uri}: no config.json at the archive's root - expected the "
                         "save_pretrained folder of the training job (SM_MODEL_DIR)")


def register_model_step(model_artifact_uri: str, evaluation: dict, lineage: dict, auto_approve: bool,
                        package_dest_uri: str) -> dict:
    """Package the trained model and register it as a new version (once per dag run).

    ``lineage`` must carry ``dag_id`` and ``run_id`` and should carry ``ds``,
    ``feature_snapshot_id``, ``git_commit`` and the job names. Returns ``{"model_name",
    "version", "approval_status", "package_uri", "metrics", "created"}``; ``created`` is false
    when this run had already registered its version (the package is then not rebuilt,
    so a registered version's package never changes).
    """
    missing = [k for k in REQUIRED_LINEAGE if not (lineage or {}).get(k)]
    if missing:
        raise RegistryError(f"lineage lacks {', '.join(missing)}: pass the Airflow dag_id and run_id")
    registry = get_registry()
    existing = registry.find_by_run(lineage["dag_id"], lineage["run_id"])
    if existing is not None:
        logger.info("run %s already registered version %s (%s); nothing to do",
                    lineage["run_id"], existing.version, existing.approval_status)
        return _summary(existing, created=False)
    metrics = flatten_evaluation(evaluation)
    with tempfile.TemporaryDirectory(prefix="register-model-") as tmp:
        model_dir = _model_dir_from_artifact(model_artifact_uri, Path(tmp))
        package_uri = build_package(model_dir, package_dest_uri)
    status = APPROVED if auto_approve else PENDING
    version = registry.register(package_uri, metrics,
                                {**lineage, "model_artifact_uri": model_artifact_uri, "package_uri": package_uri,
                                 "auto_approve": str(bool(auto_approve)).lower()}, status)
    logger.info("registered version %s as %s with %d metrics (accuracy %s)", version.version,
                version.approval_status, len(metrics), metrics.get("accuracy"))
    return _summary(version, created=True)


def _summary(version, created: bool | None = None) -> dict:
    out = {"model_name": version.name, "version": version.version, "approval_status": version.approval_status,
           "package_uri": version.package_uri, "metrics": version.metrics}
    if created is not None:
        out["created"] = created
    return out


def approve_model_step(version: str, note: str = "") -> dict:
    """Mark ``version`` Approved (the human-in-the-loop task's outcome)."""
    return _summary(get_registry().set_approval(version, APPROVED, note))


def reject_model_step(version: str, note: str = "") -> dict:
    """Mark ``version`` Rejected with the reviewer's note; it can then never be deployed."""
    return _summary(get_registry().set_approval(version, REJECTED, note))


def deploy_model_step(version: str, smoke_texts: list[str] | None = None, port: int | None = None,
                      timeout_s: float = 120) -> dict:
    """Serve an Approved ``version`` on the local endpoint and record it as deployed.

    Refuses (:class:`ModelNotApprovedError`) unless the registry says Approved. On a failed
    load or smoke test the previous version keeps serving and the error propagates (the
    task fails with the reason). Returns the endpoint info (url, pid, version, smoke answers).
    """
    registry = get_registry()
    mv = registry.get(version)
    if mv.approval_status != APPROVED:
        raise ModelNotApprovedError(f"version {version} of {mv.name} is {mv.approval_status}, not Approved; "
                                    "approve it (approve_model task) before deploying")
    info = endpoint.deploy(mv.package_uri, mv.version, smoke_texts or SMOKE_REVIEWS, port=port, timeout_s=timeout_s)
    registry.mark_deployed(mv.version)
    logger.info("version %s serves at %s (pid %s, %s in %.1fs)", mv.version, info["url"], info["pid"],
                info["mode"], info["seconds"])
    return {**info, "model_name": mv.name, "approval_status": mv.approval_status}
