"""The local endpoint (include/endpoint.py + include/serving/server.py) as a real background process.

The server is started once per module on a free loopback port and reused; a test that needs
it running calls the ``serving`` fixture, which (re)deploys version 101 if it is not up.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
import torch
from safetensors.torch import load_file, save_file

from include.model.packaging import build_package
from include.model.registry import get_registry
from include.model.registry_base import APPROVED, PENDING
from include.pipeline.model_steps import ModelNotApprovedError, deploy_model
from include.serving.endpoint import get_endpoint
from include.serving.endpoint_base import EndpointDeployError, EndpointNotRunningError
from include.serving.protocol import SMOKE_REVIEWS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    home = tmp_path_factory.mktemp("endpoint-state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REVIEWS_HOME", str(home))
        mp.setenv("REVIEWS_BACKEND", "local")
        mp.setenv("INFERENCE_NUM_THREADS", "1")  # the server inherits it: be gentle with shared cores
        mp.setenv("ENDPOINT_PORT", str(_free_port()))
        yield home
        get_endpoint().stop()


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """Two MiniLM classifiers with different random 3-class heads (``a`` and ``b``)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from include.scripts.common import ID2LABEL, LABEL2ID, default_model_dir

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        default_model_dir(), num_labels=3, id2label=ID2LABEL, label2id=LABEL2ID)
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    dirs = {}
    for name in ("a", "b"):
        out = tmp_path_factory.mktemp(f"endpoint-model-{name}")
        torch.nn.init.normal_(model.classifier.weight, std=0.5)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        dirs[name] = out
    return dirs


@pytest.fixture(scope="module")
def packages(model_dirs, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("endpoint-packages")
    # with the int8 ONNX model, as register_model builds them (int8 deploys run on onnxruntime)
    return {name: build_package(d, (root / name).as_uri(), int8_onnx=True) for name, d in model_dirs.items()}


@pytest.fixture
def serving(state_dir, packages) -> dict:
    """The endpoint, running (deployed as version 101 if it was not)."""
    info = get_endpoint().status()
    if info is None or not info["healthy"]:
        get_endpoint().deploy(packages["a"], "101", SMOKE_REVIEWS)
        info = get_endpoint().status()
    return info


def _post(url: str, body: bytes | str, content_type: str, accept: str | None = None) -> httpx.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    if accept:
        headers["Accept"] = accept
    return httpx.post(f"{url}/invocations", content=body, headers=headers, timeout=60)


# ---------------------------------------------------------------- start and the contract

def test_deploy_starts_a_detached_background_server(state_dir, packages):
    get_endpoint().stop()
    info = get_endpoint().deploy(packages["a"], "101", SMOKE_REVIEWS)
    assert info["mode"] == "started" and info["version"] == "101"
    assert [s["text"] for s in info["smoke"]] == list(SMOKE_REVIEWS)
    assert all(s["predicted_label"] in (-1, 0, 1) for s in info["smoke"])
    files = state_dir / "endpoint"
    assert int((files / "pid").read_text()) == info["pid"]
    assert int((files / "port").read_text()) == info["port"] == int(os.environ["ENDPOINT_PORT"])
    assert (files / "models" / "101" / "code" / "inference.py").is_file()
    assert psutil.pid_exists(info["pid"])
    assert os.getsid(info["pid"]) != os.getsid(0)  # own session: survives the task that deployed it
    ping = httpx.get(f"{info['url']}/ping", timeout=5)
    assert ping.status_code == 200 and ping.json()["model_version"] == "101"


def test_jsonlines_contract_of_the_lab_client(serving):
    # What the sagemaker SDK's JSONLinesSerializer sends and JSONLinesDeserializer reads.
    records = [{"features": [text]} for text in SMOKE_REVIEWS]
    resp = _post(serving["url"], "\n".join(json.dumps(r) for r in records), "application/jsonlines",
                 "application/jsonlines")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/jsonlines")
    answers = [json.loads(line) for line in resp.text.splitlines()]
    assert len(answers) == 3
    for answer in answers:
        assert set(answer) == {"predicted_label", "probability"}
        assert answer["predicted_label"] in (-1, 0, 1) and 0 < answer["probability"] <= 1


def test_json_one_review_or_a_list_carries_label_probabilities_and_version(serving):
    one = _post(serving["url"], json.dumps(SMOKE_REVIEWS[0]), "application/json")
    assert one.status_code == 200 and one.headers["x-model-version"] == serving["version"]
    answer = one.json()
    assert answer["label"] in ("negative", "neutral", "positive")
    assert answer["predicted_label"] == {"negative": -1, "neutral": 0, "positive": 1}[answer["label"]]
    assert sum(answer["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert answer["model_version"] == serving["version"]
    many = _post(serving["url"], json.dumps({"instances": list(SMOKE_REVIEWS)}), "application/json").json()
    assert [a["model_version"] for a in many] == [serving["version"]] * 3


@pytest.mark.parametrize("body, content_type, status, message", [
    ("{not json", "application/json", 400, "malformed JSON"),
    ('{"features": ["ok"]}\n{broken', "application/jsonlines", 400, "line 2: malformed JSON"),
    ("review,label\nnice,1", "text/csv", 415, "text/csv"),
    ('"nice"', "", 415, "not supported"),
    ('{"review": "nice"}', "application/jsonlines", 400, '"features"'),
    ('{"features": []}', "application/jsonlines", 400, "non-empty list"),
    ("[]", "application/json", 400, "no reviews"),
    ("", "application/jsonlines", 400, "no reviews"),
])
def test_bad_requests_answer_4xx_with_a_clear_message_never_500(serving, body, content_type, status, message):
    resp = _post(serving["url"], body, content_type)
    assert resp.status_code == status
    assert message in resp.json()["error"]


def test_accept_negotiation_prefers_a_listed_json_type_else_the_request_type(serving):
    browser = _post(serving["url"], '"nice"', "application/json", accept="text/html,application/json;q=0.9,*/*")
    assert browser.status_code == 200 and browser.headers["content-type"].startswith("application/json")
    wildcard = _post(serving["url"], '{"features": ["nice"]}', "application/jsonlines", accept="*/*")
    assert wildcard.headers["content-type"].startswith("application/jsonlines")
    cross = _post(serving["url"], '{"features": ["nice"]}', "application/jsonlines", accept="application/json")
    assert cross.json()[0]["model_version"] == serving["version"]


def test_unsupported_accept_answers_406_and_oversized_body_413(serving):
    resp = _post(serving["url"], '"nice"', "application/json", accept="text/csv")
    assert resp.status_code == 406 and "text/csv" in resp.json()["error"]
    big = json.dumps(["x" * 1000] * 7000)
    resp = _post(serving["url"], big, "application/json")
    assert resp.status_code == 413 and "limit" in resp.json()["error"]


def test_admin_routes_need_the_token(serving):
    resp = httpx.post(f"{serving['url']}/admin/load", json={"model_dir": "/x", "version": "9"}, timeout=5)
    assert resp.status_code == 403
    assert httpx.get(f"{serving['url']}/admin/status", headers={"X-Admin-Token": "wrong"}, timeout=5).status_code == 403


def test_predict_client_and_cli(serving):
    answers = get_endpoint().predict(["Runs small, but lovely fabric.", "Returned it."])
    assert len(answers) == 2 and answers[0]["model_version"] == serving["version"]
    cli = subprocess.run([sys.executable, "-m", "include.serving.endpoint", "status"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    status = json.loads(cli.stdout)
    assert cli.returncode == 0 and status["serving_version"] == serving["version"]
    assert status["traffic"]["requests"] >= 1 and status["traffic"]["server_errors"] == 0
    cli = subprocess.run([sys.executable, "-m", "include.serving.endpoint", "predict", "Great jeans"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and json.loads(cli.stdout)[0]["label"] in ("negative", "neutral", "positive")


# ---------------------------------------------------------------- redeploy

class _Hammer(threading.Thread):
    """Sends requests in a loop and records (status, answering version) of each."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.results, self.errors = url, [], []
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.halt.is_set():
                try:
                    resp = client.post(f"{self.url}/invocations", content=json.dumps(list(SMOKE_REVIEWS[:2])),
                                       headers={"Content-Type": "application/json"})
                    self.results.append((resp.status_code, resp.headers.get("x-model-version")))
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))

    def wait_for(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.results) < n and time.monotonic() < deadline:
            time.sleep(0.05)


def test_redeploy_swaps_the_version_with_zero_failed_requests(serving, packages):
    old = serving["version"]
    new, package = ("102", packages["b"]) if old != "102" else ("101", packages["a"])
    hammer = _Hammer(serving["url"])
    hammer.start()
    try:
        hammer.wait_for(3)
        info = get_endpoint().deploy(package, new, SMOKE_REVIEWS)
        done = len(hammer.results)
        hammer.wait_for(done + 3)
    finally:
        hammer.halt.set()
        hammer.join(60)
    assert info["mode"] == "swapped" and info["previous_version"] == old
    assert info["pid"] == serving["pid"] and info["port"] == serving["port"]  # same process, same port
    assert hammer.errors == []
    assert {status for status, _ in hammer.results} == {200}
    versions = [v for _, v in hammer.results]
    assert versions[0] == old and versions[-1] == new
    assert versions == sorted(versions, key=lambda v: v == new)  # old answers, then only new ones
    assert get_endpoint().status()["serving_version"] == new


def test_redeploying_the_served_version_only_smoke_tests_it(serving, packages):
    package = get_endpoint().status()["package_uri"]
    info = get_endpoint().deploy(package, serving["version"], SMOKE_REVIEWS[:1])
    assert info["mode"] == "unchanged" and info["pid"] == serving["pid"]


def _assert_still_serving(before: dict) -> None:
    after = get_endpoint().status()
    assert after["pid"] == before["pid"] and after["serving_version"] == before["version"]
    assert after["version"] == before["version"]
    assert get_endpoint().predict(["Still here?"])[0]["model_version"] == before["version"]


def _corrupt_weights(package_uri: str, dest: Path) -> str:
    """A copy of the package whose model.safetensors bytes were damaged after packaging."""
    with tarfile.open(package_uri.removeprefix("file://"), "r:gz") as tar:
        items = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    with tarfile.open(dest, "w:gz", compresslevel=1) as tar:
        for member, data in items:
            if member.name == "model.safetensors":
                data = data[:1000] + bytes(b ^ 0xFF for b in data[1000:2000]) + data[2000:]
            tar.addfile(member, io.BytesIO(data))
    return dest.as_uri()


def test_corrupted_package_fails_deploy_and_the_previous_version_keeps_serving(serving, packages, tmp_path):
    broken = _corrupt_weights(packages["a"], tmp_path / "model.tar.gz")
    with pytest.raises(EndpointDeployError, match="model.safetensors does not match its checksum"):
        get_endpoint().deploy(broken, "201", SMOKE_REVIEWS)
    _assert_still_serving(serving)


def test_unloadable_package_fails_deploy_and_the_previous_version_keeps_serving(serving, model_dirs, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(model_dirs["a"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "no-such-architecture"}))
    package = build_package(folder, (tmp_path / "p").as_uri())
    with pytest.raises(EndpointDeployError, match="refused version 202.*loading"):
        get_endpoint().deploy(package, "202", SMOKE_REVIEWS)
    _assert_still_serving(serving)


def test_model_failing_the_smoke_test_is_not_swapped_in(serving, model_dirs, tmp_path):
    folder = tmp_path / "nan"
    shutil.copytree(model_dirs["b"], folder)
    weights = load_file(folder / "model.safetensors")
    weights["classifier.weight"] = torch.full_like(weights["classifier.weight"], float("nan"))
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    package = build_package(folder, (tmp_path / "p").as_uri())
    with pytest.raises(EndpointDeployError, match="smoke test of version 203 failed.*non-finite"):
        get_endpoint().deploy(package, "203", SMOKE_REVIEWS)
    _assert_still_serving(serving)


def test_deploy_to_a_busy_port_fails_clearly_and_keeps_the_old_server(serving, packages):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        with pytest.raises(EndpointDeployError, match=f"port {busy} .* is in use"):
            get_endpoint().deploy(packages["b"], "204", SMOKE_REVIEWS, port=busy)
    _assert_still_serving(serving)


# ---------------------------------------------------------------- the deploy step (registry + endpoint)

def test_deploy_model_refuses_unapproved_then_serves_and_marks_deployed(serving, packages):
    registry = get_registry()
    mv = registry.register(packages["b"], {"accuracy": 0.7},
                           {"dag_id": "review_sentiment_pipeline", "run_id": f"test-{time.time()}"}, PENDING)
    with pytest.raises(ModelNotApprovedError, match="PendingManualApproval"):
        deploy_model(mv.version)
    registry.set_approval(mv.version, APPROVED, "ok")
    info = deploy_model(mv.version)
    assert info["version"] == mv.version and info["approval_status"] == APPROVED
    assert registry.deployed_version().version == mv.version
    assert get_endpoint().status()["serving_version"] == mv.version


def test_load_during_an_int8_redeploy_under_batching_sees_zero_failed_requests(serving, packages):
    old = get_endpoint().status()["version"]
    new, package = ("105", packages["b"]) if old != "105" else ("106", packages["a"])
    hammers = [_Hammer(serving["url"]) for _ in range(6)]  # concurrent clients: the batcher merges them
    for h in hammers:
        h.start()
    try:
        for h in hammers:
            h.wait_for(2)
        info = get_endpoint().deploy(package, new, SMOKE_REVIEWS, precision="int8")
        counts = [len(h.results) for h in hammers]
        for h, n in zip(hammers, counts):
            h.wait_for(n + 2)
    finally:
        for h in hammers:
            h.halt.set()
        for h in hammers:
            h.join(60)
    assert info["mode"] == "swapped" and info["precision"] == "int8"
    assert [e for h in hammers for e in h.errors] == []
    assert {status for h in hammers for status, _ in h.results} == {200}
    assert all(h.results[-1][1] == new for h in hammers)
    metrics = httpx.get(f"{serving['url']}/metrics", timeout=10).text
    assert f'endpoint_model_info{{precision="int8",runtime="onnxruntime",version="{new}"}} 1.0' in metrics


def _test_split(folder: Path, texts: list[str], labels: list[int]) -> str:
    """A feature-store-shaped run folder: <features>/train (unused here) and <features>/test shards."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "test").mkdir(parents=True)
    pq.write_table(pa.table({"review_body": texts, "label_id": labels}), folder / "test" / "part-0.parquet")
    return (folder / "train").as_uri()


def _register_approved(package: str, lineage: dict | None = None):
    registry = get_registry()
    mv = registry.register(package, {"accuracy": 0.7}, {"dag_id": "review_sentiment_pipeline",
                                                       "run_id": f"test-{time.time()}", **(lineage or {})}, APPROVED)
    return registry, mv


def test_deploy_decides_int8_on_the_runs_test_split_and_records_it(serving, packages, tmp_path):
    from include.model.packaging import extract_package
    from include.serving.server import load_slot

    texts = [*SMOKE_REVIEWS, "Runs small.", "Perfect fit, love it", "Fell apart after one wash"]
    slot = load_slot(str(extract_package(packages["a"], tmp_path / "a")), "x")
    labels = slot.handler.predict_fn({"texts": texts}, slot.model)["label_ids"]  # so fp32 scores exactly 1.0
    registry, mv = _register_approved(packages["a"], {"train_data_uri": _test_split(tmp_path / "f", texts, labels)})
    info = deploy_model(mv.version)
    decision = info["precision_decision"]
    assert decision["fp32_accuracy"] == 1.0 and decision["eval_rows"] == len(texts)
    drop = (decision["fp32_accuracy"] - decision["int8_accuracy"]) * 100
    assert decision["precision"] == ("int8" if drop <= 0.5 else "fp32") == info["precision"]
    recorded = registry.get(mv.version).serving  # the registry entry carries the decision and both accuracies
    assert recorded["precision"] == decision["precision"]
    assert float(recorded["fp32_accuracy"]) == 1.0 and float(recorded["int8_accuracy"]) == decision["int8_accuracy"]
    assert get_endpoint().status()["precision"] == decision["precision"]
    assert get_endpoint().status()["runtime"] == ("onnxruntime" if decision["precision"] == "int8" else "torch")
    assert decision["int8_runtime"] == recorded["int8_runtime"] == "onnxruntime"  # the package's int8 ONNX model


def test_rollback_serves_the_previous_approved_version_again(serving, packages):
    from include.pipeline.model_steps import RollbackError, rollback_model

    registry, first = _register_approved(packages["a"])
    _, second = _register_approved(packages["b"])
    deploy_model(second.version, precision="fp32")
    info = rollback_model()
    assert info["rolled_back_from"] == second.version and info["version"] == first.version
    assert registry.deployed_version().version == first.version
    assert get_endpoint().status()["serving_version"] == first.version
    oldest = next(v for v in registry.list_versions() if v.approval_status == APPROVED)
    deploy_model(oldest.version, precision="fp32")
    with pytest.raises(RollbackError, match="no older version is Approved"):
        rollback_model()


# ---------------------------------------------------------------- stop, and a start that fails

def test_stop_stops_the_server_and_removes_the_pid_file(serving, state_dir):
    pid = serving["pid"]
    assert get_endpoint().stop() is True
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not (state_dir / "endpoint" / "pid").exists()
    assert get_endpoint().status() is None
    assert get_endpoint().stop() is False
    with pytest.raises(EndpointNotRunningError):
        get_endpoint().predict(["anyone?"])


def test_failed_first_start_leaves_nothing_running(state_dir, model_dirs, tmp_path):
    get_endpoint().stop()
    folder = tmp_path / "m"
    shutil.copytree(model_dirs["a"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "no-such-architecture"}))
    package = build_package(folder, (tmp_path / "p").as_uri())
    expected = "exited with code 1 while starting: cannot start: loading .*no-such-architecture"
    with pytest.raises(EndpointDeployError, match=expected):
        get_endpoint().deploy(package, "301", SMOKE_REVIEWS, timeout_s=120)
    assert get_endpoint().status() is None
    assert not (state_dir / "endpoint" / "pid").exists()


def test_client_server_and_the_package_handler_agree_on_the_json_lines_media_type():
    # The handler ships inside model.tar.gz and cannot import include/; it must agree with protocol.py.
    from include.scripts import inference
    from include.serving import protocol

    assert inference.JSONLINES == protocol.JSONLINES
