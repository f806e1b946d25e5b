"""``make validate-aws CONF=<file>``: a dry run of the aws backend for one configuration.

Renders every job request one run of ``review_sentiment_pipeline`` would send to SageMaker
(``CreateProcessingJob`` preprocess and evaluate, ``CreateTrainingJob`` train), completed with
the configuration's role, images, instances, network, KMS and spot settings, plus where the
run's objects and the job scripts would go - without calling AWS (no credentials needed).
Every problem found in the configuration is listed first - the configuration's own, botocore's
validator on each request, and what SageMaker refuses that the service model cannot express
(include/jobs/images.py: a volume KMS key on an instance type with NVMe instance storage, a
GPU-only image on a CPU instance or the reverse, a step without an image) - then the IAM
actions the run needs. The exit code is 1 when there is any problem, so a CI job can run it too.

    python -m include.pipeline.validate_aws --conf aws.yaml [--ds 2026-11-20] [--params '{"profile": "quality"}']
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from datetime import date, datetime, timedelta, timezone
from typing import Iterator

DAG_ID = "review_sentiment_pipeline"
FIRST_RUN = "first-run"  # the deployment id shown when none exists yet (the first task creates it)


@contextlib.contextmanager
def _aws_env(conf: str) -> Iterator[None]:
    # the steps address objects through Settings.uri(), which reads the backend from the env
    from include.common.aws import AwsConfigError, load_aws_config
    from include.jobs.runner_sagemaker import deployment_id

    saved = {k: os.environ.get(k) for k in ("REVIEWS_BACKEND", "REVIEWS_AWS_CONF", "REVIEWS_AWS_DEPLOYMENT_ID")}
    os.environ.update({"REVIEWS_BACKEND": "aws", "REVIEWS_AWS_CONF": conf})
    # the job names hash in the deployment id; a dry run creates no Variable, it names the gap
    try:
        os.environ["REVIEWS_AWS_DEPLOYMENT_ID"] = deployment_id(load_aws_config(conf), create=False) or FIRST_RUN
    except AwsConfigError:  # a broken config: render() lists its problems
        os.environ["REVIEWS_AWS_DEPLOYMENT_ID"] = FIRST_RUN
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def render(conf: str, ds: str, params: dict, run_id: str = "") -> tuple[str, int]:
    """The dry run's report for config file ``conf``; (text, number of problems)."""
    from include.common.aws import JOB_STEPS, load_aws_config
    from include.jobs.images import image_problems, request_problems
    from include.jobs.requests import MAX_JOBS_PER_STEP, restart_name
    from include.jobs.runner_sagemaker import (
        archive_uri,
        code_locations,
        complete_request,
        default_weights_dir,
        files_digest,
        image_uri,
        job_kind,
        max_poll_attempts,
        pretrained_location,
        scripts_digest,
    )
    from include.model.registry_sagemaker import inference_image_uri
    from include.pipeline import steps
    from include.pipeline.context import RunInfo

    out: list[str] = []
    with _aws_env(conf):
        cfg = load_aws_config(conf)
        problems = cfg.problems()
        run_id = run_id or f"scheduled__{(date.fromisoformat(ds) + timedelta(days=1)).isoformat()}T00:00:00+00:00"
        info = RunInfo(dag_id=DAG_ID, run_id=run_id, ds=ds)
        out += [f"# make validate-aws: dry run of {DAG_ID} on the aws backend (no AWS call made)",
                f"config file: {conf}", f"run: {run_id}  ds={ds}  params={json.dumps(params)}", "",
                "## configuration", json.dumps(cfg.to_dict(), indent=2, default=str), ""]
        images = {}
        for step in JOB_STEPS:
            kind = "Training" if step == "train" else "Processing"
            try:
                images[step] = image_uri(cfg, step, kind)
            except Exception as exc:  # noqa: BLE001 - every problem is listed, none stops the report
                problems.append(str(exc))
        code_uri, archive = code_locations(cfg, scripts_digest())
        weights = pretrained_location(cfg, files_digest(default_weights_dir()))
        out += ["## where things go",
                f"job scripts (content-addressed): {code_uri}/  and  {archive}",
                f"default pre-trained weights (content-addressed): {weights}/",
                f"landing zone: {cfg.s3_uri('landing/reviews')}/ds=YYYY-MM-DD/",
                f"this run's outputs: {info.uri('')}<step>/", f"Glue database: {cfg.glue_database}  "
                f"Athena workgroup: {cfg.athena_workgroup}  results: {cfg.athena_output}",
                f"model package group: {cfg.model_package_group}  endpoint: {cfg.endpoint_name} "
                f"({cfg.endpoint_instance_count} x {cfg.endpoint_instance_type})", "",
                "## container images", *[f"{step}: {uri}" for step, uri in images.items()], ""]
        features = {**steps.channel_uris(info)}
        train_name = info.job("train")
        trained = {"model_uri": f"{info.uri('train')}/{train_name}/output/model.tar.gz",
                   "output_uri": f"{info.uri('train')}/{train_name}/output/output.tar.gz"}
        built = {
            "preprocess": lambda: steps.preprocess_job_request(info, params, info.uri("export"),
                                                               info.uri("preprocess") + "/features", code_uri),
            "train": lambda: steps.train_job_request(info, params, features, code_uri, {}),
            "evaluate": lambda: steps.evaluate_job_request(info, features, trained, code_uri, None),
        }
        for step, build in built.items():
            if step not in images:
                out += [f"## {step}: not rendered (its image: see the problems)", ""]
                continue
            try:
                request = complete_request(build(), cfg, step, weights if step in ("preprocess", "train") else "")
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{step}: the request cannot be rendered: {exc}")
                continue
            kind = job_kind(request)
            problems += request_problems(step, request) + botocore_problems(f"Create{kind}Job", request, step)
            out += [f"## {step}: Create{kind}Job",
                    f"# name on every attempt: {request[f'{kind}JobName']}; after a Failed/Stopped job: "
                    f"{restart_name(request[f'{kind}JobName'], 2)} .. -r{MAX_JOBS_PER_STEP}",
                    f"# waited on by the deferred task: every {cfg.job_check_interval_s}s, at most "
                    f"{max_poll_attempts(request, cfg.job_check_interval_s)} polls",
                    json.dumps(request, indent=2), ""]
        try:
            problems += image_problems("endpoint", inference_image_uri(cfg), cfg.endpoint_instance_type)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"endpoint: {exc}")
        out += iam_section(cfg)
        assert archive_uri(code_uri) == archive
    head = ["## problems", *(f"- {p}" for p in problems)] if problems else ["## problems", "none"]
    return "\n".join(out[:3] + ["", *head] + out[3:]) + "\n", len(problems)


def botocore_problems(operation: str, request: dict, step: str) -> list[str]:
    """What botocore's validator (SageMaker's service model: types, required members, ranges,
    patterns) refuses in ``request``, one line per problem."""
    import botocore.session
    from botocore.exceptions import ParamValidationError
    from botocore.validate import validate_parameters

    shape = botocore.session.get_session().get_service_model("sagemaker").operation_model(operation).input_shape
    try:
        validate_parameters(request, shape)
    except ParamValidationError as exc:
        return [f"{step}: {operation} {line.strip()}" for line in str(exc).splitlines()[1:] if line.strip()]
    return []


def iam_section(cfg) -> list[str]:
    """The IAM actions one run needs, as the Airflow worker (include/common/iam.py), and whether
    the shipped policy grants each (aws/iam/airflow-worker.json)."""
    from include.common import iam

    granted = iam.granted_actions(iam.WORKER)
    lines = [f"## IAM actions a run of {DAG_ID} needs (the Airflow worker's identity; policy: aws/iam/"
             "airflow-worker.json, the SageMaker role's: aws/iam/sagemaker-execution-role.json + feature-store.json)"]
    for act in iam.run_actions(DAG_ID):
        ok = any(iam._match(g, act, False) for g in granted)
        lines.append(f"{act}" + ("" if ok else "   <- NOT granted by aws/iam/airflow-worker.json"))
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    """Print the dry run; exit 1 when the configuration has problems."""
    parser = argparse.ArgumentParser(prog="make validate-aws", description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", required=True, help="the aws config file (JSON or YAML; docs/aws.md)")
    parser.add_argument("--ds", default=(datetime.now(timezone.utc).date() - timedelta(days=1)).isoformat(),
                        help="the partition of the rendered run (default: yesterday UTC)")
    parser.add_argument("--params", default="{}", help="the run's params as JSON (profile, epochs, ...)")
    parser.add_argument("--run-id", default="", help="the run id (default: the scheduled run of --ds)")
    args = parser.parse_args(argv)
    from include.common.aws import AwsConfigError

    try:
        params = json.loads(args.params)
        date.fromisoformat(args.ds)
    except ValueError as exc:
        print(f"bad --params or --ds: {exc}", file=sys.stderr)
        return 2
    try:
        text, problems = render(args.conf, args.ds, params, args.run_id)
    except AwsConfigError as exc:  # the file itself cannot be read
        print(f"## problems\n- {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
