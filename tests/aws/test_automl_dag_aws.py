"""review_automl_baseline end to end on the aws backend, with dag.test(), against moto's server.

The same DAG file, the same ``automl.py`` and the same request builders as the local run, with
``REVIEWS_BACKEND=aws`` and ``engine=both``: the feature snapshot (ingested through the
SageMaker Feature Store) exported to the run's S3 prefix -> our search as a SageMaker processing
job -> a SageMaker Autopilot (AutoML V2) job on the same splits as CSV channels and the same
budget -> the best candidate of our search registered in the SageMaker Model Registry's
``<group>-baseline`` group, Autopilot's best recorded beside it. Then ``check_accuracy``'s
champion/challenger scoring re-scores that baseline on a test split, on aws.

What is PLAYED, because moto cannot do it (and only that):

* SageMaker Processing execution - ``tests/aws/sagemaker_harness.py`` runs the very request with
  the local runner against moto's S3 (real ``automl.py``), uploads its outputs, sets the status;
* ``sagemaker-featurestore-runtime`` PutRecord - tests/aws/sagemaker_fakes.py (Stubber on that
  operation only), which writes the records to the offline store in moto's S3 as SageMaker does;
* ``DescribeAutoMLJobV2`` - a botocore Stubber on that operation only, on the provider hook's
  client: moto's Autopilot job never leaves ``InProgress`` (moto 5.2.5), so the job's progression
  (InProgress, then Completed with a best candidate) is stubbed. ``CreateAutoMLJobV2`` goes to
  moto, which validates and stores it; the harness records the request it received.
"""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone

import boto3
import pytest

from include.common import aws
from include.common.config import safe_name
from include.jobs import requests
from include.model.registry import get_registry
from include.model.registry_base import BASELINE_MODEL_NAME, PENDING
from include.pipeline.context import RunInfo
from include.scripts.preprocess import __file__ as PREPROCESS
from include.serving.protocol import JSONLINES, SMOKE_REVIEWS
from tests.aws.conftest import BUCKET, DEPLOYMENT, REGION, ROLE_ARN
from tests.aws.stubs import OperationStubber
from tests.integration.conftest import DS, run_dag

DAG_ID = "review_automl_baseline"
SNAPSHOT = "manual__snapshot-1"
BUDGET, CANDIDATES = 20, 2


@pytest.fixture
def played_services(aws_account, monkeypatch, tmp_path):
    """PutRecord played into moto's offline store (tests/aws/sagemaker_fakes.py)."""
    from tests.aws.sagemaker_fakes import install

    monkeypatch.setattr("include.data.feature_store_sagemaker.POLL_S", 0.05, raising=False)
    return install(monkeypatch, REGION, tmp_path / "endpoint")


@pytest.fixture
def autopilot_progress(monkeypatch):
    """The provider hook's client with ``DescribeAutoMLJobV2`` (only) stubbed: InProgress once,
    then Completed with a best candidate; every other call (CreateAutoMLJobV2) goes to moto."""
    from include.jobs import autopilot

    made = autopilot.sagemaker_hook
    described: list[dict] = []

    def respond(op: str, params: dict) -> dict:
        created = boto3.client("sagemaker", region_name=REGION).describe_auto_ml_job_v2(**params)  # moto's record
        described.append(params)
        now = datetime.now(timezone.utc)
        answer = {k: created[k] for k in ("AutoMLJobName", "AutoMLJobArn", "AutoMLJobInputDataConfig",
                                          "OutputDataConfig", "RoleArn", "AutoMLProblemTypeConfig", "CreationTime")}
        answer.update(LastModifiedTime=now, AutoMLJobSecondaryStatus="Training",
                      AutoMLJobStatus="InProgress" if len(described) == 1 else "Completed")
        if len(described) > 1:
            output = created["OutputDataConfig"]["S3OutputPath"]
            answer["BestCandidate"] = {
                "CandidateName": "rs-autopilot-trial-7", "ObjectiveStatus": "Succeeded", "CandidateSteps": [],
                "CandidateStatus": "Completed", "CreationTime": now, "LastModifiedTime": now,
                "FinalAutoMLJobObjectiveMetric": {"MetricName": "Accuracy", "Value": 0.616},
                "InferenceContainers": [{"Image": "autopilot-image", "ModelDataUrl": f"{output}/model.tar.gz"}]}
        return answer

    def hook(conn_id, region):
        h = made(conn_id, region)
        OperationStubber(h.conn, "DescribeAutoMLJobV2", respond=respond).activate()
        return h

    monkeypatch.setattr(autopilot, "sagemaker_hook", hook)
    return described


def _ingest_snapshot(tmp_path) -> None:
    """What review_sentiment_pipeline's preprocess leaves behind on aws: a feature snapshot in the
    SageMaker Feature Store (real reviews, PutRecord played into moto's offline store)."""
    from datetime import date

    from include.data import feature_store
    from include.data.landing import land_daily_drops

    landing = tmp_path / "landing"
    land_daily_drops(landing, date.fromisoformat(DS), days=2, limit=400)
    out = tmp_path / "features"
    subprocess.run([sys.executable, PREPROCESS, "--input-data", str(landing), "--output-data", str(out),
                    "--max-seq-length", "16", "--balance-dataset", "eval", "--train-split-percentage", "0.7",
                    "--validation-split-percentage", "0.15"], check=True, capture_output=True)
    cfg = aws.load_aws_config()
    feature_store.get_feature_store().ingest_run_features(out, DS, SNAPSHOT, cfg.s3_uri("snapshot/channels"))


def test_automl_dag_on_sagemaker_searches_launches_autopilot_and_registers_a_servable_baseline(
        aws_account, sagemaker, played_services, autopilot_progress, reviews_home, airflow_db, tmp_path):
    _ingest_snapshot(tmp_path)
    cfg = aws.load_aws_config()
    dr, states = run_dag(DAG_ID, time_budget_s=BUDGET, max_candidates=CANDIDATES, engine="both")
    assert str(dr.state).endswith("success"), (states, sagemaker.errors)
    assert all(states[t].endswith("success") for t in ("export_features", "automl_search", "autopilot_search",
                                                        "register_baseline")), states
    run = cfg.s3_uri(f"runs/{DAG_ID}/{safe_name(dr.run_id)}")
    prefix = run[len(f"s3://{BUCKET}/"):]
    keys = set(aws.list_keys(cfg, run + "/"))

    # ---- the splits, as of the snapshot's ds, on the run's prefix (Parquet for us, CSV for Autopilot)
    for split in ("train", "validation", "test"):
        assert [k for k in keys if k.startswith(f"{prefix}/features/{split}/") and k.endswith(".parquet")], split
        assert f"{prefix}/features_csv/{split}/{split}.csv" in keys, split
    header = aws.read_bytes(cfg, f"{run}/features_csv/train/train.csv").decode().splitlines()[0]
    assert header.replace('"', "") == "review_body,sentiment"

    # ---- our search: one processing job, the builder's request completed for the account
    created = sagemaker.created("Processing")
    assert [c["ProcessingJobName"] for c in created] == [requests.job_name("automl", dr.run_id, DEPLOYMENT)]
    job = created[0]
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in job["ProcessingInputs"]}
    assert inputs["code"].startswith(f"s3://{BUCKET}/rs/code/") and inputs["code"].endswith("/scripts")
    assert {k: inputs[k] for k in ("train", "validation", "test")} == {
        s: f"{run}/features/{s}" for s in ("train", "validation", "test")}
    assert "pretrained" not in inputs, "the search needs no BERT weights"
    assert {o["OutputName"]: o["S3Output"]["S3Uri"] for o in job["ProcessingOutputConfig"]["Outputs"]} == {
        "automl": f"{run}/automl/leaderboard", "model": f"{run}/automl/model"}
    args = job["AppSpecification"]["ContainerArguments"]
    assert args[0] == "search" and args[args.index("--time-budget-s") + 1] == str(BUDGET)
    assert args[args.index("--max-candidates") + 1] == str(CANDIDATES)
    assert job["AppSpecification"]["ContainerEntrypoint"][-1].endswith("/code/automl.py")
    assert job["RoleArn"] == ROLE_ARN and job["ProcessingResources"]["ClusterConfig"]["InstanceType"] == \
        cfg.step("automl").instance_type

    # ---- the leaderboard on S3
    for name in ("leaderboard.json", "leaderboard.html", "evaluation.json"):
        assert f"{prefix}/automl/leaderboard/{name}" in keys, name
    board = json.loads(aws.read_bytes(cfg, f"{run}/automl/leaderboard/leaderboard.json"))
    assert 1 <= board["candidates"] <= CANDIDATES + 1  # + the stacked one when two were fitted
    assert "data:image/png;base64," in aws.read_bytes(cfg, f"{run}/automl/leaderboard/leaderboard.html").decode()

    # ---- Autopilot: the CreateAutoMLJobV2 request moto received, same data and budget
    pilots = [p for a, p in sagemaker.calls if a == "CreateAutoMLJobV2"]
    assert len(pilots) == 1
    pilot = pilots[0]
    assert pilot["AutoMLJobName"] == requests.job_name("autopilot", dr.run_id, DEPLOYMENT)[:32]
    assert [(c["ChannelType"], c["DataSource"]["S3DataSource"]["S3Uri"]) for c in pilot["AutoMLJobInputDataConfig"]] \
        == [("training", f"{run}/features_csv/train/train.csv"),
            ("validation", f"{run}/features_csv/validation/validation.csv")]
    tabular = pilot["AutoMLProblemTypeConfig"]["TabularJobConfig"]
    assert tabular["CompletionCriteria"] == {"MaxCandidates": CANDIDATES, "MaxAutoMLJobRuntimeInSeconds": BUDGET}
    assert tabular["TargetAttributeName"] == "sentiment" and pilot["RoleArn"] == ROLE_ARN
    assert pilot["OutputDataConfig"]["S3OutputPath"] == f"{run}/automl/autopilot/output"
    assert len(autopilot_progress) == 2, "polled until Completed"
    summary = json.loads(aws.read_bytes(cfg, f"{run}/automl/autopilot/autopilot.json"))
    assert (summary["best_candidate"], summary["metric_value"]) == ("rs-autopilot-trial-7", 0.616)

    # ---- the baseline: a package in <group>-baseline, pending, metrics on S3, Autopilot in its lineage
    sm = boto3.client("sagemaker", region_name=REGION)
    group = f"{cfg.model_package_group}-baseline"
    packages = sm.list_model_packages(ModelPackageGroupName=group)["ModelPackageSummaryList"]
    assert len(packages) == 1
    package = sm.describe_model_package(ModelPackageName=packages[0]["ModelPackageArn"])
    assert package["ModelApprovalStatus"] == PENDING
    assert package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"] == f"{run}/automl/leaderboard/evaluation.json"
    spec = package["InferenceSpecification"]
    package_uri = spec["Containers"][0]["ModelDataUrl"]
    assert package_uri == f"{run}/register_baseline/model.tar.gz" and f"{prefix}/register_baseline/model.tar.gz" in keys
    assert spec["SupportedContentTypes"][0] == JSONLINES
    assert sm.list_model_packages(ModelPackageGroupName=cfg.model_package_group)["ModelPackageSummaryList"] == [], \
        "the BERT group is untouched"
    baseline = get_registry(BASELINE_MODEL_NAME).list_versions()[-1]
    assert baseline.lineage["candidate"] == board["best_candidate"]
    assert baseline.lineage["feature_snapshot_id"] == SNAPSHOT
    assert baseline.lineage["autopilot_job"] == pilot["AutoMLJobName"]
    assert baseline.lineage["autopilot_candidate"] == "rs-autopilot-trial-7"
    assert abs(baseline.metrics["accuracy"] - board["best_accuracy"]) < 1e-4

    # ---- servable through the same contract: the package's own handler, loaded as the endpoint loads it
    from include.common.io import local_copy
    from include.model.packaging import extract_package
    from include.serving.server import load_slot

    with local_copy(package_uri) as archive:
        model_dir = extract_package(archive.as_uri(), tmp_path / "served")
    slot = load_slot(str(model_dir), baseline.version)
    body = "\n".join(json.dumps({"features": [t]}) for t in SMOKE_REVIEWS) + "\n"
    answer = slot.handler.output_fn(slot.handler.predict_fn(slot.handler.input_fn(body, JSONLINES), slot.model),
                                    JSONLINES)
    lines = [json.loads(x) for x in (answer.decode() if isinstance(answer, bytes) else answer).strip().splitlines()]
    assert len(lines) == len(SMOKE_REVIEWS) and all(x["predicted_label"] in (-1, 0, 1) for x in lines)

    # ---- check_accuracy's champion/challenger scoring on aws: the latest baseline re-scored on a test split
    from include.pipeline import automl_steps

    feats = json.loads(aws.read_bytes(cfg, f"{run}/_lineage/export_features.json"))["result"]
    refs = automl_steps.reference_accuracies(RunInfo("review_sentiment_pipeline", "manual__x", DS), feats["test_uri"])
    assert refs["champion"] is None and refs["baseline_version"] == baseline.version
    assert abs(refs["baseline"] - board["best_accuracy"]) < 1e-4, "same rows, same model, same accuracy"
    score = sagemaker.created("Processing")[-1]
    assert score["ProcessingJobName"] == requests.job_name("score-baseline", "manual__x", DEPLOYMENT)
    assert {i["InputName"]: i["S3Input"]["S3Uri"] for i in score["ProcessingInputs"]}["model"] == package_uri


def test_autopilot_engines_need_the_aws_backend_and_say_so_before_anything_is_exported(reviews_home):
    from include.pipeline import automl_steps

    assert automl_steps.check_engine("both", "aws") == "both"
    with pytest.raises(automl_steps.EngineError, match="REVIEWS_BACKEND=aws"):
        automl_steps.check_engine("autopilot", "local")
    with pytest.raises(automl_steps.EngineError, match="expected one of search, autopilot, both"):
        automl_steps.check_engine("autogluon", "aws")
    # the first task checks it first (not "no feature snapshot", which is also true here)
    with pytest.raises(automl_steps.EngineError, match="needs REVIEWS_BACKEND=aws"):
        automl_steps.export_features(RunInfo(DAG_ID, "manual__e", ""), "", "autopilot")


def test_engine_autopilot_alone_runs_no_search_and_registers_nothing(
        aws_account, sagemaker, played_services, autopilot_progress, reviews_home, airflow_db, tmp_path):
    _ingest_snapshot(tmp_path)
    cfg = aws.load_aws_config()
    dr, states = run_dag(DAG_ID, time_budget_s=BUDGET, max_candidates=CANDIDATES, engine="autopilot")
    assert str(dr.state).endswith("success"), states
    assert states["automl_search"].endswith("skipped") and states["autopilot_search"].endswith("success"), states
    assert states["register_baseline"].endswith("success"), states
    assert sagemaker.created("Processing") == [], "our search did not run"
    assert [a for a in sagemaker.actions() if a == "CreateAutoMLJobV2"] == ["CreateAutoMLJobV2"]
    run = cfg.s3_uri(f"runs/{DAG_ID}/{safe_name(dr.run_id)}")
    registered = json.loads(aws.read_bytes(cfg, f"{run}/_lineage/register_baseline.json"))["result"]
    assert registered["created"] is False and registered["version"] is None
    assert registered["autopilot"]["best_candidate"] == "rs-autopilot-trial-7"
    assert get_registry(BASELINE_MODEL_NAME).list_versions() == []
