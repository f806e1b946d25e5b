"""Benchmark: scheduling on the production stack (Celery) vs ``dag.test()``, and backfill wall time.

Starts the native stack (``include/pipeline/stack.py``, as ``make stack``) in a fresh state dir
with real reviews landed for 7 days (100 a day), then through the REST API:

- a three-date backfill (Airflow 3 ``POST /backfills``, ``max_active_runs`` 1) with ONE worker
  running (worker-1 stopped; worker-2 serves both queues), then another three dates with TWO;
- the same runs' per-task scheduling overhead: (run wall time - the sum of its task instances'
  durations) / tasks run, i.e. the time between tasks (scheduler loop, Celery queue, worker
  pick-up); the mean over the six backfill runs is ``overhead_per_task_s_celery``;
- the same figure for one ``dag.test()`` run of the same DAG and params (SQLite metadata DB, in
  one process, as ``make run``): ``overhead_per_task_s_dags_test``;
- ``cache_hit_speedup``: first run of a logical date vs its re-run (cleared) with the same
  inputs, when the DAG has step caching (the ``use_cache`` param); without it, null and a note.

Every run uses the tiny training budget of the integration tests and ``min_accuracy`` 1.01 (ends at
``skip_registration``: no deploy in the timings). Both backfills cover the same three days (the
second one reprocesses them, with ``use_cache`` off when the DAG has it), so they do the same work.

Writes ``benchmarks/results/scheduling.json``. Usage: ``python benchmarks/scheduling.py [--keep DIR]``.
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
END = date(2026, 11, 20)
DAYS = 7
CONF = {"profile": "quick", "max_seq_length": 32, "epochs": 1, "train_batch_size": 16, "max_train_samples": 96,
        "learning_rate": 1e-4, "min_accuracy": 1.01}


def _iso(day: date) -> str:
    from include.pipeline.cli import logical_date_for

    return logical_date_for(day).isoformat().replace("+00:00", "Z")


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _gap_per_task(spans: list[tuple[datetime, datetime, float]]) -> float:
    """From the task instances that ran, (start, end, duration): (first start to last end - the sum of
    the durations) / tasks run, the time spent between tasks. (dag.test() records the logical date
    as its run's start, so the run's own dates are not used, for either executor.)"""
    wall = (max(end for _, end, _ in spans) - min(start for start, _, _ in spans)).total_seconds()
    return (wall - sum(d for _, _, d in spans)) / len(spans)


def _celery_overhead(api, run: dict) -> dict:
    tis = [ti for ti in api.task_instances(run["dag_run_id"]).values() if ti["state"] == "success"]
    spans = [(_ts(ti["start_date"]), _ts(ti["end_date"]), ti["duration"] or 0.0) for ti in tis]
    return {"run_id": run["dag_run_id"], "state": run["state"],
            "wall_s": round((_ts(run["end_date"]) - _ts(run["start_date"])).total_seconds(), 1),
            "tasks": len(tis), "overhead_per_task_s": round(_gap_per_task(spans), 2)}


def _backfill(api, days: list[date], conf: dict, reprocess: str) -> dict:
    start = time.monotonic()
    # a backfill's logical dates are its runs' data-interval starts: the days themselves
    backfill = api.backfill(f"{days[0]}T00:00:00Z", f"{days[-1]}T00:00:00Z", conf, max_active_runs=1,
                            reprocess_behavior=reprocess)
    runs = api.wait_backfill(backfill, timeout_s=3600)
    if len(runs) != len(days):
        raise SystemExit(f"backfill made {len(runs)} runs for {len(days)} days: {[r['dag_run_id'] for r in runs]}")
    wall = time.monotonic() - start
    failed = [r["dag_run_id"] for r in runs if r["state"] != "success"]
    if failed:
        raise SystemExit(f"backfill runs failed: {failed}")
    return {"wall_s": round(wall, 1), "runs": [_celery_overhead(api, r) for r in runs]}


def _dags_test_overhead(home: Path) -> dict:
    """One dag.test() run (``python -m include.pipeline.cli run``, what ``make run`` does) on SQLite."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update(REVIEWS_HOME=str(home), AIRFLOW_HOME=str(home / "airflow"))
    env.pop("MLFLOW_TRACKING_URI", None)
    env = json.loads(subprocess.run(["bash", "-c", f"source {ROOT}/tools/env.sh && python -c "
                                     "'import json,os; print(json.dumps(dict(os.environ)))'"],
                                    env=env, capture_output=True, text=True, check=True).stdout)
    py = sys.executable
    subprocess.run([py, "-m", "airflow", "db", "migrate"], cwd=ROOT, env=env, check=True, capture_output=True)
    subprocess.run([py, "-m", "include.data.landing", "--days", str(DAYS), "--end", END.isoformat(),
                    "--limit", str(DAYS * 100)], cwd=ROOT,
                   env=env, check=True, capture_output=True)
    subprocess.run([py, "-m", "include.pipeline.cli", "run", "--ds", END.isoformat(), "--conf", json.dumps(CONF)],
                   cwd=ROOT, env=env, check=True)
    return _dags_test_from_db(home / "airflow" / "airflow.db")


def _dags_test_from_db(path: Path) -> dict:
    db = sqlite3.connect(path)
    rows = db.execute("SELECT start_date, end_date, duration FROM task_instance "
                      "WHERE dag_id='review_sentiment_pipeline' AND state='success'").fetchall()
    spans = [(datetime.fromisoformat(str(s)), datetime.fromisoformat(str(e)), d or 0.0) for s, e, d in rows]
    wall = (max(e for _, e, _ in spans) - min(s for s, _, _ in spans)).total_seconds()
    return {"wall_s": round(wall, 1), "tasks": len(spans), "overhead_per_task_s": round(_gap_per_task(spans), 2)}


def _task_span_s(api, run_id: str) -> float:
    """First task start to last task end of a run's current tries (a cleared run's task instances
    are its re-run's; the run's own start_date may still be the first run's)."""
    tis = [ti for ti in api.task_instances(run_id).values() if ti.get("start_date") and ti.get("end_date")]
    return (max(_ts(t["end_date"]) for t in tis) - min(_ts(t["start_date"]) for t in tis)).total_seconds()


def _cache_speedup(api, day: date) -> dict:
    """First run of ``day`` vs the same run cleared and run again (every task re-runs; with
    ``use_cache`` on, preprocess, train and evaluate are cache hits)."""
    dag = api.request("GET", "/dags/review_sentiment_pipeline/details").json()
    if "use_cache" not in (dag.get("params") or {}):
        return {"cache_hit_speedup": None,
                "note": "review_sentiment_pipeline has no step caching (no use_cache param) in this commit; "
                        "re-run the benchmark once it lands"}
    run_id = api.trigger(_iso(day), {**CONF, "use_cache": True})
    first = api.wait_run(run_id, timeout_s=1800)
    first_s = _task_span_s(api, run_id)
    resp = api.request("POST", f"/dags/review_sentiment_pipeline/dagRuns/{run_id}/clear", json={"dry_run": False})
    if resp.status_code != 200:
        raise SystemExit(f"clear {run_id}: {resp.status_code} {resp.text[:300]}")
    deadline = time.monotonic() + 120
    while api.run(run_id)["state"] in ("success", "failed") and time.monotonic() < deadline:
        time.sleep(1)  # the clear has queued the run again
    second = api.wait_run(run_id, timeout_s=1800)
    second_s = _task_span_s(api, run_id)
    if first["state"] != "success" or second["state"] != "success":
        raise SystemExit(f"cache runs of {run_id}: first {first['state']}, re-run {second['state']}")
    return {"cache_hit_speedup": round(first_s / second_s, 2), "first_run_s": round(first_s, 1),
            "cached_rerun_s": round(second_s, 1),
            "cache_definition": "first task start to last task end: the first run of a logical date vs the same "
                                "run cleared and re-run with use_cache on (preprocess, train and evaluate hit)"}


def main() -> None:
    """Run the benchmark and write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", default=None, help="state dir to use and keep (default: a temp dir, removed)")
    args = parser.parse_args()
    from include.common.config import Settings
    from include.common.io import uri_to_path
    from include.data.landing import land_daily_drops
    from include.pipeline.stack import Stack, StackAPI

    home = Path(args.keep or tempfile.mkdtemp(prefix="bench-sched-"))
    land_daily_drops(uri_to_path(Settings(backend="local", state_dir=home / "stack-state").landing_uri), END,
                     days=DAYS, limit=DAYS * 100)
    stack = Stack(home / "stack-state")
    t0 = time.monotonic()
    try:
        stack.start(schedule=False, db_name=f"reviews_bench_{os.getpid()}")
        startup_s = time.monotonic() - t0
        api = StackAPI(stack)
        while api.request("GET", "/dags/review_sentiment_pipeline").status_code != 200:
            time.sleep(2)
        params = api.request("GET", "/dags/review_sentiment_pipeline/details").json().get("params") or {}
        conf = {**CONF, **({"use_cache": False} if "use_cache" in params else {})}
        days = [END - timedelta(days=k) for k in (3, 2, 1)]
        stack.stop_service("worker-1")  # one worker: worker-2 serves default and training
        one = _backfill(api, days, conf, "none")
        stack.start_service("worker-1")
        stack.wait_healthy(120)
        two = _backfill(api, days, conf, "completed")
        cache = _cache_speedup(api, END)
    finally:
        stack.stop(drop_database=True)
    dags_test = _dags_test_overhead(home / "dags-test")
    runs = one["runs"] + two["runs"]
    celery = sum(r["overhead_per_task_s"] for r in runs) / len(runs)
    result = {
        "overhead_per_task_s_celery": round(celery, 2),
        "overhead_per_task_s_dags_test": dags_test["overhead_per_task_s"],
        "celery_vs_dags_test_overhead_ratio": round(celery / dags_test["overhead_per_task_s"], 2)
        if dags_test["overhead_per_task_s"] > 0 else None,
        "backfill_wall_s_one_worker": one["wall_s"],
        "backfill_wall_s_two_workers": two["wall_s"],
        "two_vs_one_worker_speedup": round(one["wall_s"] / two["wall_s"], 2),
        **cache,
        "overhead_definition": "(last task end - first task start - the sum of the task instances' durations) / "
                               "tasks run, over the task instances that succeeded: the time between tasks (scheduler "
                               "loop, queueing, worker pick-up). Celery: mean over the 6 backfill runs; dag.test(): "
                               "one run of the same DAG and params.",
        "backfill_note": "max_active_runs=1 (the DAG's runs share the catalog and the endpoint): a second worker "
                         "only helps where one run has tasks ready in parallel; the two-worker backfill runs second "
                         "(reprocessing the same days), with warm file caches",
        "stack_startup_s": round(startup_s, 1),
        "backfill_one_worker": one, "backfill_two_workers": two, "dags_test_run": dags_test,
        "params": CONF,
    }
    path = write_result("scheduling", result)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
