"""Benchmark: a re-run of the same day with step caching vs without it.

In a fresh state dir: migrate the Airflow DB, land ``--limit`` real reviews as ``--days`` daily
drops, run ``review_sentiment_pipeline`` for ``DS`` once (cold), then twice more for the same day:
with ``use_cache`` on (preprocess, train and evaluate are cache hits) and with ``use_cache`` off
(the baseline: the same re-run recomputing every step). Both re-runs see the same catalog state
(nothing new to register) and take the no-register branch (``min_accuracy`` above 1), so they
differ only by the cached steps. Each step's task time is read from Airflow's metadata DB.

Writes ``benchmarks/results/step_cache.json`` with ``cache_hit_speedup`` (re-run wall time without
the cache / with it), the three wall times and the cached steps' task times.
Usage: ``python benchmarks/step_cache.py [--days N] [--limit N] [--conf JSON] [--keep DIR]``.
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
STEPS = ("preprocess", "train", "evaluate")


def last_run_tasks(home: Path) -> dict[str, float]:
    """Task wall times of the newest run of the pipeline."""
    db = sqlite3.connect(home / "airflow" / "airflow.db")
    try:
        run_id = db.execute("SELECT run_id FROM dag_run WHERE dag_id='review_sentiment_pipeline' "
                            "ORDER BY id DESC LIMIT 1").fetchone()[0]
        rows = db.execute("SELECT task_id, duration FROM task_instance WHERE dag_id='review_sentiment_pipeline' "
                          "AND run_id = ?", [run_id]).fetchall()
    finally:
        db.close()
    return {task: round(duration or 0.0, 2) for task, duration in rows}


def main() -> None:
    """Run the benchmark and write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=2, help="daily drops landed")
    parser.add_argument("--limit", type=int, default=3000, help="real reviews landed")
    parser.add_argument("--conf", default='{"max_train_samples": 512}', help="extra DAG params JSON")
    parser.add_argument("--keep", default=None, help="state dir to use and keep (default: a temp dir)")
    args = parser.parse_args()
    home = Path(args.keep or tempfile.mkdtemp(prefix="bench-cache-"))
    env = dict(os.environ, REVIEWS_HOME=str(home), AIRFLOW_HOME=str(home / "airflow"))
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "MLFLOW_TRACKING_URI"):  # derived from the homes
        env.pop(key, None)
    env = json.loads(subprocess.run(
        ["bash", "-c", f"source {ROOT}/tools/env.sh && python -c 'import json,os; print(json.dumps(dict(os.environ)))'"],
        env=env, capture_output=True, text=True, check=True).stdout)
    py = sys.executable
    sh([py, "-m", "airflow", "db", "migrate"], env)
    sh([py, "-m", "include.data.landing", "--days", str(args.days), "--end", DS, "--limit", str(args.limit)], env)
    conf = {**json.loads(args.conf), "min_accuracy": 1.01}

    def run(**extra) -> tuple[float, dict]:
        wall = sh([py, "-m", "include.pipeline.cli", "run", "--ds", DS, "--profile", "quick",
                   "--conf", json.dumps({**conf, **extra})], env)
        return wall, last_run_tasks(home)

    cold, cold_tasks = run()
    cached, cached_tasks = run(use_cache=True)
    uncached, uncached_tasks = run(use_cache=False)
    result = {
        "cache_hit_speedup": round(uncached / cached, 2),
        "definition": "wall time of a re-run of the same day with use_cache off / with use_cache on "
                      "(same state, no-register branch); each run is `python -m include.pipeline.cli run`",
        "first_run_wall_s": round(cold, 1), "rerun_cached_wall_s": round(cached, 1),
        "rerun_uncached_wall_s": round(uncached, 1),
        "cached_steps_s": {s: cached_tasks.get(s) for s in STEPS},
        "uncached_steps_s": {s: uncached_tasks.get(s) for s in STEPS},
        "first_run_steps_s": {s: cold_tasks.get(s) for s in STEPS},
        "data": {"days": args.days, "reviews_landed": args.limit}, "profile": "quick", "params": conf,
    }
    path = write_result("step_cache", result)
    print(f"\nstep_cache: re-run {result['rerun_uncached_wall_s']}s uncached vs {result['rerun_cached_wall_s']}s cached "
          f"({result['cache_hit_speedup']}x); steps cached {result['cached_steps_s']} vs {result['uncached_steps_s']}")
    print(f"written {path}")


if __name__ == "__main__":
    main()
