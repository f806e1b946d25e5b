"""Steps of ``review_automl_baseline`` and the champion/challenger scoring of ``check_accuracy``.

The AutoML DAG: export a feature snapshot's splits -> run the search job
(``include/scripts/automl.py``) and/or, on the aws backend, a SageMaker Autopilot (AutoML V2)
job on the same splits and budget (the ``engine`` param) -> register our search's best candidate
as a version of ``review-sentiment-baseline`` (Autopilot's best is recorded beside it). The same
code on both backends: the run's prefix is a ``file://`` folder locally, ``s3://`` on aws.
``check_accuracy`` of the main DAG then scores the deployed model (the champion) and the latest
baseline on the new run's own test split (:func:`reference_accuracies`), so the three numbers it compares come from the same rows.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from include.common.config import get_settings
from include.common.errors import NonRetriableError
from include.common.io import exists, local_dir, location, publish_dir, read_json, write_json
from include.data.feature_store import get_feature_store
from include.data.feature_store_base import REVIEWS, FeatureStoreError
from include.jobs import requests
from include.jobs.runner import get_runner
from include.model.packaging import build_sklearn_package
from include.model.registry import get_registry, registry_exists
from include.model.registry_base import BASELINE_MODEL_NAME, PENDING, flatten_evaluation
from include.pipeline.context import RunInfo, git_commit

log = logging.getLogger("airflow.task")


ENGINES = ("search", "autopilot", "both")
CSV_COLUMNS = ("review_body", "sentiment")  # what the Autopilot channels carry: the text and the target


class NoFeatureSnapshotError(NonRetriableError, RuntimeError):
    """There is no feature snapshot to search on (the main pipeline never preprocessed data)."""


class EngineError(NonRetriableError, ValueError):
    """The ``engine`` param names an engine the backend does not have."""


def check_engine(engine: str, backend: str) -> str:
    """``engine`` when ``backend`` runs it: ``search`` everywhere, ``autopilot`` / ``both`` on aws only."""
    if engine not in ENGINES:
        raise EngineError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if engine != "search" and backend != "aws":
        raise EngineError(f"engine {engine!r} launches SageMaker Autopilot, which needs REVIEWS_BACKEND=aws "
                          f"(this is {backend!r}); use engine 'search'")
    return engine


def uses_search(engine: str) -> bool:
    """Whether ``engine`` runs our classical search (``automl.py``)."""
    return engine in ("search", "both")


def uses_autopilot(engine: str) -> bool:
    """Whether ``engine`` launches a SageMaker Autopilot job."""
    return engine in ("autopilot", "both")


def _write_csv_channels(parquet_root: Path, csv_root: Path) -> dict[str, int]:
    """``<split>.csv`` (``review_body``, ``sentiment``; header row) of each split's Parquet shards:
    Autopilot reads CSV, not Parquet. Rows per split."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    rows = {}
    for split in ("train", "validation", "test"):
        shards = sorted((parquet_root / split).glob("*.parquet"))
        table = pa.concat_tables([pq.read_table(f, columns=list(CSV_COLUMNS)) for f in shards])
        out = csv_root / split / f"{split}.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        pcsv.write_csv(table, out)
        rows[split] = table.num_rows
    return rows


def export_features(info: RunInfo, snapshot_id: str = "", engine: str = "search") -> dict:
    """The feature snapshot's train/validation/test splits as Parquet under the run's ``features/``
    (``file://`` locally, ``s3://`` on aws), the point-in-time read as of the snapshot's event
    time (its run's ds); with an Autopilot engine also as CSV under ``features_csv/``."""
    settings = get_settings()
    check_engine(engine, settings.backend)
    store = get_feature_store(settings)
    snapshot = snapshot_id or store.latest_snapshot()
    if not snapshot:
        raise NoFeatureSnapshotError(
            f"the feature group {REVIEWS.name} holds no snapshot with train, validation and test "
            "rows: run review_sentiment_pipeline (its preprocess step) first, or pass snapshot_id")
    dest = info.uri("features")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            rows = store.export_snapshot(snapshot, Path(tmp))
        except FeatureStoreError as exc:
            raise NoFeatureSnapshotError(str(exc)) from None
        publish_dir(Path(tmp), dest)
        out = {"feature_group": REVIEWS.name, "snapshot_id": snapshot, "rows": rows,
               "train_uri": f"{dest}/train", "validation_uri": f"{dest}/validation", "test_uri": f"{dest}/test"}
        if uses_autopilot(engine):
            csv_dest = info.uri("features_csv")
            with tempfile.TemporaryDirectory() as csv_tmp:
                _write_csv_channels(Path(tmp), Path(csv_tmp))
                publish_dir(Path(csv_tmp), csv_dest)
            out.update({f"{split}_csv_uri": f"{csv_dest}/{split}/{split}.csv"
                        for split in ("train", "validation", "test")})
    log.info("feature snapshot %s exported to %s: %s", snapshot, location(dest), rows)
    return out


def search(info: RunInfo, features: dict, time_budget_s: int, max_candidates: int) -> dict:
    """Run the AutoML search job; the leaderboard summary and where its files are.

    The same request on both backends: run here by the local runner, or completed with the
    account's role, image and instance (``steps.automl`` of the aws config) and run as a
    SageMaker processing job, its leaderboard then read from S3.
    """
    runner = get_runner()
    out = info.uri("automl")
    request = requests.automl_request(
        name=info.job("automl"), train_uri=features["train_uri"], validation_uri=features["validation_uri"],
        test_uri=features["test_uri"], output_uri=f"{out}/leaderboard", model_output_uri=f"{out}/model",
        code_uri=runner.code_uri(), time_budget_s=time_budget_s, max_candidates=max_candidates)
    result = runner.run(runner.prepare(request, "automl", info.run_tag))
    board = read_json(f"{out}/leaderboard/leaderboard.json")
    print(f"AutoML leaderboard: {location(f'{out}/leaderboard/leaderboard.html')}", flush=True)
    for row in board["leaderboard"][:5]:
        log.info("#%d %s: cross-validated %.4f (ranks), validation %.4f, test %.4f, train %.1fs, %.3fs per "
                 "1000 reviews", row["rank"], row["candidate"], row["cv_accuracy"], row["validation_accuracy"],
                 row["test_accuracy"], row["train_s"], row["inference_s_per_1000"])
    return {"job": result, "leaderboard_uri": f"{out}/leaderboard/leaderboard.json",
            "leaderboard_html_uri": f"{out}/leaderboard/leaderboard.html",
            "evaluation_uri": f"{out}/leaderboard/evaluation.json", "model_uri": f"{out}/model",
            "best_candidate": board["best_candidate"], "best_accuracy": board["best_accuracy"],
            "best_cv_accuracy": board["best_cv_accuracy"], "best_validation_accuracy": board["best_validation_accuracy"],
            "candidates": board["candidates"],
            "wall_s": board["wall_s"]}


def autopilot_search(info: RunInfo, features: dict, time_budget_s: int, max_candidates: int,
                     check_interval_s: int | None = None, task_timeout_s: float | None = None) -> dict:
    """Launch a SageMaker Autopilot (AutoML V2) job on the snapshot's CSV channels (training +
    validation) with the same budget and candidate cap as our search, wait for it, and write its
    best candidate as ``automl/autopilot/autopilot.json`` beside our leaderboard; that summary.

    Created through the Amazon provider's ``SageMakerHook`` (``include/jobs/autopilot.py``); a
    retried task adopts the job its earlier attempt created. The task waits (blocking) up to the
    budget plus 30 minutes: Autopilot's own limit is ``MaxAutoMLJobRuntimeInSeconds`` = the budget.
    A budget whose wait would outlast the task's ``execution_timeout`` (``task_timeout_s``) is
    refused before any job is created: Airflow would kill the task mid-wait, the job paid on.
    """
    from include.common.aws import load_aws_config
    from include.jobs import autopilot
    from include.pipeline.defaults import AUTOPILOT_GRACE_S, TIMEOUT_MARGIN

    wait_s = int(time_budget_s) + AUTOPILOT_GRACE_S
    if task_timeout_s and wait_s + TIMEOUT_MARGIN.total_seconds() > task_timeout_s:
        raise EngineError(f"param time_budget_s={time_budget_s}: Autopilot's wait ({wait_s}s) plus "
                          f"{TIMEOUT_MARGIN.total_seconds():.0f}s exceeds the task's execution_timeout "
                          f"({task_timeout_s:.0f}s); lower the budget")

    cfg = load_aws_config().validate()
    if not features.get("train_csv_uri"):
        raise EngineError("export_features wrote no CSV channels: run the DAG with engine 'autopilot' or 'both'")
    out = info.uri("automl")
    request = requests.autopilot_request(
        name=info.job("autopilot"), train_csv_uri=features["train_csv_uri"],
        validation_csv_uri=features["validation_csv_uri"], output_uri=f"{out}/autopilot/output",
        time_budget_s=time_budget_s, max_candidates=max_candidates, role_arn=cfg.role_arn)
    hook = autopilot.sagemaker_hook(cfg.aws_conn_id, cfg.region)
    interval = cfg.job_check_interval_s if check_interval_s is None else check_interval_s
    summary = autopilot.run(request, hook, check_interval_s=interval, max_wait_s=wait_s,
                            log_fn=log.info)
    summary = {**summary, "time_budget_s": int(time_budget_s), "max_candidates": int(max_candidates),
               "train_csv_uri": features["train_csv_uri"], "validation_csv_uri": features["validation_csv_uri"],
               "summary_uri": f"{out}/autopilot/autopilot.json"}
    write_json(summary["summary_uri"], summary)
    log.info("Autopilot job %s: best candidate %s, %s %s (validation)", summary["job_name"],
             summary["best_candidate"], summary["metric_name"], summary["metric_value"])
    return summary


def register_baseline(info: RunInfo, features: dict, searched: dict | None, piloted: dict | None = None) -> dict:
    """Package the best candidate and register it as a version of ``review-sentiment-baseline``.

    Registered ``PendingManualApproval``: a baseline is a yardstick, not a deployment; approving
    a version in the registry makes it deployable through the same endpoint as the BERT models.
    Once per DAG run (a re-run returns the version already registered). Autopilot's best
    candidate (``piloted``), when there is one, is recorded in the version's lineage; it is not
    registered itself (its model is Autopilot's own inference pipeline, not our endpoint's
    contract): with engine ``autopilot`` alone nothing is registered.
    """
    if not searched:
        log.info("no search ran (engine autopilot): nothing to register; Autopilot's best candidate is in %s",
                 (piloted or {}).get("summary_uri", "-"))
        return {"model_name": BASELINE_MODEL_NAME, "version": None, "created": False,
                "autopilot": piloted or None}
    registry = get_registry(BASELINE_MODEL_NAME)
    existing = registry.find_by_run(info.dag_id, info.run_id)
    if existing is not None:
        log.info("run %s already registered baseline version %s", info.run_id, existing.version)
        return {"model_name": existing.name, "version": existing.version, "package_uri": existing.package_uri,
                "metrics": existing.metrics, "created": False}
    evaluation = read_json(searched["evaluation_uri"])
    metrics = {**flatten_evaluation({"metrics": evaluation["metrics"]}),
               "validation_accuracy": searched["best_validation_accuracy"],
               "cv_accuracy": searched["best_cv_accuracy"]}
    with local_dir(searched["model_uri"]) as model_dir:
        package_uri = build_sklearn_package(model_dir, info.uri("register_baseline"))
    lineage = {"dag_id": info.dag_id, "run_id": info.run_id, "feature_group": features["feature_group"],
               "feature_snapshot_id": features["snapshot_id"], "test_data_uri": features["test_uri"],
               "automl_job": searched["job"]["job_name"], "candidate": searched["best_candidate"],
               "leaderboard_uri": searched["leaderboard_uri"], "evaluation_uri": searched["evaluation_uri"],
               "git_commit": git_commit(), "kind": "automl-baseline"}
    if piloted:
        lineage.update({"autopilot_job": piloted["job_name"], "autopilot_candidate": piloted["best_candidate"],
                        "autopilot_metric": f"{piloted['metric_name']}={piloted['metric_value']}",
                        "autopilot_summary_uri": piloted["summary_uri"]})
    version = registry.register(package_uri, metrics, lineage, PENDING)
    log.info("registered %s version %s: %s, test accuracy %.4f", version.name, version.version,
             searched["best_candidate"], searched["best_accuracy"])
    return {"model_name": version.name, "version": version.version, "package_uri": package_uri,
            "metrics": version.metrics, "created": True, "autopilot": piloted or None}


# ------------------------------------------------------------------ champion / challenger


def _score(runner, request: dict, output_uri: str, step: str, run: str) -> float:
    runner.run(runner.prepare(request, step, run))
    report = read_json(f"{output_uri}/evaluation.json")
    return float(report["metrics"]["accuracy"]["value"])


def baseline_figures(score_uri: str, version: str) -> dict:
    """The baseline's accuracy, macro-F1 and per-class F1 from its score job's ``evaluation.json``,
    in the shape the evaluation report and the approval request show (their ``baseline`` column)."""
    report = read_json(f"{score_uri}/evaluation.json")
    return {"title": f"AutoML baseline v{version}", "accuracy": report["metrics"]["accuracy"]["value"],
            "macro_f1": report["metrics"]["macro_f1"]["value"],
            "per_class": {k: {"f1": v["f1"]} for k, v in (report.get("per_class") or {}).items()},
            "note": "same test split"}


def _deployed_comparison(evaluation_uri: str | None) -> dict:
    # comparison.json beside evaluation.json: the deployed version scored by the evaluation job
    if not evaluation_uri:
        return {}
    uri = evaluation_uri.rsplit("/", 1)[0] + "/comparison.json"
    return read_json(uri).get("deployed") or {} if exists(uri) else {}


def reference_accuracies(info: RunInfo, test_uri: str, evaluation_uri: str | None = None) -> dict:
    """Accuracy of the champion (deployed BERT version) and the latest baseline on ``test_uri``.

    Both are measured on this run's test split (the stored metrics of a version were measured on
    another run's split): the champion's from the evaluation job's ``comparison.json`` when it
    scored that version, else by a processing job; the baseline by ``automl.py score``.
    ``None`` where there is no such model.
    """
    if not registry_exists():  # no registry yet: neither exists
        return {"champion": None, "champion_version": None, "baseline": None, "baseline_version": None}
    runner = get_runner()
    out: dict = {"champion": None, "champion_version": None, "baseline": None, "baseline_version": None}
    champion = get_registry().deployed_version()
    scored = _deployed_comparison(evaluation_uri)
    if champion is not None and scored.get("version") == champion.version:
        # the evaluation job already scored the deployed version on this test split
        out["champion"], out["champion_version"] = float(scored["accuracy"]), champion.version
    elif champion is not None:
        uri = info.uri("check_accuracy") + "/champion"
        out["champion"] = _score(runner, requests.evaluation_request(
            name=info.job("score-champion"), model_uri=champion.package_uri, test_uri=test_uri,
            training_output_uri=None, output_uri=uri, code_uri=runner.code_uri()), uri, "evaluate", info.run_tag)
        out["champion_version"] = champion.version
    versions = get_registry(BASELINE_MODEL_NAME).list_versions()
    if versions:
        baseline = versions[-1]
        uri = info.uri("check_accuracy") + "/baseline"
        out["baseline"] = _score(runner, requests.baseline_score_request(
            name=info.job("score-baseline"), model_uri=baseline.package_uri, test_uri=test_uri, output_uri=uri,
            code_uri=runner.code_uri()), uri, "automl", info.run_tag)
        out["baseline_figures"] = baseline_figures(uri, baseline.version)
        out["baseline_version"] = baseline.version
    return out


def record_decision(info: RunInfo, decision: dict) -> str:
    """Write the gate's decision to the run's ``check_accuracy/decision.json``; its URI."""
    uri = info.uri("check_accuracy") + "/decision.json"
    write_json(uri, decision)
    return uri


def read_decision(info: RunInfo) -> dict:
    """The decision ``check_accuracy`` recorded for this run (empty if none)."""
    uri = info.uri("check_accuracy") + "/decision.json"
    return read_json(uri) if exists(uri) else {}
