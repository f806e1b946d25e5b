"""Stubs for the few AWS calls moto lacks, at the boto3 level, and nothing else.

:class:`OperationStubber` is botocore's :class:`~botocore.stub.Stubber` limited to the named
operations: every other call of the same client still goes to moto's server. Its ``on_call``
hook lets a test play the part of the service for the stubbed call (e.g. apply an
``UpdateEndpoint`` to moto's state, as SageMaker would), since moto cannot.
"""
from __future__ import annotations

import io
import threading
from typing import Callable

from botocore.response import StreamingBody
from botocore.stub import Stubber

MOTO_ACCOUNT = "123456789012"


class OperationStubber(Stubber):
    """A Stubber that intercepts only ``operations`` (e.g. ``"UpdateEndpoint"``) of ``client``."""

    def __init__(self, client, *operations: str, on_call: Callable[[str, dict], None] | None = None) -> None:
        super().__init__(client)
        self.operations = operations
        self.on_call = on_call
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
        return super()._assert_expected_params(model, params, context, **kwargs)

    def _get_response_handler(self, model, params, context, **kwargs):
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
