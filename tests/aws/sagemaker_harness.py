"""A test harness that plays SageMaker's part behind moto (test code only).

moto (5.2.x) accepts ``CreateProcessingJob`` / ``CreateTrainingJob``, marks the job
``Completed`` the moment it is created and runs nothing. The moto server runs in this
process (``ThreadedMotoServer``), so the harness wraps its SageMaker request handler:

What the harness PLAYS (SageMaker's side):
- every SageMaker call the server receives is recorded with its full parameters
  (``harness.calls``): tests assert on exactly what our code sent;
- a created job is set ``InProgress``; a background thread then downloads its inputs from
  moto's S3, runs the very same request with the project's local runner
  (``include/jobs/runner_local.py``: container layout, ``SM_*`` environment, the script in a
  subprocess), uploads the outputs where SageMaker puts them (each processing output to its
  ``S3Uri``; ``<S3OutputPath>/<job>/output/model.tar.gz`` and ``output.tar.gz``; the
  checkpoint folder to ``CheckpointConfig.S3Uri``), writes the job's log lines to CloudWatch
  Logs (``/aws/sagemaker/{Processing,Training}Jobs``, stream ``<job>/algo-1-...``) and sets the
  job ``Completed``, or ``Failed`` with the runner's reason as ``FailureReason``;
- ``StopTrainingJob`` (moto 5.2 has none) and ``StopProcessingJob`` set the job ``Stopped``
  and end its hold, as SageMaker does after ``Stopping``;
- ``force(name, status, reason)`` makes a job of that name end in ``status`` without running
  anything, and ``hold(name)`` keeps it ``InProgress`` until ``release(name)`` - to put the
  retry cases (running / completed / failed / stopped predecessor) in front of the code.

What is REAL: moto's S3, SageMaker, CloudWatch Logs and STS APIs over HTTP on 127.0.0.1, the
Amazon provider's operators and their deferrable trigger (aiobotocore), the job scripts and
the local runner.
"""
from __future__ import annotations

import copy
import json
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

PROCESSING_GROUP, TRAINING_GROUP = "/aws/sagemaker/ProcessingJobs", "/aws/sagemaker/TrainingJobs"


class SageMakerHarness:
    """Wraps moto's SageMaker responses; see the module docstring for what it plays."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = Path(work_dir)
        self.calls: list[tuple[str, dict]] = []
        self.async_calls: list[tuple[str, dict]] = []  # made by aiobotocore: the provider's triggers
        self.forced: dict[str, tuple[str, str]] = {}
        self._sequences: list[tuple[str, list[tuple[str, str]]]] = []
        self.held: dict[str, threading.Event] = {}
        self.errors: list[str] = []
        self.job_logs: dict[str, list[str]] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ controls

    def force(self, name: str, status: str, reason: str = "") -> None:
        """The job ``name``, when created, ends in ``status`` without running anything."""
        self.forced[name] = (status, reason)

    def force_next(self, prefix: str, outcomes: list[tuple[str, str]]) -> None:
        """The jobs created next whose names start with ``prefix`` end, in turn, as ``outcomes``
        (``(status, reason)``): for runs whose job names are not known in advance."""
        self._sequences.append((prefix, list(outcomes)))

    def hold(self, name: str) -> None:
        """Keep the job ``name`` ``InProgress`` until :meth:`release`."""
        self.held[name] = threading.Event()

    def release(self, name: str) -> None:
        """Let a held job go on."""
        self.held[name].set()

    def created(self, kind: str | None = None) -> list[dict]:
        """The Create*Job requests received, in order (``kind``: Processing | Training)."""
        actions = {f"Create{kind}Job"} if kind else {"CreateProcessingJob", "CreateTrainingJob"}
        return [params for action, params in self.calls if action in actions]

    def actions(self, prefix: str = "") -> list[str]:
        """The names of the SageMaker actions received, in order."""
        return [action for action, _ in self.calls if action.startswith(prefix)]

    def wait_idle(self, timeout_s: float = 600) -> None:
        """Wait for the jobs being played to finish."""
        deadline = time.monotonic() + timeout_s
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------ install

    def install(self, monkeypatch) -> SageMakerHarness:
        """Wrap moto's SageMaker handler (undone by ``monkeypatch`` after the test)."""
        from moto.sagemaker.responses import SageMakerResponse

        original = SageMakerResponse.call_action
        harness = self

        def call_action(response: Any):
            action = response._get_action()
            try:
                params = json.loads(response.body or "{}")
            except (TypeError, ValueError):
                params = {}
            with harness._lock:
                harness.calls.append((action, params))
                if "aiobotocore" in (response.headers.get("User-Agent") or ""):
                    harness.async_calls.append((action, params))  # the deferred task's trigger
            result = original(response)
            if action in ("CreateProcessingJob", "CreateTrainingJob"):
                harness._launch(response.sagemaker_backend, action[len("Create"):-len("Job")], params)
            return result

        def stopper(kind: str):
            def stop(response: Any):
                return harness._stop(response.sagemaker_backend, kind, json.loads(response.body or "{}"))
            return stop

        monkeypatch.setattr(SageMakerResponse, "call_action", call_action)
        monkeypatch.setattr(SageMakerResponse, "stop_training_job", stopper("Training"), raising=False)
        monkeypatch.setattr(SageMakerResponse, "stop_processing_job", stopper("Processing"))
        return self

    # ------------------------------------------------------------------ playing a job

    def _job(self, backend: Any, kind: str, name: str) -> Any:
        return (backend.training_jobs if kind == "Training" else backend.processing_jobs)[name]

    def _set_status(self, backend: Any, kind: str, name: str, status: str, reason: str = "") -> None:
        job = self._job(backend, kind, name)
        now = datetime.now(timezone.utc)
        job.last_modified_time = now
        if kind == "Training":
            job.training_job_status, job.secondary_status = status, status
            if status in ("Completed", "Failed", "Stopped"):
                job.training_end_time = now
        else:
            job.processing_job_status = status
            job.processing_end_time = now if status in ("Completed", "Failed", "Stopped") else None
        if reason:
            job.failure_reason = reason  # moto renders attributes as the describe response

    def _stop(self, backend: Any, kind: str, params: dict):
        from moto.core.responses import EmptyResult
        from moto.sagemaker.exceptions import ValidationError

        name = params[f"{kind}JobName"]
        try:
            job = self._job(backend, kind, name)
        except KeyError:
            raise ValidationError(message=f"Could not find job {name!r}.") from None
        status = job.training_job_status if kind == "Training" else job.processing_job_status
        if status not in ("InProgress", "Stopping"):
            raise ValidationError(message=f"The job {name} is {status}: it cannot be stopped.")
        self.forced[name] = ("Stopped", "")
        self._set_status(backend, kind, name, "Stopped")
        if name in self.held:
            self.held[name].set()
        return EmptyResult()

    def _launch(self, backend: Any, kind: str, request: dict) -> None:
        name = request[f"{kind}JobName"]
        for prefix, outcomes in self._sequences:
            if name.startswith(prefix) and outcomes and name not in self.forced:
                self.forced[name] = outcomes.pop(0)
        self._set_status(backend, kind, name, "InProgress")
        if kind == "Processing":
            self._job(backend, kind, name).processing_start_time = datetime.now(timezone.utc)
        thread = threading.Thread(target=self._play, args=(backend, kind, copy.deepcopy(request)),
                                  name=f"sagemaker-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _play(self, backend: Any, kind: str, request: dict) -> None:
        name = request[f"{kind}JobName"]
        if name in self.held:
            self.held[name].wait(600)
        if name in self.forced:
            status, reason = self.forced[name]
            self._set_status(backend, kind, name, status, reason)
            return
        lines: list[str] = []
        try:
            self._execute(kind, request, lines)
        except Exception as exc:  # noqa: BLE001 - any failure of the played job is the job's failure
            self._put_logs(kind, name, lines + [f"job failed: {exc}"])
            self._set_status(backend, kind, name, "Failed", f"AlgorithmError: {str(exc).splitlines()[0]}")
            self.errors.append(f"{name}: {exc}")
            return
        self._put_logs(kind, name, lines)
        job = self._job(backend, kind, name)
        if (job.training_job_status if kind == "Training" else job.processing_job_status) == "Stopped":
            return  # stopped while it ran: SageMaker keeps it Stopped
        self._set_status(backend, kind, name, "Completed")

    def _execute(self, kind: str, request: dict, lines: list[str]) -> None:
        from include.common.aws import download_prefix, load_aws_config, upload_dir, write_bytes
        from include.jobs.runner_local import run_processing_job, run_training_job

        cfg = load_aws_config()
        name = request[f"{kind}JobName"]
        work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.work_dir))

        def fetch(uri: str, dest: Path) -> str:
            download_prefix(cfg, uri, dest)
            return dest.as_uri()

        local = copy.deepcopy(request)
        uploads: list[tuple[Path, str]] = []
        if kind == "Processing":
            for item in local.get("ProcessingInputs", []):
                s3 = item["S3Input"]
                s3["S3Uri"] = fetch(s3["S3Uri"], work / "inputs" / item["InputName"])
            for item in local.get("ProcessingOutputConfig", {}).get("Outputs", []):
                dest = work / "outputs" / item["OutputName"]
                uploads.append((dest, item["S3Output"]["S3Uri"]))
                item["S3Output"]["S3Uri"] = dest.as_uri()
            run_processing_job(local, work / "jobs", lines.append)
            for dest, uri in uploads:
                upload_dir(cfg, dest, uri)
            return
        hps = local["HyperParameters"]
        archive = work / "code" / "sourcedir.tar.gz"
        archive.parent.mkdir(parents=True)
        archive.write_bytes(_read(cfg, hps["sagemaker_submit_directory"]))
        hps["sagemaker_submit_directory"] = archive.as_uri()
        for channel in local.get("InputDataConfig", []):
            src = channel["DataSource"]["S3DataSource"]
            src["S3Uri"] = fetch(src["S3Uri"], work / "channels" / channel["ChannelName"])
        out_uri = local["OutputDataConfig"]["S3OutputPath"].rstrip("/")
        local["OutputDataConfig"]["S3OutputPath"] = (work / "output").as_uri()
        ckpt = local.get("CheckpointConfig")
        if ckpt:
            ckpt_uri = ckpt["S3Uri"]
            ckpt["S3Uri"] = fetch(ckpt_uri, work / "checkpoints")
        try:
            run_training_job(local, work / "jobs", lines.append)
        finally:
            if ckpt and (work / "checkpoints").is_dir():  # SageMaker syncs checkpoints while it runs
                upload_dir(cfg, work / "checkpoints", ckpt_uri)
        for part in ("model.tar.gz", "output.tar.gz"):
            path = work / "output" / name / "output" / part
            write_bytes(cfg, f"{out_uri}/{name}/output/{part}", path.read_bytes())

    def _put_logs(self, kind: str, name: str, lines: list[str]) -> None:
        import boto3

        self.job_logs[name] = lines
        group = TRAINING_GROUP if kind == "Training" else PROCESSING_GROUP
        logs = boto3.client("logs")
        try:
            logs.create_log_group(logGroupName=group)
        except logs.exceptions.ResourceAlreadyExistsException:
            pass
        stream = f"{name}/algo-1-{int(time.time())}"
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
        now = int(time.time() * 1000)
        events = [{"timestamp": now + i, "message": line} for i, line in enumerate(lines or ["(no output)"])]
        for i in range(0, len(events), 5000):
            logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events[i:i + 5000])


def _read(cfg: Any, uri: str) -> bytes:
    from include.common.aws import read_bytes

    return read_bytes(cfg, uri)
