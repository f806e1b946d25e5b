"""`make ui`'s login works with what the docs say (docs/ui-and-approval.md): the environment of tools/env.sh, the
`cli ui-login` step of the Makefile, then a real Airflow api-server on a free loopback port
asked for a token at /auth/token."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import ROOT
from tests.integration.conftest import _free_port


def _env_sh(base: dict) -> dict:
    """The environment `make ui` runs in: tools/env.sh sourced over ``base``."""
    out = subprocess.run(["bash", "-c", "source tools/env.sh && env -0"], cwd=ROOT, env=base, capture_output=True,
                         check=True)
    return dict(item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)


def _docs_login() -> tuple[str, str]:
    text = (ROOT / "docs" / "ui-and-approval.md").read_text(encoding="utf-8")
    m = re.search(r"make ui\s+#.*\(login (\S+) / (\S+?)\)", text)
    assert m, "docs/ui-and-approval.md's `make ui` line no longer says the login"
    return m.group(1), m.group(2)


@pytest.fixture
def ui_env(airflow_db, tmp_path) -> dict:
    base = dict(os.environ)
    # The suite runs the REST API with everyone admin; `make ui` does not.
    base.pop("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", None)
    base.pop("AIRFLOW_UI_PASSWORD", None)
    base["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] = str(tmp_path / "passwords.json")
    port = _free_port()
    base.update(AIRFLOW_PORT=str(port), AIRFLOW__API__HOST="127.0.0.1", AIRFLOW__API__PORT=str(port),
                AIRFLOW__API__WORKERS="1")
    return _env_sh(base)


def test_make_ui_login_is_the_one_the_docs_say(ui_env, tmp_path):
    user, password = _docs_login()
    port = int(ui_env["AIRFLOW__API__PORT"])
    # what `make ui` runs before `airflow standalone`
    prep = subprocess.run([sys.executable, "-m", "include.pipeline.cli", "ui-login"], cwd=ROOT, env=ui_env,
                          capture_output=True, text=True, timeout=120)
    assert prep.returncode == 0, prep.stderr[-2000:]
    assert f"login {user} / {password}" in prep.stdout
    assert oct((tmp_path / "passwords.json").stat().st_mode & 0o777) == "0o600"

    log = open(tmp_path / "api-server.log", "w")
    server = subprocess.Popen(["airflow", "api-server", "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT,
                              env=ui_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    server_log = tmp_path / "api-server.log"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server_log.read_text()[-3000:]
            try:
                if httpx.get(f"{base}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "api-server did not come up:\n" + server_log.read_text()[-3000:]
            time.sleep(1)

        ok = httpx.post(f"{base}/auth/token", json={"username": user, "password": password}, timeout=30)
        assert ok.status_code == 201, ok.text
        token = ok.json()["access_token"]
        dags = httpx.get(f"{base}/api/v2/dags", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert dags.status_code == 200, dags.text

        wrong = httpx.post(f"{base}/auth/token", json={"username": user, "password": password + "x"}, timeout=30)
        assert wrong.status_code == 401, wrong.text
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def test_ui_login_sets_the_password_asked_for_and_keeps_other_users(ui_env, tmp_path):
    passwords = tmp_path / "passwords.json"
    passwords.write_text('{"viewer": "v-secret", "admin": "generated-one"}')
    env = {**ui_env, "AIRFLOW_UI_PASSWORD": "s3cret"}
    out = subprocess.run([sys.executable, "-m", "include.pipeline.cli", "ui-login"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(passwords.read_text()) == {"viewer": "v-secret", "admin": "s3cret"}

    passwords.write_text("{not json")
    bad = subprocess.run([sys.executable, "-m", "include.pipeline.cli", "ui-login"], cwd=ROOT, env=ui_env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "is not JSON" in bad.stderr and "delete it" in bad.stderr
