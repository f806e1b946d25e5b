"""FastAPI app serving one model package with SageMaker's inference contract.

Public routes (what a SageMaker serving container exposes):

* ``GET /ping`` - 200 with the served version once a model is loaded, 503 before.
* ``POST /invocations`` - the body goes through the package's own ``code/inference.py``
  (``input_fn`` -> ``predict_fn`` -> ``output_fn``). Bad input answers 400 / 406 / 413 / 415
  with ``{"error": "<what is wrong and what to send>"}``, never 500. Every answer carries
  ``X-Model-Version``.

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

Run as ``python -m include.serving.server --model-dir DIR --version V --port P``; the admin
token comes from ``REVIEWS_ENDPOINT_ADMIN_TOKEN``.
"""
from __future__ import annotations

import argparse
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

from include.serving.protocol import ADMIN_TOKEN_ENV, JSONLINES, MAX_BODY_BYTES

logger = logging.getLogger("reviews.endpoint")

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
REPORT_EVERY_S = 60.0
_module_ids = itertools.count(1)


class ModelLoadError(RuntimeError):
    """A package could not be loaded or failed its smoke test."""


class ModelSlot:
    """One loaded package: its handler module, the model ``model_fn`` returned, its version."""

    def __init__(self, handler: ModuleType, model: Any, version: str, model_dir: str) -> None:
        self.handler, self.model, self.version, self.model_dir = handler, model, version, model_dir
        self.loaded_at = time.time()


def load_slot(model_dir: str, version: str) -> ModelSlot:
    """Import ``<model_dir>/code/inference.py`` under a fresh module name and run ``model_fn``."""
    script = Path(model_dir) / "code" / "inference.py"
    if not script.is_file():
        raise ModelLoadError(f"{script}: missing - the package has no inference code")
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
    except ModelLoadError:
        sys.modules.pop(name, None)
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of foreign code is a load failure
        sys.modules.pop(name, None)
        raise ModelLoadError(f"loading {model_dir} failed: {type(exc).__name__}: {exc}") from exc
    if hasattr(model, "version"):
        model.version = version  # so output_fn can name the version that answered
    return ModelSlot(handler, model, version, str(model_dir))


class _State:
    """Process-wide server state (the served slot and counters)."""

    def __init__(self) -> None:
        self.slot: ModelSlot | None = None
        self.infer_lock = threading.Lock()  # one forward pass at a time: torch already uses all cores
        self.admin_lock = threading.Lock()
        self.admin_token = os.environ.get(ADMIN_TOKEN_ENV, "")
        self.started_at = time.time()
        self.requests = 0
        self.reviews = 0
        self.client_errors = 0
        self.server_errors = 0
        self.busy_seconds = 0.0
        self._window = [time.monotonic(), 0, 0, 0.0]  # start, requests, reviews, seconds since last report

    def record(self, reviews: int, seconds: float) -> None:
        """Count a served request; log throughput about once a minute (not once per request)."""
        self.reviews += reviews
        self.busy_seconds += seconds
        w = self._window
        w[1], w[2], w[3] = w[1] + 1, w[2] + reviews, w[3] + seconds
        now = time.monotonic()
        if now - w[0] >= REPORT_EVERY_S:
            logger.info("last %.0fs: %d requests, %d reviews, %.1f reviews/s of compute, mean latency %.0f ms; "
                        "errors so far: %d client, %d server", now - w[0], w[1], w[2], w[2] / max(w[3], 1e-9),
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
    """Run one request body through the slot's handler (the contract's three calls).

    Returns the answer body and the number of reviews. Raises :class:`RequestError` for bad
    input (the caller answers 4xx); anything else raised by ``predict_fn``/``output_fn`` is a
    server fault.
    """
    try:
        data = slot.handler.input_fn(body, content_type)
    except Exception as exc:  # noqa: BLE001 - parsing user input: every failure is the client's
        raise _client_error(exc) or RequestError(400, f"cannot read the request: {type(exc).__name__}: {exc}") from exc
    with STATE.infer_lock:
        prediction = slot.handler.predict_fn(data, slot.model)
    try:
        out = slot.handler.output_fn(prediction, accept)
    except Exception as exc:  # noqa: BLE001
        client = _client_error(exc)
        if client is not None:
            raise client from exc
        raise
    if isinstance(out, tuple):  # handlers in the lab's style return (body, content_type)
        out = out[0]
    count = len(data["texts"]) if isinstance(data, dict) and "texts" in data else 1
    return (out.decode() if isinstance(out, bytes) else str(out)), count


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


def _error(status: int, message: str, version: str | None = None) -> JSONResponse:
    if status >= 500:
        STATE.server_errors += 1
    else:
        STATE.client_errors += 1
    headers = {"X-Model-Version": version} if version else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _admin_refusal(request: Request) -> JSONResponse | None:
    host = request.client.host if request.client else ""
    if host not in LOOPBACK:
        return JSONResponse({"error": "admin routes answer loopback clients only"}, status_code=403)
    token = request.headers.get("x-admin-token", "")
    if not STATE.admin_token or not hmac.compare_digest(token, STATE.admin_token):
        return JSONResponse({"error": "missing or wrong X-Admin-Token"}, status_code=403)
    return None


app = FastAPI(title="review-sentiment endpoint", docs_url=None, redoc_url=None)


@app.get("/ping")
def ping() -> JSONResponse:
    """Health check: 200 once a model is loaded (SageMaker's contract)."""
    slot = STATE.slot
    if slot is None:
        return JSONResponse({"status": "loading"}, status_code=503)
    return JSONResponse({"status": "healthy", "model_version": slot.version},
                        headers={"X-Model-Version": slot.version})


@app.post("/invocations")
async def invocations(request: Request) -> Response:
    """Classify the reviews in the body (JSON Lines or JSON) with the served model."""
    STATE.requests += 1
    slot = STATE.slot  # read once: a swap during this request does not affect it
    if slot is None:
        return _error(503, "no model is loaded yet; retry after GET /ping answers 200")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return _error(413, f"body of {declared} bytes exceeds the {MAX_BODY_BYTES}-byte limit; split the request",
                      slot.version)
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return _error(413, f"body of {len(body)} bytes exceeds the {MAX_BODY_BYTES}-byte limit; split the request",
                      slot.version)
    content_type = request.headers.get("content-type", "")
    accept = _negotiate(request.headers.get("accept", ""), content_type)
    started = time.monotonic()
    try:
        out, count = await _run_in_thread(infer, slot, body, content_type, accept)
    except RequestError as exc:
        return _error(exc.status, str(exc), slot.version)
    except Exception as exc:  # noqa: BLE001 - a model fault: log it, answer 500 with the reason
        logger.exception("inference failed on version %s", slot.version)
        return _error(500, f"inference failed: {type(exc).__name__}: {exc}", slot.version)
    STATE.record(count, time.monotonic() - started)
    media = _media(accept)
    if media not in ("application/json",):
        media = JSONLINES
    return Response(out, media_type=media, headers={"X-Model-Version": slot.version})


async def _run_in_thread(fn, *args):
    # The forward pass blocks; run it off the event loop so /ping and new requests stay responsive.
    return await run_in_threadpool(fn, *args)


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
        "loaded_at": slot.loaded_at if slot else None, "requests": STATE.requests, "reviews": STATE.reviews,
        "client_errors": STATE.client_errors, "server_errors": STATE.server_errors})


@app.post("/admin/load")
def admin_load(request: Request, payload: dict) -> JSONResponse:
    """Load a package beside the served one, smoke-test it, and swap only if both succeed."""
    refusal = _admin_refusal(request)
    if refusal:
        return refusal
    model_dir, version = payload.get("model_dir"), payload.get("version")
    smoke_texts = payload.get("smoke_texts") or []
    if not isinstance(model_dir, str) or not isinstance(version, str) or not isinstance(smoke_texts, list):
        return JSONResponse({"error": 'send {"model_dir": str, "version": str, "smoke_texts": [str, ...]}'},
                            status_code=400)
    if not STATE.admin_lock.acquire(blocking=False):
        return JSONResponse({"error": "another load is in progress; retry when it ends"}, status_code=409)
    try:
        started = time.monotonic()
        try:
            candidate = load_slot(model_dir, version)
            smoke = smoke_test(candidate, smoke_texts) if smoke_texts else []
        except ModelLoadError as exc:
            logger.error("load of version %s refused, still serving %s: %s",
                         version, STATE.slot.version if STATE.slot else None, exc)
            return JSONResponse({"error": str(exc)}, status_code=422)
        previous = STATE.slot
        STATE.slot = candidate  # the swap: one reference assignment
        if previous is not None:
            sys.modules.pop(previous.handler.__name__, None)
        del previous
        gc.collect()
        seconds = time.monotonic() - started
        logger.info("now serving version %s from %s (load + smoke %.1fs)", version, model_dir, seconds)
        return JSONResponse({"model_version": version, "smoke": smoke, "load_seconds": round(seconds, 2)})
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    try:
        STATE.slot = load_slot(args.model_dir, args.version)
    except ModelLoadError as exc:
        logger.error("cannot start: %s", exc)
        return 1
    logger.info("version %s loaded in %.1fs; listening on %s:%d (pid %d)",
                args.version, time.monotonic() - started, args.host, args.port, os.getpid())
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False,
                timeout_graceful_shutdown=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
