"""Stubs for the few AWS calls moto lacks, at the boto3 level, and nothing else.

:class:`OperationStubber` is botocore's :class:`~botocore.stub.Stubber` limited to the named
operations: every other call of the same client still goes to moto's server. Either queue
responses as with any Stubber (``add_response``, with expected parameters) and let ``on_call``
play the service's part for each call (e.g. apply an ``UpdateEndpoint`` to moto's state, as
SageMaker would), or pass ``respond`` to answer every call of those operations from a function
(what a whole-DAG test needs, where the number of calls is not known in advance).
"""
from __future__ import annotations

import io
import threading
from typing import Callable

from botocore.awsrequest import AWSResponse
from botocore.response import StreamingBody
from botocore.stub import Stubber

MOTO_ACCOUNT = "123456789012"


class OperationStubber(Stubber):
    """A Stubber that intercepts only ``operations`` (e.g. ``"UpdateEndpoint"``) of ``client``."""

    def __init__(self, client, *operations: str, on_call: Callable[[str, dict], None] | None = None,
                 respond: Callable[[str, dict], dict] | None = None) -> None:
        super().__init__(client)
        self.operations = operations
        self.on_call = on_call
        self.respond = respond  # (operation, API params) -> the parsed response (or error(...))
        self._local = threading.local()  # the API parameters of the call in flight, per thread

    def _events(self) -> list[tuple[str, str]]:
        service = self.client.meta.service_model.service_id.hyphenize()
        return [(f"before-parameter-build.{service}.{op}", f"before-call.{service}.{op}") for op in self.operations]

    def activate(self) -> None:
        """Register the stub's handlers for the named operations only."""
        for build, call in self._events():
            self.client.meta.events.register_first(build, self._assert_expected_params,
                                                   unique_id=f"{self._expected_params_event_id}-{build}")
            self.client.meta.events.register(call, self._get_response_handler, unique_id=f"{self._event_id}-{call}")

    def deactivate(self) -> None:
        """Unregister what :meth:`activate` registered."""
        for build, call in self._events():
            self.client.meta.events.unregister(build, self._assert_expected_params,
                                               unique_id=f"{self._expected_params_event_id}-{build}")
            self.client.meta.events.unregister(call, self._get_response_handler, unique_id=f"{self._event_id}-{call}")

    def _assert_expected_params(self, model, params, context, **kwargs):
        self._local.params = dict(params)  # the API parameters (before-call sees the serialized request)
        if self.respond is None:
            return super()._assert_expected_params(model, params, context, **kwargs)
        return None

    def _get_response_handler(self, model, params, context, **kwargs):
        if self.respond is not None:
            parsed = self.respond(model.name, self._local.params)
            status = parsed.get("ResponseMetadata", {}).get("HTTPStatusCode", 200)
            return AWSResponse(None, status, {}, None), parsed
        response = super()._get_response_handler(model, params, context, **kwargs)
        if self.on_call is not None:
            self.on_call(model.name, self._local.params)
        return response


def streaming(data: bytes) -> StreamingBody:
    """A response body as botocore returns one (InvokeEndpoint's ``Body``)."""
    return StreamingBody(io.BytesIO(data), len(data))


def moto_sagemaker(region: str):
    """moto's SageMaker state (the server runs in this process, on a thread)."""
    from moto.sagemaker.models import sagemaker_backends

    return sagemaker_backends[MOTO_ACCOUNT][region]


def error(code: str, message: str, status: int = 400) -> dict:
    """A parsed error response for ``respond`` (botocore raises it as a ClientError)."""
    return {"ResponseMetadata": {"HTTPStatusCode": status}, "Error": {"Code": code, "Message": message}}
