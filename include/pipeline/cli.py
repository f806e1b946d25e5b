"""Command line of the project: run the pipeline once, list a run's lineage.

``python -m include.pipeline.cli run [--ds YYYY-MM-DD] [--profile quick|quality] [--conf JSON]`` runs
``review_sentiment_pipeline`` with ``dag.test()`` (no scheduler needed) and prints where the
artifacts are and the metrics. It runs the ``quick`` profile unless told otherwise (the whole
run in under 10 minutes); the DAG's own default, for scheduled runs, is ``quality``.
``python -m include.pipeline.cli ui-login`` sets the Airflow UI's login before ``make ui`` starts it.
``python -m include.pipeline.cli artifacts [--run-id ID]`` lists a run's steps with their inputs,
outputs, job names and metrics (default: the latest run).
``python -m include.pipeline.cli data-status`` lists the catalog's published partitions (delivery,
rows, last audit) and the deliveries waiting for the gate or rejected by it (``make data-status``).
``python -m include.pipeline.cli rollback`` serves the newest Approved version older than the
deployed one again (``make rollback``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from include.common.config import PROJECT_ROOT, get_settings, safe_name
from include.common.io import uri_to_path
from include.data.landing import yesterday_utc

DAG_ID = "review_sentiment_pipeline"


def load_dag(dag_id: str = DAG_ID, keep_deadline: bool = False):
    """The DAG from the project's dags folder (fails loudly on import errors), ready for ``dag.test()``.

    Its deadline alert is dropped unless ``keep_deadline``: ``dag.test()`` of Airflow 3.3.2 fails at
    the end of a successful run of a DAG with a deadline (``DagRun.update_state`` looks the alerts up
    by id, but ``dag.test()`` hands it the deserialized alerts), and without a scheduler nothing
    evaluates deadlines anyway. The scheduler (``make ui``, the production stack) keeps it.
    """
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    if bag.import_errors:
        raise SystemExit("DAG import errors:\n" + "\n".join(f"{k}: {v}" for k, v in bag.import_errors.items()))
    dag = bag.dags[dag_id]
    if not keep_deadline:
        dag.deadline = None
    return dag


def logical_date_for(day: date) -> datetime:
    """The logical date whose daily data interval is ``day`` (the interval ends at it)."""
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc) + timedelta(days=1)


def run(ds: str | None, conf: dict, profile: str = "quick") -> int:
    """Run the pipeline for partition ``ds`` (default: yesterday UTC); print a summary.

    Fails the stale ``dag.test()`` runs an earlier, killed run left ``running`` (they would block
    every later run), then runs :func:`run_in_process` in a supervised child process, so that a
    Ctrl-C or a ``kill`` marks the run failed instead of leaving it ``running``
    (include/pipeline/local_runs.py)."""
    from include.pipeline import local_runs

    day = date.fromisoformat(ds) if ds else yesterday_utc()
    local_runs.fail_stale_runs()
    argv = [sys.executable, "-m", "include.pipeline.cli", "dag-test", "--ds", day.isoformat(),
            "--profile", profile, "--conf", json.dumps(conf)]
    return local_runs.supervise(argv, DAG_ID, logical_date_for(day))


def run_in_process(ds: str, conf: dict, profile: str = "quick") -> int:
    """Run the pipeline for partition ``ds`` with ``dag.test()`` in this process; print a summary.

    Holds the run's owner lock meanwhile (a second run of the same day is refused, and a later
    ``make run`` can tell this run's owner is alive)."""
    from include.pipeline.local_runs import RunAlreadyActiveError, owner_lock

    day = date.fromisoformat(ds)
    # Nobody is there to click "Approve" in a terminal run: approve automatically unless asked.
    conf = {"ds": day.isoformat(), "auto_approve": True, "profile": profile, **conf}
    try:
        with owner_lock(DAG_ID, logical_date_for(day)):
            dag = load_dag()
            print(f"==> running {DAG_ID} for ds={day} (conf {json.dumps(conf)})", flush=True)
            start = time.monotonic()
            dr = dag.test(logical_date=logical_date_for(day), run_conf=conf)
            wall = time.monotonic() - start
    except RunAlreadyActiveError as exc:
        print(f"==> {exc}", file=sys.stderr)
        return 1
    state = str(getattr(dr, "state", "unknown"))
    print(f"\n==> run {dr.run_id}: {state} in {wall:.0f}s")
    print_artifacts(dr.run_id)
    print_served_model()
    return 0 if state.endswith("success") else 1


def print_served_model() -> None:
    """The registered/deployed version and a live prediction from the endpoint."""
    from include.model.registry import get_registry
    from include.serving.endpoint import get_endpoint
    from include.serving.protocol import SMOKE_REVIEWS

    versions = get_registry().list_versions()
    if versions:
        latest = versions[-1]
        print(f"\n  latest registered version: {latest.name} v{latest.version} ({latest.approval_status})")
    endpoint = get_endpoint()
    info = endpoint.status()
    if info is None:
        print("  endpoint: not running (no approved version deployed yet)")
        return
    review = SMOKE_REVIEWS[0]
    answer = endpoint.predict([review])[0]
    print(f"  endpoint: {info['url']} serving v{info['version']} (pid {info['pid']})")
    print(f"  live prediction for {review[:60]!r}...:\n    {json.dumps(answer)}")
    print(f"  try it:  curl -s -X POST {info['url'].rstrip('/')}/invocations -H 'Content-Type: application/jsonlines' "
          "--data-binary '{\"features\": [\"I love this dress\"]}'")


def ui_login() -> tuple[str, str]:
    """Set the Airflow UI's login to what the docs promise (docs/ui-and-approval.md), before ``make ui`` starts Airflow.

    Airflow's simple auth manager takes its users from ``[core] simple_auth_manager_users``
    (``admin:admin`` = user ``admin`` with role ``admin``, set by tools/env.sh) and their passwords
    from ``[core] simple_auth_manager_passwords_file``; it generates a random password only for
    a user missing there. This writes ``AIRFLOW_UI_PASSWORD`` (default ``admin``) for every
    configured user into that file (atomically, mode 600) and returns (first user, password)."""
    from airflow.configuration import conf

    from include.common.io import write_text_atomic

    users = [u.split(":")[0] for u in conf.getlist("core", "simple_auth_manager_users") if u.strip()]
    path = conf.get("core", "simple_auth_manager_passwords_file", fallback=None)
    if not users or not path:
        raise SystemExit("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS and AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE "
                         "must be set (source tools/env.sh sets both)")
    password = os.environ.get("AIRFLOW_UI_PASSWORD", "admin")
    if not password.strip():
        raise SystemExit("AIRFLOW_UI_PASSWORD is empty: set a password, or unset it for the default 'admin'")
    target = Path(path)
    try:
        existing = json.loads(target.read_text() or "{}") if target.exists() else {}
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{target} is not JSON ({exc}); delete it and run make ui again") from None
    write_text_atomic(target, json.dumps({**existing, **dict.fromkeys(users, password)}) + "\n", mode=0o600)
    return users[0], password


def lineage(run_id: str | None = None) -> tuple[str, list[dict]]:
    """Recorded step results of ``run_id`` (default: the most recent run)."""
    root = uri_to_path(get_settings().uri(f"runs/{DAG_ID}"))
    runs = sorted((p for p in root.glob("*/_lineage") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    if run_id:
        runs = [p for p in runs if p.parent.name == safe_name(run_id)]
    if not runs:
        raise SystemExit(f"no recorded run{' ' + run_id if run_id else ''} under {root}")
    folder = runs[-1]
    # in the order the steps finished (a step re-run later is listed where it last ran)
    docs = sorted((json.loads(p.read_text()) for p in folder.glob("*.json")), key=lambda d: d.get("recorded_at", 0))
    return docs[0]["run_id"] if docs else folder.parent.name, docs


def print_artifacts(run_id: str | None = None) -> None:
    """Human-readable lineage of a run: per step its job, inputs/outputs and figures."""
    run_id, docs = lineage(run_id)
    print(f"\nLineage of run {run_id}  (store: {get_settings().store_root})")
    for doc in docs:
        r = doc["result"]
        print(f"\n  [{doc['step']}]  ds={doc['ds']}  attempt {doc['try_number']}")
        job = r.get("job") if isinstance(r, dict) else None
        if job:
            cache = r.get("cache") or {}
            origin = f"; cache hit: run {cache.get('source_run_id')}'s job" if cache.get("hit") else ""
            print(f"    job        {job['job_name']}  ({job['wall_s']}s{origin})")
        for key, value in (r.items() if isinstance(r, dict) else []):
            if key == "job" or value in (None, "", [], {}):
                continue
            text = json.dumps(value, default=str) if not isinstance(value, str) else value
            print(f"    {key:<22} {text if len(text) < 160 else text[:157] + '...'}")
    evaluation = next((d["result"] for d in docs if d["step"] == "evaluate"), None)
    if evaluation:
        lo, hi = evaluation["accuracy_ci95"]
        print(f"\n  accuracy {evaluation['accuracy']:.4f} (95% CI {lo:.3f}-{hi:.3f}, {evaluation['test_rows']} test reviews),"
              f" macro F1 {evaluation['macro_f1']:.4f}")
        if evaluation.get("report_uri"):
            print(f"  evaluation report: {uri_to_path(evaluation['report_uri'])}")
            url = evaluation["report_url"]
            if url.startswith("/"):  # no [api] base_url: the address of `make ui`
                url = f"http://127.0.0.1:{os.environ.get('AIRFLOW_PORT', '8081')}{url}"
            print(f"    in the Airflow UI (make ui): {url}")
        print(f"  evaluation.json:   {uri_to_path(evaluation['evaluation_uri'])}")
        print(f"  confusion matrix:  {uri_to_path(evaluation['confusion_matrix_uri'])}")


def print_data_status() -> None:
    """Every published partition and every delivery staged, rejected (inspectable) or expired."""
    from include.data import catalog_base
    from include.data.catalog import get_catalog

    status = get_catalog().data_status()
    print(f"Catalog {status['catalog']}")
    print(f"\n  published partitions ({len(status['partitions'])}):")
    print(f"    {'ds':<11} {'delivery':<24} {'rows':>8} {'bad':>6}  {'last audit':<20} {'result':<7} run")
    for p in status["partitions"]:
        audited = str(p["validated_at"] or "-")[:19]
        result = {True: "passed", False: "FAILED", None: "-"}[p["passed"]]
        print(f"    {p['ds']:<11} {p['delivery_id'] or '-':<24} {p['rows']:>8,} {p['bad_rows'] or 0:>6,}  {audited:<20} "
              f"{result:<7} {p['validation_run_id'] or '-'}")
    waiting = status["deliveries"]
    print(f"\n  deliveries waiting or rejected ({len(waiting)}; rejected rows kept {status['retention_days']} days):")
    for d in waiting:
        print(f"    {d['ds']:<11} {d['delivery_id']:<24} {d['status']:<9} {d['rows']:>8,} rows  staged by "
              f"{d['staged_by_run'] or '-'}  ({d['staged_rows']:,} staged / {d['quarantined_rows']:,} quarantined "
              f"rows in the catalog)")
        if d["status"] != catalog_base.STAGED:
            print(f"      audit {d['audit_run_id']}: {d['reason']}")
            print(f"      report {d['report_path']}")
        print(f"      inspect: SELECT * FROM {status['staging_table']} WHERE delivery_id = '{d['delivery_id']}'")
    if not waiting:
        print("    none")


def rollback() -> int:
    """``make rollback``: back to the previous Approved version; prints what serves now."""
    from include.common.errors import NonRetriableError
    from include.pipeline.model_steps import rollback_model

    try:
        info = rollback_model()
    except NonRetriableError as exc:
        print(f"rollback: {exc}", file=sys.stderr)
        return 2
    print(f"rolled back from version {info['rolled_back_from']} to version {info['version']} "
          f"({info['precision']}) at {info['url']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m include.pipeline.cli", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="run the pipeline once with dag.test()")
    p_run.add_argument("--ds", default=None, help="partition YYYY-MM-DD (default: yesterday UTC)")
    p_run.add_argument("--conf", default="{}", help="JSON of DAG params, e.g. '{\"epochs\": 2}'")
    p_run.add_argument("--profile", default="quick", choices=["quick", "quality"],
                       help="training profile (include/profiles.py): quick = whole run < 10 min on 2 cores, "
                            "quality = the best accuracy, ~20-minute training job")
    p_child = sub.add_parser("dag-test", help="what `run` supervises: dag.test() in this process (no signal handling)")
    p_child.add_argument("--ds", required=True, help="partition YYYY-MM-DD")
    p_child.add_argument("--conf", default="{}", help="JSON of DAG params")
    p_child.add_argument("--profile", default="quick", choices=["quick", "quality"])
    sub.add_parser("ui-login", help="write the Airflow UI password (AIRFLOW_UI_PASSWORD, default admin); make ui runs it")
    p_art = sub.add_parser("artifacts", help="list a run's lineage")
    p_art.add_argument("--run-id", default=None, help="run id (default: the latest run)")
    sub.add_parser("data-status", help="list published partitions and waiting/rejected deliveries")
    sub.add_parser("rollback", help="serve the previous Approved version again")
    args = parser.parse_args(argv)
    if args.cmd == "run":
        return run(args.ds, json.loads(args.conf), args.profile)
    if args.cmd == "ui-login":
        user, password = ui_login()
        port = os.environ.get("AIRFLOW_PORT", "8081")
        print(f"==> Airflow UI: http://127.0.0.1:{port}  login {user} / {password}  (AIRFLOW_UI_PASSWORD sets another)")
        return 0
    if args.cmd == "dag-test":
        return run_in_process(args.ds, json.loads(args.conf), args.profile)
    if args.cmd == "data-status":
        print_data_status()
        return 0
    if args.cmd == "rollback":
        return rollback()
    print_artifacts(args.run_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
