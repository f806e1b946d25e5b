"""SageMaker inference handler for the review-sentiment classifier.

Shipped inside ``model.tar.gz`` as ``code/inference.py``; the SageMaker PyTorch / Hugging Face
serving container (and our local endpoint, ``include/serving/server.py``) calls the four
functions of the inference toolkit contract:

``model_fn(model_dir)`` -> model, ``input_fn(body, content_type)`` -> data,
``predict_fn(data, model)`` -> prediction, ``output_fn(prediction, accept)`` -> body.

Wire formats (the course lab's contract, unchanged):

* ``application/jsonlines`` - one ``{"features": ["<review text>"]}`` per line (what the
  sagemaker SDK's ``JSONLinesSerializer`` sends); answered line by line with
  ``{"predicted_label": -1|0|1, "probability": <float>}`` (``JSONLinesDeserializer``).
* ``application/json`` - one review (``"text"`` or ``{"features": ["text"]}``) or a list of
  them (``["a", "b"]``, ``[{"features": ["a"]}, ...]``, ``{"instances": [...]}``); answered with
  one object (or a list of them, mirroring the request) that also carries the label's name,
  all class probabilities and the model version that answered.

``predicted_label`` is the sentiment (``label_id - 1``), not the label id.

Bad input raises :class:`InferenceInputError` (HTTP 400) or :class:`UnsupportedContentTypeError`
(415) / :class:`UnsupportedAcceptError` (406); each carries ``status_code`` so any server can
map it without importing this module's classes.

Self-contained: standard library, torch, transformers and numpy, plus ``modeling.py`` beside it;
the int8 path also needs onnxruntime (and onnx to build it), imported only when used.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import sys
from types import ModuleType
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

logger = logging.getLogger(__name__)

JSON = "application/json"
JSONLINES = "application/jsonlines"
# Aliases clients use for JSON Lines; all are answered as application/jsonlines.
JSONLINES_ALIASES = (JSONLINES, "application/x-jsonlines", "application/jsonl", "application/x-ndjson")
SUPPORTED_CONTENT_TYPES = (JSON, *JSONLINES_ALIASES)

DEFAULT_MAX_SEQ_LENGTH = 128  # the course lab's value; a model's config.json may carry its own
DEFAULT_BATCH_SIZE = 32  # forward-pass chunk: bounds memory for large requests
MAX_RECORDS = 1000  # per request; SageMaker caps payloads at 6 MB anyway
# The int8 model: the classifier exported to ONNX and its linear layers quantized to int8 by
# onnxruntime (export_int8_onnx, run when the package is built; the package manifest pins its sha256).
ONNX_INT8_FILE = "model.int8.onnx"
ONNX_INPUTS = ("input_ids", "attention_mask")
# The lab's predicted_label is the sentiment; label ids follow label_id = sentiment + 1.
SENTIMENT_OF_LABEL = {"negative": -1, "neutral": 0, "positive": 1}


def _modeling() -> ModuleType | None:
    """``modeling.py`` beside this file (``code/modeling.py`` in a package), or None.

    Imported by path under a name unique to this file: a server holding two model versions
    must not share one ``modeling`` module between them.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "modeling.py")
    if not os.path.isfile(path):
        return None
    name = f"{__name__}_modeling"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


class InferenceInputError(ValueError):
    """The request body cannot be turned into reviews (HTTP 400)."""

    status_code = 400


class UnsupportedContentTypeError(InferenceInputError):
    """The request's Content-Type is not one the handler reads (HTTP 415)."""

    status_code = 415


class UnsupportedAcceptError(InferenceInputError):
    """The client asks for a response type the handler cannot write (HTTP 406)."""

    status_code = 406


class RequestTooLargeError(InferenceInputError):
    """The request holds more reviews than one request may carry (HTTP 413)."""

    status_code = 413


class LoadedModel:
    """What ``model_fn`` returns: the network, its tokenizer and how to run it.

    A plain class (not a dataclass) so the module also works when a server imports it
    from a file path without registering it in ``sys.modules``.
    """

    def __init__(self, model: Any, tokenizer: Any, id2label: dict[int, str], max_seq_length: int,
                 batch_size: int, version: str | None = None, model_dir: str | None = None,
                 runtime: str = "torch", parallel_runs: int = 1) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.id2label = id2label
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.version = version  # set by the server that loaded it (MODEL_VERSION env otherwise)
        self.model_dir = model_dir
        self.runtime = runtime  # "torch" or "onnxruntime"
        # how many forward passes a server may run at once on this model: torch already spreads
        # one pass over all cores; single-threaded onnxruntime passes run side by side
        self.parallel_runs = parallel_runs


class OnnxClassifier:
    """An onnxruntime session that answers like the torch classifier: ``model(**inputs).logits``."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]

    def __call__(self, **inputs: torch.Tensor) -> Any:
        from types import SimpleNamespace

        feed = {name: inputs[name].numpy() for name in self.input_names}
        (logits,) = self.session.run(["logits"], feed)
        return SimpleNamespace(logits=torch.from_numpy(logits))


def _env_int(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ValueError(f"environment variable {name}={value} must be in {low}..{high}")
    return value


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def model_fn(model_dir: str) -> LoadedModel:
    """Load the fine-tuned classifier and its tokenizer from ``model_dir`` (CPU, eval mode).

    ``INFERENCE_NUM_THREADS`` sets torch's intra-op threads (default: the cores this process
    may use); ``INFERENCE_MAX_SEQ_LENGTH`` overrides the truncation length (default: the
    config's ``max_seq_length`` if training stored one, else 128); ``INFERENCE_BATCH_SIZE``
    the forward-pass chunk size (default 32); ``INFERENCE_PRECISION=int8`` serves the
    :func:`quantize_fn` model (a SageMaker endpoint's precision; the local server calls
    ``quantize_fn`` itself and leaves this unset).
    """
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{config_path}: missing - model_dir must hold a save_pretrained folder")
    threads = _env_int("INFERENCE_NUM_THREADS", _available_cores(), 1, 256)
    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    modeling = _modeling()
    if modeling is not None:
        model = modeling.load_classifier(model_dir)  # mean-pooling head or a plain HF classifier
    else:  # an old package without code/modeling.py: only a plain transformers classifier loads
        with open(config_path, encoding="utf-8") as f:
            if json.load(f).get("classifier_pooling") == "mean":
                raise FileNotFoundError(f"{model_dir}: the model has a mean-pooling head but code/modeling.py "
                                        "is missing beside inference.py - rebuild the package")
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
    model.eval()
    id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
    if sorted(id2label) != list(range(len(id2label))):
        raise ValueError(f"{config_path}: id2label keys must be 0..n-1, got {sorted(id2label)}")
    config_len = int(getattr(model.config, "max_seq_length", 0) or DEFAULT_MAX_SEQ_LENGTH)
    limit = int(getattr(model.config, "max_position_embeddings", 512))
    max_len = _env_int("INFERENCE_MAX_SEQ_LENGTH", min(config_len, limit), 8, limit)
    batch_size = _env_int("INFERENCE_BATCH_SIZE", DEFAULT_BATCH_SIZE, 1, 1024)
    logger.info("model loaded from %s: %d labels, max_seq_length=%d, batch=%d, threads=%d",
                model_dir, len(id2label), max_len, batch_size, threads)
    loaded = LoadedModel(model=model, tokenizer=tokenizer, id2label=id2label, max_seq_length=max_len,
                         batch_size=batch_size, version=os.environ.get("MODEL_VERSION") or None,
                         model_dir=str(model_dir))
    # A SageMaker endpoint has no loader of ours around model_fn: the deploy sets the precision here.
    precision = os.environ.get("INFERENCE_PRECISION", "fp32") or "fp32"
    if precision not in ("fp32", "int8"):
        raise ValueError(f"environment variable INFERENCE_PRECISION={precision!r} must be fp32 or int8")
    return quantize_fn(loaded) if precision == "int8" else loaded


def quantize_fn(model: LoadedModel) -> LoadedModel:
    """The same model with int8 weights in its linear layers; ``model`` itself is left fp32.

    With ``model.int8.onnx`` in the model folder (built with the package by
    :func:`export_int8_onnx`) the int8 model runs on onnxruntime: one single-threaded session
    (``INFERENCE_NUM_THREADS`` overrides) that a server may run once per core at the same time.
    Without it (a package built before the ONNX export), torch's dynamic quantization of the
    linear layers. Activations stay float and are quantized per batch at run time either way, so
    no calibration data is needed. Whether the int8 model may serve is the deployer's decision
    (its accuracy against the fp32 model's).
    """
    onnx_path = os.path.join(model.model_dir or "", ONNX_INT8_FILE)
    if model.model_dir and os.path.isfile(onnx_path):
        import onnxruntime as ort

        threads = _env_int("INFERENCE_NUM_THREADS", 1, 1, 256)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        missing = [n for n in ONNX_INPUTS if n not in {i.name for i in session.get_inputs()}]
        if missing or "logits" not in {o.name for o in session.get_outputs()}:
            raise ValueError(f"{onnx_path}: expects inputs {list(ONNX_INPUTS)} and output logits - "
                             "rebuild the package")
        logger.info("int8 model: onnxruntime %s, %s, %d thread(s) per forward pass",
                    ort.__version__, onnx_path, threads)
        return LoadedModel(model=OnnxClassifier(session), tokenizer=model.tokenizer, id2label=model.id2label,
                           max_seq_length=model.max_seq_length, batch_size=model.batch_size, version=model.version,
                           model_dir=model.model_dir, runtime="onnxruntime",
                           parallel_runs=max(1, _available_cores() // threads))
    import warnings

    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*quantiz.*deprecated", category=UserWarning)
        quantized = torch.ao.quantization.quantize_dynamic(model.model, {torch.nn.Linear}, dtype=torch.qint8)
    return LoadedModel(model=quantized.eval(), tokenizer=model.tokenizer, id2label=model.id2label,
                       max_seq_length=model.max_seq_length, batch_size=model.batch_size, version=model.version,
                       model_dir=model.model_dir)


class _LogitsOnly(torch.nn.Module):
    # what the ONNX graph computes: (input_ids, attention_mask) -> logits
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def _check_export(model: LoadedModel, onnx_path: str) -> None:
    # The traced graph must compute what the torch model does on a padded batch of another shape
    # than the one it was traced with (dynamic axes, the mask hiding the padding), before int8.
    import numpy as np
    import onnxruntime

    enc = model.tokenizer(["short", "a much longer review that needs several more tokens than the first one",
                           "a middling one"], padding=True, return_tensors="pt")
    with torch.no_grad():
        want = model.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.numpy()
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {k: enc[k].numpy() for k in ONNX_INPUTS})
    if not np.allclose(got, want, atol=1e-3):
        raise ValueError(f"the ONNX export differs from the torch model by up to {np.abs(got - want).max():.4f} "
                         "on a padded batch - the model is not traceable as exported")


class _RootBelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def export_int8_onnx(model: LoadedModel, dest: str) -> dict:
    """Write the int8 ONNX model of ``model`` (fp32, from :func:`model_fn`) to ``dest``.

    The classifier is exported with TorchScript tracing (``torch.onnx.export(dynamo=False)``:
    torch 2.13's default dynamo exporter needs onnxscript, which this project does not ship) with dynamic
    batch and sequence axes and checked against the torch model on a padded batch; then
    onnxruntime's ``quantize_dynamic`` stores the weights of its MatMuls as int8, one scale per
    output channel (a third of the error of one scale per matrix, at the same speed here);
    activations are quantized per batch at run time. One self-contained file,
    no external data. Returns ``{"bytes", "opset", "onnxruntime"}``.
    """
    import tempfile
    import warnings

    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    opset = 17
    example = model.tokenizer(["an example review", "a second, longer example review"], padding=True,
                              return_tensors="pt")
    with tempfile.TemporaryDirectory(prefix="onnx-export-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about Python control flow on shapes: shapes stay dynamic
        fp32_path = os.path.join(tmp, "model.fp32.onnx")
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                _LogitsOnly(model.model).eval(), (example["input_ids"], example["attention_mask"]), fp32_path,
                dynamo=False, input_names=list(ONNX_INPUTS), output_names=["logits"], opset_version=opset,
                dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                              "logits": {0: "batch"}})
        _check_export(model, fp32_path)
        # the quantizer logs one line per tensor (and a pre-processing hint) on the root logger:
        # a filter on the root logger drops just those, not what other loggers propagate to it
        quiet = _RootBelowError()
        logging.getLogger().addFilter(quiet)
        try:
            quantize_dynamic(fp32_path, dest, weight_type=QuantType.QInt8, per_channel=True,
                             use_external_data_format=False)
        finally:
            logging.getLogger().removeFilter(quiet)
    return {"bytes": os.path.getsize(dest), "opset": opset, "onnxruntime": onnxruntime.__version__}


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _decode(body: bytes | bytearray | str) -> str:
    if isinstance(body, str):
        return body
    try:
        return bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InferenceInputError(f"request body is not UTF-8 text (byte {exc.start})") from None


def _review_text(record: Any, where: str) -> str:
    """The review text of one record: a string, or the lab's ``{"features": [text, ...]}``."""
    if isinstance(record, dict):
        if "features" not in record:
            raise InferenceInputError(
                f'{where}: missing field "features" - send {{"features": ["<review text>"]}}')
        features = record["features"]
        if isinstance(features, str):  # tolerate a bare string where the lab sends [text]
            features = [features]
        if not isinstance(features, list) or not features:
            raise InferenceInputError(
                f'{where}: "features" must be a non-empty list whose first item is the review text')
        record = features[0]  # features[0] is review_body, as in the lab's handler
    if not isinstance(record, str):
        raise InferenceInputError(
            f"{where}: the review text must be a string, got {type(record).__name__}")
    if not record.strip():
        raise InferenceInputError(f"{where}: the review text is empty")
    return record


def _check_count(n: int) -> None:
    if n == 0:
        raise InferenceInputError("the request holds no reviews")
    if n > MAX_RECORDS:
        raise RequestTooLargeError(f"the request holds {n} reviews; send at most {MAX_RECORDS} per request")


def input_fn(body: bytes | str, content_type: str = JSONLINES) -> dict:
    """Parse a request body into ``{"texts": [...], "single": bool}``.

    ``single`` is true when a JSON request carried one review (its answer is then one object).
    """
    media = _media_type(content_type)
    if media not in SUPPORTED_CONTENT_TYPES:
        raise UnsupportedContentTypeError(
            f"Content-Type {content_type or '(none)'!r} is not supported; use {JSONLINES} "
            f'(one {{"features": ["<review text>"]}} per line) or {JSON}')
    text = _decode(body)
    if media == JSON:
        return _parse_json(text)
    texts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # a trailing newline or blank separator line is not a record
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InferenceInputError(f"line {number}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict):
            raise InferenceInputError(
                f'line {number}: each line must be a JSON object {{"features": ["<review text>"]}}')
        texts.append(_review_text(record, f"line {number}"))
    _check_count(len(texts))
    return {"texts": texts, "single": False}


def _parse_json(text: str) -> dict:
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InferenceInputError(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if isinstance(payload, dict) and "instances" in payload:  # SageMaker/TF-serving batch shape
        payload = payload["instances"]
        if not isinstance(payload, list):
            raise InferenceInputError('"instances" must be a list of reviews')
    if isinstance(payload, list):
        texts = [_review_text(item, f"item {i}") for i, item in enumerate(payload)]
        _check_count(len(texts))
        return {"texts": texts, "single": False}
    if isinstance(payload, (str, dict)):
        return {"texts": [_review_text(payload, "body")], "single": True}
    raise InferenceInputError(
        f'expected a review text, {{"features": ["<review text>"]}} or a list of them; got {type(payload).__name__}')


MAX_PADDING_WASTE = 0.25  # a chunk's padded tokens may exceed its real tokens by at most this share


def length_chunks(lengths: list[int], batch_size: int, max_waste: float = MAX_PADDING_WASTE) -> list[list[int]]:
    """Indexes of ``lengths`` grouped into forward-pass chunks: shortest first, at most
    ``batch_size`` each, and a new chunk whenever padding to the next (longer) review would
    waste more than ``max_waste`` of the chunk's tokens.

    Why: a server-side batch mixes reviews of 5 and 128 tokens; padded together, most of the
    compute goes to padding and a batch is slower than single requests. Grouped by length, a
    chunk pads little and still feeds the matrix multiplications many rows.
    """
    chunks: list[list[int]] = []
    chunk: list[int] = []
    real = 0
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        n = lengths[i]
        if chunk and (len(chunk) >= batch_size or (len(chunk) + 1) * n > (1 + max_waste) * (real + n)):
            chunks.append(chunk)
            chunk, real = [], 0
        chunk.append(i)
        real += n
    if chunk:
        chunks.append(chunk)
    return chunks


def _padded(enc: dict, rows: list[int], pad_id: int, left: bool) -> dict:
    """The rows of an unpadded encoding as padded tensors (attention mask 0 on the padding)."""
    width = max(len(enc["input_ids"][i]) for i in rows)
    out = {}
    for key in enc.keys():
        fill = pad_id if key == "input_ids" else 0
        tensor = torch.full((len(rows), width), fill, dtype=torch.long)
        for r, i in enumerate(rows):
            seq = torch.tensor(enc[key][i], dtype=torch.long)
            if left:
                tensor[r, width - len(seq):] = seq
            else:
                tensor[r, :len(seq)] = seq
        out[key] = tensor
    return out


def predict_fn(data: dict, model: LoadedModel) -> dict:
    """Classify ``data["texts"]`` under ``torch.inference_mode``, in length-grouped chunks.

    Texts are tokenized once, then grouped by token length (:func:`length_chunks`) so each
    chunk pads to its own longest review; results come back in request order. Returns
    ``{"label_ids", "probabilities", "single", "model_version", "id2label"}``.
    """
    texts = list(data["texts"])
    enc = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)
    lengths = [len(ids) for ids in enc["input_ids"]]
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    left = getattr(model.tokenizer, "padding_side", "right") == "left"
    probs: list[list[float] | None] = [None] * len(texts)
    with torch.inference_mode():
        for chunk in length_chunks(lengths, model.batch_size):
            logits = model.model(**_padded(enc, chunk, pad_id, left)).logits
            for i, row in zip(chunk, torch.softmax(logits.float(), dim=-1).tolist(), strict=True):
                probs[i] = row
    label_ids = [max(range(len(p)), key=p.__getitem__) for p in probs]
    return {"label_ids": label_ids, "probabilities": probs, "single": bool(data.get("single")),
            "model_version": model.version, "id2label": model.id2label}


def output_fn(prediction: dict, accept: str = JSONLINES) -> str:
    """Serialise a prediction for ``accept`` (``*/*`` or empty means JSON Lines, as in the lab)."""
    media = _media_type(accept)
    if media in ("", "*/*", "application/*"):
        media = JSONLINES
    id2label = prediction["id2label"]
    rows = zip(prediction["label_ids"], prediction["probabilities"], strict=True)

    def sentiment(label_id: int) -> int:
        return SENTIMENT_OF_LABEL.get(str(id2label[label_id]).lower(), label_id - 1)

    if media in JSONLINES_ALIASES:
        return "\n".join(json.dumps({"predicted_label": sentiment(label_id), "probability": _round(p[label_id])})
                         for label_id, p in rows) + "\n"
    if media == JSON:
        answers = [{"predicted_label": sentiment(label_id),
                    "label": id2label[label_id],
                    "probability": _round(p[label_id]),
                    "probabilities": {id2label[i]: _round(v) for i, v in enumerate(p)},
                    "model_version": prediction["model_version"]}
                   for label_id, p in rows]
        return json.dumps(answers[0] if prediction["single"] else answers)
    raise UnsupportedAcceptError(f"Accept {accept!r} is not supported; use {JSONLINES} or {JSON}")


def _round(value: float) -> float:
    # NaN/inf cannot be written as JSON; a model producing them is broken, not the request.
    if not math.isfinite(value):
        raise ArithmeticError(f"the model produced a non-finite probability ({value})")
    return round(float(value), 6)
