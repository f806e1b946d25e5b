"""The Airflow glue of both DAGs: task context in, a step call, one error policy out.

Every task of ``review_sentiment_pipeline`` and ``review_catalog_analysis`` is one function
here, wrapped by :func:`airflow_step`, which applies the project's failure policy by
exception type: a :class:`~include.common.errors.NonRetriableError` (or ``ValueError``) -
bad data, bad parameters, a job that refused its input, a model that may not be deployed -
fails the task at once with its message (``AirflowFailException``: a retry cannot fix it);
anything else goes through the task's retries with back-off. It also records the step's
result in the run's lineage folder.

DAG parsing imports this module, so it imports no heavy library at module level: the steps
(pandas, duckdb, mlflow, ...) are imported when a task runs.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable

from airflow.sdk import BaseOperator, get_current_context
from airflow.sdk.exceptions import AirflowFailException

from include.common.errors import NonRetriableError
from include.pipeline.context import PipelineError, RunInfo, record_step, resolve_ds

log = logging.getLogger("airflow.task")
NON_RETRIABLE = (NonRetriableError, ValueError)


def run_info(context: dict[str, Any]) -> RunInfo:
    """``RunInfo`` of the running task: DAG run, partition (``ds`` param / data interval) and attempt."""
    ti, params = context["ti"], context["params"]
    ds_param, interval = params.get("ds"), context.get("data_interval_start")
    landed = None
    if not ds_param and interval is None:  # a manual run without a logical date: the latest landed day
        from include.data.catalog import get_catalog

        landed = get_catalog().landing_partitions()
    return RunInfo(dag_id=ti.dag_id, run_id=context["run_id"], ds=resolve_ds(interval, ds_param, landed),
                   try_number=ti.try_number)


def _lineage_info(context: dict[str, Any]) -> RunInfo:
    # The analysis DAG may run with no partition at all: its lineage then has an empty ds.
    try:
        return run_info(context)
    except PipelineError:
        return RunInfo(dag_id=context["ti"].dag_id, run_id=context["run_id"], ds="",
                       try_number=context["ti"].try_number)


def _apply_policy(step: str, call: Callable[[], Any]) -> Any:
    """Run ``call`` under the failure policy; record a dict result as ``step``'s lineage."""
    try:
        result = call()
    except NON_RETRIABLE as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
    if isinstance(result, dict):
        record_step(_lineage_info(get_current_context()), step, result)
    return result


def airflow_step(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Apply the failure policy to a task function and record its result as lineage."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return _apply_policy(fn.__name__, lambda: fn(*args, **kwargs))
    return wrapper


class JobStepOperator(BaseOperator):
    """A step that runs a processing or training job: ``preprocess``, ``train``, ``evaluate``.

    The same task on both backends, chosen at run time by configuration: the step's first
    half (``include/pipeline/steps.py``) builds the request; the configured runner executes
    it. The local runner runs the job here, synchronously. The SageMaker runner hands it to
    the Amazon provider's operator with ``deferrable=True``: the task defers (no worker is
    held while the job runs) and :meth:`execute_complete` finishes it from the plan the first
    half saved under the run's ``_jobs/`` prefix. ``inputs`` are the upstream results
    (XComArgs) the step needs, by name.

    A job never outlives its task: :meth:`on_kill` (the task killed or timed out while it
    runs on the worker) and a deferral that timed out (:meth:`resume_execution` with
    ``__fail__``) stop the step's running job; while deferred, the trigger's own ``on_kill``
    (``include/jobs/triggers.py``) does it when a person marks the task failed or clears it.
    """

    template_fields = ("inputs",)
    ui_color = "#fde9d9"

    def __init__(self, *, step: str, inputs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step = step
        self.inputs = inputs or {}
        self._job_request: dict | None = None  # the request of the job this process started

    def execute(self, context: Any) -> dict:
        return _apply_policy(self.step, lambda: self._start(context))

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict:
        """Resume after the job's trigger fired: its result, then the step's second half."""
        return _apply_policy(self.step, lambda: self._resume(context, event))

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Any):
        """Airflow's resume; a deferral that failed or timed out first stops the step's job."""
        if next_method == "__fail__":  # TRIGGER_FAIL_REPR: the task fails, its job must not go on
            self._stop_job(context)
        return super().resume_execution(next_method, next_kwargs, context)

    def on_kill(self) -> None:
        """The task is killed or timed out while running here: stop the job it started."""
        if self._job_request is not None:
            from include.jobs.runner import get_runner

            get_runner().stop(self._job_request)

    def _stop_job(self, context: Any) -> None:
        from include.jobs.runner import get_runner
        from include.pipeline import steps

        try:
            request = steps.load_plan(run_info(context), self.step).request
        except Exception as exc:  # noqa: BLE001 - no plan saved: no job was started
            log.info("no job plan of %s to stop (%s)", self.step, exc)
            return
        get_runner().stop(request)

    def _start(self, context: Any) -> dict:
        from include.jobs.runner import get_runner
        from include.pipeline import steps

        info = run_info(context)
        hit = steps.cached_job_step(self.step, info, context["params"], self.inputs)
        if hit is not None:  # step caching: the same data, params and code ran before
            return hit
        plan = steps.plan_job(self.step, info, context["params"], self.inputs)
        self._job_request = plan.request
        result = get_runner().start(plan.request, context=context, task=self, log=log.info)
        return steps.finish_job(self.step, info, context["params"], self.inputs, plan, result)

    def _resume(self, context: Any, event: dict[str, Any] | None) -> dict:
        from include.jobs.runner import get_runner
        from include.pipeline import steps

        info = run_info(context)
        plan = steps.load_plan(info, self.step)
        result = get_runner().resume(plan.request, event)
        return steps.finish_job(self.step, info, context["params"], self.inputs, plan, result)


def _context() -> tuple[dict[str, Any], RunInfo]:
    ctx = get_current_context()
    return ctx["params"], run_info(ctx)


# ------------------------------------------------------------------ review_sentiment_pipeline


@airflow_step
def register_dataset() -> dict:
    """Step 1: the day's drop (or ``input_data_uri``) and the landed backlog into the catalog."""
    from include.pipeline import steps

    params, info = _context()
    return steps.register_backlog(info.ds, params.get("input_data_uri") or "", run_id=info.run_id)


@airflow_step
def validate_dataset(registered: dict) -> dict:
    """Step 2: the quality gate over the registered partitions."""
    from include.pipeline import steps

    params, info = _context()
    return steps.validate_dataset(info, registered["partitions"], params["max_bad_row_fraction"],
                                  unseen_category_tolerance=params.get("unseen_category_tolerance"),
                                  max_duplicate_text_fraction=params.get("max_duplicate_text_fraction"))


@airflow_step
def check_accuracy(evaluation: dict, pass_task: str, fail_task: str, features: dict | None = None) -> str:
    """Step 6 (branch): the new model vs the champion (deployed) and the latest AutoML baseline.

    Both are re-scored on this run's test split (``features``); the decision and the three numbers
    go to the task log, the run's ``check_accuracy/decision.json`` (shown by ``make artifacts``)
    and, through ``register_model``, the registry entry.
    """
    from include.pipeline import automl_steps, steps

    params, info = _context()
    refs = automl_steps.reference_accuracies(info, features["test_uri"], evaluation.get("evaluation_uri")) \
        if features else {}
    min_improvement = float(params.get("min_improvement") or 0.0)
    ok, note = steps.accuracy_gate(evaluation, params["min_accuracy"], refs.get("champion"), refs.get("baseline"),
                                   min_improvement)
    decision = {"decision": "register" if ok else "skip", "note": note, "accuracy": evaluation["accuracy"],
                "min_accuracy": params["min_accuracy"], "min_improvement": min_improvement, **refs}
    record_step(info, "check_accuracy", decision)
    uri = automl_steps.record_decision(info, decision)
    if refs.get("baseline_figures") and evaluation.get("evaluation_uri"):
        # the report was rendered before the baseline was scored: add its column now
        from include.common.io import edit_dir
        from include.pipeline import review

        with edit_dir(evaluation["evaluation_uri"].rsplit("/", 1)[0]) as folder:
            review.write_evaluation_report(
                folder, info.dag_id, info.run_id,
                review.data_range((features or {}).get("data_from"), (features or {}).get("data_to") or info.ds,
                                  (features or {}).get("clean_rows")), baseline=refs["baseline_figures"])
    log.info("%s (decision: %s)", note, uri)
    return pass_task if ok else fail_task


@airflow_step
def register_model(registered: dict, features: dict, trained: dict, evaluation: dict) -> dict:
    """Step 7: package and register the model version."""
    from include.pipeline import model_steps

    params, info = _context()
    return model_steps.register_run_model(info, registered, features, trained, evaluation,
                                          bool(params["auto_approve"]))


@airflow_step
def approval_gate(registration: dict, manual_task: str, auto_task: str) -> str:
    """Branch: a version registered as Approved (auto_approve) skips the human approval."""
    from include.model.registry_base import APPROVED

    log.info("model version %s is %s", registration["version"], registration["approval_status"])
    return auto_task if registration["approval_status"] == APPROVED else manual_task


@airflow_step
def deploy_model(registration: dict) -> dict:
    """Step 9: serve the approved version (smoke-tested; the old one keeps serving on failure),
    unless the deployed model was trained on newer data (a backfill: registered, not deployed)."""
    from include.pipeline import model_steps

    return model_steps.deploy_run_model(registration["version"])


@airflow_step
def rollback_endpoint() -> dict:
    """review_endpoint_rollback: serve the previous Approved version (or the ``to_version`` param)."""
    from include.pipeline import model_steps

    params = get_current_context()["params"]
    return model_steps.rollback_model(str(params.get("to_version") or ""))


# ------------------------------------------------------------------ review_catalog_analysis


@airflow_step
def register() -> dict:
    """Stage the ``ds`` param's partition, or every landed partition the catalog lacks, and
    publish what passes the quality gate (write-audit-publish)."""
    from include.pipeline import steps

    ctx = get_current_context()
    info = _lineage_info(ctx)
    staged = steps.register_backlog(ctx["params"].get("ds") or None, run_id=info.run_id)
    return steps.audit_and_publish(info, staged)


@airflow_step
def analyse(registered: dict) -> dict:
    """The lab's SQL questions; prints the report's path."""
    from include.pipeline import steps

    params, info = _context()
    return steps.analyse(info, params.get("ds_from") or None, params.get("ds_to") or None,
                         int(params.get("top_n") or 3))


@airflow_step
def check_drift(registered: dict) -> dict:
    """Drift against the deployed model's training data; a warning, never a failure."""
    from include.pipeline import steps

    params, info = _context()
    return steps.check_drift(info, registered, params.get("drift_baseline_uri") or "",
                             float(params.get("drift_threshold") or 0.2))


# ------------------------------------------------------------------ review_automl_baseline


def _automl_info() -> tuple[dict[str, Any], RunInfo]:
    # The AutoML DAG needs no partition: a manual run without a logical date is fine.
    ctx = get_current_context()
    return ctx["params"], _lineage_info(ctx)


@airflow_step
def export_features() -> dict:
    """The feature snapshot's splits (``snapshot_id`` param, empty = the latest) as the search's
    input; the ``engine`` param checked against the backend first."""
    from include.pipeline import automl_steps

    params, info = _automl_info()
    return automl_steps.export_features(info, params.get("snapshot_id") or "", params.get("engine") or "search")


@airflow_step
def automl_search(features: dict) -> dict:
    """The AutoML search job under the ``time_budget_s`` param; the leaderboard (skipped when
    the ``engine`` param is ``autopilot``)."""
    from airflow.exceptions import AirflowSkipException

    from include.pipeline import automl_steps

    params, info = _automl_info()
    if not automl_steps.uses_search(params.get("engine") or "search"):
        raise AirflowSkipException("engine autopilot: our search does not run")
    return automl_steps.search(info, features, int(params["time_budget_s"]), int(params["max_candidates"]))


@airflow_step
def autopilot_search(features: dict) -> dict:
    """SageMaker Autopilot (AutoML V2) on the same splits and budget (``engine`` = ``autopilot``
    or ``both``, aws backend); skipped with the default ``search``."""
    from airflow.exceptions import AirflowSkipException

    from include.pipeline import automl_steps

    params, info = _automl_info()
    if not automl_steps.uses_autopilot(params.get("engine") or "search"):
        raise AirflowSkipException("engine search: no Autopilot job")
    timeout = get_current_context()["ti"].task.execution_timeout
    return automl_steps.autopilot_search(info, features, int(params["time_budget_s"]), int(params["max_candidates"]),
                                         task_timeout_s=timeout.total_seconds() if timeout else None)


@airflow_step
def register_baseline(features: dict, searched: dict | None, piloted: dict | None = None) -> dict:
    """The best candidate as a new version of ``review-sentiment-baseline`` (Autopilot's best in its lineage)."""
    from include.pipeline import automl_steps

    _, info = _automl_info()
    return automl_steps.register_baseline(info, features, searched, piloted)
