"""The local job runner executes SageMaker-shaped requests under the container contract."""
from __future__ import annotations

import json
import tarfile
import textwrap
from pathlib import Path

import pytest

from include.jobs.runner_base import JobFailedError, JobRequestError
from include.jobs.runner_local import run_processing_job, run_training_job

PROC = "/opt/ml/processing"


def _script(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


def _processing(tmp_path: Path, body: str, timeout: int = 60, name: str = "proc-1") -> dict:
    code = tmp_path / "code"
    _script(code, "job.py", body)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "in.txt").write_text("hello\n")
    return {
        "ProcessingJobName": name,
        "ProcessingInputs": [
            {"InputName": "code", "S3Input": {"S3Uri": code.as_uri(), "LocalPath": f"{PROC}/input/code"}},
            {"InputName": "data", "S3Input": {"S3Uri": data.as_uri(), "LocalPath": f"{PROC}/input/data"}},
        ],
        "ProcessingOutputConfig": {"Outputs": [
            {"OutputName": "out", "S3Output": {"S3Uri": (tmp_path / "store/out").as_uri(), "LocalPath": f"{PROC}/output/out"}}]},
        "StoppingCondition": {"MaxRuntimeInSeconds": timeout},
        "AppSpecification": {"ContainerEntrypoint": ["python3", f"{PROC}/input/code/job.py"],
                             "ContainerArguments": ["--in", f"{PROC}/input/data", "--out", f"{PROC}/output/out"]},
        "Environment": {"GREETING": "hi", "OUT_DIR": f"{PROC}/output/out"},
    }


COPY_JOB = """
    import os, sys, pathlib
    args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    text = (pathlib.Path(args["--in"]) / "in.txt").read_text()
    assert os.environ["OUT_DIR"] == args["--out"], "env paths are mapped like the arguments"
    (pathlib.Path(args["--out"]) / "copy.txt").write_text(os.environ["GREETING"] + " " + text)
    print("copied", len(text), "bytes")
"""


def test_processing_job_stages_inputs_runs_and_publishes_outputs(tmp_path):
    lines: list[str] = []
    result = run_processing_job(_processing(tmp_path, COPY_JOB), tmp_path / "jobs", lines.append)
    assert (tmp_path / "store/out/copy.txt").read_text() == "hi hello\n"
    assert result.outputs["out"] == (tmp_path / "store/out").as_uri()
    assert any("copied 6 bytes" in line for line in lines), "job output streams into the log"
    assert (tmp_path / "jobs/proc-1/job.log").read_text().strip() == "copied 6 bytes"


def test_rerun_replaces_published_output_without_leftovers(tmp_path):
    run_processing_job(_processing(tmp_path, COPY_JOB), tmp_path / "jobs", lambda _: None)
    (tmp_path / "store/out/stale.txt").write_text("from an earlier attempt")
    run_processing_job(_processing(tmp_path, COPY_JOB, name="proc-2"), tmp_path / "jobs", lambda _: None)
    assert sorted(p.name for p in (tmp_path / "store/out").iterdir()) == ["copy.txt"]
    assert not [p for p in (tmp_path / "store").iterdir() if p.name.startswith(".")], "no temp folders left"


def test_failing_job_raises_with_last_log_lines_and_publishes_nothing(tmp_path):
    body = """
        import sys
        print("reading input")
        print("ERROR: column star_rating missing", file=sys.stderr)
        sys.exit(3)
    """
    with pytest.raises(JobFailedError) as err:
        run_processing_job(_processing(tmp_path, body), tmp_path / "jobs", lambda _: None)
    assert "exit code 3" in str(err.value)
    assert "column star_rating missing" in str(err.value)
    assert not (tmp_path / "store/out").exists()


def test_stopping_condition_kills_a_job_that_runs_too_long(tmp_path):
    body = """
        import time
        print("sleeping", flush=True)
        time.sleep(60)
    """
    with pytest.raises(JobFailedError, match="MaxRuntimeInSeconds=1"):
        run_processing_job(_processing(tmp_path, body, timeout=1), tmp_path / "jobs", lambda _: None)


def test_missing_input_is_a_request_error_naming_the_input(tmp_path):
    request = _processing(tmp_path, COPY_JOB)
    request["ProcessingInputs"][1]["S3Input"]["S3Uri"] = (tmp_path / "nope").as_uri()
    with pytest.raises(JobRequestError, match="input 'data'.*does not exist"):
        run_processing_job(request, tmp_path / "jobs", lambda _: None)


def test_bad_job_name_is_rejected(tmp_path):
    request = _processing(tmp_path, COPY_JOB, name="bad name!")
    with pytest.raises(JobRequestError, match="ProcessingJobName"):
        run_processing_job(request, tmp_path / "jobs", lambda _: None)


TRAIN_JOB = """
    import json, os, pathlib, sys
    args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    hps = json.loads(os.environ["SM_HPS"])
    assert args["--epochs"] == hps["epochs"] == "2"
    assert "sagemaker_program" not in hps
    train = pathlib.Path(os.environ["SM_CHANNEL_TRAIN"])
    assert (train / "rows.txt").read_text() == "1,2,3"
    ckpt = pathlib.Path(os.environ["SM_CHECKPOINT_DIR"])
    resumed = (ckpt / "state.txt").exists()
    (ckpt / "state.txt").write_text("step 10")
    model = pathlib.Path(os.environ["SM_MODEL_DIR"])
    (model / "config.json").write_text(json.dumps({"resumed": resumed}))
    (pathlib.Path(os.environ["SM_OUTPUT_DATA_DIR"]) / "metrics.json").write_text("{}")
    print("trained; channels", os.environ["SM_CHANNELS"])
"""


def _training(tmp_path: Path, name: str) -> dict:
    code = tmp_path / "code"
    _script(code, "train.py", TRAIN_JOB)
    train = tmp_path / "train"
    train.mkdir(exist_ok=True)
    (train / "rows.txt").write_text("1,2,3")
    return {
        "TrainingJobName": name,
        "HyperParameters": {"epochs": "2", "sagemaker_program": "train.py", "sagemaker_submit_directory": code.as_uri()},
        "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {"S3Uri": train.as_uri()}}}],
        "OutputDataConfig": {"S3OutputPath": (tmp_path / "store/train").as_uri()},
        "CheckpointConfig": {"S3Uri": (tmp_path / "store/ckpt").as_uri(), "LocalPath": "/opt/ml/checkpoints"},
        "StoppingCondition": {"MaxRuntimeInSeconds": 60},
    }


def test_training_job_publishes_model_tarball_and_keeps_checkpoints_across_attempts(tmp_path):
    first = run_training_job(_training(tmp_path, "train-a1"), tmp_path / "jobs", lambda _: None)
    model_tar = Path(first.outputs["model"].removeprefix("file://"))
    assert model_tar == tmp_path / "store/train/train-a1/output/model.tar.gz"
    with tarfile.open(model_tar) as tar:
        assert json.load(tar.extractfile("config.json")) == {"resumed": False}
        assert tar.getnames() == ["config.json"], "model files sit at the archive root, as SageMaker's"
    second = run_training_job(_training(tmp_path, "train-a2"), tmp_path / "jobs", lambda _: None)
    with tarfile.open(second.outputs["model"].removeprefix("file://")) as tar:
        assert json.load(tar.extractfile("config.json")) == {"resumed": True}, "second attempt sees the checkpoint"


def test_training_job_requires_program_and_code(tmp_path):
    request = _training(tmp_path, "train-x")
    del request["HyperParameters"]["sagemaker_program"]
    with pytest.raises(JobRequestError, match="sagemaker_program"):
        run_training_job(request, tmp_path / "jobs", lambda _: None)
