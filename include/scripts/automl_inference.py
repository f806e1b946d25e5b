"""SageMaker inference handler for the AutoML baseline (a scikit-learn text pipeline).

Shipped as ``code/inference.py`` in the baseline's ``model.tar.gz`` (see
``include/model/packaging.py:build_sklearn_package``), beside the BERT handler as
``code/bert_inference.py``: the wire formats (JSON Lines / JSON, errors, ``predicted_label``
= sentiment) are the BERT handler's own ``input_fn`` / ``output_fn``, so a client cannot tell
which model answers except by its version. Only ``model_fn`` and ``predict_fn`` differ.

The package folder holds ``model.joblib`` (the fitted ``Pipeline``: vectorizer + estimator) and
``config.json`` (``id2label``, ``decoder``): ``argmax`` decodes class probabilities with a
per-class bias tuned on the validation split; ``ordinal`` reads a 5-class star-rating model,
takes the expected rating and cuts it at two thresholds tuned on the validation split.

Self-contained: standard library, numpy, scipy, scikit-learn, joblib; the BERT handler is
imported by path only for ``input_fn`` / ``output_fn``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from types import ModuleType
from typing import Any

import numpy as np

MODEL_FILE = "model.joblib"
WIRE_CANDIDATES = ("bert_inference.py", "inference.py")  # in a package / in include/scripts


class BaselineModel:
    """What ``model_fn`` returns: the fitted pipeline and how to decode its scores."""

    def __init__(self, pipeline: Any, id2label: dict[int, str], decoder: dict, version: str | None = None) -> None:
        self.pipeline = pipeline
        self.id2label = id2label
        self.decoder = decoder
        self.version = version  # set by the server that loaded it


def _wire() -> ModuleType:
    """The BERT handler beside this file (its input_fn/output_fn are the endpoint contract)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for name in WIRE_CANDIDATES:
        path = os.path.join(here, name)
        if os.path.isfile(path) and os.path.abspath(path) != os.path.abspath(__file__):
            mod_name = f"{__name__}_wire"
            if mod_name in sys.modules:
                return sys.modules[mod_name]
            spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[mod_name]
                raise
            return module
    raise FileNotFoundError(f"{here}: no {' or '.join(WIRE_CANDIDATES)} beside the baseline handler - "
                            "rebuild the package with build_sklearn_package")


def load_pipeline(path: str) -> Any:
    """Load the joblib file of the fitted pipeline.

    joblib (pickle) runs code on load, so only packages this project built are loaded: the server
    and the score job unpack them through ``extract_package``, whose manifest checksums refuse a
    modified file. (skops' safe format was tried: saving a 140k-term vocabulary took minutes.)
    """
    import joblib

    return joblib.load(path)


def _verify_manifest(model_dir: str, name: str) -> None:
    manifest_path = os.path.join(model_dir, "package-manifest.json")
    if not os.path.isfile(manifest_path):
        return  # a bare model folder (the search job's own output), not a package
    with open(manifest_path, encoding="utf-8") as fh:
        expected = json.load(fh)["files"].get(name, {}).get("sha256")
    digest = hashlib.sha256()
    with open(os.path.join(model_dir, name), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise ValueError(f"{model_dir}/{name} does not match the package manifest's checksum - refusing to load it")


def model_fn(model_dir: str) -> BaselineModel:
    """Load ``model.joblib`` and ``config.json`` from ``model_dir`` (checked against the package
    manifest when there is one: a modified pickle is refused before it is loaded)."""
    config_path = os.path.join(model_dir, "config.json")
    model_path = os.path.join(model_dir, MODEL_FILE)
    for path in (config_path, model_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: missing - the baseline package needs config.json and {MODEL_FILE}")
    _verify_manifest(model_dir, MODEL_FILE)
    with open(config_path, encoding="utf-8") as fh:
        config = json.load(fh)
    id2label = {int(k): str(v) for k, v in config["id2label"].items()}
    decoder = config.get("decoder") or {"kind": "argmax", "bias": [0.0] * len(id2label)}
    if decoder.get("kind") not in ("argmax", "ordinal"):
        raise ValueError(f"{config_path}: decoder.kind {decoder.get('kind')!r} is not argmax or ordinal")
    return BaselineModel(load_pipeline(model_path), id2label, decoder, os.environ.get("MODEL_VERSION") or None)


def class_scores(pipeline: Any, texts: list[str]) -> np.ndarray:
    """Per-class probabilities of the pipeline (softmax of the decision function for SVMs)."""
    if hasattr(pipeline, "predict_proba"):
        try:
            return np.asarray(pipeline.predict_proba(texts), dtype=float)
        except AttributeError:  # e.g. an estimator exposing predict_proba only for some losses
            pass
    scores = np.asarray(pipeline.decision_function(texts), dtype=float)
    if scores.ndim == 1:  # binary decision function: one column
        scores = np.stack([-scores, scores], axis=1)
    scores = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(axis=1, keepdims=True)


def decode(scores: np.ndarray, decoder: dict) -> tuple[np.ndarray, np.ndarray]:
    """(label ids, 3-class probabilities) from the pipeline's scores and the decoder in config.json."""
    if decoder["kind"] == "ordinal":
        stars = np.asarray(decoder["stars"], dtype=float)  # the star value of each score column
        expected = scores @ stars
        labels = np.digitize(expected, decoder["thresholds"])
        groups = [[i for i, s in enumerate(stars) if s <= 2], [i for i, s in enumerate(stars) if s == 3],
                  [i for i, s in enumerate(stars) if s >= 4]]
        probs = np.stack([scores[:, g].sum(axis=1) if g else np.zeros(len(scores)) for g in groups], axis=1)
        return labels, probs
    bias = np.asarray(decoder.get("bias") or [0.0] * scores.shape[1], dtype=float)
    if scores.shape[1] != len(bias):  # a class absent from training: its column gets ~0 probability
        full = np.full((len(scores), len(bias)), 1e-12)
        full[:, decoder["columns"]] = scores
        scores = full
    labels = np.argmax(np.log(np.clip(scores, 1e-12, None)) + bias, axis=1)
    return labels, scores


def predict_labels(model: BaselineModel, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Label ids and class probabilities for ``texts``."""
    return decode(class_scores(model.pipeline, list(texts)), model.decoder)


def input_fn(body: bytes | str, content_type: str = "application/jsonlines") -> dict:
    """The BERT handler's parser: ``{"texts": [...], "single": bool}``."""
    return _wire().input_fn(body, content_type)


def predict_fn(data: dict, model: BaselineModel) -> dict:
    """Classify ``data["texts"]``; same prediction dict as the BERT handler's ``predict_fn``."""
    labels, probs = predict_labels(model, data["texts"])
    return {"label_ids": [int(x) for x in labels], "probabilities": probs.tolist(),
            "single": bool(data.get("single")), "model_version": model.version, "id2label": model.id2label}


def output_fn(prediction: dict, accept: str = "application/jsonlines") -> str:
    """The BERT handler's serialiser (JSON Lines or JSON)."""
    return _wire().output_fn(prediction, accept)
