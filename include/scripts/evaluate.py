"""Processing job: evaluate a trained model on the test split.

Inputs (processing-container layout): ``--model`` holds ``model.tar.gz`` (the training
job's output), ``--test-data`` the test shards of the preprocess job, and optionally
``--training-output`` the training job's ``output.tar.gz`` (its debugger findings are
copied into the report). Writes to ``--output-data``:

- ``evaluation.json`` in SageMaker's model-quality format: ``{"metrics": {"accuracy":
  {"value": ...}, ...}}`` (what the course's pipeline and our accuracy check read) and
  ``multiclass_classification_metrics`` (Model Monitor's shape: accuracy, weighted and
  macro precision/recall/F1, confusion matrix), plus per-class precision/recall/F1;
- ``confusion_matrix.png``;
- ``misclassified.json``: a few misclassified test reviews per (true, predicted) pair;
- with ``--deployed-model`` (the package the endpoint serves now), ``comparison.json``: that
  model's metrics on the very same test split, so a reviewer compares like with like.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

# Sibling modules of the job's code dir (modeling.py loads either classifier head).
from common import ID2LABEL, parse_dataclass, write_json_atomic

log = logging.getLogger("evaluate")


class EvaluationError(ValueError):
    """Inputs the evaluation cannot use."""


@dataclass
class EvaluateArguments:
    """Arguments; defaults follow the processing-container layout."""

    model: str = field(default="/opt/ml/processing/input/model", metadata={"help": "folder with model.tar.gz"})
    test_data: str = field(default="/opt/ml/processing/input/data", metadata={"help": "folder with test shards"})
    training_output: str = field(default="/opt/ml/processing/input/training",
                                 metadata={"help": "optional output.tar.gz folder"})
    output_data: str = field(default="/opt/ml/processing/output/metrics",
                             metadata={"help": "where evaluation.json goes"})
    deployed_model: str = field(default="/opt/ml/processing/input/deployed", metadata={
        "help": "optional folder with the deployed version's model.tar.gz (compared on the same split)"})
    deployed_version: str = field(default="", metadata={"help": "registry version of --deployed-model (for the report)"})
    samples_per_pair: int = field(default=3, metadata={"help": "misclassified reviews kept per (true, predicted) pair"})
    batch_size: int = field(default=64, metadata={"help": "reviews per forward pass"})

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.samples_per_pair < 0:
            raise ValueError(f"--batch-size={self.batch_size} (>= 1), --samples-per-pair={self.samples_per_pair} "
                             "(>= 0)")


def parse_args(argv: list[str] | None = None) -> EvaluateArguments:
    return parse_dataclass(EvaluateArguments, argv, "Evaluate the fine-tuned model on the test split")


def _extract(folder: Path, name: str, dest: Path) -> Path | None:
    archives = sorted(folder.rglob(name)) if folder.exists() else []
    if not archives:
        return None
    with tarfile.open(archives[0]) as tar:
        tar.extractall(dest, filter="data")
    return dest


def load_test(folder: Path) -> pd.DataFrame:
    """Test shards as one frame (needs ``input_ids`` and ``label_id``)."""
    files = sorted(folder.rglob("*.parquet"))
    if not files:
        raise EvaluationError(f"{folder}: no test shards (*.parquet)")
    import pyarrow.parquet as pq

    # review_body is optional (older shards lack it): it only feeds the misclassified samples.
    cols = ["review_id", "input_ids", "label_id"]
    if "review_body" in pq.read_schema(files[0]).names:
        cols.append("review_body")
    df = pd.concat([pd.read_parquet(f, columns=cols) for f in files])
    if df.empty:
        raise EvaluationError(f"{folder}: the test split is empty")
    return df.reset_index(drop=True)


def predict(model_dir: Path, input_ids: list, batch_size: int) -> np.ndarray:
    """Class probabilities for each tokenized review; batches sorted by length (less padding)."""
    import torch
    from modeling import load_classifier

    model = load_classifier(model_dir)
    order = np.argsort([len(x) for x in input_ids])
    probs = np.zeros((len(input_ids), model.config.num_labels), dtype=np.float32)
    start = time.monotonic()
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            width = max(len(input_ids[j]) for j in idx)
            ids = torch.zeros((len(idx), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, j in enumerate(idx):
                ids[r, :len(input_ids[j])] = torch.tensor(list(input_ids[j]))
                mask[r, :len(input_ids[j])] = 1
            probs[idx] = torch.softmax(model(input_ids=ids, attention_mask=mask).logits, -1).numpy()
            if (i // batch_size) % 10 == 0:
                done = min(i + batch_size, len(order))
                log.info("predicted %d/%d (%.0f reviews/s)", done, len(order), done / (time.monotonic() - start))
    return probs


def metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Accuracy, per-class and averaged precision/recall/F1, confusion matrix, 95% CI."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = sorted(ID2LABEL)
    acc = float((y_true == y_pred).mean())
    n = len(y_true)
    half = 1.96 * math.sqrt(acc * (1 - acc) / n)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class = {ID2LABEL[k]: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                 for i, k in enumerate(labels)}
    avg = {}
    for kind in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=kind, zero_division=0)
        avg[kind] = {"precision": float(ap), "recall": float(ar), "f1": float(af)}
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    return {"accuracy": acc, "accuracy_ci95": [max(0.0, acc - half), min(1.0, acc + half)], "n": n,
            "per_class": per_class, "avg": avg, "confusion_matrix": cm.tolist(),
            "labels": [ID2LABEL[k] for k in labels]}


def evaluation_json(m: dict, debugger: dict | None) -> dict:
    """The report in SageMaker's model-quality shapes plus our extras."""
    names = m["labels"]
    cm = {names[i]: {names[j]: m["confusion_matrix"][i][j] for j in range(len(names))} for i in range(len(names))}
    report = {
        "metrics": {
            "accuracy": {"value": m["accuracy"],
                         "standard_deviation": math.sqrt(m["accuracy"] * (1 - m["accuracy"]) / m["n"])},
            "macro_f1": {"value": m["avg"]["macro"]["f1"]},
            "weighted_f1": {"value": m["avg"]["weighted"]["f1"]},
        },
        "multiclass_classification_metrics": {
            "accuracy": {"value": m["accuracy"]},
            "weighted_precision": {"value": m["avg"]["weighted"]["precision"]},
            "weighted_recall": {"value": m["avg"]["weighted"]["recall"]},
            "weighted_f1": {"value": m["avg"]["weighted"]["f1"]},
            "macro_f1": {"value": m["avg"]["macro"]["f1"]},
            "confusion_matrix": cm,
        },
        "per_class": m["per_class"],
        "confusion_matrix": {"labels": names, "matrix": m["confusion_matrix"]},
        "accuracy_ci95": m["accuracy_ci95"],
        "test_rows": m["n"],
    }
    if debugger is not None:
        triggered = [r for r in debugger.get("rules", []) if r.get("triggered")] if isinstance(debugger, dict) else []
        report["debugger"] = {"rules": debugger, "triggered": triggered}
    return report


def misclassified_samples(test: pd.DataFrame, probs: np.ndarray, per_pair: int) -> list[dict]:
    """Up to ``per_pair`` misclassified reviews per (true, predicted) pair, most confident first
    (the errors a reviewer learns most from)."""
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != test["label_id"].to_numpy())
    out = []
    for i in sorted(wrong, key=lambda i: (int(test["label_id"].iat[i]), int(pred[i]), -float(probs[i, pred[i]]))):
        true, got = ID2LABEL[int(test["label_id"].iat[i])], ID2LABEL[int(pred[i])]
        if sum(1 for s in out if s["true"] == true and s["predicted"] == got) >= per_pair:
            continue
        body = test["review_body"].iat[i] if "review_body" in test.columns else None
        out.append({"review_id": str(test["review_id"].iat[i]), "true": true, "predicted": got,
                    "probability": round(float(probs[i, pred[i]]), 4),
                    "review_body": None if body is None else str(body)[:600]})
    return out


def comparison_json(m: dict, version: str) -> dict:
    """The deployed version's figures on the candidate's test split."""
    return {"version": version, "test_rows": m["n"], "accuracy": m["accuracy"], "accuracy_ci95": m["accuracy_ci95"],
            "macro_f1": m["avg"]["macro"]["f1"], "weighted_f1": m["avg"]["weighted"]["f1"],
            "per_class": m["per_class"], "confusion_matrix": {"labels": m["labels"], "matrix": m["confusion_matrix"]}}


def plot_confusion(m: dict, dest: Path) -> None:
    """Confusion matrix as a labelled heat map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.array(m["confusion_matrix"])
    fig, ax = plt.subplots(figsize=(5, 4.2))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(m["labels"])), m["labels"])
    ax.set_yticks(range(len(m["labels"])), m["labels"])
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xlabel("predicted sentiment")
    ax.set_ylabel("true sentiment")
    ax.set_title(f"Confusion matrix (accuracy {m['accuracy']:.3f}, n={m['n']})")
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    """Run the evaluation; returns the evaluation report."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    args = parse_args(argv)
    out = Path(args.output_data)
    out.mkdir(parents=True, exist_ok=True)
    test = load_test(Path(args.test_data))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _extract(Path(args.model), "model.tar.gz", Path(tmp) / "model")
        if model_dir is None:
            raise EvaluationError(f"{args.model}: no model.tar.gz")
        probs = predict(model_dir, test["input_ids"].tolist(), args.batch_size)
        train_out = _extract(Path(args.training_output), "output.tar.gz", Path(tmp) / "training")
        rules_file = train_out / "debugger" / "rule_results.json" if train_out else None
        debugger = json.loads(rules_file.read_text()) if rules_file and rules_file.exists() else None
        profile_file = train_out / "profiler" / "summary.json" if train_out else None
        profiler = json.loads(profile_file.read_text()) if profile_file and profile_file.exists() else None
        deployed_dir = _extract(Path(args.deployed_model), "model.tar.gz", Path(tmp) / "deployed")
        deployed_probs = None
        if deployed_dir is not None:
            log.info("evaluating the deployed version %s on the same %d test reviews", args.deployed_version or "?",
                     len(test))
            deployed_probs = predict(deployed_dir, test["input_ids"].tolist(), args.batch_size)
    m = metrics(test["label_id"].to_numpy(), probs.argmax(1))
    report = evaluation_json(m, debugger)
    if profiler is not None:
        report["profiler"] = profiler
    write_json_atomic(out / "evaluation.json", report)
    write_json_atomic(out / "misclassified.json", misclassified_samples(test, probs, args.samples_per_pair))
    if deployed_probs is not None:
        dm = metrics(test["label_id"].to_numpy(), deployed_probs.argmax(1))
        write_json_atomic(out / "comparison.json", {"deployed": comparison_json(dm, args.deployed_version)})
        log.info("deployed version %s on the same split: accuracy %.4f, macro F1 %.4f", args.deployed_version or "?",
                 dm["accuracy"], dm["avg"]["macro"]["f1"])
    plot_confusion(m, out / "confusion_matrix.png")
    pd.DataFrame({"review_id": test["review_id"], "label_id": test["label_id"], "predicted": probs.argmax(1),
                  **{f"p_{ID2LABEL[k]}": probs[:, k] for k in sorted(ID2LABEL)}}
                 ).to_csv(out / "predictions.csv", index=False)
    log.info("accuracy %.4f (95%% CI %.3f-%.3f) on %d test reviews; macro F1 %.4f", m["accuracy"],
             *m["accuracy_ci95"], m["n"], m["avg"]["macro"]["f1"])
    return report


if __name__ == "__main__":
    try:
        main()
    except (EvaluationError, OSError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        sys.exit(2)
