"""The train and evaluate tasks (``JobStepOperator``) on the aws backend under ``dag.test()``.

A DAG of the pipeline's own job tasks runs against moto's server: each task builds its request,
hands it to the provider's operator with ``deferrable=True``, DEFERS (dag.test() runs the
provider's trigger in line, polling moto over aiobotocore) and finishes in ``execute_complete``
from the plan saved in the run's ``_jobs/`` prefix. The harness plays SageMaker (see
tests/aws/sagemaker_harness.py): it runs the very request with the local runner against moto's
S3 (real train.py / evaluate.py on a tiny budget) and reports the status. The features the jobs
read are made by the real preprocess.py, run the same way, from 300 synthetic reviews.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from include.common.aws import list_keys, load_aws_config, read_bytes, write_bytes
from include.common.config import safe_name
from include.jobs import requests
from include.jobs.runner import get_runner
from tests.aws.conftest import BUCKET, DEPLOYMENT, ROLE_ARN

TINY = {"profile": "quick", "max_seq_length": 32, "epochs": 1, "train_batch_size": 16, "max_train_samples": 96,
        "learning_rate": 1e-4}


@pytest.fixture
def features(aws_account, sagemaker, reviews_home, airflow_db) -> dict:
    """Tokenized splits in moto's S3, made by preprocess.py as a (played) processing job."""
    from include.data.synthetic import generate_reviews

    runner = get_runner()
    cfg = load_aws_config()
    write_bytes(cfg, f"s3://{BUCKET}/rs/seed/export/clean.csv",
                generate_reviews(300, seed=5).to_csv(index=False).encode())
    req = runner.prepare(requests.preprocess_request(
        name="rs-seed-preprocess", input_uri=f"s3://{BUCKET}/rs/seed/export",
        output_uri=f"s3://{BUCKET}/rs/seed/features", code_uri=runner.code_uri(), model_name_or_path="",
        max_seq_length=32, train_split_percentage=0.7, validation_split_percentage=0.15, balance_dataset="false"),
        "preprocess")
    runner.run(req)
    sagemaker.calls.clear()
    base = f"s3://{BUCKET}/rs/seed/features"
    return {"train_uri": f"{base}/train", "validation_uri": f"{base}/validation", "test_uri": f"{base}/test",
            "data_from": "2026-11-19", "data_to": "2026-11-20", "clean_rows": 300}


DAG_FILE = """
from datetime import datetime, timezone

from airflow.sdk import DAG, task

from include.pipeline.tasks import JobStepOperator

FEATURES = {features!r}

with DAG("aws_job_steps", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
         params={params!r}, default_args={{"retries": 0}}) as dag:
    feats = task(task_id="features")(lambda: FEATURES)()
    trained = JobStepOperator(task_id="train", step="train", inputs={{"features": feats}}).output
    JobStepOperator(task_id="evaluate", step="evaluate", inputs={{"features": feats, "trained": trained}})
"""


def _dag(features: dict, folder, monkeypatch):
    """The DAG, in a dags folder of its own (dag.test() runs what a DAG bundle holds)."""
    from airflow.dag_processing.dagbag import DagBag

    folder.mkdir()
    (folder / "aws_job_steps.py").write_text(DAG_FILE.format(features=features, params={**TINY, "ds": "2026-11-20"}))
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps([{
        "name": "aws-job-steps", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
        "kwargs": {"path": str(folder), "refresh_interval": 0}}]))
    bag = DagBag(dag_folder=str(folder))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["aws_job_steps"]


def _states(dr) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        tis = session.scalars(select(TaskInstance).where(TaskInstance.run_id == dr.run_id,
                                                         TaskInstance.dag_id == dr.dag_id)).all()
        return {ti.task_id: str(ti.state) for ti in tis}


def test_train_and_evaluate_defer_on_sagemaker_and_finish_from_their_saved_plans(features, sagemaker, capfd, tmp_path,
                                                                               monkeypatch):
    dag = _dag(features, tmp_path / "dags", monkeypatch)
    dr = dag.test(logical_date=datetime(2026, 11, 21, tzinfo=timezone.utc))
    assert _states(dr) == {"features": "success", "train": "success", "evaluate": "success"}, sagemaker.errors
    cfg = load_aws_config()
    train_name, eval_name = (requests.job_name(step, dr.run_id, DEPLOYMENT) for step in ("train", "evaluate"))

    # exactly one job per step, created with the completed request (role, image, instances)
    created = sagemaker.created()
    assert [c.get("TrainingJobName") or c.get("ProcessingJobName") for c in created] == [train_name, eval_name]
    train_req, eval_req = created
    assert train_req["RoleArn"] == ROLE_ARN and eval_req["RoleArn"] == ROLE_ARN
    assert train_req["ResourceConfig"] == {"InstanceCount": 1, "InstanceType": "ml.g5.xlarge", "VolumeSizeInGB": 30}
    assert train_req["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600}
    assert train_req["AlgorithmSpecification"]["TrainingImage"].startswith(
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-training:2.5.1-transformers4.49.0-gpu")
    assert train_req["HyperParameters"]["epochs"] == "1" and train_req["HyperParameters"]["max_seq_length"] == "32"
    assert train_req["HyperParameters"]["sagemaker_submit_directory"].endswith("/sourcedir.tar.gz")
    assert not any(k.startswith("MLFLOW_") for k in train_req["Environment"]), "no local MLflow store on aws"
    run = f"s3://{BUCKET}/rs/runs/aws_job_steps/{safe_name(dr.run_id)}"
    prefix = run[len(f"s3://{BUCKET}/"):]
    assert train_req["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == features["train_uri"]
    assert train_req["OutputDataConfig"] == {"S3OutputPath": f"{run}/train"}
    assert train_req["CheckpointConfig"]["S3Uri"] == f"{run}/train/checkpoints"
    model_uri = f"{run}/train/{train_name}/output/model.tar.gz"
    assert {i["InputName"]: i["S3Input"]["S3Uri"] for i in eval_req["ProcessingInputs"]} == {
        "code": train_req["HyperParameters"]["sagemaker_submit_directory"].replace("sourcedir.tar.gz", "scripts"),
        "model": model_uri, "data": features["test_uri"],
        "training": f"{run}/train/{train_name}/output/output.tar.gz"}
    assert eval_req["AppSpecification"]["ImageUri"].endswith("-cpu-py312-ubuntu22.04")

    # both tasks deferred: the provider's trigger (aiobotocore) waited on each job (dag.test runs it in line)
    polled = {p.get("TrainingJobName") or p.get("ProcessingJobName") for _, p in sagemaker.async_calls}
    assert polled == {train_name, eval_name}
    assert {a for a, _ in sagemaker.async_calls} == {"DescribeTrainingJob", "DescribeProcessingJob"}

    # the artifacts are in S3 where SageMaker puts them; the checkpoints are gone
    keys = set(list_keys(cfg, f"{run}/"))
    assert f"{prefix}/train/{train_name}/output/model.tar.gz" in keys
    assert not [k for k in keys if "/train/checkpoints/" in k]
    evaluation = json.loads(read_bytes(cfg, f"{run}/evaluate/evaluation.json"))
    assert 0.0 <= evaluation["metrics"]["accuracy"]["value"] <= 1.0
    assert f"{prefix}/evaluate/report.html" in keys
    plan = json.loads(read_bytes(cfg, f"{run}/_jobs/train.json"))
    assert plan["request"] == train_req, "the saved plan is the request that was sent"
    lineage = json.loads(read_bytes(cfg, f"{run}/_lineage/evaluate.json"))
    assert lineage["result"]["evaluation_uri"] == f"{run}/evaluate/evaluation.json"
    assert lineage["result"]["job"]["job_name"] == eval_name

    # the job's CloudWatch log tail is in the task log (the processing operator prints none)
    out = capfd.readouterr()
    log = out.out + out.err
    for name in (train_name, eval_name):
        assert all(f"[{name}] {line}" in log for line in sagemaker.job_logs[name][-3:]), log[-3000:]


    # A cleared-and-rerun train task re-plans the same request (same name) and reuses the Completed job.
    from include.pipeline import steps
    from include.pipeline.context import RunInfo

    info = RunInfo(dag_id="aws_job_steps", run_id=dr.run_id, ds="2026-11-20")
    sagemaker.calls.clear()
    replanned = steps.plan_job("train", info, {**TINY, "ds": "2026-11-20"}, {"features": features})
    assert replanned.request == train_req
    again = get_runner().start(replanned.request, context={}, task=None)
    assert again["job_name"] == train_name and again["outputs"]["model"] == model_uri
    assert sagemaker.actions("Create") == [], "a retry never pays twice"
