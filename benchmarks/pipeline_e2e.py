"""Benchmark: ``make run``'s pipeline end to end on the shipped real data.

Runs ``make run``'s steps in a fresh state dir (install excluded): migrate the Airflow DB,
land the real reviews as 30 daily drops, run ``review_sentiment_pipeline`` through ``python -m
include.pipeline.cli run`` with a profile (default ``quick``, what ``make run`` uses; ``--profile quality``
for the DAG's nightly default). Then reads each task's wall time from Airflow's
metadata DB and each job's own time from the run's lineage, and reports the orchestration
overhead (task wall time minus job time) of the job tasks.

Writes ``benchmarks/results/pipeline_e2e.json`` with ``pipeline_wall_s``, ``overhead_per_task_s``,
``accuracy`` and ``tasks``. Usage: ``python benchmarks/pipeline_e2e.py [--profile P] [--keep DIR] [--conf JSON]``
(another profile than quick writes ``pipeline_e2e_<profile>.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import sh, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DS = "2026-11-24"


def main() -> None:
    """Run the benchmark and write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", default=None, help="state dir to use and keep (default: a temp dir)")
    parser.add_argument("--conf", default="{}", help="DAG params JSON (default: the profile's settings)")
    parser.add_argument("--profile", default="quick", choices=["quick", "quality"])
    args = parser.parse_args()
    home = Path(args.keep or tempfile.mkdtemp(prefix="bench-e2e-"))
    env = dict(os.environ, REVIEWS_HOME=str(home), AIRFLOW_HOME=str(home / "airflow"))
    # derived from the homes by tools/env.sh: a shell that sourced it must not point us at its state
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    env_cmd = f"source {ROOT}/tools/env.sh && "
    env = json.loads(subprocess.run(["bash", "-c", env_cmd + "python -c 'import json,os; print(json.dumps(dict(os.environ)))'"],
                                    env=env, capture_output=True, text=True, check=True).stdout)
    py = sys.executable
    setup = {"db_migrate_s": sh([py, "-m", "airflow", "db", "migrate"], env),
             "land_s": sh([py, "-m", "include.data.landing", "--days", "30", "--end", DS], env)}
    wall = sh([py, "-m", "include.pipeline.cli", "run", "--ds", DS, "--profile", args.profile,
                "--conf", args.conf], env)

    db = sqlite3.connect(home / "airflow" / "airflow.db")
    rows = db.execute("SELECT task_id, state, start_date, end_date, duration FROM task_instance "
                      "WHERE dag_id='review_sentiment_pipeline' ORDER BY start_date").fetchall()
    run_id = db.execute("SELECT run_id FROM dag_run WHERE dag_id='review_sentiment_pipeline' "
                        "ORDER BY id DESC LIMIT 1").fetchone()[0]
    lineage_dir = next((home / "store/runs/review_sentiment_pipeline").glob("*/_lineage"))
    lineage = {p.stem: json.loads(p.read_text())["result"] for p in lineage_dir.glob("*.json")}
    tasks, overheads = {}, []
    for task_id, state, _start, _end, duration in rows:
        job = (lineage.get(task_id) or {}).get("job") if isinstance(lineage.get(task_id), dict) else None
        entry = {"state": state, "wall_s": round(duration or 0.0, 2)}
        if job:
            entry["job_s"] = job["wall_s"]
            entry["overhead_s"] = round((duration or 0.0) - job["wall_s"], 2)
            overheads.append(entry["overhead_s"])
        tasks[task_id] = entry
    evaluation = lineage.get("evaluate", {})
    result = {
        "pipeline_wall_s": round(wall, 1),
        "overhead_per_task_s": round(sum(overheads) / len(overheads), 2) if overheads else None,
        "overhead_definition": "mean over the job tasks (preprocess, train, evaluate) of task wall time minus job time",
        "accuracy": evaluation.get("accuracy"),
        "macro_f1": evaluation.get("macro_f1"),
        "accuracy_ci95": evaluation.get("accuracy_ci95"),
        "test_rows": evaluation.get("test_rows"),
        "tasks": tasks,
        "setup": {k: round(v, 1) for k, v in setup.items()},
        "run_id": run_id,
        "profile": args.profile,
        "params": json.loads(args.conf) or "the profile's settings",
    }
    path = write_result("pipeline_e2e" if args.profile == "quick" else f"pipeline_e2e_{args.profile}", result)
    print(f"\npipeline_e2e: whole run {result['pipeline_wall_s']}s, accuracy {result['accuracy']}, "
          f"orchestration overhead {result['overhead_per_task_s']}s per job task")
    for task_id, entry in tasks.items():
        print(f"  {task_id:<20} {entry['wall_s']:>8.1f}s" + (f"  (job {entry['job_s']}s)" if "job_s" in entry else ""))
    print(f"written {path}")


if __name__ == "__main__":
    main()
