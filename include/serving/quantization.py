"""The deploy-time int8 decision: serve int8 only when it costs at most half a point of accuracy.

The int8 model (the package's ``quantize_fn``: onnxruntime running ``model.int8.onnx``, the
dynamically quantized ONNX export built with the package; torch dynamic quantization for older
packages) makes MiniLM's forward pass several times faster on CPU, but it changes the numbers;
so before each deploy both the fp32 model and its int8 copy classify the run's own test split
and int8 serves only when its accuracy is within ``max_drop_points`` (default 0.5) percentage points of fp32's. The decision
and both accuracies go into the registry entry and the deploy log.

The models are run through the package's own handler (``code/inference.py``), exactly as the
server will run them.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from include.common.errors import NonRetriableError
from include.common.io import uri_to_path

logger = logging.getLogger(__name__)

MAX_DROP_POINTS = 0.5


class PrecisionDecisionError(NonRetriableError):
    """The int8 decision could not be made (no test data, a bad package)."""


def load_test_split(test_uri: str, max_rows: int = 0) -> tuple[list[str], list[int]]:
    """``review_body`` and ``label_id`` of a feature-store test split folder (Parquet shards)."""
    import pyarrow.parquet as pq

    folder = uri_to_path(test_uri)
    files = sorted(folder.rglob("*.parquet")) if folder.is_dir() else []
    if not files:
        raise PrecisionDecisionError(f"{test_uri}: no test shards (*.parquet) to measure the int8 model on")
    texts: list[str] = []
    labels: list[int] = []
    for f in files:
        table = pq.read_table(f, columns=["review_body", "label_id"])
        texts += [str(t) for t in table.column("review_body").to_pylist()]
        labels += [int(v) for v in table.column("label_id").to_pylist()]
    if max_rows and len(texts) > max_rows:
        texts, labels = texts[:max_rows], labels[:max_rows]
    return texts, labels


def decide(fp32_accuracy: float, int8_accuracy: float, max_drop_points: float = MAX_DROP_POINTS) -> str:
    """``int8`` when its accuracy is at most ``max_drop_points`` points below fp32's, else ``fp32``."""
    if max_drop_points < 0:
        raise ValueError(f"max_drop_points={max_drop_points}: must be >= 0")
    # rounding guards the boundary: 0.7 - 0.695 is 0.5000000000000004 points in floats
    return "int8" if round((fp32_accuracy - int8_accuracy) * 100, 6) <= max_drop_points else "fp32"


def choose_precision(model_dir: str | Path, texts: list[str], label_ids: list[int],
                     max_drop_points: float = MAX_DROP_POINTS) -> dict:
    """Classify ``texts`` with the fp32 and the int8 model; return the decision with its evidence.

    Returns ``{"precision", "fp32_accuracy", "int8_accuracy", "accuracy_drop_points",
    "max_drop_points", "agreement", "eval_rows", "int8_runtime", "seconds"}``.
    """
    from include.serving.server import ModelLoadError, load_slot

    if not texts or len(texts) != len(label_ids):
        raise PrecisionDecisionError(f"need the same non-zero number of texts and labels, got {len(texts)} "
                                     f"and {len(label_ids)}")
    started = time.monotonic()
    try:
        slot = load_slot(str(model_dir), "precision-check", "fp32")
        if not callable(getattr(slot.handler, "quantize_fn", None)):
            return {"precision": "fp32", "reason": "the package's inference.py has no quantize_fn",
                    "eval_rows": len(texts)}
        fp32 = _label_ids(slot, slot.model, texts)
        quantized = slot.handler.quantize_fn(slot.model)
        int8 = _label_ids(slot, quantized, texts)
    except ModelLoadError as exc:
        raise PrecisionDecisionError(f"cannot measure the int8 model: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - the package's own code failed: say which step and why
        raise PrecisionDecisionError(f"cannot measure the int8 model of {model_dir}: "
                                     f"{type(exc).__name__}: {exc}") from exc
    n = len(texts)
    fp32_acc = sum(p == y for p, y in zip(fp32, label_ids)) / n
    int8_acc = sum(p == y for p, y in zip(int8, label_ids)) / n
    out = {"precision": decide(fp32_acc, int8_acc, max_drop_points),
           "fp32_accuracy": round(fp32_acc, 6), "int8_accuracy": round(int8_acc, 6),
           "accuracy_drop_points": round((fp32_acc - int8_acc) * 100, 4), "max_drop_points": max_drop_points,
           "agreement": round(sum(a == b for a, b in zip(fp32, int8)) / n, 6), "eval_rows": n,
           "int8_runtime": str(getattr(quantized, "runtime", "torch")),
           "seconds": round(time.monotonic() - started, 1)}
    logger.info("int8 check on %d test reviews: fp32 accuracy %.4f, int8 (%s) %.4f (drop %.2f points, limit %.2f) "
                "-> serve %s", n, fp32_acc, out["int8_runtime"], int8_acc, out["accuracy_drop_points"],
                max_drop_points, out["precision"])
    return out


def _label_ids(slot, model, texts: list[str]) -> list[int]:
    # predict_fn chunks and length-sorts by itself; one call over all texts, logged per 256 for long splits
    out: list[int] = []
    for start in range(0, len(texts), 256):
        out += slot.handler.predict_fn({"texts": texts[start:start + 256], "single": False}, model)["label_ids"]
        if len(texts) > 256:
            logger.info("precision check: %d/%d reviews", len(out), len(texts))
    return out
