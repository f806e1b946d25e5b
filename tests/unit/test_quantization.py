"""The int8 decision (include/serving/quantization.py): the rule and its inputs."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from include.serving.quantization import PrecisionDecisionError, choose_precision, decide, load_test_split


@pytest.mark.parametrize(("fp32", "int8", "expected"), [
    (0.700, 0.700, "int8"),
    (0.700, 0.695, "int8"),  # exactly half a point (0.5000000000000004 in floats) is still within
    (0.700, 0.694, "fp32"),
    (0.700, 0.720, "int8"),  # better is fine
])
def test_int8_serves_only_within_half_a_point_of_fp32(fp32, int8, expected):
    assert decide(fp32, int8) == expected


def test_a_negative_tolerance_is_refused():
    with pytest.raises(ValueError, match="max_drop_points=-1"):
        decide(0.7, 0.7, -1)


def test_test_split_is_read_from_the_parquet_shards(tmp_path):
    (tmp_path / "test").mkdir()
    pq.write_table(pa.table({"review_body": ["a", "b"], "label_id": [0, 2], "x": [1, 2]}), tmp_path / "test" / "p.parquet")
    assert load_test_split((tmp_path / "test").as_uri()) == (["a", "b"], [0, 2])
    with pytest.raises(PrecisionDecisionError, match="no test shards"):
        load_test_split((tmp_path / "missing").as_uri())


@pytest.mark.parametrize(("int8_onnx", "runtime"), [(True, "onnxruntime"), (False, "torch")])
def test_choose_precision_measures_both_models_on_the_same_reviews(classifier_dir, tmp_path, int8_onnx, runtime):
    # a package with the int8 ONNX model (what register_model builds) and one without (built before it)
    from include.model.packaging import build_package, extract_package
    from include.serving.server import load_slot

    package = build_package(classifier_dir, (tmp_path / "p").as_uri(), int8_onnx=int8_onnx)
    model_dir = extract_package(package, tmp_path / "m")
    texts = ["Love it", "Runs small and the fabric is thin", "It is fine I guess", "Returned it the same day"] * 3
    slot = load_slot(str(model_dir), "x")
    labels = slot.handler.predict_fn({"texts": texts}, slot.model)["label_ids"]
    out = choose_precision(model_dir, texts, labels)
    assert out["fp32_accuracy"] == 1.0 and out["eval_rows"] == len(texts)
    assert out["int8_accuracy"] == out["agreement"]  # fp32's labels are the truth here
    assert out["precision"] == decide(out["fp32_accuracy"], out["int8_accuracy"])
    assert out["int8_runtime"] == runtime
    with pytest.raises(PrecisionDecisionError, match="same non-zero number"):
        choose_precision(model_dir, texts, labels[:-1])
