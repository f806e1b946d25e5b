"""The model registry of the configured backend: the one place that chooses it (``local``:
MLflow, ``registry_mlflow.py``; ``aws``: the SageMaker Model Registry, ``registry_sagemaker.py``,
imported only on that backend). The interface and its helpers are ``registry_base.py``."""
from __future__ import annotations

from include.common.config import get_settings
from include.model.registry_base import MODEL_NAME, ModelRegistry
from include.model.registry_mlflow import MlflowModelRegistry


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
    from include.model.registry_sagemaker import SageMakerModelRegistry

    return SageMakerModelRegistry(load_aws_config().validate(), name=name)
