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
from airflow.sdk import Asset, DeadlineAlert, DeadlineReference, SyncCallback

from include.common.errors import ConfigError
from include.pipeline import alerts

START_DATE = pendulum.datetime(2026, 1, 1, tz="UTC")

# execution_timeout per kind of task. Each is longer than the waits inside it plus TIMEOUT_MARGIN,
# so a job or a wait stops first with its own error and the task timeout only catches what hangs
# outside them. The local floors below; on the aws backend :func:`task_timeouts` derives them from
# the aws config (a deferred job's wait is bounded by the same timeout, include/jobs/runner_sagemaker.py).
LOCAL_TIMEOUTS = {
    "light": timedelta(minutes=30),      # catalog, quality gate, branches, registry calls (the default)
    "processing": timedelta(hours=1),    # preprocess, evaluate, check_accuracy (re-scores two models)
    "training": timedelta(hours=2),      # the training job (quality profile: ~20 min on 2 cores)
    "deploy": timedelta(minutes=30),     # endpoint start, int8 check, smoke test
    "automl": timedelta(hours=1, minutes=30),  # the AutoML search job
    "autopilot": timedelta(hours=1, minutes=30),  # Autopilot: its budget + AUTOPILOT_GRACE_S
}
TIMEOUT_MARGIN = timedelta(minutes=10)  # start-up, uploads, log tails, the step's own work around its waits
AUTOPILOT_GRACE_S = 1800  # Autopilot's wait beyond its budget (include/pipeline/automl_steps.py)
DEFAULT_AUTOML_BUDGET_S = 600  # the automl DAG's time_budget_s default


def aws_waits(cfg) -> dict[str, float]:
    """The longest wait (s) each kind of task holds on the aws backend, from the aws config ``cfg``."""
    run = {name: cfg.step(name).max_runtime_s for name in ("preprocess", "train", "evaluate", "automl")}
    train = run["train"]
    if cfg.spot_training:  # a spot job may wait for capacity up to MaxWaitTimeInSeconds
        train = max(cfg.spot_max_wait_s or 2 * train, train)
    return {
        # preprocess: its job, then (resumed) the offline store's wait; evaluate: its job;
        # check_accuracy: the champion's (evaluate) and the baseline's (automl) score jobs, in turn
        "processing": max(run["preprocess"], cfg.offline_store_wait_s, run["evaluate"],
                          run["evaluate"] + run["automl"]),
        "training": train,
        # deploy: the endpoint's update, and on a failed smoke test the rollback's update
        "deploy": 2 * cfg.endpoint_wait_s,
        "automl": run["automl"],
        "autopilot": DEFAULT_AUTOML_BUDGET_S + AUTOPILOT_GRACE_S,
    }


def task_timeouts(cfg=None) -> dict[str, timedelta]:
    """``execution_timeout`` per kind of task: the local floors, raised on the aws backend (``cfg``:
    its config) to each kind's longest wait plus :data:`TIMEOUT_MARGIN`."""
    out = dict(LOCAL_TIMEOUTS)
    if cfg is not None:
        for kind, wait_s in aws_waits(cfg).items():
            out[kind] = max(out[kind], timedelta(seconds=wait_s) + TIMEOUT_MARGIN)
    return out


def _aws_config_at_parse():
    # Only on the aws backend; its config is a file or a Variable (no AWS call, no boto3).
    from include.common.config import get_settings

    if get_settings().backend != "aws":
        return None
    from include.common.aws import load_aws_config

    return load_aws_config()


TASK_TIMEOUTS = task_timeouts(_aws_config_at_parse())
DEFAULT_ARGS = {
    "owner": "mlops",
    "retries": 2,
    "retry_delay": timedelta(seconds=20),
    # A multiplier since Airflow 3 (True would mean 1.0: no back-off): 20-40 s, then 40-80 s.
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
    "execution_timeout": TASK_TIMEOUTS["light"],
    "on_failure_callback": alerts.on_task_failure,
}

# A nightly run that is still going this long after it was queued raises an alert
# (recorded and notified like a failure, see alerts.py); the run itself goes on
# (dagrun_timeout stops it later). ``[reviews] run_deadline_minutes`` moves it (default 120;
# the production-stack tests set 1 so that their runs overrun it).
DEFAULT_RUN_DEADLINE_MINUTES = 120.0


def run_deadline() -> timedelta:
    """The deadline of a run after it was queued, from ``[reviews] run_deadline_minutes``."""
    raw = conf.get("reviews", "run_deadline_minutes", fallback="") or str(DEFAULT_RUN_DEADLINE_MINUTES)
    try:
        minutes = float(raw)
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise ConfigError(f"[reviews] run_deadline_minutes (AIRFLOW__REVIEWS__RUN_DEADLINE_MINUTES) = {raw!r}: "
                         "a positive number of minutes")
    return timedelta(minutes=minutes)


NIGHTLY_DEADLINE = run_deadline()
DEADLINE = DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=NIGHTLY_DEADLINE,
                         callback=SyncCallback(alerts.deadline_missed,
                                               kwargs={"interval_s": NIGHTLY_DEADLINE.total_seconds()}),
                         name="nightly_run_overrun")

REVIEWS_LANDING = Asset(name="reviews_landing", uri="reviews://landing/reviews", group="reviews")
REVIEWS_CATALOG = Asset(name="reviews_catalog", uri="reviews://catalog/reviews_raw", group="reviews")

TRAINING_QUEUE = conf.get("reviews", "training_queue", fallback="") or conf.get("operators", "default_queue")
# The Celery queue of the tasks that start or swap the model endpoint (deploy_model, rollback):
# ``[reviews] serving_queue``; docker-compose.yaml sets ``serving``, consumed only by the
# model-endpoint service, so the endpoint process lives in that container. Unset: the default queue.
SERVING_QUEUE = conf.get("reviews", "serving_queue", fallback="") or conf.get("operators", "default_queue")
