"""Records every AWS call a test makes, by identity, for the IAM check (include/common/iam.py).

A ``before-parameter-build`` handler (it fires for every call, also those a botocore Stubber
answers) on every botocore client and every aiobotocore session (the provider's triggers).
A call is the SageMaker execution role's when the client was made by the test code that plays
SageMaker's side (the harness's job threads, the fakes' own clients): what a job or Feature
Store's offline-store writer does with that role. Every other call is the Airflow worker's.
"""
from __future__ import annotations

import inspect
import threading
from pathlib import Path

PLAYERS = {"sagemaker_harness.py", "sagemaker_fakes.py", "stubs.py"}
WORKER, EXECUTION_ROLE = "worker", "execution_role"


class CallRecorder:
    """``calls[identity]``: (service, operation, params) in order; ``paused`` stops recording."""

    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[str, str, dict]]] = {WORKER: [], EXECUTION_ROLE: []}
        self.paused = False
        self._lock = threading.Lock()

    def _hook(self, identity: str):
        def record(model=None, params=None, **_):
            if self.paused or model is None:
                return
            kept = {k: v for k, v in (params or {}).items() if k != "Body"}
            with self._lock:
                self.calls[identity].append((model.service_model.service_name, model.name, kept))
        return record

    def operations(self, identity: str = WORKER) -> set[str]:
        """``service.Operation`` of every recorded call of ``identity``."""
        return {f"{s}.{o}" for s, o, _ in self.calls[identity]}

    def install(self, monkeypatch) -> CallRecorder:
        import botocore.session

        recorder = self
        init, create_client = botocore.session.Session.__init__, botocore.session.Session.create_client

        def recording_init(self, *args, **kwargs):
            init(self, *args, **kwargs)
            if type(self).__name__ == "AioSession":  # the provider's triggers poll as the worker
                self.register("before-parameter-build", recorder._hook(WORKER), unique_id="iam-call-recorder")

        def recording_create_client(self, *args, **kwargs):
            client = create_client(self, *args, **kwargs)
            played = threading.current_thread().name.startswith("sagemaker-") or any(
                Path(f.filename).name in PLAYERS and f.function != "install" for f in inspect.stack(0)[1:12])
            client.meta.events.register_first("before-parameter-build",
                                              recorder._hook(EXECUTION_ROLE if played else WORKER),
                                              unique_id="iam-call-recorder")
            return client

        monkeypatch.setattr(botocore.session.Session, "__init__", recording_init)
        monkeypatch.setattr(botocore.session.Session, "create_client", recording_create_client)
        return self
