"""Why a SageMaker job ended badly, and whether running it again can help.

A job that ends ``Failed`` carries a ``FailureReason`` (``DescribeTrainingJob`` /
``DescribeProcessingJob`` / ``DescribeAutoMLJobV2``) that starts with the kind of failure:
``AlgorithmError: ...``, ``ClientError: ...``, ``CapacityError: ...``. A retry of the task
starts a new paid job, so the task fails at once where the next job would fail the same way
(the script raised, a module is missing, the request is wrong) and retries only where the
cause is on SageMaker's side and passes (no capacity now, throttled, an internal error).

The table, first match wins (the kind before the first ``:``, then the words of the message):

============================  =========  ===================================================
reason contains               policy     why
============================  =========  ===================================================
``ModuleNotFoundError``       fail       the image lacks a package: every job fails alike
``ImportError``               fail       same
``AlgorithmError``            fail       the script raised: same data, same code, same error
``ClientError``               fail       bad input, bad request, out of memory on this type
``ValidationException``       fail       SageMaker refused the request
``BadRequest``                fail       same
``AccessDenied``              fail       the role lacks a right: a person must grant it
``MaxRuntimeExceeded``        fail       (secondary status) the next job runs as long
``CapacityError``             retry      no instance of the type free now
``InsufficientCapacity``      retry      same (spot, capacity reservations)
``ResourceLimitExceeded``     retry      the account's instance quota is in use now
``InternalServerError``       retry      SageMaker's side
``InternalFailure``           retry      same
``ServiceUnavailable``        retry      same
``Throttling``                retry      the API is rate-limited: the next call passes
``MaxWaitTimeExceeded``       retry      (secondary status) spot capacity never came
(anything else)               retry      unknown: a retry is the safe guess; logged
============================  =========  ===================================================

``Stopped`` jobs are retried (someone or something stopped it) unless their secondary status
says the runtime limit stopped it.
"""
from __future__ import annotations

import re
from typing import NamedTuple

FAIL, RETRY = "fail", "retry"


class Rule(NamedTuple):
    marker: str
    policy: str
    why: str


REASON_POLICY: tuple[Rule, ...] = (
    Rule("ModuleNotFoundError", FAIL, "the image lacks a package the script imports"),
    Rule("ImportError", FAIL, "the image lacks a package the script imports"),
    Rule("AlgorithmError", FAIL, "the job's script raised; the same data and code raise again"),
    Rule("ClientError", FAIL, "the input or the request is wrong; the next job gets the same"),
    Rule("ValidationException", FAIL, "SageMaker refused the request"),
    Rule("BadRequest", FAIL, "SageMaker refused the request"),
    Rule("AccessDenied", FAIL, "the role lacks a right; a person must grant it"),
    Rule("MaxRuntimeExceeded", FAIL, "the next job would run as long: raise steps.<step>.max_runtime_s"),
    Rule("CapacityError", RETRY, "no instance of the type is free now"),
    Rule("InsufficientCapacity", RETRY, "no instance of the type is free now"),
    Rule("ResourceLimitExceeded", RETRY, "the account's instance quota is in use now"),
    Rule("InternalServerError", RETRY, "an error on SageMaker's side"),
    Rule("InternalFailure", RETRY, "an error on SageMaker's side"),
    Rule("ServiceUnavailable", RETRY, "an error on SageMaker's side"),
    Rule("Throttling", RETRY, "the API is rate-limited"),
    Rule("MaxWaitTimeExceeded", RETRY, "spot capacity did not come in time"),
)
UNKNOWN = Rule("", RETRY, "an unknown reason: retried")
_KIND = re.compile(r"^\s*([A-Za-z]+)\s*:")


def classify(reason: str | None, secondary_status: str | None = None) -> Rule:
    """The rule of ``reason`` (a ``FailureReason``) and the job's secondary status.

    The reason's leading kind decides first (``ClientError: ... throttled`` is a ClientError),
    then any marker in the whole text, then the secondary status."""
    text = reason or ""
    kind = _KIND.match(text)
    lead = kind.group(1) if kind else ""
    for rule in REASON_POLICY:  # a missing module beats its wrapper (AlgorithmError: ... ModuleNotFoundError)
        if rule.marker in ("ModuleNotFoundError", "ImportError") and rule.marker in text:
            return rule
    for rule in REASON_POLICY:
        if lead and lead.startswith(rule.marker):
            return rule
    for candidate in (text, secondary_status or ""):
        for rule in REASON_POLICY:
            if rule.marker and rule.marker.lower() in candidate.lower():
                return rule
    return UNKNOWN


def is_retriable(reason: str | None, secondary_status: str | None = None) -> bool:
    """Whether a new job can end otherwise than the one that failed for ``reason``."""
    return classify(reason, secondary_status).policy == RETRY
