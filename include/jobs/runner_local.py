"""The local backend of the job contract: run ``CreateProcessingJob`` / ``CreateTrainingJob``
request dicts as local subprocesses.

The request is exactly what the aws backend hands to SageMaker. Here every input is staged
under a job folder laid out like the container (``<job>/opt/ml/processing/input/<name>``,
``<job>/opt/ml/input/data/<channel>``), the container's environment is set (``SM_*``,
hyper-parameters), the entry point runs with the request's stopping condition as timeout,
its output is streamed line by line to ``log``, and on success the outputs are published
to their URIs (the model as ``model.tar.gz``), each atomically. A non-zero exit raises
``JobFailedError`` carrying the job's last log lines; exit code 2 (the scripts' "bad input or
bad hyper-parameter") raises its subclass ``JobInputError``, which is not worth a retry.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from include.common.config import ConfigError, Settings
from include.common.errors import NonRetriableError
from include.common.io import link_or_copy, publish_dir, publish_tar, uri_to_path
from include.jobs.runner_base import SCRIPTS_DIR, JobFailedError, JobRequestError, JobRunner, Log

CONTAINER_ROOT = "/opt/ml"
TAIL_LINES = 40
DEFAULT_TIMEOUT_S = 24 * 3600
BAD_INPUT_EXIT_CODE = 2  # the job scripts' exit code for bad input / bad hyper-parameters
Logger = Callable[[str], None]


class JobInputError(NonRetriableError, JobFailedError):
    """The job refused its input or hyper-parameters (exit code 2): a retry cannot help."""


@dataclass
class JobResult:
    """What a finished job left behind (the local counterpart of DescribeXJob)."""

    job_name: str
    job_dir: Path
    wall_s: float
    outputs: dict[str, str] = field(default_factory=dict)
    log_tail: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-able form (for XCom)."""
        return {"job_name": self.job_name, "job_dir": str(self.job_dir), "wall_s": round(self.wall_s, 3),
                "outputs": self.outputs}


def _path(uri: str) -> Path:
    try:
        return uri_to_path(uri)
    except ConfigError:
        raise JobRequestError(f"{uri!r}: the local runner reads and writes file:// URIs only") from None


def _stage(uri: str, dest: Path, what: str) -> None:
    """Copy an input (a file or a prefix folder) into ``dest``, as SageMaker's File mode does."""
    src = _path(uri)
    if not src.exists():
        raise JobRequestError(f"{what}: input {uri} does not exist")
    dest.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest, copy_function=link_or_copy, dirs_exist_ok=True)
    else:
        link_or_copy(str(src), str(dest / src.name))


def _localize(value: str, job_dir: Path) -> str:
    """Map a container path (``/opt/ml/...``) into the job folder; leave anything else."""
    if value == CONTAINER_ROOT or value.startswith(CONTAINER_ROOT + "/"):
        return str(job_dir) + value
    return value


def _check_name(request: dict, key: str) -> str:
    name = request.get(key)
    if not name or not isinstance(name, str) or len(name) > 63 or not all(c.isalnum() or c == "-" for c in name):
        raise JobRequestError(f"{key}={name!r}: must be 1-63 characters of letters, digits and '-'")
    return name


def _new_job_dir(jobs_dir: Path, name: str) -> Path:
    job_dir = jobs_dir / name
    if job_dir.exists():  # same name = same attempt re-run by hand: start clean
        shutil.rmtree(job_dir)
    job_dir.mkdir(parents=True)
    return job_dir


def _execute(cmd: list[str], env: dict, cwd: Path, timeout_s: float, name: str, job_dir: Path, log: Logger) -> list[str]:
    """Run ``cmd`` in its own process group, streaming output; return the log tail."""
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    log(f"[{name}] starting: {' '.join(cmd)} (timeout {timeout_s:.0f}s)")
    with open(job_dir / "job.log", "w", encoding="utf-8") as logfile:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, encoding="utf-8", errors="replace", bufsize=1, start_new_session=True)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                logfile.write(line + "\n")
                log(f"[{name}] {line}")

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill(proc)
            reader.join(5)
            raise JobFailedError(name, f"stopped after MaxRuntimeInSeconds={timeout_s:.0f}", list(tail)) from None
        except BaseException:  # task killed / interrupted: never leave the job running
            _kill(proc)
            raise
        reader.join(10)
    if rc == BAD_INPUT_EXIT_CODE:
        raise JobInputError(name, f"exit code {rc}", list(tail))
    if rc != 0:
        raise JobFailedError(name, f"exit code {rc}", list(tail))
    return list(tail)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _base_env(request: dict) -> dict:
    env = dict(os.environ)
    env.update({k: str(v) for k, v in (request.get("Environment") or {}).items()})
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


def _timeout(request: dict) -> float:
    return float((request.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds", DEFAULT_TIMEOUT_S))


def run_processing_job(request: dict, jobs_dir: Path, log: Logger = print) -> JobResult:
    """Execute a ``CreateProcessingJob`` request; publish each output to its ``S3Uri``."""
    name = _check_name(request, "ProcessingJobName")
    app = request.get("AppSpecification") or {}
    entry = list(app.get("ContainerEntrypoint") or [])
    if not entry:
        raise JobRequestError(f"{name}: AppSpecification.ContainerEntrypoint is empty")
    started = time.monotonic()
    job_dir = _new_job_dir(jobs_dir, name)
    for item in request.get("ProcessingInputs", []):
        s3 = item.get("S3Input") or {}
        _stage(s3["S3Uri"], Path(_localize(s3["LocalPath"], job_dir)), f"{name} input {item['InputName']!r}")
    outputs = (request.get("ProcessingOutputConfig") or {}).get("Outputs", [])
    for item in outputs:
        Path(_localize(item["S3Output"]["LocalPath"], job_dir)).mkdir(parents=True, exist_ok=True)
    env = _base_env(request)
    env = {k: _localize(v, job_dir) for k, v in env.items()}
    cmd = [_localize(part, job_dir) for part in entry + list(app.get("ContainerArguments") or [])]
    if cmd[0] in ("python", "python3"):  # the container's interpreter = this environment's
        cmd[0] = sys.executable
    tail = _execute(cmd, env, job_dir, _timeout(request), name, job_dir, log)
    published = {}
    for item in outputs:
        s3 = item["S3Output"]
        published[item["OutputName"]] = publish_dir(Path(_localize(s3["LocalPath"], job_dir)), s3["S3Uri"])
    result = JobResult(name, job_dir, time.monotonic() - started, published, tail)
    _finish(job_dir, request, result, log)
    return result


def _hyperparameters(request: dict) -> tuple[dict[str, str], str, str]:
    hps = {k: str(v) for k, v in (request.get("HyperParameters") or {}).items()}
    program = hps.pop("sagemaker_program", None)
    submit = hps.pop("sagemaker_submit_directory", None)
    if not program or not submit:
        raise JobRequestError("HyperParameters must name sagemaker_program and sagemaker_submit_directory")
    return hps, program, submit


def _stage_code(submit_uri: str, code_dir: Path, name: str) -> None:
    src = _path(submit_uri)
    if src.is_file() and src.name.endswith((".tar.gz", ".tgz")):
        code_dir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(src) as tar:
            tar.extractall(code_dir, filter="data")
    else:
        _stage(submit_uri, code_dir, f"{name} sagemaker_submit_directory")


def run_training_job(request: dict, jobs_dir: Path, log: Logger = print) -> JobResult:
    """Execute a ``CreateTrainingJob`` request in script mode; publish model.tar.gz.

    Checkpoints live directly in ``CheckpointConfig.S3Uri`` (SageMaker syncs the local
    checkpoint folder there continuously), so a retried attempt finds its predecessor's.
    """
    name = _check_name(request, "TrainingJobName")
    hps, program, submit = _hyperparameters(request)
    started = time.monotonic()
    job_dir = _new_job_dir(jobs_dir, name)
    hps = {k: _localize(v, job_dir) for k, v in hps.items()}  # e.g. a channel's /opt/ml/input/data/<name>
    ml = job_dir / "opt/ml"
    code_dir, model_dir, output_dir = ml / "code", ml / "model", ml / "output/data"
    for d in (model_dir, output_dir, ml / "input/config"):
        d.mkdir(parents=True, exist_ok=True)
    _stage_code(submit, code_dir, name)
    if not (code_dir / program).is_file():
        raise JobRequestError(f"{name}: sagemaker_program {program!r} is not in {submit}")
    channels = []
    env = _base_env(request)
    for ch in request.get("InputDataConfig", []):
        cname = ch["ChannelName"]
        dest = ml / "input/data" / cname
        _stage(ch["DataSource"]["S3DataSource"]["S3Uri"], dest, f"{name} channel {cname!r}")
        channels.append(cname)
        env[f"SM_CHANNEL_{cname.upper()}"] = str(dest)
    ckpt = request.get("CheckpointConfig")
    if ckpt:
        ckpt_dir = _path(ckpt["S3Uri"])
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        env["SM_CHECKPOINT_DIR"] = str(ckpt_dir)
    (ml / "input/config/hyperparameters.json").write_text(json.dumps(hps, indent=1))
    env.update({
        "SM_MODEL_DIR": str(model_dir), "SM_OUTPUT_DATA_DIR": str(output_dir), "SM_OUTPUT_DIR": str(ml / "output"),
        "SM_INPUT_DIR": str(ml / "input"), "SM_CHANNELS": json.dumps(channels), "SM_HPS": json.dumps(hps),
        "SM_USER_ENTRY_POINT": program, "SM_MODULE_DIR": str(code_dir), "SM_CURRENT_HOST": "algo-1",
        "SM_HOSTS": json.dumps(["algo-1"]), "SM_NUM_CPUS": str(os.cpu_count() or 1),
        "SM_NUM_GPUS": env.get("SM_NUM_GPUS", "0"), "SM_TRAINING_JOB_NAME": name,
    })
    cmd = [sys.executable, str(code_dir / program)]
    for key, value in hps.items():  # script mode passes every hyper-parameter as --key value
        cmd += [f"--{key}", value]
    tail = _execute(cmd, env, code_dir, _timeout(request), name, job_dir, log)
    out_prefix = request["OutputDataConfig"]["S3OutputPath"].rstrip("/") + f"/{name}/output"
    outputs = {"model": publish_tar(model_dir, out_prefix + "/model.tar.gz"),
               "output": publish_tar(output_dir, out_prefix + "/output.tar.gz")}
    result = JobResult(name, job_dir, time.monotonic() - started, outputs, tail)
    _finish(job_dir, request, result, log)
    return result


def _finish(job_dir: Path, request: dict, result: JobResult, log: Logger) -> None:
    """Record the describe-style summary and drop the staged copies (logs are kept)."""
    summary = {"Request": request, "Status": "Completed", **result.to_dict()}
    (job_dir / "describe.json").write_text(json.dumps(summary, indent=1, default=str))
    shutil.rmtree(job_dir / "opt", ignore_errors=True)
    log(f"[{result.job_name}] completed in {result.wall_s:.1f}s; outputs: {json.dumps(result.outputs)}")


class LocalJobRunner(JobRunner):
    """Subprocesses under the SageMaker container contract, job folders in the state dir."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def code_uri(self) -> str:
        return SCRIPTS_DIR.as_uri()

    def tracking_environment(self, experiment: str, run_name: str) -> dict[str, str]:
        import mlflow

        self.settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
        client = mlflow.MlflowClient(tracking_uri=self.settings.mlflow_tracking_uri)
        if client.get_experiment_by_name(experiment) is None:  # artifact root in the state dir, not ./mlruns
            client.create_experiment(experiment, artifact_location=(self.settings.mlflow_dir / "artifacts").as_uri())
        return {"MLFLOW_TRACKING_URI": self.settings.mlflow_tracking_uri, "MLFLOW_EXPERIMENT_NAME": experiment,
                "MLFLOW_RUN_NAME": run_name}

    def run(self, request: dict, log: Log | None = None) -> dict:
        log = log or logging.getLogger("airflow.task").info
        execute = run_training_job if "TrainingJobName" in request else run_processing_job
        return execute(request, self.settings.jobs_dir, log).to_dict()
