"""review_endpoint_rollback through dag.test(): refuses with nothing deployed, then rolls back."""
from __future__ import annotations

import time

from include.model.packaging import build_package
from include.model.registry import get_registry
from include.model.registry_base import APPROVED
from include.pipeline.model_steps import deploy_model
from include.serving.endpoint import get_endpoint
from tests.integration.conftest import run_dag


def _approved(package: str) -> str:
    return get_registry().register(package, {"accuracy": 0.7}, {"dag_id": "review_sentiment_pipeline",
                                                                "run_id": f"rollback-test-{time.time()}"},
                                   APPROVED).version


def test_rollback_dag_puts_the_previous_approved_version_back(endpoint_port, classifier_dir, tmp_path):
    _, states = run_dag("review_endpoint_rollback")
    assert states["rollback"].endswith("failed"), states  # nothing deployed: fails at once, with the reason

    package = build_package(classifier_dir, (tmp_path / "p").as_uri())
    first, second = _approved(package), _approved(package)
    deploy_model(second, precision="fp32")
    assert get_endpoint().status()["serving_version"] == second

    _, states = run_dag("review_endpoint_rollback")
    assert states["rollback"].endswith("success"), states
    assert get_registry().deployed_version().version == first
    assert get_endpoint().status()["serving_version"] == first
