"""FastAPI app serving one model package with SageMaker's inference contract.

Public routes (what a SageMaker serving container exposes):

* ``GET /ping`` - 200 with the served version once a model is loaded, 503 before.
* ``POST /invocations`` - the body goes through the package's own ``code/inference.py``
  (``input_fn`` -> ``predict_fn`` -> ``output_fn``). Bad input answers 400 / 406 / 413 / 415
  with ``{"error": "<what is wrong and what to send>"}``, never 500. Every answer carries
  ``X-Model-Version``. Concurrent requests share forward passes (``include/serving/batching.py``).
  With ``REVIEWS_ENDPOINT_API_KEY`` set, a request without that key answers 401.
* ``GET /metrics`` - Prometheus text format: requests by status, latency histogram, reviews per
  forward pass, queue depth, served version and precision.

Every request writes one JSON access-log line (logger ``reviews.access``) with its latency.
Limits (answered 413 naming the limit): body bytes (``MAX_BODY_BYTES``; the body is read and
discarded so the client gets the answer, not a reset connection), reviews per request
(``--max-reviews``), characters per review (``--max-text-chars``).

Admin routes (loopback clients holding the admin token only; used by ``include.serving.endpoint``):

* ``GET /admin/status`` - version, model folder, pid, counters.
* ``POST /admin/load`` - ``{"model_dir", "version", "smoke_texts"}``: load a new package next
  to the served one, smoke-test it, then swap.

Why an in-process swap rather than a second server behind a proxy: one process, one stable
port, nothing extra to supervise. The served model is one object reference (``_State.slot``);
a request reads it once and uses that object to the end, so a swap (a single reference
assignment) never touches a request in flight - it finishes on the old model, the next one
gets the new model. Loading runs in a worker thread while the event loop keeps answering;
if loading or the smoke test fails, the reference is never reassigned and the old model
keeps serving. The cost is holding two models in memory during the swap (~2 x 90 MB here).

Run as ``python -m include.serving.server --model-dir DIR --version V --port P [--precision int8]``;
the admin token comes from ``REVIEWS_ENDPOINT_ADMIN_TOKEN``. Only safetensors weights are loaded:
a package holding pickle-based weights (``*.bin``, ``*.pt``, ...) is refused, and so is any ONNX
file but the int8 model our packaging builds (``model.int8.onnx``, its sha256 pinned by the
package manifest).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import hmac
import importlib.util
import itertools
import json
import logging
import math
import os
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from include.serving.batching import Batcher
from include.serving.protocol import (
    ADMIN_TOKEN_ENV,
    API_KEY_ENV,
    API_KEY_HEADER,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_REVIEWS,
    DEFAULT_MAX_TEXT_CHARS,
    DEFAULT_MAX_WAIT_MS,
    JSONLINES,
    MAX_BATCH_ENV,
    MAX_BODY_BYTES,
    MAX_REVIEWS_ENV,
    MAX_TEXT_CHARS_ENV,
    MAX_WAIT_ENV,
    PRECISIONS,
)

logger = logging.getLogger("reviews.endpoint")

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
REPORT_EVERY_S = 60.0
# An oversized body is read and thrown away (so the client sees the 413, not a reset) up to
# this many bytes; past it the connection is closed - nobody legitimate sends 64 MB.
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024
BASELINE_MODEL_FILE = "model.joblib"  # include/scripts/automl.py's fitted pipeline
ONNX_INT8_FILE = "model.int8.onnx"  # include/model/packaging.py's export (the handler's int8 model)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".h5", ".msgpack")
_module_ids = itertools.count(1)
access_log = logging.getLogger("reviews.access")


class ModelLoadError(RuntimeError):
    """A package could not be loaded or failed its smoke test."""


class ModelSlot:
    """One loaded package: its handler module, the model ``model_fn`` returned, its version."""

    def __init__(self, handler: ModuleType, model: Any, version: str, model_dir: str,
                 precision: str = "fp32") -> None:
        self.handler, self.model, self.version, self.model_dir = handler, model, version, model_dir
        self.precision = precision
        self.runtime = str(getattr(model, "runtime", "torch"))
        # forward passes of this model that may run at once (the handler says: torch uses every
        # core in one pass, so 1; single-threaded onnxruntime passes, one per core)
        self.parallel = max(1, int(getattr(model, "parallel_runs", 1) or 1))
        self.gate = threading.BoundedSemaphore(self.parallel)
        self.loaded_at = time.time()


def _pinned_by_manifest(root: Path, name: str) -> bool:
    # the package manifest our packaging writes lists every file with its sha256
    import hashlib

    try:
        manifest = json.loads((root / "package-manifest.json").read_text())
        expected = manifest["files"][name]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    digest = hashlib.sha256()
    with open(root / name, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() == expected


def check_safetensors_only(model_dir: str | Path) -> None:
    """Refuse a package whose weights could run code when loaded (pickle formats).

    A ``pytorch_model.bin`` beside ``model.safetensors`` would be preferred by nothing here,
    but its mere presence means the package was not built by our packaging: refuse it whole.
    One exception: the AutoML baseline's ``model.joblib`` (scikit-learn has no safetensors
    format), accepted only when the package manifest pins its sha256.

    ONNX files: only ``model.int8.onnx`` at the package root, and only when the manifest pins its
    sha256 - the int8 model our packaging exported from these very safetensors weights. An ONNX
    graph runs no Python, but it is a second copy of the weights: one we did not build (or one
    changed after packaging) could answer differently from the model that was evaluated.
    """
    root = Path(model_dir)
    onnx = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.suffix.lower() == ".onnx")
    if onnx and not (onnx == [ONNX_INT8_FILE] and _pinned_by_manifest(root, ONNX_INT8_FILE)):
        raise ModelLoadError(f"{model_dir}: holds ONNX files the package manifest does not pin ({', '.join(onnx[:5])});"
                             f" the server loads only the {ONNX_INT8_FILE} that build_package(int8_onnx=True) "
                             "exported - rebuild the package")
    pickles = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                     if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles == [BASELINE_MODEL_FILE] and _pinned_by_manifest(root, BASELINE_MODEL_FILE):
        return  # the AutoML baseline: scikit-learn has no safetensors format; its checksum is pinned
    if pickles:
        raise ModelLoadError(f"{model_dir}: holds pickle-format weights ({', '.join(pickles[:5])}); "
                             "the server loads safetensors only - re-save the model with save_pretrained")
    if not any(root.rglob("*.safetensors")):
        raise ModelLoadError(f"{model_dir}: no *.safetensors weights - the server loads safetensors only")


def load_slot(model_dir: str, version: str, precision: str = "fp32") -> ModelSlot:
    """Import ``<model_dir>/code/inference.py`` under a fresh module name and run ``model_fn``.

    ``precision="int8"`` then passes the model through the handler's ``quantize_fn`` (our handler:
    onnxruntime on the package's ``model.int8.onnx``, else torch dynamic quantization).
    """
    if precision not in PRECISIONS:
        raise ModelLoadError(f"precision={precision!r}: use one of {', '.join(PRECISIONS)}")
    script = Path(model_dir) / "code" / "inference.py"
    if not script.is_file():
        raise ModelLoadError(f"{script}: missing - the package has no inference code")
    check_safetensors_only(model_dir)
    name = f"_reviews_inference_{next(_module_ids)}"
    try:
        spec = importlib.util.spec_from_file_location(name, script)
        handler = importlib.util.module_from_spec(spec)
        sys.modules[name] = handler  # dataclasses/pickle inside the handler look themselves up here
        spec.loader.exec_module(handler)
        for fn in ("model_fn", "input_fn", "predict_fn", "output_fn"):
            if not callable(getattr(handler, fn, None)):
                raise ModelLoadError(f"{script}: defines no {fn}()")
        model = handler.model_fn(str(model_dir))
        if precision == "int8":
            if not callable(getattr(handler, "quantize_fn", None)):
                raise ModelLoadError(f"{script}: defines no quantize_fn(); this package can only serve fp32")
            model = handler.quantize_fn(model)
    except ModelLoadError:
        sys.modules.pop(name, None)
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of foreign code is a load failure
        sys.modules.pop(name, None)
        raise ModelLoadError(f"loading {model_dir} failed: {type(exc).__name__}: {exc}") from exc
    if hasattr(model, "version"):
        model.version = version  # so output_fn can name the version that answered
    return ModelSlot(handler, model, version, str(model_dir), precision)


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ServerConfig:
    """Limits, batching and auth of one server process (CLI flags, else environment, else defaults)."""

    def __init__(self, max_reviews: int | None = None, max_text_chars: int | None = None,
                 max_batch_size: int | None = None, max_wait_ms: float | None = None) -> None:
        self.max_reviews = _setting(max_reviews, MAX_REVIEWS_ENV, DEFAULT_MAX_REVIEWS, 1, 10_000, int)
        self.max_text_chars = _setting(max_text_chars, MAX_TEXT_CHARS_ENV, DEFAULT_MAX_TEXT_CHARS, 1, 1_000_000, int)
        self.max_batch_size = _setting(max_batch_size, MAX_BATCH_ENV, DEFAULT_MAX_BATCH, 1, 1024, int)
        self.max_wait_ms = _setting(max_wait_ms, MAX_WAIT_ENV, DEFAULT_MAX_WAIT_MS, 0, 1000, float)
        self.api_key = os.environ.get(API_KEY_ENV, "")


def _setting(value, env: str, default, low, high, kind):
    source = "argument"
    if value is None:
        raw = os.environ.get(env, "")
        if raw == "":
            return default
        source = f"environment variable {env}"
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError(f"{source}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise ValueError(f"{source}: {value} must be in {low}..{high}")
    return value


class _Metrics:
    """The Prometheus metrics of this process (own registry: one server per process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("endpoint_requests", "HTTP requests by route and status code",
                                ["path", "status"], registry=self.registry)
        self.latency = Histogram("endpoint_request_latency_seconds", "POST /invocations latency, seconds",
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30), registry=self.registry)
        self.batch = Histogram("endpoint_batch_size_reviews", "reviews per forward pass",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.batch_requests = Histogram("endpoint_batch_size_requests", "requests per forward pass",
                                        buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.reviews = Counter("endpoint_reviews", "reviews classified", registry=self.registry)
        self.queue_depth = Gauge("endpoint_queue_depth", "requests waiting for a forward pass",
                                 registry=self.registry)
        self.in_flight = Gauge("endpoint_requests_in_flight", "requests being answered", registry=self.registry)
        self.model = Gauge("endpoint_model_info", "the served model (value 1)", ["version", "precision", "runtime"],
                           registry=self.registry)

    def serving(self, slot: ModelSlot) -> None:
        self.model.clear()
        self.model.labels(slot.version, slot.precision, slot.runtime).set(1)


class _State:
    """Process-wide server state (the served slot, config, batcher and counters)."""

    def __init__(self) -> None:
        self.slot: ModelSlot | None = None
        self.admin_lock = threading.Lock()
        self.admin_token = os.environ.get(ADMIN_TOKEN_ENV, "")
        # defaults until main() applies the command line and environment (validated there, with
        # a clear error, rather than at import)
        self.config = ServerConfig(DEFAULT_MAX_REVIEWS, DEFAULT_MAX_TEXT_CHARS, DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS)
        self.metrics = _Metrics()
        self.batcher: Batcher | None = None
        self.arriving = 0  # requests received but not yet queued for a forward pass (batching waits for them)
        self.started_at = time.time()
        self.requests = 0
        self.reviews = 0
        self.client_errors = 0
        self.server_errors = 0
        self.busy_seconds = 0.0
        self._window = [time.monotonic(), 0, 0, 0.0]  # start, requests, reviews, seconds since last report

    def configure(self, config: ServerConfig) -> None:
        """Apply ``config`` and (re)start the batch worker with its settings."""
        self.config = config
        if self.batcher is not None:
            self.batcher.close()
        self.batcher = Batcher(config.max_batch_size, config.max_wait_ms, on_batch=self._on_batch,
                               arriving=lambda: self.arriving, workers=_available_cores())

    def serve(self, slot: ModelSlot) -> None:
        """Make ``slot`` the served model (one reference assignment) and say so in the metrics."""
        self.slot = slot
        self.metrics.serving(slot)

    def _on_batch(self, reviews: int, requests: int, seconds: float) -> None:
        self.metrics.batch.observe(reviews)
        self.metrics.batch_requests.observe(requests)

    def record(self, reviews: int, seconds: float) -> None:
        """Count a served request; log throughput about once a minute (not once per request)."""
        self.reviews += reviews
        self.busy_seconds += seconds
        self.metrics.reviews.inc(reviews)
        w = self._window
        w[1], w[2], w[3] = w[1] + 1, w[2] + reviews, w[3] + seconds
        now = time.monotonic()
        if now - w[0] >= REPORT_EVERY_S:
            logger.info("last %.0fs: %d requests, %d reviews, mean latency %.0f ms; "
                        "errors so far: %d client, %d server", now - w[0], w[1], w[2],
                        1000 * w[3] / w[1], self.client_errors, self.server_errors)
            self._window = [now, 0, 0, 0.0]


STATE = _State()


def _media(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _negotiate(accept: str, content_type: str) -> str:
    """The response type: the first JSON / JSON Lines type the client lists, else the request's type.

    A wildcard (or no Accept) answers in the request's format; a list naming only other types
    is passed on so the handler refuses it (406).
    """
    offered = [_media(part) for part in accept.split(",") if part.strip()]
    for media in offered:
        if media == "application/json" or "jsonl" in media or "ndjson" in media:
            return media
    if not offered or any(m in ("*/*", "application/*") for m in offered):
        return content_type
    return accept


class RequestError(Exception):
    """The client's request is wrong (4xx); the message says what to send instead."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _client_error(exc: Exception) -> RequestError | None:
    # A handler marks its client errors with status_code; plain ValueErrors of input parsing count too.
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and 400 <= status < 500:
        return RequestError(status, str(exc))
    return None


def infer(slot: ModelSlot, body: bytes, content_type: str, accept: str) -> tuple[str, int]:
    """Run one request body through the slot's handler directly (no batching; smoke tests).

    Returns the answer body and the number of reviews. Raises :class:`RequestError` for bad
    input (the caller answers 4xx); anything else raised by ``predict_fn``/``output_fn`` is a
    server fault.
    """
    data = parse(slot, body, content_type)
    with slot.gate:
        prediction = slot.handler.predict_fn(data, slot.model)
    out = render(slot, prediction, accept)
    count = len(data["texts"]) if isinstance(data, dict) and "texts" in data else 1
    return out, count


def smoke_test(slot: ModelSlot, texts: list[str]) -> list[dict]:
    """Classify ``texts`` through the full handler (JSON Lines) and check every answer."""
    if not texts:
        raise ModelLoadError("smoke test needs at least one review text")
    body = "\n".join(json.dumps({"features": [t]}) for t in texts).encode()
    try:
        out, _ = infer(slot, body, JSONLINES, JSONLINES)
        answers = [json.loads(line) for line in out.splitlines() if line.strip()]
    except Exception as exc:  # noqa: BLE001 - the candidate failed; say how
        raise ModelLoadError(f"smoke test of version {slot.version} failed: {type(exc).__name__}: {exc}") from exc
    if len(answers) != len(texts):
        raise ModelLoadError(
            f"smoke test of version {slot.version}: {len(texts)} reviews in, {len(answers)} answers out")
    for text, answer in zip(texts, answers):
        label, prob = answer.get("predicted_label"), answer.get("probability")
        if label not in (-1, 0, 1) or not isinstance(prob, (int, float)) or not (
                math.isfinite(prob) and 0.0 <= prob <= 1.0):
            raise ModelLoadError(f"smoke test of version {slot.version}: bad answer {answer} for {text[:60]!r}")
    return [{"text": t, **a} for t, a in zip(texts, answers)]


def _error(status: int, message: str, version: str | None = None, close: bool = False) -> JSONResponse:
    if status >= 500:
        STATE.server_errors += 1
    else:
        STATE.client_errors += 1
    headers = {"X-Model-Version": version} if version else {}
    if close:
        headers["Connection"] = "close"
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _admin_refusal(request: Request) -> JSONResponse | None:
    host = request.client.host if request.client else ""
    if host not in LOOPBACK:
        return JSONResponse({"error": "admin routes answer loopback clients only"}, status_code=403)
    token = request.headers.get("x-admin-token", "")
    if not STATE.admin_token or not hmac.compare_digest(token, STATE.admin_token):
        return JSONResponse({"error": "missing or wrong X-Admin-Token"}, status_code=403)
    return None


class AccessLog:
    """ASGI middleware: one JSON access-log line and the request metrics per HTTP request.

    Pure ASGI (not BaseHTTPMiddleware) so it adds no task or copy per request.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.monotonic()
        seen: dict[str, Any] = {"status": 500, "version": None}
        scope.setdefault("state", {})
        STATE.metrics.in_flight.inc()

        async def send_and_watch(message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == b"x-model-version":
                        seen["version"] = value.decode()
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            STATE.metrics.in_flight.dec()
            seconds = time.monotonic() - started
            path = scope.get("path", "")
            route = path if path in ("/invocations", "/ping", "/metrics") or path.startswith("/admin/") else "other"
            STATE.metrics.requests.labels(route, str(seen["status"])).inc()
            if route == "/invocations":
                STATE.metrics.latency.observe(seconds)
            client = scope.get("client") or ("", 0)
            access_log.info(json.dumps({
                "event": "access", "method": scope.get("method"), "path": path, "status": seen["status"],
                "latency_ms": round(seconds * 1000, 2), "model_version": seen["version"],
                "reviews": scope["state"].get("reviews"), "client": client[0]}))


@contextlib.asynccontextmanager
async def _lifespan(_app: FastAPI):
    yield
    # uvicorn runs this after the requests in flight have finished (SIGTERM: graceful shutdown)
    if STATE.batcher is not None:
        STATE.batcher.close()
    logger.info("stopped after %d requests (%d reviews); in-flight requests drained", STATE.requests, STATE.reviews)


app = FastAPI(title="review-sentiment endpoint", docs_url=None, redoc_url=None, lifespan=_lifespan)
app.add_middleware(AccessLog)


@app.get("/ping")
def ping() -> JSONResponse:
    """Health check: 200 once a model is loaded (SageMaker's contract)."""
    slot = STATE.slot
    if slot is None:
        return JSONResponse({"status": "loading"}, status_code=503)
    return JSONResponse({"status": "healthy", "model_version": slot.version},
                        headers={"X-Model-Version": slot.version})


def _api_key_refusal(request: Request) -> JSONResponse | None:
    key = STATE.config.api_key
    if not key:
        return None
    given = request.headers.get(API_KEY_HEADER.lower(), "")
    auth = request.headers.get("authorization", "")
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if given and hmac.compare_digest(given.encode(), key.encode()):
        return None
    STATE.client_errors += 1
    what = "wrong API key" if given else "missing API key"
    return JSONResponse({"error": f"{what}: send it as {API_KEY_HEADER}: <key> or Authorization: Bearer <key>"},
                        status_code=401, headers={"WWW-Authenticate": "Bearer"})


class ClientGone(Exception):
    """The client closed the connection before its body arrived."""


async def _read_body(request: Request) -> tuple[bytes | None, int]:
    """The body, or (None, bytes seen) when it passes ``MAX_BODY_BYTES``.

    An oversized body is still read to its end (and dropped) up to ``DRAIN_LIMIT_BYTES``:
    answering while the client is still sending makes the kernel reset the connection, and
    the client would see ECONNRESET instead of the 413 and its message.
    """
    from starlette.requests import ClientDisconnect

    chunks, seen = [], 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen <= MAX_BODY_BYTES:
                chunks.append(chunk)
            elif chunks:
                chunks = []  # over the limit: keep nothing, keep reading
            if seen > DRAIN_LIMIT_BYTES:
                break
    except ClientDisconnect:
        raise ClientGone() from None
    return (b"".join(chunks), seen) if seen <= MAX_BODY_BYTES else (None, seen)


def check_limits(data: Any) -> None:
    """413 when a parsed request passes the reviews-per-request or characters-per-review limit."""
    texts = data.get("texts") if isinstance(data, dict) else None
    if not isinstance(texts, list):
        return
    cfg = STATE.config
    if len(texts) > cfg.max_reviews:
        raise RequestError(413, f"the request holds {len(texts)} reviews; the limit is {cfg.max_reviews} per request "
                                f"({MAX_REVIEWS_ENV}) - split it into smaller requests")
    for i, text in enumerate(texts):
        if isinstance(text, str) and len(text) > cfg.max_text_chars:
            raise RequestError(413, f"review {i} has {len(text)} characters; the limit is {cfg.max_text_chars} "
                                    f"({MAX_TEXT_CHARS_ENV}) - shorten it")


def parse(slot: ModelSlot, body: bytes, content_type: str) -> Any:
    """``input_fn`` of the slot's handler; every failure is the client's (RequestError)."""
    try:
        data = slot.handler.input_fn(body, content_type)
    except Exception as exc:  # noqa: BLE001 - parsing user input: every failure is the client's
        raise _client_error(exc) or RequestError(400, f"cannot read the request: {type(exc).__name__}: {exc}") from exc
    check_limits(data)
    return data


def render(slot: ModelSlot, prediction: Any, accept: str) -> str:
    """``output_fn`` of the slot's handler (a 4xx it raises stays a client error)."""
    try:
        out = slot.handler.output_fn(prediction, accept)
    except Exception as exc:  # noqa: BLE001
        client = _client_error(exc)
        if client is not None:
            raise client from exc
        raise
    if isinstance(out, tuple):  # handlers in the lab's style return (body, content_type)
        out = out[0]
    return out.decode() if isinstance(out, bytes) else str(out)


@app.post("/invocations")
async def invocations(request: Request) -> Response:
    """Classify the reviews in the body (JSON Lines or JSON) with the served model."""
    STATE.requests += 1
    slot = STATE.slot  # read once: a swap during this request does not affect it
    if slot is None:
        return _error(503, "no model is loaded yet; retry after GET /ping answers 200")
    refusal = _api_key_refusal(request)
    if refusal:
        return refusal
    STATE.arriving += 1
    queued = False
    try:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > DRAIN_LIMIT_BYTES:
            return _error(413, f"body of {declared} bytes exceeds the {MAX_BODY_BYTES}-byte limit; split the request",
                          slot.version, close=True)
        try:
            body, seen = await _read_body(request)
        except ClientGone:  # nobody reads the answer; counted as a client error, not a server fault
            return _error(400, "the client disconnected before sending the whole body", slot.version)
        if body is None:
            return _error(413, f"body of {seen}{'+' if seen > DRAIN_LIMIT_BYTES else ''} bytes exceeds the "
                               f"{MAX_BODY_BYTES}-byte limit; split the request", slot.version,
                          close=seen > DRAIN_LIMIT_BYTES)
        content_type = request.headers.get("content-type", "")
        accept = _negotiate(request.headers.get("accept", ""), content_type)
        started = time.monotonic()
        try:
            # small bodies parse inline (a thread hop costs more than the parse); big ones off the loop
            data = parse(slot, body, content_type) if len(body) < 16384 else await _run_in_thread(
                parse, slot, body, content_type)
            STATE.arriving -= 1
            queued = True
            if STATE.batcher is None:  # the app run without main() (e.g. by another ASGI server)
                STATE.configure(STATE.config)
            prediction = await STATE.batcher.submit(slot, data)
            out = render(slot, prediction, accept)
        except RequestError as exc:
            return _error(exc.status, str(exc), slot.version)
        except Exception as exc:  # noqa: BLE001 - a model fault: log it, answer 500 with the reason
            logger.exception("inference failed on version %s", slot.version)
            return _error(500, f"inference failed: {type(exc).__name__}: {exc}", slot.version)
        count = len(data["texts"]) if isinstance(data, dict) and "texts" in data else 1
        request.state.reviews = count
        STATE.record(count, time.monotonic() - started)
        media = _media(accept)
        if media not in ("application/json",):
            media = JSONLINES
        return Response(out, media_type=media, headers={"X-Model-Version": slot.version})
    finally:
        if not queued:
            STATE.arriving -= 1


async def _run_in_thread(fn, *args):
    # Blocking work runs off the event loop so /ping and new requests stay responsive.
    return await run_in_threadpool(fn, *args)


@app.get("/metrics")
def metrics() -> Response:
    """Prometheus text format (no auth: scrape it from the host; it holds no review text)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    STATE.metrics.queue_depth.set(STATE.batcher.depth() if STATE.batcher else 0)
    return Response(generate_latest(STATE.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@app.get("/admin/status")
def admin_status(request: Request) -> JSONResponse:
    """What this process serves and how busy it has been."""
    refusal = _admin_refusal(request)
    if refusal:
        return refusal
    slot = STATE.slot
    return JSONResponse({
        "pid": os.getpid(), "started_at": STATE.started_at,
        "model_version": slot.version if slot else None, "model_dir": slot.model_dir if slot else None,
        "precision": slot.precision if slot else None, "runtime": slot.runtime if slot else None,
        "max_batch_size": STATE.config.max_batch_size, "max_wait_ms": STATE.config.max_wait_ms,
        "max_reviews": STATE.config.max_reviews, "max_text_chars": STATE.config.max_text_chars,
        "loaded_at": slot.loaded_at if slot else None, "requests": STATE.requests, "reviews": STATE.reviews,
        "client_errors": STATE.client_errors, "server_errors": STATE.server_errors})


@app.post("/admin/load")
def admin_load(request: Request, payload: dict) -> JSONResponse:
    """Load a package beside the served one, smoke-test it, and swap only if both succeed.

    ``precision`` (``fp32`` default, or ``int8``) says how the new model serves.
    """
    refusal = _admin_refusal(request)
    if refusal:
        return refusal
    model_dir, version = payload.get("model_dir"), payload.get("version")
    smoke_texts = payload.get("smoke_texts") or []
    precision = payload.get("precision") or "fp32"
    if not isinstance(model_dir, str) or not isinstance(version, str) or not isinstance(smoke_texts, list) or (
            precision not in PRECISIONS):
        return JSONResponse({"error": 'send {"model_dir": str, "version": str, "smoke_texts": [str, ...], '
                                      f'"precision": one of {list(PRECISIONS)}}}'}, status_code=400)
    if not STATE.admin_lock.acquire(blocking=False):
        return JSONResponse({"error": "another load is in progress; retry when it ends"}, status_code=409)
    try:
        started = time.monotonic()
        try:
            candidate = load_slot(model_dir, version, precision)
            smoke = smoke_test(candidate, smoke_texts) if smoke_texts else []
        except ModelLoadError as exc:
            logger.error("load of version %s refused, still serving %s: %s",
                         version, STATE.slot.version if STATE.slot else None, exc)
            return JSONResponse({"error": str(exc)}, status_code=422)
        previous = STATE.slot
        STATE.serve(candidate)  # the swap: one reference assignment
        if previous is not None:
            sys.modules.pop(previous.handler.__name__, None)
        del previous
        gc.collect()
        seconds = time.monotonic() - started
        logger.info("now serving version %s (%s on %s) from %s (load + smoke %.1fs)", version, precision,
                    candidate.runtime, model_dir, seconds)
        return JSONResponse({"model_version": version, "precision": precision, "runtime": candidate.runtime,
                             "smoke": smoke,
                             "load_seconds": round(seconds, 2)})
    finally:
        STATE.admin_lock.release()


def main(argv: list[str] | None = None) -> int:
    """Load the package, then serve it until SIGTERM (in-flight requests finish first)."""
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve a model package (SageMaker inference contract)")
    parser.add_argument("--model-dir", required=True, help="extracted package (holds code/inference.py)")
    parser.add_argument("--version", required=True, help="model version this package is")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32, or int8 (the package's int8 ONNX model on onnxruntime; torch dynamic "
                             "quantization for packages without one)")
    parser.add_argument("--max-batch-size", type=int, default=None,
                        help=f"reviews per forward pass across requests (1 = no batching; ${MAX_BATCH_ENV}, "
                             f"default {DEFAULT_MAX_BATCH})")
    parser.add_argument("--max-wait-ms", type=float, default=None,
                        help=f"longest a batch waits for arriving requests (${MAX_WAIT_ENV}, default {DEFAULT_MAX_WAIT_MS})")
    parser.add_argument("--max-reviews", type=int, default=None,
                        help=f"reviews per request (${MAX_REVIEWS_ENV}, default {DEFAULT_MAX_REVIEWS})")
    parser.add_argument("--max-text-chars", type=int, default=None,
                        help=f"characters per review (${MAX_TEXT_CHARS_ENV}, default {DEFAULT_MAX_TEXT_CHARS})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    try:
        STATE.configure(ServerConfig(args.max_reviews, args.max_text_chars, args.max_batch_size, args.max_wait_ms))
        STATE.serve(load_slot(args.model_dir, args.version, args.precision))
    except (ModelLoadError, ValueError) as exc:
        logger.error("cannot start: %s", exc)
        return 1
    cfg = STATE.config
    slot = STATE.slot
    logger.info("version %s (%s on %s, %d forward pass(es) at once) loaded in %.1fs; listening on %s:%d (pid %d); "
                "batch <= %d reviews, wait <= %g ms; limits: %d reviews/request, %d chars/review, %d bytes/body; "
                "API key %s", args.version, args.precision, slot.runtime, slot.parallel, time.monotonic() - started,
                args.host, args.port, os.getpid(),
                cfg.max_batch_size, cfg.max_wait_ms, cfg.max_reviews, cfg.max_text_chars, MAX_BODY_BYTES,
                "required" if cfg.api_key else "off")
    # On SIGTERM uvicorn stops accepting, lets the requests in flight finish (their batches
    # included: the batch worker keeps running) for up to 30 s, runs the lifespan's shutdown,
    # then re-raises the signal (so the exit status says SIGTERM).
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False,
                timeout_graceful_shutdown=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
