"""The model server (include/serving/server.py + batching.py) as a real process on loopback.

One server per module (a packaged MiniLM classifier, fp32, batching on, an API key and small
limits so they are cheap to reach); the graceful-shutdown test starts its own.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from include.model.packaging import build_package, extract_package
from include.serving.protocol import API_KEY_ENV, MAX_BODY_BYTES, SMOKE_REVIEWS

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-key-0123456789"
MAX_REVIEWS = 8
MAX_TEXT_CHARS = 2000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(model_dir: Path, log: Path, *flags: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "INFERENCE_NUM_THREADS": "1",
                "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "include.serving.server", "--model-dir", str(model_dir),
                             "--version", "7", "--port", str(port), *flags],
                            cwd=ROOT, env=full_env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.25)
    proc.kill()
    raise AssertionError(f"server did not start: {log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def served_dir(classifier_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("server-model")
    return extract_package(build_package(classifier_dir, (root / "pkg").as_uri()), root / "model")


@pytest.fixture(scope="module")
def minilm_served_dir(minilm_classifier_dir, tmp_path_factory) -> Path:
    """The real MiniLM served: its forward passes are slow enough to keep requests in flight."""
    root = tmp_path_factory.mktemp("minilm-server-model")
    return extract_package(build_package(minilm_classifier_dir, (root / "pkg").as_uri()), root / "model")


@pytest.fixture(scope="module")
def server(served_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("server-log") / "server.log"
    proc, url = _start(served_dir, log, "--max-batch-size", "32", "--max-wait-ms", "20",
                       "--max-reviews", str(MAX_REVIEWS), "--max-text-chars", str(MAX_TEXT_CHARS),
                       env={API_KEY_ENV: KEY})
    yield {"url": url, "log": log, "proc": proc}
    proc.terminate()
    proc.wait(40)


def _post(url: str, body, content_type: str = "application/json", key: str | None = KEY, **headers) -> httpx.Response:
    h = {"Content-Type": content_type, **headers}
    if key:
        h["X-Api-Key"] = key
    return httpx.post(f"{url}/invocations", content=body, headers=h, timeout=120)


def _metrics(url: str) -> dict[str, list]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {fam.name: fam.samples for fam in text_string_to_metric_families(text)}


# ---------------------------------------------------------------- batching

def test_concurrent_requests_share_forward_passes_and_each_gets_its_own_answer(server):
    texts = [f"{SMOKE_REVIEWS[i % 3]} {'really ' * i}" for i in range(16)]
    alone = [_post(server["url"], json.dumps(t)).json() for t in texts]
    before = _metrics(server["url"])["endpoint_batch_size_requests"]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda t: _post(server["url"], json.dumps(t)), texts))
    assert [r.status_code for r in together] == [200] * 16
    for single, batched in zip(alone, (r.json() for r in together)):
        assert isinstance(batched, dict)  # one review in, one object out, even inside a batch
        for label, p in single["probabilities"].items():
            assert abs(batched["probabilities"][label] - p) < 1e-3  # padding is masked: same maths
    after = _metrics(server["url"])["endpoint_batch_size_requests"]

    def value(samples, name):
        return next(s.value for s in samples if s.name == name)

    passes = value(after, "endpoint_batch_size_requests_count") - value(before, "endpoint_batch_size_requests_count")
    requests = value(after, "endpoint_batch_size_requests_sum") - value(before, "endpoint_batch_size_requests_sum")
    assert requests == 16
    assert passes < 16  # at least one forward pass served several requests


def test_a_request_of_several_reviews_keeps_its_order_and_shape(server):
    resp = _post(server["url"], json.dumps(list(SMOKE_REVIEWS)))
    assert resp.status_code == 200
    answers = resp.json()
    assert len(answers) == 3 and all(a["model_version"] == "7" for a in answers)
    singles = [_post(server["url"], json.dumps(t)).json()["probabilities"] for t in SMOKE_REVIEWS]
    for a, p in zip(answers, singles):
        assert all(abs(a["probabilities"][k] - v) < 1e-3 for k, v in p.items())


# ---------------------------------------------------------------- operations

def test_metrics_expose_requests_latency_batches_version_and_queue_depth(server):
    _post(server["url"], json.dumps("Lovely fabric"))
    _post(server["url"], b"not json")
    m = _metrics(server["url"])
    by_status = {(s.labels["path"], s.labels["status"]) for s in m["endpoint_requests"] if s.name.endswith("_total")}
    assert ("/invocations", "200") in by_status and ("/invocations", "400") in by_status
    assert any(s.name == "endpoint_request_latency_seconds_count" and s.value >= 2
               for s in m["endpoint_request_latency_seconds"])
    assert any(s.name.endswith("_bucket") for s in m["endpoint_batch_size_reviews"])
    assert [(s.labels, s.value) for s in m["endpoint_model_info"]] == [
        ({"version": "7", "precision": "fp32", "runtime": "torch"}, 1.0)]
    assert [s.value for s in m["endpoint_queue_depth"]] == [0.0]


def test_every_request_writes_one_json_access_log_line_with_its_latency(server):
    def lines() -> list[dict]:
        return [json.loads(line.split("reviews.access: ", 1)[1]) for line in server["log"].read_text().splitlines()
                if "reviews.access: " in line]

    before = len(lines())
    _post(server["url"], json.dumps(["Nice", "Bad"]))
    _post(server["url"], json.dumps("x"), key=None)
    deadline = time.monotonic() + 10
    while len(lines()) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    ok, refused = lines()[before:before + 2]
    assert ok["path"] == "/invocations" and ok["status"] == 200 and ok["reviews"] == 2
    assert ok["model_version"] == "7" and ok["latency_ms"] > 0
    assert refused["status"] == 401 and refused["reviews"] is None


def test_invocations_need_the_api_key_when_one_is_configured(server):
    assert _post(server["url"], json.dumps("x"), key=None).status_code == 401
    wrong = _post(server["url"], json.dumps("x"), key="nope")
    assert wrong.status_code == 401 and "wrong API key" in wrong.json()["error"]
    bearer = _post(server["url"], json.dumps("x"), key=None, Authorization=f"Bearer {KEY}")
    assert bearer.status_code == 200
    assert httpx.get(f"{server['url']}/ping", timeout=5).status_code == 200  # health checks stay open


def test_graceful_shutdown_lets_requests_in_flight_finish(minilm_served_dir, tmp_path):
    proc, url = _start(minilm_served_dir, tmp_path / "server.log")
    body = json.dumps([SMOKE_REVIEWS[0] * 3] * 8)
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(_post, url, body, key=None) for _ in range(6)]
        deadline, inflight = time.monotonic() + 30, 0
        # SIGTERM only once all six are in flight: a request not yet connected when the server
        # stops listening is refused, which is right for a stopping server but not what this tests
        while time.monotonic() < deadline and inflight < 7:  # the /metrics request itself counts too
            inflight = next(s.value for s in _metrics(url)["endpoint_requests_in_flight"])
            time.sleep(0.02)
        assert inflight >= 7, f"only {inflight - 1} of 6 requests reached the server in 30 s"
        proc.send_signal(signal.SIGTERM)
        statuses = [f.result().status_code for f in futures]
    assert statuses == [200] * 6
    assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
    assert "in-flight requests drained" in (tmp_path / "server.log").read_text()


# ---------------------------------------------------------------- limits (issue #18: oversized bodies)

def test_a_10_mb_body_gets_413_and_its_message_not_a_reset_connection(server):
    # urllib sends the whole body before it reads the answer: a server that answers early and
    # closes made it fail with ECONNRESET (httpx and curl happened to read the early answer)
    import urllib.error
    import urllib.request

    body = b'["' + b"x" * (10 * 1024 * 1024) + b'"]'
    request = urllib.request.Request(f"{server['url']}/invocations", data=body,
                                     headers={"Content-Type": "application/json", "X-Api-Key": KEY})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413
    assert f"exceeds the {MAX_BODY_BYTES}-byte limit" in json.loads(refused.value.read())["error"]
    assert _post(server["url"], body).status_code == 413  # and with httpx


def test_a_streamed_oversized_body_without_content_length_gets_413(server):
    def chunks():
        for _ in range(160):  # 10 MB in 64 KiB chunks, sent chunked (no Content-Length)
            yield b"y" * 65536

    resp = _post(server["url"], chunks())
    assert resp.status_code == 413 and "byte limit" in resp.json()["error"]


def test_too_many_reviews_in_one_request_get_413_naming_the_limit(server):
    resp = _post(server["url"], json.dumps(["fine"] * (MAX_REVIEWS + 1)))
    assert resp.status_code == 413
    assert f"the limit is {MAX_REVIEWS} per request" in resp.json()["error"]
    assert _post(server["url"], json.dumps(["fine"] * MAX_REVIEWS)).status_code == 200


def test_a_too_long_review_gets_413_naming_the_limit(server):
    resp = _post(server["url"], "\n".join(json.dumps({"features": [t]}) for t in ["ok", "z" * (MAX_TEXT_CHARS + 1)]),
                 "application/jsonlines")
    assert resp.status_code == 413
    assert f"review 1 has {MAX_TEXT_CHARS + 1} characters; the limit is {MAX_TEXT_CHARS}" in resp.json()["error"]


# ---------------------------------------------------------------- fuzzing: no input gets a 500

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["features", "instances", "text", "x"]) | st.text(max_size=8), inner, max_size=3),
    max_leaves=8)
BODIES = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.lists(JSON_VALUES, max_size=4).map(lambda rows: "\n".join(json.dumps(r) for r in rows).encode()),
)
MEDIA = st.sampled_from(["application/json", "application/jsonlines", "application/x-ndjson", "text/plain", "",
                         "application/json; charset=latin-1", "*/*", "application/json,text/csv", "garbage;;="])


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES, content_type=MEDIA, accept=MEDIA)
def test_fuzzed_requests_never_get_a_500(server, body, content_type, accept):
    resp = httpx.post(f"{server['url']}/invocations", content=body, timeout=60,
                      headers={"Content-Type": content_type, "Accept": accept, "X-Api-Key": KEY})
    assert resp.status_code < 500, (body, content_type, accept, resp.text)
    if resp.status_code >= 400:
        assert resp.json()["error"]  # a message saying what is wrong


@settings(max_examples=400, deadline=None, database=None)
@given(body=BODIES, content_type=MEDIA)
def test_fuzzed_bodies_parse_or_fail_as_a_client_error(body, content_type):
    from include.scripts import inference

    try:
        data = inference.input_fn(body, content_type)
    except inference.InferenceInputError as exc:
        assert 400 <= exc.status_code < 500 and str(exc)
        return
    assert data["texts"] and all(isinstance(t, str) and t.strip() for t in data["texts"])


# ---------------------------------------------------------------- what the server loads

def test_a_package_with_pickle_weights_is_refused(served_dir, tmp_path):
    from include.serving.server import ModelLoadError, load_slot

    folder = tmp_path / "m"
    shutil.copytree(served_dir, folder)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ModelLoadError, match="pickle-format weights.*pytorch_model.bin.*safetensors only"):
        load_slot(str(folder), "9")


def test_batcher_refuses_bad_settings():
    from include.serving.batching import Batcher, BatchingConfigError

    with pytest.raises(BatchingConfigError, match="max_batch_size=0"):
        Batcher(max_batch_size=0)
    with pytest.raises(BatchingConfigError, match="max_wait_ms=-1"):
        Batcher(max_wait_ms=-1)


def test_server_refuses_to_start_with_a_bad_limit(served_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REVIEWS_ENDPOINT_MAX_REVIEWS": "0"}
    done = subprocess.run([sys.executable, "-m", "include.serving.server", "--model-dir", str(served_dir),
                           "--version", "1", "--port", str(_free_port())], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "REVIEWS_ENDPOINT_MAX_REVIEWS: 0 must be in 1..10000" in done.stderr



def test_a_joblib_model_is_served_only_when_the_package_manifest_pins_its_checksum(tmp_path):
    # The AutoML baseline (scikit-learn) has no safetensors format: model.joblib is accepted only
    # as packaged by include/model/packaging.py, whose manifest carries every file's sha256.
    import hashlib

    from include.serving.server import ModelLoadError, check_safetensors_only

    folder = tmp_path / "baseline"
    folder.mkdir()
    (folder / "model.joblib").write_bytes(b"fitted pipeline bytes")
    digest = hashlib.sha256(b"fitted pipeline bytes").hexdigest()
    (folder / "package-manifest.json").write_text(json.dumps({"format": 1, "files": {
        "model.joblib": {"sha256": digest, "bytes": 21}}}))
    check_safetensors_only(folder)  # pinned: accepted
    (folder / "model.joblib").write_bytes(b"tampered after packaging")
    with pytest.raises(ModelLoadError, match="pickle-format weights.*model.joblib"):
        check_safetensors_only(folder)
    (folder / "package-manifest.json").unlink()
    with pytest.raises(ModelLoadError, match="pickle-format weights"):
        check_safetensors_only(folder)


def test_an_onnx_model_is_loaded_only_as_packaged_with_its_checksum_pinned(served_dir, tmp_path):
    # The int8 model ships as model.int8.onnx, exported by build_package(int8_onnx=True) and pinned
    # by the manifest; any other ONNX file, or this one changed after packaging, is refused.
    import hashlib

    from include.serving.server import ModelLoadError, check_safetensors_only

    folder = tmp_path / "m"
    shutil.copytree(served_dir, folder)
    manifest_path = folder / "package-manifest.json"
    manifest = json.loads(manifest_path.read_text())
    onnx = folder / "model.int8.onnx"
    onnx.write_bytes(b"an onnx graph")
    with pytest.raises(ModelLoadError, match=r"ONNX files the package manifest does not pin \(model.int8.onnx\)"):
        check_safetensors_only(folder)  # not in the manifest
    manifest["files"]["model.int8.onnx"] = {"sha256": hashlib.sha256(b"an onnx graph").hexdigest(), "bytes": 13}
    manifest_path.write_text(json.dumps(manifest))
    check_safetensors_only(folder)  # pinned: accepted
    onnx.write_bytes(b"another graph")
    with pytest.raises(ModelLoadError, match="does not pin"):
        check_safetensors_only(folder)  # changed after packaging
    onnx.write_bytes(b"an onnx graph")
    (folder / "code" / "extra.onnx").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"code/extra.onnx, model.int8.onnx"):
        check_safetensors_only(folder)  # only the one file our packaging writes


class _Gated:
    """A slot for the Batcher alone: predict_fn records how many passes overlap."""

    def __init__(self, parallel: int) -> None:
        import threading

        self.gate = threading.BoundedSemaphore(parallel)
        self.model = None
        self.running = 0
        self.most = 0
        self.batches: list[list[str]] = []
        self._lock = threading.Lock()
        self.handler = self

    def predict_fn(self, data, _model):
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.batches.append(list(data["texts"]))
        time.sleep(0.05)
        with self._lock:
            self.running -= 1
        return {"label_ids": [0] * len(data["texts"]), "single": False}


def _submit_all(batcher, slot, groups: list[list[str]], pause_s: float = 0.0) -> list:
    import asyncio

    async def go():
        tasks = []
        for texts in groups:
            tasks.append(asyncio.ensure_future(batcher.submit(slot, {"texts": texts, "single": False})))
            await asyncio.sleep(pause_s)
        return await asyncio.gather(*tasks)

    return asyncio.run(go())


@pytest.mark.parametrize("parallel", [1, 2])
def test_batcher_runs_as_many_passes_at_once_as_the_model_allows(parallel):
    from include.serving.batching import Batcher

    slot = _Gated(parallel)
    batcher = Batcher(max_batch_size=1, max_wait_ms=0, workers=2)
    try:
        out = _submit_all(batcher, slot, [[f"r{i}"] for i in range(8)])
    finally:
        batcher.close()
    assert [o["label_ids"] for o in out] == [[0]] * 8 and len(slot.batches) == 8
    assert slot.most == parallel  # torch models (1) never overlap; onnxruntime sessions (2) do


def test_a_lone_request_runs_at_once_and_a_request_on_its_way_is_waited_for():
    from include.serving.batching import Batcher

    arriving = {"n": 0}
    for on_its_way, expected in ((0, [["a"], ["b"]]), (1, [["a", "b"]])):
        arriving["n"] = on_its_way
        slot = _Gated(1)
        batcher = Batcher(max_batch_size=32, max_wait_ms=1000, arriving=lambda: arriving["n"])
        try:
            _submit_all(batcher, slot, [["a"], ["b"]], pause_s=0.2)
        finally:
            batcher.close()
        # nothing arriving: "a" is answered without waiting, so "b" (0.2 s later) makes its own batch;
        # a request on its way: the batch waits (up to max_wait) and takes "b" too
        assert slot.batches == expected
