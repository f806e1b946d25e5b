"""Steps 1-6 of ``review_sentiment_pipeline`` and the analysis DAG's steps, as plain functions.

Every step writes under the run-scoped prefix ``runs/<dag_id>/<run_id>/<step>/`` and
publishes atomically, so a retried or re-run task replaces its outputs. Each returns a
small JSON-able dict that goes to XCom and into the lineage listing. The Airflow glue that
calls them is ``include/pipeline/tasks.py``; steps 7-9 are in ``model_steps.py``.
"""
from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from include.analytics import analysis, drift
from include.common.config import Settings, get_settings
from include.common.io import (
    delete_prefix,
    edit_dir,
    is_s3,
    local_dir,
    location,
    output_dir,
    publish_dir,
    read_json,
    uri_to_path,
    write_json,
)
from include.data import catalog_base, quality
from include.data.catalog import get_catalog
from include.data.feature_store import get_feature_store
from include.jobs import requests
from include.jobs.runner import get_runner
from include.jobs.runner_base import JobRunner
from include.model.registry import get_registry, registry_exists
from include.model.registry_base import ModelVersion, RegistryError
from include.pipeline import caching, profiles
from include.pipeline.context import PipelineError, RunInfo

log = logging.getLogger("airflow.task")
EXPERIMENT = "review-sentiment"
TRAIN_HPS = ("epochs", "learning_rate", "train_batch_size", "max_seq_length", "max_train_samples",
             "class_weights", "max_class_ratio", "rating_aux_weight")


def register_backlog(ds: str | None, input_data_uri: str = "", settings: Settings | None = None,
                     run_id: str = "") -> dict:
    """Stage deliveries in the catalog (write-audit-publish); the one registration both DAGs use.

    With ``input_data_uri``: that file/folder is staged as a delivery for partition ``ds``.
    Otherwise every landed partition the catalog has not published (up to ``ds`` when given)
    is staged, and ``ds`` itself too, so a first run (or one after missed nights) sees all
    history. Nothing is published here: the quality gate (:func:`validate_dataset`) publishes
    the staged deliveries that pass. A delivery identical to the published one is a no-op
    (``unchanged``); a backlog day identical to a rejected delivery is not staged again.
    ``partitions`` lists the days staged for the gate.
    """
    store = get_catalog(settings)
    if input_data_uri:
        todo = [ds]
    else:
        known = set(store.registered_partitions())
        todo = [d for d in store.landing_partitions() if d not in known and (not ds or d < ds)]
        if ds:
            todo.append(catalog_base.parse_ds(ds).isoformat())
    # The run's own day is audited again even when rejected before (the user asked for it);
    # a rejected backlog day is not, or one bad landed file would fail every nightly run.
    results = [store.register_partition(d, input_data_uri or None, run_id=run_id, retry_rejected=(d == ds))
               for d in todo]
    staged = [r for r in results if r["status"] == catalog_base.STAGED]
    for r in results:
        if r["status"] == "unchanged":
            print(f"ds={r['ds']}: delivery identical to the published one ({r['delivery_id']}): nothing to do", flush=True)
    log.info("staged %d delivery(ies) %s (%d rows); unchanged %d; previously rejected %d",
             len(staged), [r["ds"] for r in staged], sum(r["rows"] for r in staged),
             sum(r["status"] == "unchanged" for r in results), sum(r["status"] == catalog_base.REJECTED for r in results))
    return {"ds": ds or "", "partitions": [r["ds"] for r in staged], "rows": sum(r["rows"] for r in staged),
            "files": [f for r in staged for f in r["files"]],
            "deliveries": [{k: r[k] for k in ("ds", "delivery_id", "status", "rows")} for r in results],
            "catalog_partitions": store.registered_partitions()}


def validate_dataset(info: RunInfo, partitions: list[str], max_bad_row_fraction: float, **tolerances: float) -> dict:
    """Step 2: audit the staged deliveries; publish them only when they pass (write-audit-publish).

    The report goes to the run's ``validate/`` folder whatever the verdict (before a failure is
    raised), and its path is printed. ``tolerances``: ``unseen_category_tolerance``,
    ``max_duplicate_text_fraction`` (see ``quality.validate_partitions``).
    """
    if not partitions:
        log.info("no staged delivery to audit (nothing new, or identical to the published data): gate skipped")
        return {"skipped": True, "passed": True, "partitions": [], "rows": 0, "bad_rows": 0}
    report_uri = info.uri("validate")
    try:
        with output_dir(report_uri) as report_dir:  # on aws: uploaded to S3, whatever the verdict
            result = quality.validate_partitions(partitions, info.run_id, max_bad_row_fraction, report_dir,
                                                 report_location=location(report_uri),
                                                 **{k: v for k, v in tolerances.items() if v is not None})
    except quality.DataQualityError:
        print(f"validation report: {location(report_uri)}/validation_report.html", flush=True)
        raise
    print(f"validation report: {result['report_path']}", flush=True)
    log.info("validation: %d rows, %d bad (%.2f%%); published %s", result["rows"], result["bad_rows"],
             100 * result["bad_fraction"], [d["delivery_id"] for d in result["deliveries"]])
    return result


def audit_and_publish(info: RunInfo, registered: dict) -> dict:
    """The analysis DAG's gate (it has no validate task): audit what ``register_backlog`` staged
    with the default thresholds. A failure is a warning there - the analysis runs on the
    published data - and the rejected deliveries wait in ``make data-status``."""
    try:
        result = validate_dataset(info, registered["partitions"], quality.DEFAULT_MAX_BAD_ROW_FRACTION)
    except quality.DataQualityError as exc:
        log.warning("%s", exc)
        return {**registered, "partitions": [], "audit": {"passed": False, "reason": str(exc)},
                "catalog_partitions": get_catalog().registered_partitions()}
    return {**registered, "audit": {"passed": True, "report_path": result.get("report_path")},
            "catalog_partitions": get_catalog().registered_partitions()}


def training_settings(params: dict) -> dict:
    """The run's profile settings with the params that override them (see profiles.py)."""
    try:
        prof = profiles.resolve(params)
    except profiles.ProfileError as exc:
        raise PipelineError(str(exc)) from None
    log.info("profile %s%s: %s", prof["profile"],
             f" (overridden: {', '.join(prof['overrides'])})" if prof["overrides"] else "",
             ", ".join(f"{k}={prof[k]}" for k in profiles.SETTINGS))
    return prof


@dataclass
class JobPlan:
    """A job step's request (completed for the backend) and what its second half needs."""

    step: str
    request: dict
    state: dict = field(default_factory=dict)


def _plan_uri(info: RunInfo, step: str) -> str:
    # beside, not inside, the step's own prefix: a job's output replaces that prefix whole
    return f"{info.uri('_jobs')}/{step}.json"


def plan_job(step: str, info: RunInfo, params: dict, inputs: dict) -> JobPlan:
    """First half of job step ``step``: its inputs made ready and its request built, completed
    for the backend and saved (a deferred task finishes from the saved plan)."""
    runner = get_runner()
    plan = JOB_STEPS[step][0](info, params, inputs, runner)
    plan.request = runner.prepare(plan.request, step, info.run_tag)
    write_json(_plan_uri(info, step), {"step": plan.step, "request": plan.request, "state": plan.state})
    return plan


def load_plan(info: RunInfo, step: str) -> JobPlan:
    """The plan :func:`plan_job` saved for this run's ``step``."""
    doc = read_json(_plan_uri(info, step))
    return JobPlan(doc["step"], doc["request"], doc["state"])


def finish_job(step: str, info: RunInfo, params: dict, inputs: dict, plan: JobPlan, result: dict) -> dict:
    """Second half of job step ``step``: read the job's outputs, return the step's result (and
    record this run as a holder of the step's cache key)."""
    out = JOB_STEPS[step][1](info, params, inputs, plan, result)
    key, prefixes = _cache_key(step, info, params, inputs)
    return _for_this_run(step, info, inputs, caching.record(info, key, prefixes, out))


def _for_this_run(step: str, info: RunInfo, inputs: dict, result: dict) -> dict:
    # Rendered after the cache records the step's outputs, and again on a hit: the evaluation
    # report names this run (and a re-rendered file never makes a cache entry look stale).
    if step == "evaluate":
        return {**result, **_render_evaluation_report(info, inputs["features"], info.uri("evaluate"))}
    return result


def run_job_step(step: str, info: RunInfo, params: dict, inputs: dict) -> dict:
    """Both halves with the job run to completion in between (no deferral); a cache hit skips all."""
    hit = cached_job_step(step, info, params, inputs)
    if hit is not None:
        return hit
    plan = plan_job(step, info, params, inputs)
    result = get_runner().run(plan.request)
    return finish_job(step, info, params, inputs, plan, result)


# Step caching (local backend; caching.py): what each job step's output depends on, and the
# run-scoped folders it writes.
CACHED_PREFIXES = {"preprocess": ["export", "preprocess"], "train": ["train"], "evaluate": ["evaluate"]}


def _cache_key(step: str, info: RunInfo, params: dict, inputs: dict) -> tuple[caching.CacheKey | None, list[str]]:
    prefixes = CACHED_PREFIXES[step]
    if is_s3(info.uri(prefixes[0])):  # outputs on S3: SageMaker jobs are not cached here
        return None, prefixes
    code_uri = get_runner().code_uri()
    if step == "preprocess":
        return caching.preprocess_key(info, training_settings(params), _ds_from(info, params),
                                      params.get("model_name_or_path") or "", code_uri), prefixes
    if step == "train":
        hps = _train_hyperparameters(training_settings(params), params)
        return caching.train_key(inputs["features"], hps, code_uri), prefixes
    return caching.evaluate_key(inputs["features"], inputs["trained"], deployed_package(), code_uri), prefixes


def cached_job_step(step: str, info: RunInfo, params: dict, inputs: dict) -> dict | None:
    """The result of job step ``step`` reused from an earlier run with the same input data,
    parameters and job code (``use_cache``, on by default), its outputs published into this run;
    None: run the job. The log says "cache hit" with the key and the run it came from."""
    key, prefixes = _cache_key(step, info, params, inputs)
    hit = caching.lookup(info, key, prefixes, enabled=caching.use_cache(params))
    return None if hit is None else _for_this_run(step, info, inputs, hit)


def preprocess_job_request(info: RunInfo, params: dict, export_uri: str, features_uri: str, code_uri: str) -> dict:
    """Step 3's ``CreateProcessingJob`` request (no side effect: ``make validate-aws`` renders it)."""
    prof = training_settings(params)
    return requests.preprocess_request(
        name=info.job("preprocess"), input_uri=export_uri, output_uri=features_uri, code_uri=code_uri,
        model_name_or_path=params.get("model_name_or_path") or "", max_seq_length=prof["max_seq_length"],
        train_split_percentage=prof["train_split_percentage"],
        validation_split_percentage=prof["validation_split_percentage"],
        balance_dataset=prof["balance_dataset"])


def channel_uris(info: RunInfo) -> dict[str, str]:
    """Where the jobs read each split from: the feature store's export for this run."""
    channels_uri = info.uri("preprocess") + "/channels"
    return {f"{split}_uri": f"{channels_uri}/{split}" for split in ("train", "validation", "test")}


def _ds_from(info: RunInfo, params: dict) -> str | None:
    # the first day of the training window (None: all history up to ds)
    window = int(params.get("training_window_days") or 0)
    return (date.fromisoformat(info.ds) - timedelta(days=window - 1)).isoformat() if window > 0 else None


def _plan_preprocess(info: RunInfo, params: dict, inputs: dict, runner: JobRunner) -> JobPlan:
    """Step 3, first half: export the clean rows; the processing job's request."""
    training_settings(params)  # a bad profile param fails before the export
    ds_from = _ds_from(info, params)
    export_uri = info.uri("export")
    with tempfile.TemporaryDirectory() as tmp:
        rows = get_catalog().export_clean(info.ds, Path(tmp) / "clean.parquet", ds_from=ds_from)
        if rows == 0:
            raise PipelineError(f"no valid reviews up to ds={info.ds}: nothing to train on")
        publish_dir(Path(tmp), export_uri)
    log.info("exported %d clean reviews (ds %s..%s) to %s", rows, ds_from or "first", info.ds, export_uri)
    features_uri = info.uri("preprocess") + "/features"
    request = preprocess_job_request(info, params, export_uri, features_uri, runner.code_uri())
    return JobPlan("preprocess", request, {"export_uri": export_uri, "rows": rows, "ds_from": ds_from,
                                           "features_uri": features_uri})


def _finish_preprocess(info: RunInfo, params: dict, inputs: dict, plan: JobPlan, result: dict) -> dict:
    """Step 3, second half: ingest the job's feature snapshot into the feature store."""
    settings = get_settings()
    features_uri, ds_from = plan.state["features_uri"], plan.state["ds_from"]
    # The jobs read the feature store's point-in-time export as of the run's day, not the raw
    # shards: a backfilled run trains on what was known at its ds (include/data/feature_store_base.py).
    channels = channel_uris(info)
    channels_uri = channels["train_uri"].rsplit("/", 1)[0]
    with local_dir(features_uri) as features_dir:
        snapshot = get_feature_store(settings).ingest_run_features(features_dir, info.ds, info.run_id, channels_uri)
        stats = json.loads((features_dir / "stats.json").read_text())
    first = get_catalog(settings).registered_partitions()[:1]
    return {"job": result, "export_uri": plan.state["export_uri"], "clean_rows": plan.state["rows"],
            "features_uri": features_uri, "data_from": ds_from or (first[0] if first else info.ds),
            "data_to": info.ds, **channels, "feature_snapshot": snapshot, "stats": stats}


def _train_hyperparameters(prof: dict, params: dict) -> dict:
    hps = {k: prof[k] for k in TRAIN_HPS}
    if prof.get("train_time_budget_s"):
        hps["time_budget_s"] = prof["train_time_budget_s"]
    if params.get("model_name_or_path"):
        hps["model_name_or_path"] = params["model_name_or_path"]
    return hps


def train_job_request(info: RunInfo, params: dict, features: dict, code_uri: str,
                      environment: dict[str, str]) -> dict:
    """Step 4's ``CreateTrainingJob`` request (no side effect: ``make validate-aws`` renders it)."""
    hps = _train_hyperparameters(training_settings(params), params)
    output_uri = info.uri("train")
    return requests.training_request(
        name=info.job("train"), train_uri=features["train_uri"], validation_uri=features["validation_uri"],
        output_uri=output_uri, checkpoint_uri=output_uri + "/checkpoints", code_uri=code_uri,
        hyperparameters=hps, environment=environment)


def _plan_train(info: RunInfo, params: dict, inputs: dict, runner: JobRunner) -> JobPlan:
    """Step 4, first half: the training job's request (hyper-parameters from the profile)."""
    prof = training_settings(params)
    request = train_job_request(info, params, inputs["features"], runner.code_uri(),
                                runner.tracking_environment(EXPERIMENT, info.job("train")))
    return JobPlan("train", request, {"hyperparameters": _train_hyperparameters(prof, params),
                                      "profile": prof["profile"], "overrides": prof["overrides"],
                                      "output_uri": info.uri("train")})


def _finish_train(info: RunInfo, params: dict, inputs: dict, plan: JobPlan, result: dict) -> dict:
    """Step 4, second half: keep only this job's outputs; drop the checkpoints."""
    output_uri = plan.state["output_uri"]
    base = plan.request["TrainingJobName"]
    # A cleared-and-rerun task replaces, never adds: other jobs of this step leave nothing behind.
    for attempt in range(1, requests.MAX_JOBS_PER_STEP + 1):
        if (other := requests.restart_name(base, attempt)) != result["job_name"]:
            delete_prefix(f"{output_uri}/{other}")
    # Checkpoints only serve a retry of an unfinished job; the model is published now.
    delete_prefix(output_uri + "/checkpoints")
    return {"job": result, "model_uri": result["outputs"]["model"], "output_uri": result["outputs"]["output"],
            "hyperparameters": plan.state["hyperparameters"], "profile": plan.state["profile"],
            "overrides": plan.state["overrides"]}


def evaluate_job_request(info: RunInfo, features: dict, trained: dict, code_uri: str,
                         deployed: tuple[str, str] | None) -> dict:
    """Step 5's ``CreateProcessingJob`` request; ``deployed``: (version, package URI) to compare."""
    return requests.evaluation_request(
        name=info.job("evaluate"), model_uri=trained["model_uri"], test_uri=features["test_uri"],
        training_output_uri=trained["output_uri"], output_uri=info.uri("evaluate"), code_uri=code_uri,
        deployed_model_uri=deployed[1] if deployed else None, deployed_version=deployed[0] if deployed else "")


def _plan_evaluate(info: RunInfo, params: dict, inputs: dict, runner: JobRunner) -> JobPlan:
    """Step 5, first half: the evaluation job's request (and the deployed model to compare)."""
    deployed = deployed_package()
    request = evaluate_job_request(info, inputs["features"], inputs["trained"], runner.code_uri(), deployed)
    return JobPlan("evaluate", request, {"output_uri": info.uri("evaluate"),
                                         "deployed_version": deployed[0] if deployed else None})


def _render_evaluation_report(info: RunInfo, features: dict, output_uri: str) -> dict:
    """Render the run's evaluation report beside ``evaluation.json``: its URI and UI link."""
    from include.pipeline import review

    # Rendered here, not in the job: the job knows no run, registry or partitions.
    with edit_dir(output_uri) as folder:
        page = review.write_evaluation_report(folder, info.dag_id, info.run_id,
                                              review.data_range(features.get("data_from"),
                                                                features.get("data_to") or info.ds,
                                                                features.get("clean_rows")))
    return {"report_uri": f"{output_uri}/{Path(page['report_path']).name}", "report_url": page["report_url"]}


def _finish_evaluate(info: RunInfo, params: dict, inputs: dict, plan: JobPlan, result: dict) -> dict:
    """Step 5, second half: the job's figures (the report is rendered by :func:`finish_job`)."""
    output_uri = plan.state["output_uri"]
    report = read_json(f"{output_uri}/evaluation.json")
    for rule in (report.get("debugger") or {}).get("triggered") or []:
        log.warning("debugger rule triggered during training: %s", rule)
    return {"job": result, "evaluation_uri": f"{output_uri}/evaluation.json",
            "confusion_matrix_uri": f"{output_uri}/confusion_matrix.png",
            "deployed_version": plan.state["deployed_version"],
            "accuracy": report["metrics"]["accuracy"]["value"], "macro_f1": report["metrics"]["macro_f1"]["value"],
            "accuracy_ci95": report["accuracy_ci95"], "test_rows": report["test_rows"]}


JOB_STEPS = {"preprocess": (_plan_preprocess, _finish_preprocess), "train": (_plan_train, _finish_train),
             "evaluate": (_plan_evaluate, _finish_evaluate)}


def preprocess(info: RunInfo, params: dict) -> dict:
    """Step 3: export the clean rows, run the processing job, ingest the feature snapshot."""
    return run_job_step("preprocess", info, params, {})


def train(info: RunInfo, params: dict, features: dict) -> dict:
    """Step 4: the training job; model.tar.gz under the run's ``train/`` prefix."""
    return run_job_step("train", info, params, {"features": features})


def evaluate(info: RunInfo, features: dict, trained: dict, use_cache: bool = True) -> dict:
    """Step 5: the evaluation job; returns the evaluation report and where it lies."""
    return run_job_step("evaluate", info, {"use_cache": use_cache}, {"features": features, "trained": trained})


def _deployed_version() -> ModelVersion | None:
    # what the endpoint serves, per the registry; None before any registry or deploy exists
    if not registry_exists():
        return None
    try:
        return get_registry().deployed_version()
    except RegistryError:
        return None


def deployed_package() -> tuple[str, str] | None:
    """(version, package URI) of the version the endpoint serves, to score it on the same test split."""
    deployed = _deployed_version()
    return (deployed.version, deployed.package_uri) if deployed else None


def accuracy_gate(evaluation: dict, min_accuracy: float, champion: float | None = None, baseline: float | None = None,
                  min_improvement: float = 0.0) -> tuple[bool, str]:
    """Step 6: register only a model with accuracy >= ``min_accuracy`` that beats the champion (the
    deployed model) by at least ``min_improvement`` and is not worse than the AutoML baseline.

    ``champion`` and ``baseline`` are their accuracies on the same test split as ``evaluation``
    (None: there is no such model). Returns (register?, the note naming the three numbers).
    """
    acc = evaluation["accuracy"]
    numbers = (f"new {acc:.4f}, champion {'none' if champion is None else f'{champion:.4f}'}, "
               f"baseline {'none' if baseline is None else f'{baseline:.4f}'}")
    if acc < min_accuracy:
        return False, f"{numbers}: accuracy < min_accuracy {min_accuracy:.4f}; not registering this model"
    if champion is not None and acc < champion + min_improvement:
        return False, (f"{numbers}: does not beat the champion by min_improvement {min_improvement:+.4f}; "
                       "keeping the champion")
    if baseline is not None and acc < baseline:
        return False, f"{numbers}: worse than the AutoML baseline; not registering this model"
    return True, f"{numbers}: passes min_accuracy {min_accuracy:.4f}, the champion and the baseline; registering"


# ------------------------------------------------------------------ review_catalog_analysis


def analyse(info: RunInfo, ds_from: str | None, ds_to: str | None, top_n: int) -> dict:
    """The lab's SQL questions over the catalog: plots + ``report.html`` under ``analysis/``."""
    out_uri = info.uri("analysis")
    with output_dir(out_uri) as out_dir:  # on aws: plots and report uploaded to S3
        result = analysis.run_analysis(out_dir, ds_from, ds_to, top_n=top_n, location=location(out_uri))
    print(f"analysis report: {result['report_path']}", flush=True)
    return result


def deployed_training_data_uri() -> str | None:
    """The clean data the deployed model was trained on (its registry lineage), if any."""
    deployed = _deployed_version()
    folder = (deployed.lineage.get("clean_data_uri") if deployed else None) or None
    return f"{folder.rstrip('/')}/clean.parquet" if folder else None


def check_drift(info: RunInfo, registered: dict, baseline_uri: str, threshold: float) -> dict:
    """Drift of the newly registered partitions against ``baseline_uri`` (default: the deployed
    model's training data). Above the threshold it is a warning, never a failure; without a
    baseline the check is skipped."""
    baseline = baseline_uri or deployed_training_data_uri() or ""
    if not baseline:
        log.info("no drift_baseline_uri and no deployed model with recorded training data: drift check skipped")
        return {"skipped": True}
    ds_list = registered.get("partitions") or registered.get("catalog_partitions", [])[-1:]
    out_uri = info.uri("drift")
    with output_dir(out_uri) as out_dir:  # on aws: uploaded to S3
        result = drift.compare(ds_list, baseline if is_s3(baseline) else uri_to_path(baseline), threshold=threshold,
                               report_dir=out_dir, report_location=location(out_uri))
    print(f"drift report: {result['report_path']}", flush=True)
    return result
