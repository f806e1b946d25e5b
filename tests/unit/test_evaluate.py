"""evaluate.py: evaluation.json in SageMaker's model-quality format, per-class metrics, PNG."""
from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.scripts import evaluate

SCRIPTS = str(Path(__file__).resolve().parents[2] / "include" / "scripts")
if SCRIPTS not in sys.path:  # evaluate.py imports its sibling modeling.py as a top-level module (as in the job)
    sys.path.insert(0, SCRIPTS)


def test_metrics_from_known_predictions():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    m = evaluate.metrics(y_true, y_pred)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["neutral"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["neutral"]["recall"] == 1.0
    lo, hi = m["accuracy_ci95"]
    assert lo < 4 / 6 < hi
    report = evaluate.evaluation_json(m, None)
    assert report["metrics"]["accuracy"]["value"] == pytest.approx(4 / 6)
    assert report["multiclass_classification_metrics"]["confusion_matrix"]["negative"]["neutral"] == 1


@pytest.fixture(scope="module")
def packaged_model(tmp_path_factory, classifier_dir, model_dir):
    """The untrained classifier as a training job publishes it: ``model.tar.gz``."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("model")
    with tarfile.open(folder / "model.tar.gz", "w:gz") as tar:
        for f in classifier_dir.iterdir():
            tar.add(f, arcname=f.name)
    return folder, AutoTokenizer.from_pretrained(model_dir)


def test_evaluation_job_writes_report_png_and_predictions(tmp_path, packaged_model):
    model_folder, tok = packaged_model
    texts = ["love it", "hate it", "it is fine", "great dress", "awful fit", "okay I guess"]
    test = pd.DataFrame({"review_id": [f"r{i}" for i in range(6)], "input_ids": tok(texts)["input_ids"],
                         "label_id": [2, 0, 1, 2, 0, 1]})
    (tmp_path / "test").mkdir()
    test.to_parquet(tmp_path / "test" / "part-00000.parquet")
    out = tmp_path / "metrics"
    report = evaluate.main(["--model", str(model_folder), "--test-data", str(tmp_path / "test"),
                            "--training-output", str(tmp_path / "none"), "--output-data", str(out)])
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert 0 <= saved["metrics"]["accuracy"]["value"] <= 1
    assert saved["test_rows"] == 6
    assert sum(map(sum, saved["confusion_matrix"]["matrix"])) == 6
    assert set(saved["per_class"]) == {"negative", "neutral", "positive"}
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    preds = pd.read_csv(out / "predictions.csv")
    assert np.allclose(preds[["p_negative", "p_neutral", "p_positive"]].sum(1), 1, atol=1e-4)


def test_missing_model_archive_is_a_clear_error(tmp_path):
    (tmp_path / "test").mkdir()
    pd.DataFrame({"review_id": ["a"], "input_ids": [[101, 102]], "label_id": [1]}).to_parquet(tmp_path / "test/p.parquet")
    with pytest.raises(evaluate.EvaluationError, match="no model.tar.gz"):
        evaluate.main(["--model", str(tmp_path / "empty"), "--test-data", str(tmp_path / "test"),
                       "--output-data", str(tmp_path / "o")])
