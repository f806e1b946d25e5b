"""Job requests in SageMaker's API shape.

Each builder returns ONE plain dict (``CreateProcessingJob`` / ``CreateTrainingJob``), as
the Amazon provider's system tests do: reviewing a step means reading a dict. A runner
(``include/jobs/runner.py``) executes it unchanged: the local runner here, the provider's
SageMaker operators on the aws backend.
"""
from __future__ import annotations

import hashlib
import re

from include.common.iam import JOB_NAME_PREFIX  # the policies scope the job rights by it

# Images the aws backend runs the same scripts in (Hugging Face DLCs, PyTorch 2.x).
PROCESSING_IMAGE = "763104351884.dkr.ecr.{region}.amazonaws.com/pytorch-training:2.6.0-cpu-py312-ubuntu22.04-sagemaker"
TRAINING_IMAGE = ("763104351884.dkr.ecr.{region}.amazonaws.com/huggingface-pytorch-training:"
                  "2.5.1-transformers4.49.0-cpu-py311-ubuntu22.04")
ROLE_ARN = "arn:aws:iam::000000000000:role/review-sentiment-sagemaker"
PROC = "/opt/ml/processing"
MAX_JOBS_PER_STEP = 5  # <name>, <name>-r2 .. -r5: a step whose jobs failed five times needs a person


def job_name(step: str, run_id: str, deployment: str = "") -> str:
    """The job's name for ``step`` of run ``run_id``: the same on every attempt of the task.

    Deterministic so that a retried task finds its predecessor's job (``DescribeXJob``) and
    waits on it or reuses it instead of paying for a second one; within SageMaker's 63
    characters of ``[a-zA-Z0-9-]``. ``deployment`` (the aws backend's deployment id,
    ``runner_sagemaker.deployment_id``) is hashed in with the run id: a second Airflow
    deployment, or a reset metadata database, in the same account names its jobs otherwise,
    even for the same ``run_id`` (``scheduled__<date>`` repeats). A restart after a failed job
    gets :func:`restart_name`.
    """
    digest = hashlib.sha1(f"{deployment}\0{run_id}".encode() if deployment else run_id.encode()).hexdigest()[:10]
    stamp = re.sub(r"[^0-9]", "", run_id)[:8] or "manual"
    return f"{JOB_NAME_PREFIX}{step}-{stamp}-{digest}"[:56]


def restart_name(name: str, attempt: int) -> str:
    """Name of the ``attempt``-th job (1 = ``name`` itself) started for one step of one run:
    ``<name>-r<attempt>``, used only after the previous one Failed or was Stopped."""
    return name if attempt <= 1 else f"{name[:63 - len(str(attempt)) - 2]}-r{attempt}"


def _input(name: str, uri: str, local: str) -> dict:
    return {"InputName": name, "S3Input": {"S3Uri": uri, "LocalPath": local, "S3DataType": "S3Prefix",
                                           "S3InputMode": "File", "S3DataDistributionType": "FullyReplicated"}}


def _output(name: str, uri: str, local: str) -> dict:
    return {"OutputName": name, "S3Output": {"S3Uri": uri, "LocalPath": local, "S3UploadMode": "EndOfJob"}}


def _resources(instance_type: str) -> dict:
    return {"ClusterConfig": {"InstanceCount": 1, "InstanceType": instance_type, "VolumeSizeInGB": 30}}


def preprocess_request(*, name: str, input_uri: str, output_uri: str, code_uri: str, model_name_or_path: str,
                       max_seq_length: int, train_split_percentage: float, validation_split_percentage: float,
                       balance_dataset: str, seed: int = 42, timeout_s: int = 1800,
                       instance_type: str = "ml.c5.2xlarge") -> dict:
    """``CreateProcessingJob`` for ``preprocess.py``: clean, balance, split, tokenize."""
    args = ["--input-data", f"{PROC}/input/data", "--output-data", f"{PROC}/output/features",
            "--max-seq-length", str(max_seq_length), "--train-split-percentage", str(train_split_percentage),
            "--validation-split-percentage", str(validation_split_percentage),
            "--balance-dataset", str(balance_dataset).lower(), "--seed", str(seed)]
    if model_name_or_path:
        args += ["--model-name-or-path", model_name_or_path]
    return {
        "ProcessingJobName": name,
        "ProcessingInputs": [_input("code", code_uri, f"{PROC}/input/code"), _input("data", input_uri, f"{PROC}/input/data")],
        "ProcessingOutputConfig": {"Outputs": [_output("features", output_uri, f"{PROC}/output/features")]},
        "ProcessingResources": _resources(instance_type),
        "StoppingCondition": {"MaxRuntimeInSeconds": timeout_s},
        "AppSpecification": {"ImageUri": PROCESSING_IMAGE, "ContainerEntrypoint": ["python3", f"{PROC}/input/code/preprocess.py"],
                             "ContainerArguments": args},
        "Environment": {"HF_HUB_OFFLINE": "1"},
        "RoleArn": ROLE_ARN,
    }


def training_request(*, name: str, train_uri: str, validation_uri: str, output_uri: str, checkpoint_uri: str,
                     code_uri: str, hyperparameters: dict, environment: dict | None = None, timeout_s: int = 3600,
                     instance_type: str = "ml.c5.9xlarge") -> dict:
    """``CreateTrainingJob`` for ``train.py`` in script mode (Hugging Face container)."""
    def channel(cname: str, uri: str) -> dict:
        return {"ChannelName": cname, "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}}}

    hps = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in hyperparameters.items()}
    hps.update({"sagemaker_program": "train.py", "sagemaker_submit_directory": code_uri})
    return {
        "TrainingJobName": name,
        "AlgorithmSpecification": {"TrainingImage": TRAINING_IMAGE, "TrainingInputMode": "File"},
        "HyperParameters": hps,
        "InputDataConfig": [channel("train", train_uri), channel("validation", validation_uri)],
        "OutputDataConfig": {"S3OutputPath": output_uri},
        "CheckpointConfig": {"S3Uri": checkpoint_uri, "LocalPath": "/opt/ml/checkpoints"},
        "ResourceConfig": {"InstanceCount": 1, "InstanceType": instance_type, "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": timeout_s},
        "Environment": {"HF_HUB_OFFLINE": "1", **(environment or {})},
        "RoleArn": ROLE_ARN,
    }


def evaluation_request(*, name: str, model_uri: str, test_uri: str, training_output_uri: str | None,
                       output_uri: str, code_uri: str, timeout_s: int = 1800,
                       instance_type: str = "ml.c5.2xlarge", deployed_model_uri: str | None = None,
                       deployed_version: str = "") -> dict:
    """``CreateProcessingJob`` for ``evaluate.py``: evaluation.json + confusion matrix; with
    ``deployed_model_uri`` (the served version's ``model.tar.gz``) also that model's figures on
    the same test split (``comparison.json``)."""
    inputs = [_input("code", code_uri, f"{PROC}/input/code"), _input("model", model_uri, f"{PROC}/input/model"),
              _input("data", test_uri, f"{PROC}/input/data")]
    if training_output_uri:
        inputs.append(_input("training", training_output_uri, f"{PROC}/input/training"))
    extra_args = []
    if deployed_model_uri:
        inputs.append(_input("deployed", deployed_model_uri, f"{PROC}/input/deployed"))
        extra_args = ["--deployed-model", f"{PROC}/input/deployed", "--deployed-version", str(deployed_version)]
    return {
        "ProcessingJobName": name,
        "ProcessingInputs": inputs,
        "ProcessingOutputConfig": {"Outputs": [_output("metrics", output_uri, f"{PROC}/output/metrics")]},
        "ProcessingResources": _resources(instance_type),
        "StoppingCondition": {"MaxRuntimeInSeconds": timeout_s},
        "AppSpecification": {"ImageUri": PROCESSING_IMAGE, "ContainerEntrypoint": ["python3", f"{PROC}/input/code/evaluate.py"],
                             "ContainerArguments": ["--model", f"{PROC}/input/model", "--test-data", f"{PROC}/input/data",
                                                    "--training-output", f"{PROC}/input/training",
                                                    "--output-data", f"{PROC}/output/metrics", *extra_args]},
        "Environment": {"HF_HUB_OFFLINE": "1"},
        "RoleArn": ROLE_ARN,
    }


def automl_request(*, name: str, train_uri: str, validation_uri: str, test_uri: str, output_uri: str,
                   model_output_uri: str, code_uri: str, time_budget_s: int, max_candidates: int = 20,
                   seed: int = 42, instance_type: str = "ml.c5.2xlarge") -> dict:
    """``CreateProcessingJob`` for ``automl.py search``: the classical-model search.

    The job's own stopping condition leaves 10 minutes beyond the search budget for loading the
    data, fitting the last candidate and writing the leaderboard.
    """
    args = ["search", "--train-data", f"{PROC}/input/train", "--validation-data", f"{PROC}/input/validation",
            "--test-data", f"{PROC}/input/test", "--output-data", f"{PROC}/output/automl",
            "--model-output", f"{PROC}/output/model", "--time-budget-s", str(time_budget_s),
            "--max-candidates", str(max_candidates), "--seed", str(seed)]
    return {
        "ProcessingJobName": name,
        "ProcessingInputs": [_input("code", code_uri, f"{PROC}/input/code"),
                             _input("train", train_uri, f"{PROC}/input/train"),
                             _input("validation", validation_uri, f"{PROC}/input/validation"),
                             _input("test", test_uri, f"{PROC}/input/test")],
        "ProcessingOutputConfig": {"Outputs": [_output("automl", output_uri, f"{PROC}/output/automl"),
                                               _output("model", model_output_uri, f"{PROC}/output/model")]},
        "ProcessingResources": _resources(instance_type),
        "StoppingCondition": {"MaxRuntimeInSeconds": int(time_budget_s) + 600},
        "AppSpecification": {"ImageUri": PROCESSING_IMAGE,
                             "ContainerEntrypoint": ["python3", f"{PROC}/input/code/automl.py"],
                             "ContainerArguments": args},
        "RoleArn": ROLE_ARN,
    }


def baseline_score_request(*, name: str, model_uri: str, test_uri: str, output_uri: str, code_uri: str,
                           timeout_s: int = 900, instance_type: str = "ml.c5.xlarge") -> dict:
    """``CreateProcessingJob`` for ``automl.py score``: a baseline package on a test split."""
    return {
        "ProcessingJobName": name,
        "ProcessingInputs": [_input("code", code_uri, f"{PROC}/input/code"),
                             _input("model", model_uri, f"{PROC}/input/model"),
                             _input("data", test_uri, f"{PROC}/input/data")],
        "ProcessingOutputConfig": {"Outputs": [_output("metrics", output_uri, f"{PROC}/output/metrics")]},
        "ProcessingResources": _resources(instance_type),
        "StoppingCondition": {"MaxRuntimeInSeconds": timeout_s},
        "AppSpecification": {"ImageUri": PROCESSING_IMAGE,
                             "ContainerEntrypoint": ["python3", f"{PROC}/input/code/automl.py"],
                             "ContainerArguments": ["score", "--model", f"{PROC}/input/model", "--test-data",
                                                    f"{PROC}/input/data", "--output-data", f"{PROC}/output/metrics"]},
        "RoleArn": ROLE_ARN,
    }


def autopilot_request(*, name: str, train_csv_uri: str, validation_csv_uri: str, output_uri: str,
                      time_budget_s: int, max_candidates: int = 20, target: str = "sentiment",
                      role_arn: str = ROLE_ARN) -> dict:
    """``CreateAutoMLJobV2`` (SageMaker Autopilot) on the same data and budget as the local search.

    The channels are CSV exports of the feature store's splits with ``review_body`` and the
    target column; validation is passed as its own channel (``ChannelType``) so Autopilot ranks
    candidates on the same rows as ours. ``include/jobs/autopilot.py`` sends it through the provider's
    ``SageMakerHook`` client (the provider's ``SageMakerAutoMLOperator`` still calls V1).
    """
    def channel(uri: str, kind: str) -> dict:
        return {"ChannelType": kind, "ContentType": "text/csv;header=present", "CompressionType": "None",
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri}}}

    return {
        "AutoMLJobName": name[:32],  # Autopilot job names are limited to 32 characters
        "AutoMLJobInputDataConfig": [channel(train_csv_uri, "training"), channel(validation_csv_uri, "validation")],
        "OutputDataConfig": {"S3OutputPath": output_uri},
        "AutoMLProblemTypeConfig": {"TabularJobConfig": {
            "TargetAttributeName": target, "ProblemType": "MulticlassClassification",
            "CompletionCriteria": {"MaxCandidates": max_candidates,
                                   "MaxAutoMLJobRuntimeInSeconds": int(time_budget_s)},
            "Mode": "ENSEMBLING" if time_budget_s < 3600 else "HYPERPARAMETER_TUNING"}},
        "AutoMLJobObjective": {"MetricName": "Accuracy"},
        "RoleArn": role_arn,
    }
