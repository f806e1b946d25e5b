"""The endpoint of the configured backend - the one place that chooses it (``local``: the managed
model server, ``endpoint_local.py``; ``aws``: a SageMaker real-time endpoint,
``endpoint_sagemaker.py``, imported only on that backend) - and the endpoint's command line.
The interface and its errors are ``endpoint_base.py``.

CLI: ``python -m include.serving.endpoint {start,stop,status,predict} ...`` (``--help`` on each).
"""
from __future__ import annotations

import argparse
import json
import sys

from include.common.config import get_settings
from include.serving.endpoint_base import Endpoint, EndpointError
from include.serving.endpoint_local import LocalEndpoint
from include.serving.protocol import DEFAULT_PORT, PORT_ENV


def get_endpoint() -> Endpoint:
    """The endpoint of the configured backend (aws: the SageMaker endpoint of the aws config)."""
    if get_settings().backend != "aws":
        return LocalEndpoint()
    from include.common.aws import load_aws_config
    from include.serving.endpoint_sagemaker import SageMakerEndpoint

    return SageMakerEndpoint(load_aws_config().validate())


# ---------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    """``python -m include.serving.endpoint {start,stop,status,predict}``."""
    parser = argparse.ArgumentParser(prog="python -m include.serving.endpoint",
                                     description="The local endpoint: a managed background model server and its client.")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="deploy a package (start the server or swap its model)")
    start.add_argument("--package-uri", required=True, help="file:// URI (or path) of model.tar.gz")
    start.add_argument("--version", required=True, help="model version the package is")
    start.add_argument("--port", type=int, default=None,
                       help=f"port (default: the current one, ${PORT_ENV}, or {DEFAULT_PORT})")
    start.add_argument("--smoke-text", action="append", default=None, help="review used to smoke-test (repeatable)")
    start.add_argument("--timeout", type=float, default=120, help="seconds to wait for load + health")
    sub.add_parser("stop", help="stop the endpoint")
    sub.add_parser("status", help="print what the endpoint serves (exit 1 when not running)")
    pred = sub.add_parser("predict", help="classify review texts")
    pred.add_argument("texts", nargs="+", help="review texts")
    args = parser.parse_args(argv)
    try:
        endpoint = get_endpoint()
        if args.command == "start":
            smoke = args.smoke_text or ["I love this dress, it fits perfectly.", "It was okay, nothing special.",
                                        "Terrible quality, it ripped after one wash."]
            print(json.dumps(endpoint.deploy(args.package_uri, args.version, smoke, args.port, args.timeout), indent=1))
        elif args.command == "stop":
            print("stopped" if endpoint.stop() else "not running")
        elif args.command == "status":
            info = endpoint.status()
            print(json.dumps(info, indent=1) if info else "not running")
            return 0 if info else 1
        else:
            print(json.dumps(endpoint.predict(args.texts), indent=1))
    except EndpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
