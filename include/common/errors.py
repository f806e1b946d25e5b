"""The two kinds of failure the pipeline knows, decided by exception type.

A task that raises a :class:`NonRetriableError` (bad data, bad parameters, a model that may
not be deployed) fails at once with its message: retrying cannot fix it. Anything else (a
crashed job, a busy database, a full disk) goes through the task's retries with back-off.
The Airflow glue (``include/pipeline/tasks.py``) applies this rule; the error classes of
each concern inherit the marker where a retry is pointless.
"""
from __future__ import annotations


class NonRetriableError(Exception):
    """Marker base: retrying the task cannot fix this; fail it at once with the message."""


class ConfigError(NonRetriableError, ValueError):
    """A setting has a value the project cannot use."""
