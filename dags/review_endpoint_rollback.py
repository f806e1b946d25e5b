"""review_endpoint_rollback: put the previous Approved model version back on the endpoint."""
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task

from include.pipeline import tasks
from include.pipeline.defaults import DEFAULT_ARGS, SERVING_QUEUE, START_DATE

DOC = """
### Endpoint rollback

**Triggers:** a manual run only (the UI's *Trigger*, or `make rollback` without Airflow).

1. **rollback** - looks up the version the endpoint serves in the model registry and deploys
   the newest *Approved* version older than it (or the `to_version` param), exactly as the
   pipeline's `deploy_model` does: the int8 check on that run's test split, swap inside the
   running server with no failed request, smoke test, registry `deployed` alias moved. Fails
   with the reason when nothing is deployed or no older Approved version exists.

**Outputs:** the endpoint serves the older version; the registry records it as deployed.
"""


@dag(
    dag_id="review_endpoint_rollback",
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,  # one deploy at a time (the endpoint's deploy lock also guards it)
    dagrun_timeout=timedelta(minutes=30),
    default_args=DEFAULT_ARGS,
    tags=["mlops", "endpoint", "rollback"],
    doc_md=DOC,
    params={
        "to_version": Param("", type="string", title="Version to return to",
                            description="An older Approved version; empty = the newest Approved version older "
                                        "than the deployed one."),
    },
)
def review_endpoint_rollback():
    task(task_id="rollback", queue=SERVING_QUEUE)(tasks.rollback_endpoint)()


review_endpoint_rollback()
