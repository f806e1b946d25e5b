"""The owner lock of a make run's dag.test() run (include/pipeline/local_runs.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone

from include.pipeline import local_runs
from tests.conftest import ROOT

WHEN = datetime(2026, 11, 21, tzinfo=timezone.utc)


def test_a_second_owner_of_the_same_run_is_refused_naming_the_first():
    path = local_runs.lock_path("some_dag", WHEN)
    with local_runs.owner_lock("some_dag", WHEN):
        assert local_runs._lock_state(path) is True
        other = subprocess.run(
            [sys.executable, "-c", "from datetime import datetime, timezone\n"
             "from include.pipeline.local_runs import owner_lock\n"
             "with owner_lock('some_dag', datetime(2026, 11, 21, tzinfo=timezone.utc)): pass"],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert other.returncode != 0
        assert "RunAlreadyActiveError" in other.stderr and f"in process {os.getpid()}" in other.stderr
    assert local_runs._lock_state(path) is False  # released: no owner any more
    with local_runs.owner_lock("some_dag", WHEN):  # and it can be taken again
        pass


def test_a_run_without_a_lock_file_has_no_lock_state():
    assert local_runs._lock_state(local_runs.lock_path("never_ran", WHEN)) is None
