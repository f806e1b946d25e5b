"""Building and unpacking model.tar.gz (include/packaging.py)."""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

from include.model.packaging import (
    INFERENCE_SCRIPT,
    MANIFEST_NAME,
    MODELING_SCRIPT,
    PackagingError,
    build_package,
    extract_package,
    validate_model_dir,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")



def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _members(package_uri: str) -> set[str]:
    with tarfile.open(package_uri.removeprefix("file://"), "r:gz") as tar:
        return {m.name for m in tar.getmembers() if m.isfile()}


def test_package_round_trip_keeps_model_tokenizer_config_and_inference_code(classifier_dir, tmp_path):
    uri = build_package(classifier_dir, (tmp_path / "pkg").as_uri())
    assert uri == (tmp_path / "pkg" / "model.tar.gz").as_uri()
    assert _members(uri) == {"model.safetensors", "classifier_head.safetensors", "config.json", "tokenizer.json",
                             "tokenizer_config.json", "code/inference.py", "code/modeling.py",
                             "code/requirements.txt", MANIFEST_NAME}  # the inference toolkit installs it
    out = extract_package(uri, tmp_path / "out")
    for name in ("model.safetensors", "classifier_head.safetensors", "config.json", "tokenizer.json",
                 "tokenizer_config.json"):
        assert _sha(out / name) == _sha(classifier_dir / name)
    assert (out / "code" / "inference.py").read_text() == INFERENCE_SCRIPT.read_text()
    assert (out / "code" / "modeling.py").read_text() == MODELING_SCRIPT.read_text()
    assert json.loads((out / "config.json").read_text())["id2label"]["2"] == "positive"


def test_extracted_package_classifies_through_its_own_inference_code(classifier_dir, tmp_path, monkeypatch):
    out = extract_package(build_package(classifier_dir, (tmp_path / "p").as_uri()), tmp_path / "m")
    spec = importlib.util.spec_from_file_location("pkg_inference_under_test", out / "code" / "inference.py")
    handler = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(handler)
    monkeypatch.setenv("INFERENCE_NUM_THREADS", "1")
    model = handler.model_fn(str(out))
    body = handler.output_fn(handler.predict_fn(handler.input_fn(b'{"features": ["so soft, love it"]}',
                                                                 "application/jsonlines"), model),
                             "application/jsonlines")
    answer = json.loads(body)
    assert answer["predicted_label"] in (-1, 0, 1) and 0 < answer["probability"] <= 1
    assert "pkg_inference_under_test" not in sys.modules  # no global registration was needed


def test_build_accepts_an_explicit_archive_name_and_leaves_no_temp_files(tiny_dir, tmp_path):
    dest = tmp_path / "out" / "v1.tar.gz"
    assert build_package(tiny_dir, str(dest)) == dest.as_uri()
    first = _sha(dest)
    (tiny_dir / "config.json").write_text(json.dumps({"id2label": {"0": "a", "1": "b", "2": "c"}}))
    build_package(tiny_dir, dest.as_uri())  # a retry replaces the archive
    assert _sha(dest) != first
    assert [p.name for p in dest.parent.iterdir()] == ["v1.tar.gz"]


def test_build_replaces_a_code_folder_of_the_model_dir_with_our_handler(tiny_dir, tmp_path):
    (tiny_dir / "code").mkdir()
    (tiny_dir / "code" / "inference.py").write_text("raise SystemExit('stale handler')")
    out = extract_package(build_package(tiny_dir, tmp_path.as_uri()), tmp_path / "x")
    assert (out / "code" / "inference.py").read_text() == INFERENCE_SCRIPT.read_text()


@pytest.mark.parametrize("breakage, message", [
    (lambda d: (d / "config.json").unlink(), "config.json: missing"),
    (lambda d: (d / "config.json").write_text("{nope"), "not valid JSON"),
    (lambda d: (d / "config.json").write_text("{}"), "no id2label"),
    (lambda d: (d / "model.safetensors").unlink(), "no \\*.safetensors"),
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-10]), "truncated"),
    (lambda d: (d / "model.safetensors").write_bytes(b"garbage!" * 4), "not a safetensors file"),
    (lambda d: (d / "tokenizer.json").unlink(), "no tokenizer"),
])
def test_build_refuses_an_incomplete_model_folder_naming_the_problem(tiny_dir, tmp_path, breakage, message):
    breakage(tiny_dir)
    with pytest.raises(PackagingError, match=message):
        build_package(tiny_dir, tmp_path.as_uri())
    assert not list(tmp_path.glob("*.tar.gz"))


def _rewrite(package: Path, replace: dict[str, bytes]) -> None:
    """Rewrite an archive with some members' bytes replaced (the manifest is left as built)."""
    with tarfile.open(package, "r:gz") as tar:
        items = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    with tarfile.open(package, "w:gz") as tar:
        for member, data in items:
            data = replace.get(member.name, data)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def test_extract_refuses_a_package_whose_model_file_was_corrupted(tiny_dir, tmp_path):
    uri = build_package(tiny_dir, tmp_path.as_uri())
    blob = bytearray((tiny_dir / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    _rewrite(Path(uri.removeprefix("file://")), {"model.safetensors": bytes(blob)})
    with pytest.raises(PackagingError, match="model.safetensors does not match its checksum"):
        extract_package(uri, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x")]  # temp folder cleaned up


def test_extract_replaces_an_existing_folder_atomically(tiny_dir, tmp_path):
    dest = tmp_path / "x"
    dest.mkdir()
    (dest / "stale.txt").write_text("old")
    extract_package(build_package(tiny_dir, tmp_path.as_uri()), dest)
    assert not (dest / "stale.txt").exists()
    assert (dest / "code" / "inference.py").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tar.gz", "tiny", "x"]


def test_extract_refuses_unsafe_paths_and_missing_or_broken_archives(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(PackagingError, match="cannot be unpacked"):
        extract_package(evil.as_uri(), tmp_path / "x")
    assert not (tmp_path / "escaped.txt").exists()
    with pytest.raises(PackagingError, match="no such package file"):
        extract_package((tmp_path / "missing.tar.gz").as_uri(), tmp_path / "y")
    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(PackagingError, match="cannot be unpacked"):
        extract_package(str(tmp_path / "broken.tar.gz"), tmp_path / "z")


def test_extract_refuses_a_package_without_inference_code(tiny_dir, tmp_path):
    plain = tmp_path / "plain.tar.gz"
    with tarfile.open(plain, "w:gz") as tar:
        tar.add(tiny_dir / "config.json", arcname="config.json")
    with pytest.raises(PackagingError, match="code/inference.py is missing"):
        extract_package(plain.as_uri(), tmp_path / "x")


def test_validate_accepts_the_real_save_pretrained_folder(classifier_dir, tmp_path):
    validate_model_dir(classifier_dir)
    copy = tmp_path / "c"
    shutil.copytree(classifier_dir, copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(PackagingError, match="no tokenizer"):
        validate_model_dir(copy)


def test_int8_onnx_package_pins_an_onnx_model_that_computes_what_the_torch_model_does(classifier_dir, tmp_path,
                                                                                      monkeypatch):
    from include.model.packaging import ONNX_INT8_FILE

    uri = build_package(classifier_dir, (tmp_path / "p").as_uri(), int8_onnx=True)
    assert ONNX_INT8_FILE in _members(uri)
    out = extract_package(uri, tmp_path / "m")  # checks every file, the ONNX model too, against the manifest
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["files"][ONNX_INT8_FILE]["sha256"] == _sha(out / ONNX_INT8_FILE)
    spec = importlib.util.spec_from_file_location("pkg_inference_onnx_test", out / "code" / "inference.py")
    handler = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(handler)
    monkeypatch.setenv("INFERENCE_NUM_THREADS", "1")
    fp32 = handler.model_fn(str(out))
    int8 = handler.quantize_fn(fp32)
    assert (fp32.runtime, int8.runtime) == ("torch", "onnxruntime")
    assert int8.parallel_runs == handler._available_cores()  # single-threaded sessions, one per core
    # reviews of very different lengths in one call: chunks pad, and the mask must hide the padding
    texts = ["Love it", "Runs small and the fabric is thin, returned it the next day after trying it on twice",
             "It is fine I guess", "Zipper broke", "Soft, warm and true to size. Bought it in two colours!"]
    p32 = handler.predict_fn({"texts": texts}, fp32)["probabilities"]
    p8 = handler.predict_fn({"texts": texts}, int8)["probabilities"]
    alone = [handler.predict_fn({"texts": [t]}, int8)["probabilities"][0] for t in texts]
    # int8 changes the numbers a little (the deploy decides whether the accuracy allows it), and a
    # review answers the same alone or padded in a batch (activation scales are per batch: ~1e-2)
    assert max(abs(a - b) for r, s in zip(p32, p8) for a, b in zip(r, s)) < 0.03
    assert max(abs(a - b) for r, s in zip(alone, p8) for a, b in zip(r, s)) < 0.02


def test_int8_onnx_export_failure_is_a_packaging_error_and_leaves_no_archive(tiny_dir, tmp_path):
    with pytest.raises(PackagingError, match="cannot export the int8 ONNX model"):
        build_package(tiny_dir, tmp_path.as_uri(), int8_onnx=True)  # structurally valid, not loadable
    assert not list(tmp_path.glob("*.tar.gz"))


def test_a_stray_onnx_file_of_the_model_folder_is_never_shipped(tiny_dir, tmp_path):
    (tiny_dir / "model.int8.onnx").write_bytes(b"not built by us")
    assert "model.int8.onnx" not in _members(build_package(tiny_dir, tmp_path.as_uri()))
