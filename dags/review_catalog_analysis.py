"""review_catalog_analysis: register landed reviews in the catalog and analyse them with SQL."""
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, chain, dag, task

from include.pipeline import tasks
from include.pipeline.defaults import DEFAULT_ARGS, REVIEWS_CATALOG, REVIEWS_LANDING, START_DATE

DOC = """
### Review catalog analysis

**Triggers:** the asset `reviews_landing` (emitted when the main pipeline registers a new
landing partition) or a manual run.

1. **register** - every landed partition (`landing/reviews/ds=*/`) the catalog lacks becomes a
   partition of `reviews.reviews_raw` (DuckDB locally); with the `ds` param, that partition is
   (re-)registered. Emits the asset `reviews_catalog`.
2. **analyse** - the lab's questions as parameterised SQL over `reviews.reviews_typed`
   (reviews and average rating per category, reviews per rating and category, sentiment per
   category, review length in words, most/least positive categories): one PNG per question
   and `report.html` (SQL, parameters, plots, result tables). The report path is printed in
   the task log.
3. **check_drift** - against the data the deployed model was trained on (from its registry
   lineage, or `drift_baseline_uri`): PSI of category mix, length and rating mix; a warning
   above `drift_threshold`, never a failure. Skipped while no model is deployed.

**Outputs:** `runs/review_catalog_analysis/<run_id>/{analysis,drift}/` in the object store.
"""

@dag(
    dag_id="review_catalog_analysis",
    schedule=[REVIEWS_LANDING],
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,  # one writer of the catalog at a time
    dagrun_timeout=timedelta(hours=1),
    default_args=DEFAULT_ARGS,
    tags=["mlops", "catalog", "analysis"],
    doc_md=DOC,
    params={
        "ds": Param("", type="string", title="Partition (ds)",
                    description="YYYY-MM-DD to (re-)register; empty = every landed partition not yet catalogued."),
        "ds_from": Param("", type="string", description="First ds analysed (YYYY-MM-DD); empty = the first one."),
        "ds_to": Param("", type="string", description="Last ds analysed (YYYY-MM-DD); empty = the last one."),
        "top_n": Param(3, type="integer", minimum=1, maximum=20,
                       description="Categories shown as most / least positively reviewed."),
        "drift_baseline_uri": Param("", type="string",
                                    description="Baseline Parquet; empty = the deployed model's training data "
                                                "(from the registry)."),
        "drift_threshold": Param(0.2, type="number", exclusiveMinimum=0,
                                 description="PSI above which drift is reported as a warning."),
    },
)
def review_catalog_analysis():
    registered = task(task_id="register", outlets=[REVIEWS_CATALOG])(tasks.register)()
    analysed = task(task_id="analyse")(tasks.analyse)(registered)
    drift = task(task_id="check_drift")(tasks.check_drift)(registered)
    chain(registered, [analysed, drift])


review_catalog_analysis()
