"""The local endpoint: a managed background model server and its client.

One long-running server process (``include/serving/server.py``, FastAPI + uvicorn, SageMaker's
``GET /ping`` / ``POST /invocations`` contract) listens on a fixed loopback port (default
8080; ``port=`` or ``ENDPOINT_PORT`` change it; the last one used is kept in
``<endpoint_dir>/port``). It is started in its own session, so it outlives the Airflow task
that deployed it. Its files live under ``Settings.endpoint_dir``:

``pid``, ``port``, ``endpoint.log``, ``state.json`` (what is served, from which package),
``admin_token`` (0600; the server's admin routes want it), ``models/<version>/`` (each
package extracted; the server loads only from there, through the package's own
``code/inference.py``) and ``deploy.lock`` (deploys and stops run one at a time).

How :meth:`LocalEndpoint.deploy` updates a running endpoint without failing in-flight requests: it asks
the running server (loopback admin call) to load the new package next to the current one,
smoke-test it and swap one object reference; requests in flight finish on the old model.
Then it smoke-tests the public route with real reviews and checks the answering version.
If the load or either smoke test fails, the old model keeps (or is put back) serving and
:class:`EndpointDeployError` names the reason. We chose this over a second process behind a
reverse proxy because it keeps one process, one port and no proxy to supervise; the price
is two models in memory for the few seconds of a swap. A fresh process is started only when
none runs (or it is unhealthy, or the port changes).

On ``REVIEWS_BACKEND=aws`` a SageMaker endpoint (``endpoint_sagemaker.py``) implements the same
interface (``endpoint_base.py``); ``endpoint.py`` chooses.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from include.common.config import PROJECT_ROOT, get_settings, safe_name
from include.common.io import write_text_atomic
from include.common.locks import file_lock
from include.model.packaging import PackagingError, extract_package, package_sha256
from include.serving.endpoint_base import (
    Endpoint,
    EndpointDeployError,
    EndpointNotRunningError,
    EndpointRequestError,
    check_deploy,
)
from include.serving.protocol import (
    ADMIN_TOKEN_ENV,
    API_KEY_ENV,
    API_KEY_HEADER,
    DEFAULT_PORT,
    HOST,
    JSONLINES,
    PORT_ENV,
)

SERVER_MODULE = "include.serving.server"
STOP_GRACE_S = 35.0  # uvicorn lets in-flight requests finish on SIGTERM (it waits up to 30 s)
MAX_LOG_BYTES = 20 * 1024 * 1024

_children: dict[int, subprocess.Popen] = {}  # servers this process started (reaped on stop)


# ---------------------------------------------------------------- files under endpoint_dir

class _Paths:
    def __init__(self) -> None:
        self.root = get_settings().endpoint_dir
        self.pid = self.root / "pid"
        self.port = self.root / "port"
        self.state = self.root / "state.json"
        self.log = self.root / "endpoint.log"
        self.token = self.root / "admin_token"
        self.models = self.root / "models"
        self.lock = self.root / "deploy.lock"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _locked(paths: _Paths) -> contextlib.AbstractContextManager:
    # One deploy/stop at a time per state dir (two Airflow tasks, or a task and `make stop`).
    return file_lock(paths.lock)


# ---------------------------------------------------------------- processes

def _is_server(proc: psutil.Process, paths: _Paths) -> bool:
    """True when ``proc`` is a live model server of THIS state dir (not a recycled pid)."""
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return SERVER_MODULE in cmd and any(arg.startswith(str(paths.models)) for arg in cmd)


def _running_pid(paths: _Paths) -> int | None:
    try:
        pid = int(paths.pid.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        return pid if _is_server(psutil.Process(pid), paths) else None
    except psutil.NoSuchProcess:
        return None


def _server_pids(paths: _Paths) -> set[int]:
    """Every server process of this state dir: the pid file's and any orphan of a killed deploy."""
    pids = {p.pid for p in psutil.process_iter() if _is_server(p, paths)}
    pid = _running_pid(paths)
    return pids | ({pid} if pid else set())


def _terminate(pid: int, grace_s: float = STOP_GRACE_S) -> None:
    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)  # also reaps it when we are its parent
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    except psutil.NoSuchProcess:
        pass
    child = _children.pop(pid, None)
    if child is not None:
        child.poll()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _log_tail(paths: _Paths, since: int = 0, limit: int = 3000) -> str:
    try:
        with open(paths.log, "rb") as fh:
            fh.seek(max(since, fh.seek(0, os.SEEK_END) - limit))
            return fh.read().decode(errors="replace").strip()
    except FileNotFoundError:
        return "(no log)"


def _start_server(paths: _Paths, model_dir: Path, version: str, port: int, timeout_s: float,
                  precision: str = "fp32") -> int:
    """Start a detached server on ``port`` and wait until it answers /ping with ``version``."""
    if not _port_free(port):
        raise EndpointDeployError(
            f"port {port} on {HOST} is in use by another process; stop it, or deploy with port=<free port> "
            f"(or set {PORT_ENV})")
    token = secrets.token_urlsafe(32)
    write_text_atomic(paths.token, token, mode=0o600)
    if paths.log.exists() and paths.log.stat().st_size > MAX_LOG_BYTES:
        os.replace(paths.log, paths.log.with_name(paths.log.name + ".1"))
    env = dict(os.environ)
    env.pop("INFERENCE_PRECISION", None)  # the server applies --precision itself (see inference.model_fn)
    env.update({ADMIN_TOKEN_ENV: token, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))})
    with open(paths.log, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting version {version} on "
                  f"{HOST}:{port} from {model_dir}\n".encode())
        log.flush()
        offset = log.tell()
        proc = subprocess.Popen(  # noqa: S603 - our own module, fixed argv
            [sys.executable, "-m", SERVER_MODULE, "--model-dir", str(model_dir), "--version", version,
             # ENDPOINT_BIND_HOST: 0.0.0.0 in the compose file's model-endpoint container (published port);
             # the deploy and smoke calls stay on loopback either way
             "--host", os.environ.get("ENDPOINT_BIND_HOST", HOST), "--port", str(port), "--precision", precision],
            cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True)  # own session: survives the deploying task
    _children[proc.pid] = proc
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            _children.pop(proc.pid, None)
            tail = _log_tail(paths, offset)
            reason = " / ".join(line.split(": ", 1)[-1] for line in tail.splitlines() if " ERROR " in line)
            raise EndpointDeployError(
                f"the server for version {version} exited with code {proc.returncode} while starting: "
                f"{reason or 'see the log'}\nlog ({paths.log}):\n{tail}")
        if _ping(port) == version:
            return proc.pid
        if time.monotonic() > deadline:
            _terminate(proc.pid, grace_s=5)
            raise EndpointDeployError(
                f"the server for version {version} did not answer /ping within {timeout_s:.0f}s; "
                f"log ({paths.log}):\n{_log_tail(paths, offset)}")
        time.sleep(0.25)


# ---------------------------------------------------------------- HTTP helpers

def _url(port: int) -> str:
    return f"http://{HOST}:{port}"


def _ping(port: int, timeout_s: float = 2.0) -> str | None:
    """The version a healthy server on ``port`` serves, else None."""
    try:
        resp = httpx.get(f"{_url(port)}/ping", timeout=timeout_s)
        return resp.json().get("model_version") if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):  # not answering, or not our server
        return None


def _admin_load(paths: _Paths, port: int, model_dir: Path, version: str, smoke_texts: list[str],
                timeout_s: float, precision: str = "fp32") -> dict:
    token = paths.token.read_text().strip() if paths.token.exists() else ""
    try:
        resp = httpx.post(f"{_url(port)}/admin/load", headers={"X-Admin-Token": token}, timeout=timeout_s,
                          json={"model_dir": str(model_dir), "version": version, "smoke_texts": smoke_texts,
                                "precision": precision})
    except httpx.HTTPError as exc:
        raise EndpointDeployError(f"loading version {version} into the endpoint on port {port} failed: "
                                  f"{type(exc).__name__}: {exc}") from exc
    if resp.status_code != 200:
        raise EndpointDeployError(f"the endpoint refused version {version} (HTTP {resp.status_code}): "
                                  f"{_error_text(resp)}")
    return resp.json()


def _error_text(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("error") or resp.json())
    except (json.JSONDecodeError, AttributeError):
        return resp.text[:500]


def _invoke(port: int, body: bytes, content_type: str, accept: str, timeout_s: float = 60) -> httpx.Response:
    headers = {"Content-Type": content_type, "Accept": accept}
    if os.environ.get(API_KEY_ENV):  # the server was started with our environment, so with this key
        headers[API_KEY_HEADER] = os.environ[API_KEY_ENV]
    return httpx.post(f"{_url(port)}/invocations", content=body, timeout=timeout_s, headers=headers)


def _http_smoke(port: int, version: str, texts: list[str]) -> list[dict]:
    """Smoke-test the public route in both formats; every answer must come from ``version``."""
    lines = "\n".join(json.dumps({"features": [t]}) for t in texts).encode()
    try:
        jl = _invoke(port, lines, JSONLINES, JSONLINES)
        js = _invoke(port, json.dumps(texts).encode(), "application/json", "application/json")
    except httpx.HTTPError as exc:
        raise EndpointDeployError(
            f"smoke test of version {version} on port {port}: {type(exc).__name__}: {exc}") from exc
    for resp in (jl, js):
        if resp.status_code != 200:
            raise EndpointDeployError(f"smoke test of version {version}: HTTP {resp.status_code}: {_error_text(resp)}")
        if resp.headers.get("x-model-version") != version:
            raise EndpointDeployError(f"smoke test: answered by version {resp.headers.get('x-model-version')}, "
                                      f"expected {version}")
    jl_answers = [json.loads(line) for line in jl.text.splitlines() if line.strip()]
    answers = js.json()
    if len(jl_answers) != len(texts) or len(answers) != len(texts):
        raise EndpointDeployError(f"smoke test of version {version}: {len(texts)} reviews sent, "
                                  f"{len(jl_answers)} JSON Lines and {len(answers)} JSON answers")
    for a, b in zip(jl_answers, answers):
        if a["predicted_label"] != b["predicted_label"] or b["predicted_label"] not in (-1, 0, 1):
            raise EndpointDeployError(f"smoke test of version {version}: inconsistent answers {a} / {b}")
    return [{"text": t, **a} for t, a in zip(texts, answers)]


# ---------------------------------------------------------------- public API

def _resolve_port(paths: _Paths, port: int | None, running: bool, state: dict) -> int:
    if port is not None:
        return int(port)
    if running and state.get("port"):
        return int(state["port"])
    if os.environ.get(PORT_ENV):
        return int(os.environ[PORT_ENV])
    try:
        return int(paths.port.read_text().strip())
    except (FileNotFoundError, ValueError):
        return DEFAULT_PORT


def _extract(paths: _Paths, package_uri: str, version: str, serving_dir: str | None) -> tuple[Path, str]:
    """Extract the package into ``models/<version>/`` unless that exact package is already there."""
    try:
        sha = package_sha256(package_uri)
    except FileNotFoundError:
        raise EndpointDeployError(f"{package_uri}: no such package file") from None
    dest = paths.models / safe_name(version)
    marker = dest / ".package.json"
    if _read_json(marker).get("sha256") == sha:
        return dest, sha
    if serving_dir and Path(serving_dir) == dest:
        raise EndpointDeployError(
            f"version {version} is being served from a different package than {package_uri}; a version must not "
            "change its package - register the new package as a new version")
    try:
        extract_package(package_uri, dest)
    except PackagingError as exc:
        raise EndpointDeployError(f"package of version {version} is unusable: {exc}") from exc
    write_text_atomic(marker, json.dumps({"package_uri": package_uri, "sha256": sha, "extracted_at": time.time()}))
    return dest, sha


def _prune_models(paths: _Paths, keep: set[str]) -> None:
    # Keep what serves and the previous version (the rollback target); drop the rest.
    for child in paths.models.iterdir() if paths.models.exists() else []:
        if not child.is_dir() or str(child) in keep:
            continue
        # dot-folders are extractions in progress (or left by a crash: removed once an hour old)
        if not child.name.startswith(".") or time.time() - child.stat().st_mtime > 3600:
            shutil.rmtree(child, ignore_errors=True)


def _read_state_file(paths: _Paths) -> dict:
    return _read_json(paths.state)


class LocalEndpoint(Endpoint):
    """The managed background model server of this state dir (see the module docstring)."""

    def deploy(self, package_uri: str, version: str, smoke_texts: list[str] | tuple[str, ...],
               port: int | None = None, timeout_s: float = 120, precision: str = "fp32") -> dict:
        """Serve ``version`` from ``package_uri`` on the local endpoint; smoke-test it with real reviews.

        ``precision`` is ``fp32`` or ``int8`` (the package's ``quantize_fn``); whether int8 is good
        enough is the caller's decision (``include.serving.quantization.choose_precision``).

        Starts the server if none runs, else swaps the model inside the running one (in-flight
        requests finish on the old model). Returns ``{"url", "port", "pid", "version",
        "previous_version", "mode", "smoke", "seconds"}``. On any failure the previous version
        keeps serving and :class:`EndpointDeployError` says why.
        """
        smoke_texts = check_deploy(version, smoke_texts, precision)
        paths = _Paths()
        started = time.monotonic()
        with _locked(paths):
            state = old_state = _read_state_file(paths)
            pid = _running_pid(paths)
            want_port = _resolve_port(paths, port, pid is not None, state)
            serving = state.get("model_dir") if pid else None
            model_dir, sha = _extract(paths, package_uri, version, serving)
            served = _ping(want_port) if pid is not None and state.get("port") == want_port else None
            healthy = served is not None
            previous = served or (state.get("version") if pid else None)  # what really answers wins
            if healthy and previous == version and state.get("package_sha256") == sha and (
                    state.get("precision", "fp32") == precision):
                mode = "unchanged"
                smoke = _http_smoke(want_port, version, smoke_texts)
            elif healthy:
                mode = "swapped"
                _admin_load(paths, want_port, model_dir, version, smoke_texts, timeout_s, precision)
                try:
                    smoke = _http_smoke(want_port, version, smoke_texts)
                except EndpointDeployError as exc:
                    try:
                        _admin_load(paths, want_port, Path(state["model_dir"]), previous, [], timeout_s,
                                    state.get("precision", "fp32"))
                    except EndpointDeployError as rollback_exc:
                        raise EndpointDeployError(f"{exc}; rolling back to version {previous} ALSO failed "
                                                  f"({rollback_exc}) - version {version} may still serve") from exc
                    raise EndpointDeployError(f"{exc}; rolled back, version {previous} serves again") from exc
            else:
                mode = "started"
                if pid is not None and state.get("port") == want_port:
                    _terminate(pid)  # it holds our port but does not answer: it serves nothing anyway
                    pid = previous = None
                for orphan in _server_pids(paths) - {pid}:
                    _terminate(orphan)  # left by a deploy that was killed before writing the pid file
                new_pid = _start_server(paths, model_dir, version, want_port, timeout_s, precision)
                try:
                    smoke = _http_smoke(want_port, version, smoke_texts)
                except EndpointDeployError:
                    _terminate(new_pid, grace_s=5)
                    raise
                if pid is not None:
                    _terminate(pid)  # the old server on the old port, now replaced
                pid = new_pid
                write_text_atomic(paths.pid, f"{pid}\n")
                state = {"started_at": time.time()}
            pid = _running_pid(paths) or pid
            new_state = {
                **state, "url": _url(want_port), "port": want_port, "pid": pid, "version": version,
                "package_uri": package_uri, "package_sha256": sha, "model_dir": str(model_dir), "precision": precision,
                "previous_version": previous if previous != version else old_state.get("previous_version"),
                "previous_model_dir": (old_state.get("model_dir") if previous and previous != version
                                       else old_state.get("previous_model_dir")),
                "deployed_at": time.time(), "log": str(paths.log)}
            write_text_atomic(paths.state, json.dumps(new_state, indent=1))
            write_text_atomic(paths.port, f"{want_port}\n")
            _prune_models(paths, {str(model_dir), str(new_state.get("previous_model_dir"))})
        return {"url": _url(want_port), "port": want_port, "pid": pid, "version": version, "precision": precision,
                "previous_version": new_state["previous_version"], "mode": mode, "smoke": smoke,
                "seconds": round(time.monotonic() - started, 2)}

    def status(self) -> dict | None:
        """What the endpoint serves (``url, port, pid, version, package_uri, healthy, traffic, ...``).

        None when it is not running.
        """
        paths = _Paths()
        pid = _running_pid(paths)
        if pid is None:
            return None
        state = _read_state_file(paths)
        port = int(state.get("port") or _resolve_port(paths, None, True, state))
        answering = _ping(port)
        info = {**state, "pid": pid, "port": port, "url": _url(port), "healthy": answering is not None,
                "serving_version": answering}
        token = paths.token.read_text().strip() if paths.token.exists() else ""
        with contextlib.suppress(httpx.HTTPError, ValueError):  # counters are a bonus, not required
            resp = httpx.get(f"{_url(port)}/admin/status", headers={"X-Admin-Token": token}, timeout=2)
            if resp.status_code == 200:
                body = resp.json()
                info["traffic"] = {k: body[k] for k in ("requests", "reviews", "client_errors", "server_errors")}
                info["runtime"] = body.get("runtime")  # torch, or onnxruntime for the package's int8 ONNX model
        return info

    def stop(self) -> bool:
        """Stop the endpoint (in-flight requests finish first); True if a server was running."""
        paths = _Paths()
        with _locked(paths):
            pids = _server_pids(paths)
            for pid in pids:
                _terminate(pid)
            paths.pid.unlink(missing_ok=True)
            paths.token.unlink(missing_ok=True)
            state = _read_state_file(paths)
            if state:
                write_text_atomic(paths.state, json.dumps({**state, "pid": None, "stopped_at": time.time()}, indent=1))
        return bool(pids)

    def predict(self, texts: list[str], timeout_s: float = 60) -> list[dict]:
        """Classify ``texts`` on the running endpoint (JSON); one answer dict per text."""
        info = self.status()
        if info is None:
            raise EndpointNotRunningError("the local endpoint is not running; deploy a model first "
                                          "(python -m include.serving.endpoint start ...)")
        try:
            resp = _invoke(info["port"], json.dumps(list(texts)).encode(), "application/json", "application/json",
                           timeout_s)
        except httpx.HTTPError as exc:
            raise EndpointRequestError(0, f"{info['url']}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code != 200:
            raise EndpointRequestError(resp.status_code, _error_text(resp))
        return resp.json()
