"""Who is running and what it has done: the run context and the run's lineage files."""
from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from datetime import date

from include.common.config import PROJECT_ROOT, Settings, get_settings
from include.common.errors import NonRetriableError
from include.common.io import write_json
from include.jobs.requests import job_name


class PipelineError(NonRetriableError, RuntimeError):
    """A step cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class RunInfo:
    """Who is running: the DAG run, the data partition and the attempt."""

    dag_id: str
    run_id: str
    ds: str
    try_number: int = 1

    def uri(self, step: str, settings: Settings | None = None) -> str:
        """Run-scoped prefix of ``step``: ``runs/<dag_id>/<run_id>/<step>``."""
        return (settings or get_settings()).run_uri(self.dag_id, self.run_id, step)

    def job(self, step: str) -> str:
        """The job name of ``step`` in this run: the same on every attempt (a retry re-attaches),
        carrying the backend's deployment id (``JobRunner.deployment_id``)."""
        from include.jobs.runner import get_runner

        return job_name(step, self.run_id, get_runner().deployment_id())

    @property
    def run_tag(self) -> str:
        """``<dag_id>/<run_id>``: the run a job belongs to, as its tag says (aws)."""
        return f"{self.dag_id}/{self.run_id}"


def resolve_ds(data_interval_start, ds_param: str | None, landed: list[str] | None = None) -> str:
    """The partition a run processes: the ``ds`` param, else the data interval's day, else
    (a manual run without a logical date) the latest of the ``landed`` partitions."""
    if ds_param:
        try:
            return date.fromisoformat(ds_param).isoformat()
        except ValueError:
            raise PipelineError(f"param ds={ds_param!r}: use YYYY-MM-DD or leave it empty") from None
    if data_interval_start is not None:
        return data_interval_start.date().isoformat()
    if not landed:
        raise PipelineError("no logical date and no landing partition: land data first (make land) or pass ds")
    return landed[-1]


def record_step(info: RunInfo, step: str, result: dict) -> None:
    """Keep a step's result as ``runs/<dag>/<run>/_lineage/<step>.json`` (for ``make artifacts``)."""
    doc = {"step": step, "dag_id": info.dag_id, "run_id": info.run_id, "ds": info.ds,
           "try_number": info.try_number, "recorded_at": time.time(), "result": result}
    write_json(f"{info.uri('_lineage')}/{step}.json", doc)


def git_commit() -> str:
    """The project's git commit (lineage); ``unknown`` outside a checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
