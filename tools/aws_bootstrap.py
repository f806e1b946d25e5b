"""``make aws-bootstrap``: the account's pieces for the aws backend, from ``aws/cloudformation.yaml``.

    python tools/aws_bootstrap.py render                 # write aws/iam/*.json into the template
    python tools/aws_bootstrap.py deploy --bucket NAME [--stack review-sentiment] [--region R]
                                         [--param Key=Value ...] [--dry-run]

``deploy`` creates the stack, or updates it when it exists (boto3, the machine's default
credentials: an administrator's, once), waits for it, and prints the aws config values the
stack's outputs give (bucket, role_arn, kms_key_id, athena_workgroup). Parameters
(``--param``): ProjectName, Prefix, GlueDatabase, AthenaWorkGroup, ModelPackageGroup,
EndpointName, FeatureGroup, JobNamePrefix, AthenaResultsDays, WorkerPrincipal - see the
template's Parameters section for their defaults and meaning.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "aws" / "cloudformation.yaml"
_BLOCK = re.compile(r"(?P<indent>[ ]*)# BEGIN (?P<file>aws/iam/[\w.-]+\.json)\n.*?(?P=indent)# END (?P=file)\n", re.S)


def _with_sub(value):
    """Strings holding ``${...}`` become ``Fn::Sub`` (the policy files' variables)."""
    if isinstance(value, dict):
        return {k: _with_sub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_sub(v) for v in value]
    if isinstance(value, str) and "${" in value:
        return {"Fn::Sub": value}
    return value


def render(text: str) -> str:
    """``text`` (the template) with every BEGIN/END block holding its policy file as YAML."""
    import yaml

    def block(m: re.Match) -> str:
        indent, name = m.group("indent"), m.group("file")
        doc = _with_sub(json.loads((ROOT / name).read_text(encoding="utf-8")))
        body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=1000)
        lines = "".join(f"{indent}{line}\n" for line in body.splitlines())
        return f"{indent}# BEGIN {name}\n{lines}{indent}# END {name}\n"

    return _BLOCK.sub(block, text)


def deploy(stack: str, region: str, params: dict[str, str], dry_run: bool = False) -> int:
    """Create or update ``stack``; print the aws config values from its outputs."""
    body = render(TEMPLATE.read_text(encoding="utf-8"))
    parameters = [{"ParameterKey": k, "ParameterValue": v} for k, v in sorted(params.items())]
    if dry_run:
        print(f"would deploy stack {stack} in {region or '(default region)'} with {json.dumps(params)}")
        return 0
    import boto3
    from botocore.exceptions import ClientError

    cfn = boto3.client("cloudformation", **({"region_name": region} if region else {}))
    kwargs = dict(StackName=stack, TemplateBody=body, Parameters=parameters, Capabilities=["CAPABILITY_NAMED_IAM"])
    try:
        cfn.describe_stacks(StackName=stack)
        exists = True
    except ClientError:
        exists = False
    try:
        if exists:
            cfn.update_stack(**kwargs)
            cfn.get_waiter("stack_update_complete").wait(StackName=stack)
        else:
            cfn.create_stack(**kwargs, EnableTerminationProtection=True)
            cfn.get_waiter("stack_create_complete").wait(StackName=stack)
    except ClientError as exc:
        if "No updates are to be performed" not in str(exc):
            print(f"stack {stack}: {exc}", file=sys.stderr)
            return 1
    outputs = {o["OutputKey"]: o["OutputValue"] for o in cfn.describe_stacks(StackName=stack)["Stacks"][0]["Outputs"]}
    print(f"stack {stack} is up. In the aws config (README: aws backend):")
    for key, setting in (("BucketName", "bucket"), ("RoleArn", "role_arn"), ("KmsKeyId", "kms_key_id"),
                         ("AthenaWorkGroup", "athena_workgroup")):
        print(f"  {setting}: {outputs.get(key)}")
    print(f"the Airflow connection's role: {outputs.get('AirflowWorkerRoleArn')}; "
          f"project image repository: {outputs.get('RepositoryUri')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aws_bootstrap", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("render", help="write aws/iam/*.json into aws/cloudformation.yaml")
    dep = sub.add_parser("deploy", help="create or update the stack")
    dep.add_argument("--bucket", required=True, help="the project's bucket (created by the stack)")
    dep.add_argument("--stack", default="review-sentiment")
    dep.add_argument("--region", default="")
    dep.add_argument("--param", action="append", default=[], help="Key=Value, a template parameter")
    dep.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "render":
        TEMPLATE.write_text(render(TEMPLATE.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"wrote {TEMPLATE.relative_to(ROOT)}")
        return 0
    bad = [p for p in args.param if "=" not in p]
    if bad:
        parser.error(f"--param takes Key=Value, got {bad}")
    params = dict(p.split("=", 1) for p in args.param)
    params["BucketName"] = args.bucket
    return deploy(args.stack, args.region, params, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
