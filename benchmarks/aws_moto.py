"""Benchmark: review_sentiment_pipeline on the aws backend against moto, end to end.

Runs the end-to-end test ``tests/aws/test_pipeline_aws.py`` (the whole DAG with dag.test() on
moto's server, SageMaker jobs played by the harness on the integration tests' tiny budget) under
pytest with a counting plugin:

- every AWS API call the project makes is counted through a botocore event hook
  (``before-parameter-build``: it fires for every call, also those a botocore Stubber answers,
  which ``before-call`` handlers registered after the stub's never see)
  registered on every client (and every aiobotocore session: the provider's triggers), and
  attributed to the Airflow task running at that moment; calls of the clients that the test's
  harness and fakes create to play SageMaker's part (jobs, Feature Store runtime, endpoint) and
  the test's own set-up and checks are counted apart (``outside_tasks``), not as the pipeline's;
- ``aws_e2e_wall_s`` is the wall time of the DAG run (``dag.test()``), job execution included.

Writes ``benchmarks/results/aws_moto.json`` with ``aws_e2e_wall_s``, ``api_calls`` (per task:
total and per ``service.Operation``), ``api_calls_total``, ``aws_calls`` (the run's calls and
its distinct operations), ``iam_actions`` (what aws/iam/*.json grant) and the test's outcome.
Usage: ``python benchmarks/aws_moto.py``.
"""
from __future__ import annotations

import collections
import inspect
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TEST = "tests/aws/test_pipeline_aws.py"
# test code that plays AWS's part (SageMaker jobs, Feature Store runtime, endpoint): not our calls
PLAYERS = {"sagemaker_harness.py", "sagemaker_fakes.py", "stubs.py"}


class CountingPlugin:
    """pytest plugin: counts botocore calls per Airflow task and times dag.test()."""

    def __init__(self) -> None:
        self.calls: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.dag_test_s: list[float] = []
        self.outcome = "not run"
        self.last_task = ""
        self._lock = threading.Lock()

    def _task(self) -> str:
        try:
            from airflow.sdk import get_current_context

            self.last_task = get_current_context()["ti"].task_id
            return self.last_task
        except Exception:  # noqa: BLE001 - no task context in this thread
            if threading.current_thread() is not threading.main_thread() and self.last_task:
                return self.last_task  # a worker thread of the running task (s3transfer, PutRecord pool)
            return "outside_tasks:test_setup_and_checks"

    def before_call(self, model=None, **kwargs) -> None:
        """botocore's ``before-parameter-build`` hook: one API call about to be made."""
        op = f"{model.service_model.service_name}.{model.name}" if model is not None else "?"
        with self._lock:
            self.calls[self._task()][op] += 1

    def before_harness_call(self, model=None, **kwargs) -> None:
        """Calls of clients made by the harness's job threads (SageMaker's side, not ours)."""
        op = f"{model.service_model.service_name}.{model.name}" if model is not None else "?"
        with self._lock:
            self.calls["outside_tasks:harness_playing_sagemaker"][op] += 1

    def before_async_call(self, model=None, **kwargs) -> None:
        """The same hook on aiobotocore's sessions: the provider's trigger polling the job of the
        task that just deferred (dag.test() runs the trigger in line, right after the task)."""
        op = f"{model.service_model.service_name}.{model.name}" if model is not None else "?"
        with self._lock:
            self.calls[self.last_task or "outside_tasks:trigger"][op] += 1

    def pytest_sessionstart(self, session) -> None:
        import botocore.session
        from airflow.sdk.definitions.dag import DAG

        plugin = self
        init = botocore.session.Session.__init__
        create_client = botocore.session.Session.create_client

        def counting_init(self, *args, **kwargs):
            init(self, *args, **kwargs)
            if type(self).__name__ == "AioSession":  # the provider's triggers
                self.register("before-parameter-build", plugin.before_async_call, unique_id="aws-moto-benchmark-counter")

        def counting_create_client(self, *args, **kwargs):
            client = create_client(self, *args, **kwargs)
            # clients the test's fakes / harness make play AWS's side: counted apart
            # (``install`` makes the production classes' own clients: those calls are ours)
            played = any(Path(f.filename).name in PLAYERS and f.function != "install" for f in inspect.stack(0)[1:12])
            hook = plugin.before_harness_call if played or threading.current_thread().name.startswith(
                "sagemaker-") else plugin.before_call
            client.meta.events.register_first("before-parameter-build", hook, unique_id="aws-moto-benchmark-counter")
            return client

        botocore.session.Session.__init__ = counting_init
        botocore.session.Session.create_client = counting_create_client
        test = DAG.test

        def timed_test(dag, *args, **kwargs):
            start = time.monotonic()
            try:
                return test(dag, *args, **kwargs)
            finally:
                plugin.dag_test_s.append(time.monotonic() - start)

        DAG.test = timed_test

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or (report.when == "setup" and report.failed):
            self.outcome = report.outcome


def main() -> None:
    """Run the end-to-end test with the counting plugin; write the JSON."""
    import os

    import pytest

    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))  # include.common.iam, after the run
    plugin = CountingPlugin()
    start = time.monotonic()
    rc = pytest.main([TEST, "-q", "-p", "no:cacheprovider", "-x"], plugins=[plugin])
    total_s = time.monotonic() - start
    per_task = {task: {"total": sum(c.values()), "by_operation": dict(sorted(c.items()))}
                for task, c in sorted(plugin.calls.items())}
    pipeline = {t: v for t, v in per_task.items() if not t.startswith("outside_tasks")}
    operations = sorted({op for v in pipeline.values() for op in v["by_operation"]})
    from include.common import iam

    granted = {name: iam.granted_actions([name]) for name in iam.POLICY_NAMES}
    result = {
        "aws_e2e_wall_s": round(plugin.dag_test_s[0], 2) if plugin.dag_test_s else None,
        "api_calls": {t: v["total"] for t, v in pipeline.items()},
        "api_calls_total": sum(v["total"] for v in pipeline.values()),
        "api_calls_by_operation": pipeline,
        "outside_tasks": {t: v for t, v in per_task.items() if t.startswith("outside_tasks")},
        # the run's AWS operations (the same calls as api_calls_total) and the IAM actions the
        # shipped policies (aws/iam/*.json) grant, per policy file
        "aws_calls": {"total": sum(v["total"] for v in pipeline.values()), "operations": len(operations),
                      "by_operation": operations},
        "iam_actions": {"total": len({a for acts in granted.values() for a in acts}), "by_policy": granted},
        "test": TEST, "test_outcome": plugin.outcome, "pytest_exit_code": int(rc), "test_wall_s": round(total_s, 2),
        "note": ("moto's server on 127.0.0.1; SageMaker jobs executed locally by the test harness with the "
                 "integration tests' tiny budget (wall time is dominated by the jobs and the trigger's 1 s polls); "
                 "api_calls count the project's calls (boto3 + the provider's aiobotocore triggers) per Airflow task"),
    }
    print(write_result("aws_moto", result))
    if rc != 0:
        raise SystemExit(f"the end-to-end test failed (pytest exit code {rc}); results written anyway")


if __name__ == "__main__":
    main()
