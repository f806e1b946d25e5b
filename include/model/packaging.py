"""Build and unpack the deployable model package (``model.tar.gz``).

The archive has the layout SageMaker's "create model" / repack step produces and its
PyTorch / Hugging Face serving containers expect::

    model.safetensors, config.json (with id2label), tokenizer files   <- at the root
    classifier_head.safetensors (mean-pooling head, see scripts/modeling.py)
    code/inference.py, code/modeling.py                                <- the handler
    model.int8.onnx (optional, ``int8_onnx=True``)                     <- the int8 model (onnxruntime)
    package-manifest.json                                              <- sha256 of every file

The manifest lets :func:`extract_package` refuse a package that was damaged after it was
built (a corrupted model file is caught before anything tries to serve it).
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import tarfile
import time
from pathlib import Path

from include.common.io import GZIP_LEVEL, atomic_path, is_s3, local_copy, publish_file, uri_to_path

logger = logging.getLogger(__name__)
_export_ids = itertools.count(1)

PACKAGE_NAME = "model.tar.gz"
MANIFEST_NAME = "package-manifest.json"
INFERENCE_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "inference.py"
MODELING_SCRIPT = INFERENCE_SCRIPT.with_name("modeling.py")  # the classifier class inference.py loads
INFERENCE_REQUIREMENTS = INFERENCE_SCRIPT.with_name("inference-requirements.txt")  # -> code/requirements.txt
SKLEARN_INFERENCE_SCRIPT = INFERENCE_SCRIPT.with_name("automl_inference.py")  # the AutoML baseline's handler
SKLEARN_MODEL_FILE = "model.joblib"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")  # at least one of them (fast or slow tokenizer)
ONNX_INT8_FILE = "model.int8.onnx"  # the handler's export_int8_onnx output; the server loads it only when pinned


class PackagingError(ValueError):
    """A model folder or package that cannot be turned into a deployable model."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_config(config_path: Path, if_missing: str) -> dict:
    # a model folder's config.json, or a PackagingError that names the file and the problem
    try:
        return json.loads(config_path.read_text())
    except FileNotFoundError:
        raise PackagingError(f"{config_path}: missing - {if_missing}") from None
    except json.JSONDecodeError as exc:
        raise PackagingError(f"{config_path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def validate_model_dir(model_dir: Path) -> None:
    """Check ``model_dir`` is a save_pretrained folder a classifier can be served from."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise PackagingError(f"{model_dir}: not a folder - pass the save_pretrained output folder")
    config_path = model_dir / "config.json"
    config = _read_config(config_path, "the model folder needs config.json")
    if not config.get("id2label"):
        raise PackagingError(f"{config_path}: no id2label - save the model with id2label/label2id set")
    weights = sorted(model_dir.glob("*.safetensors"))
    if not weights:
        raise PackagingError(f"{model_dir}: no *.safetensors file - save with safe_serialization (the default)")
    for path in weights:
        _check_safetensors_header(path)
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise PackagingError(
            f"{model_dir}: no tokenizer ({' or '.join(TOKENIZER_FILES)}) - call tokenizer.save_pretrained "
            "into the same folder")


def _check_safetensors_header(path: Path) -> None:
    # Cheap structural check (header JSON + declared size), no tensor is read.
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        n = int.from_bytes(raw, "little") if len(raw) == 8 else -1
        if n <= 0 or n > size - 8:
            raise PackagingError(f"{path}: not a safetensors file (bad header length) - re-save the model")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise PackagingError(f"{path}: safetensors header is not JSON - the file is damaged") from None
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise PackagingError(f"{path}: {size} bytes but its header describes {8 + n + end} - "
                             "the file is truncated or damaged")


def build_package(model_dir: Path, dest_uri: str, inference_script: Path = INFERENCE_SCRIPT,
                  int8_onnx: bool = False) -> str:
    """Write ``model.tar.gz`` (model files + ``code/inference.py`` + ``code/modeling.py``); return its URI.

    ``dest_uri`` is either the archive's URI (ending in ``.tar.gz``) or a prefix under which
    ``model.tar.gz`` is written. The archive is written under a temporary name and renamed,
    so a retry replaces it and a reader never sees half an archive.

    ``int8_onnx=True`` (what ``register_model`` builds) also ships ``model.int8.onnx``: the
    model exported to ONNX and quantized to int8 by the handler's own ``export_int8_onnx``
    (loaded from ``inference_script``, as a server would load it). Its sha256 goes into the
    manifest like every file's, which is what lets the safetensors-only server load it.
    """
    import tempfile

    model_dir = Path(model_dir)
    validate_model_dir(model_dir)
    if is_s3(dest_uri):  # built locally, then one upload
        return _build_then_upload(build_package, model_dir, dest_uri, inference_script=inference_script)
    dest = uri_to_path(dest_uri)
    if not dest.name.endswith(".tar.gz"):
        dest = dest / PACKAGE_NAME
    files = sorted(p for p in model_dir.rglob("*")
                   if p.is_file() and p.relative_to(model_dir).parts[0] not in ("code", MANIFEST_NAME)
                   and p.name != ONNX_INT8_FILE)  # never ship an int8 model we did not build
    members = [(p, p.relative_to(model_dir).as_posix()) for p in files]
    members.append((Path(inference_script), "code/inference.py"))
    members.append((MODELING_SCRIPT, "code/modeling.py"))
    members.append((INFERENCE_REQUIREMENTS, "code/requirements.txt"))  # the inference toolkit installs it
    with tempfile.TemporaryDirectory(prefix="package-onnx-") as tmp:
        if int8_onnx:
            members.append((export_int8_onnx(model_dir, Path(tmp), Path(inference_script)), ONNX_INT8_FILE))
        _write_archive(dest, members)
    return dest.as_uri()


def export_int8_onnx(model_dir: Path, workdir: Path, inference_script: Path = INFERENCE_SCRIPT) -> Path:
    """``workdir/model.int8.onnx``: the model of ``model_dir`` as the handler exports it (int8 ONNX).

    The handler file is imported by path under a fresh name (the server does the same with a
    package's ``code/inference.py``); its ``model_fn`` loads the model and ``export_int8_onnx``
    writes the file. A failure is a :class:`PackagingError` naming the cause.
    """
    import importlib.util
    import sys

    name = f"_package_inference_{next(_export_ids)}"
    out = Path(workdir) / ONNX_INT8_FILE
    started = time.monotonic()
    try:
        spec = importlib.util.spec_from_file_location(name, inference_script)
        handler = importlib.util.module_from_spec(spec)
        sys.modules[name] = handler
        spec.loader.exec_module(handler)
        if not callable(getattr(handler, "export_int8_onnx", None)):
            raise PackagingError(f"{inference_script}: defines no export_int8_onnx(); build with int8_onnx=False")
        info = handler.export_int8_onnx(handler.model_fn(str(model_dir)), str(out))
    except PackagingError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the export is a packaging failure
        raise PackagingError(f"{model_dir}: cannot export the int8 ONNX model: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.modules.pop(name, None)
        for key in [k for k in sys.modules if k.startswith(f"{name}_")]:  # its modeling.py
            sys.modules.pop(key, None)
    logger.info("int8 ONNX model exported in %.1fs (%.1f MB, opset %s, onnxruntime %s)",
                time.monotonic() - started, info["bytes"] / 1e6, info["opset"], info["onnxruntime"])
    return out


def build_sklearn_package(model_dir: Path, dest_uri: str) -> str:
    """Write the AutoML baseline's ``model.tar.gz`` (``model.joblib`` + ``config.json``); return its URI.

    Same layout and manifest as :func:`build_package`, served by the same endpoint: the handler
    ``code/inference.py`` is ``automl_inference.py``, and the BERT handler rides along as
    ``code/bert_inference.py`` because the baseline answers with its wire formats.
    """
    model_dir = Path(model_dir)
    if is_s3(dest_uri):
        return _build_then_upload(build_sklearn_package, model_dir, dest_uri)
    config_path = model_dir / "config.json"
    config = _read_config(config_path, "pass the AutoML job's model folder")
    if not config.get("id2label") or not config.get("decoder"):
        raise PackagingError(f"{config_path}: needs id2label and decoder - written by include/scripts/automl.py")
    if not (model_dir / SKLEARN_MODEL_FILE).is_file():
        raise PackagingError(f"{model_dir}: no {SKLEARN_MODEL_FILE} - pass the AutoML job's model folder")
    dest = uri_to_path(dest_uri)
    if not dest.name.endswith(".tar.gz"):
        dest = dest / PACKAGE_NAME
    members = [(model_dir / "config.json", "config.json"), (model_dir / SKLEARN_MODEL_FILE, SKLEARN_MODEL_FILE),
               (SKLEARN_INFERENCE_SCRIPT, "code/inference.py"), (INFERENCE_SCRIPT, "code/bert_inference.py"),
               (INFERENCE_REQUIREMENTS, "code/requirements.txt")]
    _write_archive(dest, members)
    return dest.as_uri()


def _build_then_upload(build, model_dir: Path, dest_uri: str, **kwargs) -> str:
    import tempfile

    dest_uri = dest_uri if dest_uri.endswith(".tar.gz") else dest_uri.rstrip("/") + "/" + PACKAGE_NAME
    with tempfile.TemporaryDirectory(prefix="package-") as tmp:
        local = Path(tmp) / PACKAGE_NAME
        build(model_dir, local.as_uri(), **kwargs)
        return publish_file(local, dest_uri)


def _write_archive(dest: Path, members: list[tuple[Path, str]]) -> None:
    # Temp name then rename (atomic_path); the manifest lets extract_package verify every file.
    manifest = {"format": 1, "files": {arc: {"sha256": _sha256(p), "bytes": p.stat().st_size}
                                       for p, arc in members}}
    with atomic_path(dest) as tmp, tarfile.open(tmp, "w:gz", compresslevel=GZIP_LEVEL) as tar:
        for path, arcname in members:
            tar.add(path, arcname=arcname, recursive=False, filter=_normalise)
        data = json.dumps(manifest, indent=1, sort_keys=True).encode()
        info = _normalise(tarfile.TarInfo(MANIFEST_NAME))
        info.size, info.mtime = len(data), int(time.time())
        tar.addfile(info, io.BytesIO(data))


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Reproducible members: no owner names, readable by the serving user.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def extract_package(package_uri: str, dest_dir: Path) -> Path:
    """Unpack ``package_uri`` into ``dest_dir`` (replaced atomically) and verify it.

    Unpacks into a sibling temporary folder, checks every file against the package
    manifest and that ``code/inference.py`` and ``config.json`` are there, then renames it
    into place (an existing ``dest_dir`` is swapped out, not overwritten in place, so a
    process still mapping its files is unaffected). Returns ``dest_dir``.
    """
    if is_s3(package_uri):
        try:
            with local_copy(package_uri) as src:
                return extract_package(src.as_uri(), dest_dir)
        except FileNotFoundError:
            raise PackagingError(f"{package_uri}: no such package file") from None
    src = uri_to_path(package_uri)
    if not src.is_file():
        raise PackagingError(f"{package_uri}: no such package file")
    dest_dir = Path(dest_dir)
    with atomic_path(dest_dir) as tmp:
        tmp.mkdir(mode=0o755)
        try:
            with tarfile.open(src, "r:gz") as tar:
                tar.extractall(tmp, filter="data")  # refuses absolute paths, .., devices
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise PackagingError(f"{package_uri}: cannot be unpacked ({exc}) - rebuild the package") from None
        verify_extracted(tmp, package_uri)
    return dest_dir


def verify_extracted(folder: Path, package_uri: str = "") -> None:
    """Check an unpacked package: required files and (when present) manifest checksums."""
    where = package_uri or str(folder)
    for required in ("config.json", "code/inference.py"):
        if not (folder / required).is_file():
            raise PackagingError(f"{where}: {required} is missing from the package - rebuild it with build_package")
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        return  # a package from elsewhere (e.g. SageMaker's own repack) has no manifest
    manifest = json.loads(manifest_path.read_text())
    for arcname, meta in manifest["files"].items():
        path = folder / arcname
        if not path.is_file():
            raise PackagingError(f"{where}: {arcname} is listed in the manifest but missing")
        if _sha256(path) != meta["sha256"]:
            raise PackagingError(
                f"{where}: {arcname} does not match its checksum - the package is corrupted; rebuild it")


def package_sha256(package_uri: str) -> str:
    """sha256 of the package archive (identifies exactly what a version serves)."""
    return _sha256(uri_to_path(package_uri))


def model_dir_from_artifact(model_artifact_uri: str, workdir: Path) -> Path:
    """Unpack the training job's ``model.tar.gz`` (``file://`` or ``s3://``) into ``workdir``;
    the save_pretrained folder."""
    if is_s3(model_artifact_uri):
        try:
            with local_copy(model_artifact_uri) as src:
                return model_dir_from_artifact(src.as_uri(), workdir)
        except FileNotFoundError:
            raise PackagingError(f"{model_artifact_uri}: no such model artifact (the training job's "
                                 "model.tar.gz)") from None
    src = uri_to_path(model_artifact_uri)
    if not src.is_file():
        raise PackagingError(f"{model_artifact_uri}: no such model artifact (the training job's model.tar.gz)")
    try:
        with tarfile.open(src, "r:*") as tar:
            tar.extractall(workdir, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise PackagingError(f"{model_artifact_uri}: cannot be unpacked ({exc})") from None
    if (workdir / "config.json").is_file():
        return workdir
    nested = [p.parent for p in workdir.glob("*/config.json")]
    if len(nested) == 1:  # tolerate a tarball holding one folder
        return nested[0]
    raise PackagingError(f"{model_artifact_uri}: no config.json at the archive's root - expected the "
                         "save_pretrained folder of the training job (SM_MODEL_DIR)")
