"""DAG parsing stays light: the dag-processor imports each DAG file often, so no DAG file may
pull in the data or ML stack (pandas, pyarrow, duckdb, torch, transformers, mlflow, GX)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("pandas", "pyarrow", "duckdb", "torch", "transformers", "mlflow", "great_expectations", "sklearn")
PROBE = """
import json, runpy, sys, time
sys.path[:0] = [{root!r}, {plugins!r}]
import airflow.sdk  # Airflow itself is the floor every DAG file pays for
t0 = time.perf_counter()
runpy.run_path({dag!r})
print(json.dumps({{"parse_s": time.perf_counter() - t0, "loaded": sorted(m for m in {heavy!r} if m in sys.modules)}}))
"""


@pytest.mark.parametrize("dag_file", sorted((ROOT / "dags").glob("*.py")), ids=lambda p: p.name)
def test_dag_file_imports_no_heavy_library(dag_file, capsys):
    code = PROBE.format(root=str(ROOT), plugins=str(ROOT / "plugins"), dag=str(dag_file), heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    with capsys.disabled():
        print(f"\n{dag_file.name}: parsed in {result['parse_s']:.2f}s beyond importing airflow.sdk")
    assert result["loaded"] == [], f"{dag_file.name} imports {result['loaded']} at parse time"
