"""The model concern: the model registry (MLflow) and the deployable package."""
