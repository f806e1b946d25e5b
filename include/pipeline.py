"""The steps of ``review_sentiment_pipeline`` as plain functions (the DAG only wires them).

Every step writes under the run-scoped prefix ``runs/<dag_id>/<run_id>/<step>/`` and
publishes atomically, so a retried or re-run task replaces its outputs. Each returns a
small JSON-able dict that goes to XCom and into the lineage listing.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from include import catalog, feature_store, jobs, profiles, quality
from include.config import Settings, get_settings, uri_to_path

log = logging.getLogger("airflow.task")
DAG_ID = "review_sentiment_pipeline"


class PipelineError(RuntimeError):
    """A step cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class RunInfo:
    """Who is running: the DAG run, the data partition and the attempt."""

    dag_id: str
    run_id: str
    ds: str
    try_number: int = 1

    def uri(self, step: str, settings: Settings | None = None) -> str:
        """Run-scoped prefix of ``step``."""
        return (settings or get_settings()).run_uri(self.dag_id, self.run_id, step)

    def job(self, step: str) -> str:
        """Job name unique per run and attempt."""
        return jobs.job_name(step, self.run_id, self.try_number)


def resolve_ds(data_interval_start, ds_param: str | None, settings: Settings | None = None) -> str:
    """The partition a run processes: the ``ds`` param, else the data interval's day, else
    (a manual run without a logical date) the latest landed partition."""
    if ds_param:
        try:
            return date.fromisoformat(ds_param).isoformat()
        except ValueError:
            raise PipelineError(f"param ds={ds_param!r}: use YYYY-MM-DD or leave it empty") from None
    if data_interval_start is not None:
        return data_interval_start.date().isoformat()
    landed = catalog.landing_partitions(settings)
    if not landed:
        raise PipelineError("no logical date and no landing partition: land data first (make land) or pass ds")
    return landed[-1]


def run_info(context: dict) -> RunInfo:
    """``RunInfo`` from an Airflow task context."""
    ti, params = context["ti"], context["params"]
    ds = resolve_ds(context.get("data_interval_start"), params.get("ds"))
    return RunInfo(dag_id=ti.dag_id, run_id=context["run_id"], ds=ds, try_number=ti.try_number)


def record_step(info: RunInfo, step: str, result: dict) -> None:
    """Keep a step's result as ``runs/<dag>/<run>/_lineage/<step>.json`` (for ``make artifacts``)."""
    folder = uri_to_path(info.uri("_lineage"))
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"step": step, "dag_id": info.dag_id, "run_id": info.run_id, "ds": info.ds,
           "try_number": info.try_number, "result": result}
    tmp = folder / f".{step}.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(folder / f"{step}.json")


def _publish_local(src: Path, dest_uri: str) -> str:
    from review_jobs.local_runner import publish_dir

    return publish_dir(src, dest_uri)


def register_dataset(info: RunInfo, input_data_uri: str = "") -> dict:
    """Step 1: the day's drop (or ``input_data_uri``) becomes partition ``ds`` of ``reviews_raw``.

    Without ``input_data_uri`` every landed partition up to ``ds`` that the catalog lacks is
    registered too, so a first run (or one after missed nights) sees all history.
    """
    if input_data_uri:
        results = [catalog.register_partition(info.ds, input_data_uri)]
    else:
        known = set(catalog.registered_partitions())
        backlog = [d for d in catalog.landing_partitions() if d < info.ds and d not in known]
        results = [catalog.register_partition(d) for d in backlog] + [catalog.register_partition(info.ds)]
    rows = sum(r["rows"] for r in results)
    log.info("registered %d partition(s) %s..%s, %d rows", len(results), results[0]["ds"], results[-1]["ds"], rows)
    return {"ds": info.ds, "partitions": [r["ds"] for r in results], "rows": rows,
            "files": [f for r in results for f in r["files"]]}


def validate_dataset(info: RunInfo, partitions: list[str], max_bad_row_fraction: float) -> dict:
    """Step 2: the quality suite over the newly registered partitions; report as run artifact."""
    dest = info.uri("validate")
    with tempfile.TemporaryDirectory() as tmp:
        result = quality.validate_partitions(partitions, info.run_id, max_bad_row_fraction, Path(tmp))
        report_name = Path(result["report_path"]).name
        uri = _publish_local(Path(tmp), dest)
    result["report_path"] = str(uri_to_path(uri) / report_name)
    log.info("validation: %d rows, %d bad (%.2f%%); report %s", result["rows"], result["bad_rows"],
             100 * result["bad_fraction"], result["report_path"])
    return result


def preprocess(info: RunInfo, params: dict) -> dict:
    """Step 3: export the clean rows, run the processing job, ingest the feature snapshot."""
    settings = get_settings()
    prof = training_settings(params)
    window = int(params.get("training_window_days") or 0)
    ds_from = (date.fromisoformat(info.ds) - timedelta(days=window - 1)).isoformat() if window > 0 else None
    export_uri = info.uri("export")
    with tempfile.TemporaryDirectory() as tmp:
        rows = catalog.export_clean(info.ds, Path(tmp) / "clean.parquet", ds_from=ds_from)
        if rows == 0:
            raise PipelineError(f"no valid reviews up to ds={info.ds}: nothing to train on")
        _publish_local(Path(tmp), export_uri)
    log.info("exported %d clean reviews (ds %s..%s) to %s", rows, ds_from or "first", info.ds, export_uri)
    features_uri = info.uri("preprocess") + "/features"
    request = jobs.preprocess_request(
        name=info.job("preprocess"), input_uri=export_uri, output_uri=features_uri, code_uri=jobs.code_uri(settings),
        model_name_or_path=params.get("model_name_or_path") or "", max_seq_length=prof["max_seq_length"],
        train_split_percentage=prof["train_split_percentage"],
        validation_split_percentage=prof["validation_split_percentage"],
        balance_dataset=prof["balance_dataset"])
    result = jobs.submit(request, settings=settings)
    features_dir = uri_to_path(features_uri)
    snapshot = feature_store.ingest(features_dir, info.run_id, settings)
    stats = json.loads((features_dir / "stats.json").read_text())
    return {"job": result, "export_uri": export_uri, "clean_rows": rows, "features_uri": features_uri,
            "train_uri": f"{features_uri}/train", "validation_uri": f"{features_uri}/validation",
            "test_uri": f"{features_uri}/test", "feature_snapshot": snapshot, "stats": stats}


TRAIN_HPS = ("epochs", "learning_rate", "train_batch_size", "max_seq_length", "max_train_samples",
             "class_weights", "max_class_ratio", "rating_aux_weight")


def training_settings(params: dict) -> dict:
    """The run's profile settings with the params that override them (see include/profiles.py)."""
    try:
        prof = profiles.resolve(params)
    except profiles.ProfileError as exc:
        raise PipelineError(str(exc)) from None
    log.info("profile %s%s: %s", prof["profile"],
             f" (overridden: {', '.join(prof['overrides'])})" if prof["overrides"] else "",
             ", ".join(f"{k}={prof[k]}" for k in profiles.SETTINGS))
    return prof
EXPERIMENT = "review-sentiment"


def ensure_experiment(settings: Settings, name: str) -> None:
    """Create the MLflow experiment with its artifact root in the state dir (not ./mlruns)."""
    import mlflow

    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    if client.get_experiment_by_name(name) is None:
        client.create_experiment(name, artifact_location=(settings.mlflow_dir / "artifacts").as_uri())


def train(info: RunInfo, params: dict, features: dict) -> dict:
    """Step 4: the training job; model.tar.gz under the run's ``train/`` prefix."""
    settings = get_settings()
    prof = training_settings(params)
    hps = {k: prof[k] for k in TRAIN_HPS}
    if prof.get("train_time_budget_s"):
        hps["time_budget_s"] = prof["train_time_budget_s"]
    if params.get("model_name_or_path"):
        hps["model_name_or_path"] = params["model_name_or_path"]
    name = info.job("train")
    output_uri = info.uri("train")
    checkpoint_uri = output_uri + "/checkpoints"
    request = jobs.training_request(
        name=name, train_uri=features["train_uri"], validation_uri=features["validation_uri"],
        output_uri=output_uri, checkpoint_uri=checkpoint_uri, code_uri=jobs.code_uri(settings),
        hyperparameters=hps, environment={"MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
                                          "MLFLOW_EXPERIMENT_NAME": EXPERIMENT, "MLFLOW_RUN_NAME": name})
    ensure_experiment(settings, EXPERIMENT)
    result = jobs.submit(request, settings=settings)
    _drop_other_attempts(uri_to_path(output_uri), keep=name)
    # Checkpoints only serve a retry of an unfinished job; the model is published now.
    shutil.rmtree(uri_to_path(checkpoint_uri), ignore_errors=True)
    return {"job": result, "model_uri": result["outputs"]["model"], "output_uri": result["outputs"]["output"],
            "hyperparameters": hps, "profile": prof["profile"], "overrides": prof["overrides"]}


def _drop_other_attempts(prefix: Path, keep: str) -> None:
    # A cleared-and-rerun task must replace, not add: keep only this attempt's job folder.
    for child in prefix.glob("rs-train-*"):
        if child.name != keep and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)


def evaluate(info: RunInfo, features: dict, trained: dict) -> dict:
    """Step 5: the evaluation job; returns the evaluation report and where it lies."""
    settings = get_settings()
    output_uri = info.uri("evaluate")
    request = jobs.evaluation_request(
        name=info.job("evaluate"), model_uri=trained["model_uri"], test_uri=features["test_uri"],
        training_output_uri=trained["output_uri"], output_uri=output_uri, code_uri=jobs.code_uri(settings))
    result = jobs.submit(request, settings=settings)
    report = json.loads((uri_to_path(output_uri) / "evaluation.json").read_text())
    triggered = (report.get("debugger") or {}).get("triggered") or []
    for rule in triggered:
        log.warning("debugger rule triggered during training: %s", rule)
    return {"job": result, "evaluation_uri": f"{output_uri}/evaluation.json",
            "confusion_matrix_uri": f"{output_uri}/confusion_matrix.png",
            "accuracy": report["metrics"]["accuracy"]["value"], "macro_f1": report["metrics"]["macro_f1"]["value"],
            "accuracy_ci95": report["accuracy_ci95"], "test_rows": report["test_rows"]}


def accuracy_gate(evaluation: dict, min_accuracy: float, deployed_accuracy: float | None = None) -> tuple[bool, str]:
    """Step 6: pass only when accuracy >= ``min_accuracy`` and not behind the deployed model."""
    acc = evaluation["accuracy"]
    if acc < min_accuracy:
        return False, f"accuracy {acc:.4f} < min_accuracy {min_accuracy:.4f}: not registering this model"
    if deployed_accuracy is not None and acc < deployed_accuracy:
        return False, f"accuracy {acc:.4f} is behind the deployed model's {deployed_accuracy:.4f}: keeping it"
    return True, f"accuracy {acc:.4f} >= min_accuracy {min_accuracy:.4f}: registering"


def git_commit() -> str:
    """The project's git commit (lineage); ``unknown`` outside a checkout."""
    import subprocess

    from include.config import PROJECT_ROOT

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def deployed_accuracy() -> float | None:
    """Test accuracy of the version the endpoint serves now (None when nothing is deployed)."""
    from include.registry import get_registry

    deployed = get_registry().deployed_version()
    return deployed.metrics.get("accuracy") if deployed else None


def register_model(info: RunInfo, registered: dict, features: dict, trained: dict, evaluation: dict,
                   auto_approve: bool) -> dict:
    """Step 7: package model + inference code, register a version with metrics and lineage."""
    from include.model_steps import register_model_step

    report = json.loads(uri_to_path(evaluation["evaluation_uri"]).read_text())
    lineage = {
        "dag_id": info.dag_id, "run_id": info.run_id, "ds": info.ds,
        "partitions": ",".join(registered["partitions"]),
        "feature_group": features["feature_snapshot"]["feature_group"],
        "feature_snapshot_id": features["feature_snapshot"]["snapshot_id"],
        "git_commit": git_commit(),
        "preprocess_job": features["job"]["job_name"], "training_job": trained["job"]["job_name"],
        "evaluation_job": evaluation["job"]["job_name"], "evaluation_uri": evaluation["evaluation_uri"],
        "train_data_uri": features["train_uri"], "clean_data_uri": features["export_uri"],
    }
    return register_model_step(trained["model_uri"], report, lineage, auto_approve,
                               info.uri("register_model") + "/model.tar.gz")


def deploy_model(version: str) -> dict:
    """Step 9: serve the approved version on the endpoint (smoke-tested, old one kept on failure)."""
    from include.model_steps import deploy_model_step

    return deploy_model_step(version)
