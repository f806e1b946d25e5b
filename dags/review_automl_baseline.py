"""review_automl_baseline: AutoML search over classical text models, kept as the BERT model's baseline."""
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, chain, dag, task

from include.pipeline import tasks
from include.pipeline.defaults import DEFAULT_ARGS, START_DATE, TASK_TIMEOUTS

DOC = """
### AutoML baseline (SageMaker Autopilot's analogue)

**Triggers:** weekly (Sunday 03:00 UTC) or a manual run.

1. **export_features** - the train / validation / test splits of a feature snapshot of
   `reviews_features` (the `snapshot_id` param; empty = the latest one the main pipeline ingested);
2. **automl_search** - processing job (`include/scripts/automl.py`): TF-IDF word and character
   n-grams with logistic regression (sentiments, or star ratings decoded as an ordinal score), a
   linear SVM, complement naive Bayes and gradient boosting; each family's default, then a random
   hyper-parameter search until `time_budget_s` is spent; one log line per candidate. Each
   candidate is ranked by 3-fold cross-validated class-balanced accuracy on the training split
   (its class bias tuned on the out-of-fold scores; validation and test accuracy never choose),
   then fitted on all training rows; the best of each kind are stacked as one more candidate.
   The leaderboard (accuracy, training time, inference time per
   1,000 reviews, hyper-parameters) is written as `leaderboard.json` and `leaderboard.html` (chart);
3. **autopilot_search** (`engine` = `autopilot` or `both`, aws backend only) - a SageMaker
   Autopilot (AutoML V2) job on the same splits as CSV channels (training + validation) with the
   same budget and `max_candidates`; its best candidate is written to `automl/autopilot/autopilot.json`
   beside our leaderboard. Skipped with the default `engine` = `search`;
4. **register_baseline** - the best candidate of our search becomes a version of
   `review-sentiment-baseline` in the model registry (MLflow locally, the SageMaker model package
   group `<group>-baseline` on aws: a `model.tar.gz` the endpoint can serve, with the same contract
   as BERT); Autopilot's best candidate, when it ran, is recorded in the version's lineage.

The main pipeline's `check_accuracy` compares each new BERT model with the latest baseline on its
own test split. **Outputs:** `runs/review_automl_baseline/<run_id>/{features,automl,register_baseline}/`
(under the state dir locally, `s3://<bucket>/<prefix>/` on aws).
"""


@dag(
    dag_id="review_automl_baseline",
    schedule="0 3 * * 0",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=2),
    default_args=DEFAULT_ARGS,
    tags=["mlops", "sentiment", "automl"],
    doc_md=DOC,
    params={
        "snapshot_id": Param("", type="string",
                             description="Feature snapshot to search on (the main pipeline's run id); empty = the "
                                         "latest snapshot in reviews_features."),
        "time_budget_s": Param(600, type="integer", minimum=10, maximum=86400,
                               description="Search time budget in seconds: no candidate starts that is expected "
                                           "to end after it."),
        "max_candidates": Param(20, type="integer", minimum=1, maximum=500,
                                description="Most candidates tried (each family's default first, then random "
                                            "hyper-parameters)."),
        "engine": Param("search", type="string", enum=["search", "autopilot", "both"],
                        description="search: our classical search (any backend); autopilot: a SageMaker "
                                    "Autopilot job only (aws); both: the two on the same data and budget (aws), "
                                    "our best registered, Autopilot's recorded beside it."),
    },
)
def review_automl_baseline():
    features = task(task_id="export_features")(tasks.export_features)()
    searched = task(task_id="automl_search", execution_timeout=TASK_TIMEOUTS["automl"])(
        tasks.automl_search)(features)
    piloted = task(task_id="autopilot_search", execution_timeout=TASK_TIMEOUTS["autopilot"])(
        tasks.autopilot_search)(features)
    # none_failed: a skipped engine leaves the other's result to register
    registered = task(task_id="register_baseline", trigger_rule="none_failed")(tasks.register_baseline)(
        features, searched, piloted)
    chain(features, [searched, piloted], registered)


review_automl_baseline()
