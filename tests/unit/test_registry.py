"""MLflow model registry (include/model/registry_mlflow.py) and the register/approve steps (include/pipeline/model_steps.py).

One MLflow SQLite store per module (creating it runs MLflow's migrations, ~10 s); each test
uses its own dag run ids so tests do not depend on each other.
"""
from __future__ import annotations

import sqlite3
import tarfile
import uuid
from pathlib import Path

import pytest

from include.model.packaging import PackagingError
from include.model.registry import get_registry
from include.model.registry_base import (
    APPROVED,
    PENDING,
    REJECTED,
    InvalidApprovalStatusError,
    ModelVersionNotFoundError,
    RegistryError,
    flatten_evaluation,
)
from include.model.registry_mlflow import MlflowModelRegistry
from include.pipeline.model_steps import approve_model, register_model, reject_model

EVALUATION = {"metrics": {"accuracy": {"value": 0.71}, "f1_macro": {"value": 0.70}},
              "multiclass_classification_metrics": {"negative": {"precision": 0.8, "recall": 0.6},
                                                    "confusion_matrix": [[1, 2], [3, 4]]}}


@pytest.fixture(scope="module", autouse=True)
def state_dir(tmp_path_factory):
    home = tmp_path_factory.mktemp("registry-state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REVIEWS_HOME", str(home))
        mp.setenv("REVIEWS_BACKEND", "local")
        yield home


@pytest.fixture(scope="module")
def registry(state_dir):
    return get_registry()


def _lineage(**extra) -> dict:
    return {"dag_id": "review_sentiment_pipeline", "run_id": f"manual__{uuid.uuid4()}", "ds": "2024-06-01",
            "feature_snapshot_id": "snap-42", "git_commit": "abc123", "training_job": "train-1",
            "evaluation_job": "eval-1", **extra}


def test_register_stores_package_metrics_lineage_and_status(registry, state_dir):
    lineage = _lineage()
    mv = registry.register("file:///pkg/model.tar.gz", {"accuracy": 0.71}, lineage, PENDING)
    assert mv.name == "review-sentiment-bert"
    assert mv.package_uri == "file:///pkg/model.tar.gz"
    assert mv.metrics == {"accuracy": 0.71}
    assert mv.lineage == lineage
    assert mv.approval_status == PENDING and not mv.deployed
    assert registry.get(mv.version) == mv
    assert (state_dir / "mlflow" / "mlflow.db").is_file()
    with sqlite3.connect(state_dir / "mlflow" / "mlflow.db") as db:  # really in MLflow's store
        row = db.execute("select source, run_id from model_versions where name=? and version=?",
                         ("review-sentiment-bert", int(mv.version))).fetchone()
    assert row[0] == "file:///pkg/model.tar.gz" and row[1] == mv.tracking_run_id


def test_metrics_are_logged_on_the_linked_mlflow_run(registry):
    mv = registry.register("file:///pkg/a.tar.gz", {"accuracy": 0.5, "f1": 0.4}, _lineage(), PENDING)
    run = registry._client.get_run(mv.tracking_run_id)
    assert run.data.metrics == {"accuracy": 0.5, "f1": 0.4}
    assert run.data.tags["lineage.git_commit"] == "abc123"


def test_reregistering_the_same_dag_run_returns_the_existing_version(registry):
    lineage = _lineage()
    first = registry.register("file:///pkg/model.tar.gz", {"accuracy": 0.7}, lineage, PENDING)
    count = len(registry.list_versions())
    again = registry.register("file:///pkg/other.tar.gz", {"accuracy": 0.9}, lineage, APPROVED)
    assert again.version == first.version and again.package_uri == first.package_uri
    assert len(registry.list_versions()) == count
    assert registry.find_by_run(lineage["dag_id"], lineage["run_id"]).version == first.version


def test_a_new_dag_run_adds_a_newer_version(registry):
    a = registry.register("file:///pkg/a.tar.gz", {}, _lineage(), PENDING)
    b = registry.register("file:///pkg/b.tar.gz", {}, _lineage(), PENDING)
    assert int(b.version) == int(a.version) + 1
    assert [v.version for v in registry.list_versions()][-2:] == [a.version, b.version]


def test_register_refuses_bad_status_missing_lineage_and_non_numeric_metrics(registry):
    with pytest.raises(InvalidApprovalStatusError, match="Approved"):
        registry.register("file:///p", {}, _lineage(), "approved")
    with pytest.raises(RegistryError, match="run_id"):
        registry.register("file:///p", {}, {"dag_id": "d"}, PENDING)
    with pytest.raises(RegistryError, match="metric 'cm'"):
        registry.register("file:///p", {"cm": [[1, 2]]}, _lineage(), PENDING)


def test_approval_transitions_are_recorded_with_notes(registry):
    mv = registry.register("file:///pkg/x.tar.gz", {}, _lineage(), PENDING)
    approved = registry.set_approval(mv.version, APPROVED, "looks good - alice")
    assert approved.approval_status == APPROVED and approved.approval_note == "looks good - alice"
    rejected = registry.set_approval(mv.version, REJECTED, "regression on neutral - bob")
    assert registry.get_approval(mv.version) == REJECTED
    assert [h["status"] for h in rejected.approval_history] == [PENDING, APPROVED, REJECTED]
    with pytest.raises(InvalidApprovalStatusError):
        registry.set_approval(mv.version, "Deployed")
    with pytest.raises(ModelVersionNotFoundError, match="no version '9999'"):
        registry.set_approval("9999", APPROVED)


def test_latest_approved_is_the_newest_approved_version(registry, state_dir):
    fresh = MlflowModelRegistry(registry.tracking_uri, state_dir / "mlflow" / "artifacts", name="latest-approved-test")
    assert fresh.latest_approved() is None and fresh.list_versions() == []
    one = fresh.register("file:///1", {}, _lineage(), APPROVED)
    fresh.register("file:///2", {}, _lineage(), PENDING)
    assert fresh.latest_approved().version == one.version
    three = fresh.register("file:///3", {}, _lineage(), PENDING)
    fresh.set_approval(three.version, APPROVED)
    assert fresh.latest_approved().version == three.version


def test_mark_deployed_needs_approval_and_moves_the_deployed_marker(registry):
    a = registry.register("file:///pkg/a.tar.gz", {}, _lineage(), APPROVED)
    b = registry.register("file:///pkg/b.tar.gz", {}, _lineage(), PENDING)
    with pytest.raises(RegistryError, match="not Approved"):
        registry.mark_deployed(b.version)
    assert registry.mark_deployed(a.version).deployed
    registry.set_approval(b.version, APPROVED)
    registry.mark_deployed(b.version)
    assert registry.deployed_version().version == b.version
    assert [v.version for v in registry.list_versions() if v.deployed] == [b.version]
    assert registry.get(a.version).deployed is False


def test_get_unknown_version_raises_not_found(registry):
    with pytest.raises(ModelVersionNotFoundError):
        registry.get("12345")


def test_aws_backend_without_an_aws_config_names_what_is_missing(monkeypatch):
    # The SageMaker Model Registry itself is tested against moto in tests/aws/test_sagemaker_registry.py.
    from include.common.config import ConfigError

    monkeypatch.setenv("REVIEWS_BACKEND", "aws")
    for var in ("REVIEWS_AWS_CONF", "REVIEWS_AWS_REGION", "REVIEWS_AWS_BUCKET", "REVIEWS_AWS_ROLE_ARN",
                "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="role_arn is not set"):
        get_registry()


# ---------------------------------------------------------------- model_steps

def test_flatten_evaluation_keeps_numeric_leaves_and_drops_lists():
    assert flatten_evaluation(EVALUATION) == {
        "accuracy": 0.71, "f1_macro": 0.70,
        "multiclass_classification_metrics.negative.precision": 0.8,
        "multiclass_classification_metrics.negative.recall": 0.6}
    assert flatten_evaluation({"accuracy": 0.5}) == {"accuracy": 0.5}


@pytest.fixture
def model_artifact(tmp_path, classifier_dir) -> str:
    """A training job's model.tar.gz: a loadable save_pretrained folder at its root (register_model
    exports it to int8 ONNX for the endpoint, so it must be a real model)."""
    folder = classifier_dir
    archive = tmp_path / "job" / "output" / "model.tar.gz"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        for p in folder.iterdir():
            tar.add(p, arcname=p.name)
    return archive.as_uri()


def test_register_model_packages_registers_and_is_idempotent(registry, model_artifact, tmp_path):
    lineage = _lineage()
    dest = (tmp_path / "runs" / "register").as_uri()
    out = register_model(model_artifact, EVALUATION, lineage, auto_approve=False, package_dest_uri=dest)
    assert out["created"] and out["approval_status"] == PENDING
    package = Path(out["package_uri"].removeprefix("file://"))
    assert package == tmp_path / "runs" / "register" / "model.tar.gz"
    with tarfile.open(package) as tar:
        assert "code/inference.py" in tar.getnames()
    mv = registry.get(out["version"])
    assert mv.metrics["accuracy"] == 0.71
    assert mv.lineage["model_artifact_uri"] == model_artifact and mv.lineage["ds"] == "2024-06-01"
    mtime = package.stat().st_mtime_ns
    again = register_model(model_artifact, EVALUATION, lineage, auto_approve=True, package_dest_uri=dest)
    assert again["version"] == out["version"] and again["created"] is False
    assert package.stat().st_mtime_ns == mtime  # the registered package was not rebuilt


def test_register_model_auto_approve_and_reject_approve_steps(registry, model_artifact, tmp_path):
    out = register_model(model_artifact, EVALUATION, _lineage(), auto_approve=True,
                              package_dest_uri=tmp_path.as_uri())
    assert out["approval_status"] == APPROVED
    assert reject_model(out["version"], "not better than prod")["approval_status"] == REJECTED
    assert registry.get(out["version"]).approval_note == "not better than prod"
    assert approve_model(out["version"], "reconsidered")["approval_status"] == APPROVED


def test_register_model_refuses_an_artifact_without_a_model(tmp_path):
    bad = tmp_path / "model.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        (tmp_path / "readme.txt").write_text("x")
        tar.add(tmp_path / "readme.txt", arcname="readme.txt")
    with pytest.raises(PackagingError, match="no config.json at the archive's root"):
        register_model(bad.as_uri(), EVALUATION, _lineage(), False, tmp_path.as_uri())
