"""The endpoint's interface: deploy a model package, ask what serves, stop, classify reviews.

:class:`Endpoint` is implemented by the local model server (``endpoint_local.py``) and by a
SageMaker real-time endpoint (``endpoint_sagemaker.py``); ``endpoint.py`` chooses from the
backend. The errors and the argument checks of a deploy are shared by both.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from include.common.errors import NonRetriableError
from include.serving.protocol import PRECISIONS


class EndpointError(RuntimeError):
    """Base class of the endpoint's errors."""


class EndpointDeployError(NonRetriableError, EndpointError):
    """A deploy did not take effect; the message says why and what still serves."""


class EndpointNotRunningError(EndpointError):
    """No endpoint process is running for this state dir."""


class EndpointRequestError(EndpointError):
    """The endpoint refused or failed a request (carries the HTTP status)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def check_deploy(version: str, smoke_texts: list[str] | tuple[str, ...], precision: str) -> list[str]:
    """The smoke texts of a deploy as a list, once ``version``, ``precision`` and the texts are checked."""
    if not version or not isinstance(version, str):
        raise EndpointDeployError(f"version={version!r}: pass the registry version as a non-empty string")
    if precision not in PRECISIONS:
        raise EndpointDeployError(f"precision={precision!r}: use one of {', '.join(PRECISIONS)}")
    smoke_texts = list(smoke_texts or ())
    if not smoke_texts or not all(isinstance(t, str) and t.strip() for t in smoke_texts):
        raise EndpointDeployError("smoke_texts: pass at least one non-empty review text")
    return smoke_texts


class Endpoint(ABC):
    """The model endpoint of one backend."""

    @abstractmethod
    def deploy(self, package_uri: str, version: str, smoke_texts: list[str] | tuple[str, ...],
               port: int | None = None, timeout_s: float = 120, precision: str = "fp32") -> dict:
        """Serve ``version`` from ``package_uri`` and smoke-test it with real reviews; returns
        ``{"url", "version", "previous_version", "mode", "smoke", "seconds", ...}``. On any failure
        the previous version keeps serving and :class:`EndpointDeployError` says why."""

    @abstractmethod
    def status(self) -> dict | None:
        """What the endpoint serves (``url, version, healthy, ...``); None when there is none."""

    @abstractmethod
    def stop(self) -> bool:
        """Stop the endpoint; True if one was running."""

    @abstractmethod
    def predict(self, texts: list[str], timeout_s: float = 60) -> list[dict]:
        """Classify ``texts`` on the running endpoint; one answer dict per text."""
