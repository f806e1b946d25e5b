"""Take the docs' screenshots of the approval page and the evaluation report, for real.

    .venv/bin/python tools/screenshots.py

In a throw-away state dir it lands two days of the real reviews, runs the pipeline once with
``auto_approve`` (version 1 is deployed), then again without it, so that the second run waits at
``approve_model`` with a candidate to compare with the deployed version. It starts
``airflow api-server`` on a free loopback port, and headless Chromium (``/usr/bin/chromium``,
driven by the ``playwright`` package of the lock, or of ``--playwright-python``; playwright never downloads a
browser here) photographs the task's *Required Actions* page and the evaluation report the
request links to. It then rejects the request over the REST API so the run ends, and stops
everything it started. PNGs go to ``docs/img/``. Small models keep it to a few minutes; the
figures in the pictures are therefore those of a small training budget.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
DS = "2026-11-20"
CONF = {"profile": "quick", "max_seq_length": 48, "epochs": 1, "train_batch_size": 16, "max_train_samples": 480,
        "min_accuracy": 0.0, "min_improvement": -1.0}
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def capture(base: str, pages: list[dict], chromium: str) -> None:
    """Screenshot each ``{"url", "out", "wait_text"}`` (runs under the playwright interpreter)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        for item in pages:
            page.goto(base + item["url"], wait_until="networkidle", timeout=90_000)
            if item.get("wait_text"):
                page.get_by_text(item["wait_text"], exact=False).first.wait_for(timeout=90_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=item["out"], full_page=item.get("full_page", False))
            print(f"wrote {item['out']}", flush=True)
        browser.close()


def _env(state: Path) -> dict:
    env = dict(os.environ)
    env.update({"REVIEWS_HOME": str(state), "AIRFLOW_HOME": str(state / "airflow"),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{state / 'airflow' / 'airflow.db'}",
                "MLFLOW_TRACKING_URI": f"sqlite:///{state / 'mlflow' / 'mlflow.db'}",
                "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "ENDPOINT_PORT": str(free_port())})
    return env


RUN_SNIPPET = """
import json, sys
from datetime import date
from include.pipeline.cli import load_dag, logical_date_for
dr = load_dag().test(logical_date=logical_date_for(date.fromisoformat(sys.argv[1])), run_conf=json.loads(sys.argv[2]))
print("RUN_STATE", dr.run_id, dr.state, flush=True)
"""


def _run(env: dict, conf: dict, background: bool = False):
    cmd = [sys.executable, "-c", RUN_SNIPPET, DS, json.dumps(conf)]
    if background:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0 or "RUN_STATE" not in proc.stdout:
        raise SystemExit(f"pipeline run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def _pending(api: str, timeout_s: float = 900) -> dict:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{api}/api/v2/dags/review_sentiment_pipeline/dagRuns/~/hitlDetails", timeout=10)
            waiting = [d for d in r.json().get("hitl_details", []) if not d.get("response_received")] \
                if r.status_code == 200 else []
            if waiting:
                return waiting[0]
        except httpx.HTTPError:
            pass
        time.sleep(3)
    raise SystemExit("no approval request appeared in time")


def main(argv: list[str] | None = None) -> int:
    """Entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--playwright-python", default=sys.executable, help="an interpreter with the playwright package")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--out", default=str(ROOT / "docs" / "img"))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix="reviews-screens-"))
    env = _env(state)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "-c", "from datetime import date; from include.common.config import get_settings;"
                    "from include.common.io import uri_to_path; from include.data.landing import land_daily_drops;"
                    f"land_daily_drops(uri_to_path(get_settings().landing_uri), date.fromisoformat('{DS}'), days=2,"
                    " limit=2400)"], env=env, cwd=ROOT, check=True)
    print("run 1 (auto-approved, deployed) ...", flush=True)
    _run(env, {**CONF, "auto_approve": True})
    print("run 2 (waits for approval) ...", flush=True)
    # Other settings than run 1 (same data, same seed would train the very same weights), so the
    # request has a difference to show.
    waiting_run = _run(env, {**CONF, "learning_rate": 2e-4, "max_train_samples": 960, "auto_approve": False},
                       background=True)
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        detail = _pending(api)
        ti = detail["task_instance"]
        ti_page = (f"/dags/review_sentiment_pipeline/runs/{quote(ti['dag_run_id'], safe='')}/tasks/"
                   f"{ti['task_id']}/required_actions")
        report = next(part.split(")")[0] for part in detail["body"].split("](")[1:] if part.startswith("/reports/"))
        pages = [{"url": ti_page, "out": str(out / "approval_page.png"), "wait_text": "change vs deployed"},
                 {"url": report, "out": str(out / "evaluation_report.png"), "wait_text": "Comparison",
                  "full_page": False}]
        subprocess.run([args.playwright_python, __file__, "capture", api, json.dumps(pages), args.chromium], check=True)
        import httpx

        url = (f"{api}/api/v2/dags/review_sentiment_pipeline/dagRuns/{quote(ti['dag_run_id'], safe='')}"
               f"/taskInstances/{ti['task_id']}/{ti['map_index']}/hitlDetails")
        httpx.patch(url, json={"chosen_options": ["Reject"], "params_input": {}}, timeout=30).raise_for_status()
        waiting_run.wait(timeout=300)
    finally:
        server.terminate()
        server.wait(30)
        if waiting_run.poll() is None:
            waiting_run.terminate()
        subprocess.run([sys.executable, "-c", "from include.serving.endpoint import get_endpoint; get_endpoint().stop()"],
                       env=env, cwd=ROOT)
    print(f"screenshots in {out}; state left in {state} (delete it when done)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "capture":
        capture(sys.argv[2], json.loads(sys.argv[3]), sys.argv[4])
    else:
        sys.exit(main())
