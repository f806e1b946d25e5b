"""What every DAG of the project shares: task defaults and the assets that link the DAGs.

``REVIEWS_LANDING``: a landing partition was registered in the catalog. The main pipeline's
``register_dataset`` task declares it as an outlet; ``review_catalog_analysis`` is
scheduled on it, so the analysis refreshes after each new partition.
``REVIEWS_CATALOG``: the catalog was updated by ``review_catalog_analysis``'s register task.
``TRAINING_QUEUE`` / ``SERVING_QUEUE``: the Celery queue of the ``train`` task, from ``[reviews] training_queue``
(``AIRFLOW__REVIEWS__TRAINING_QUEUE``; docker-compose.yaml and ``make stack`` set ``training``,
served by the worker sized for training). Unset, it is Airflow's default queue, so ``dag.test()``,
``make ui`` (LocalExecutor) and a Celery deployment without a training worker run it as before.
"""
from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.configuration import conf
from airflow.sdk import Asset

START_DATE = pendulum.datetime(2026, 1, 1, tz="UTC")
DEFAULT_ARGS = {
    "owner": "mlops",
    "retries": 2,
    "retry_delay": timedelta(seconds=20),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
}

REVIEWS_LANDING = Asset(name="reviews_landing", uri="reviews://landing/reviews", group="reviews")
REVIEWS_CATALOG = Asset(name="reviews_catalog", uri="reviews://catalog/reviews_raw", group="reviews")

TRAINING_QUEUE = conf.get("reviews", "training_queue", fallback="") or conf.get("operators", "default_queue")
# The Celery queue of the tasks that start or swap the model endpoint (deploy_model, rollback):
# ``[reviews] serving_queue``; docker-compose.yaml sets ``serving``, consumed only by the
# model-endpoint service, so the endpoint process lives in that container. Unset: the default queue.
SERVING_QUEUE = conf.get("reviews", "serving_queue", fallback="") or conf.get("operators", "default_queue")
