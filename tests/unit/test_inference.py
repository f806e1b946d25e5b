"""The SageMaker inference handler (include/scripts/inference.py), one function at a time."""
from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from include.scripts import inference  # noqa: E402

LAB_BODY = b'{"features": ["I love this dress, it fits perfectly."]}\n{"features": ["Awful, it fell apart."]}\n'



@pytest.fixture(scope="module")
def loaded(classifier_dir):
    os.environ["INFERENCE_NUM_THREADS"] = "1"
    try:
        return inference.model_fn(str(classifier_dir))
    finally:
        os.environ.pop("INFERENCE_NUM_THREADS")


# ---------------------------------------------------------------- model_fn

def test_model_fn_loads_eval_model_with_labels_and_thread_setting(loaded):
    assert loaded.model.training is False
    assert loaded.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert loaded.max_seq_length == inference.DEFAULT_MAX_SEQ_LENGTH
    assert torch.get_num_threads() == 1


def test_model_fn_takes_max_seq_length_from_config_and_env(classifier_dir, tmp_path, monkeypatch):
    copy = tmp_path / "m"
    shutil.copytree(classifier_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "max_seq_length": 64}))
    monkeypatch.setenv("INFERENCE_NUM_THREADS", "1")
    assert inference.model_fn(str(copy)).max_seq_length == 64
    monkeypatch.setenv("INFERENCE_MAX_SEQ_LENGTH", "32")
    assert inference.model_fn(str(copy)).max_seq_length == 32


def test_model_fn_rejects_bad_env_value_naming_the_variable(classifier_dir, monkeypatch):
    monkeypatch.setenv("INFERENCE_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="INFERENCE_NUM_THREADS"):
        inference.model_fn(str(classifier_dir))


def test_model_fn_serves_int8_when_the_container_environment_asks(classifier_dir, monkeypatch, loaded):
    # A SageMaker endpoint has no loader of ours: the deploy passes the precision as INFERENCE_PRECISION.
    monkeypatch.setenv("INFERENCE_NUM_THREADS", "1")
    monkeypatch.setenv("INFERENCE_PRECISION", "int8")
    int8 = inference.model_fn(str(classifier_dir))
    kinds = {type(m).__module__ for m in int8.model.modules() if "Linear" in type(m).__name__}
    assert any("quantized" in k for k in kinds), kinds
    texts = ["I love this dress, it fits perfectly.", "Awful, it fell apart."]
    fp32_probs = inference.predict_fn({"texts": texts}, loaded)
    int8_probs = inference.predict_fn({"texts": texts}, int8)
    assert len(int8_probs["probabilities"]) == len(fp32_probs["probabilities"]) == 2
    monkeypatch.setenv("INFERENCE_PRECISION", "fp16")
    with pytest.raises(ValueError, match="INFERENCE_PRECISION"):
        inference.model_fn(str(classifier_dir))


def test_model_fn_without_config_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        inference.model_fn(str(tmp_path))


# ---------------------------------------------------------------- input_fn

def test_input_fn_reads_the_labs_jsonlines_body():
    data = inference.input_fn(LAB_BODY, "application/jsonlines")
    assert data == {"texts": ["I love this dress, it fits perfectly.", "Awful, it fell apart."], "single": False}


def test_input_fn_accepts_content_type_parameters_and_str_body():
    data = inference.input_fn(LAB_BODY.decode(), "application/jsonlines; charset=utf-8")
    assert len(data["texts"]) == 2


@pytest.mark.parametrize("body, texts, single", [
    ('"great top"', ["great top"], True),
    ('{"features": ["great top"]}', ["great top"], True),
    ('["great top", "bad top"]', ["great top", "bad top"], False),
    ('[{"features": ["great top"]}, {"features": ["bad top"]}]', ["great top", "bad top"], False),
    ('{"instances": ["great top"]}', ["great top"], False),
])
def test_input_fn_reads_json_one_review_or_a_list(body, texts, single):
    assert inference.input_fn(body.encode(), "application/json") == {"texts": texts, "single": single}


@pytest.mark.parametrize("body, content_type, status, message", [
    (b"{not json", "application/json", 400, "malformed JSON"),
    (b'{"features": ["ok"]}\n{oops', "application/jsonlines", 400, "line 2: malformed JSON"),
    (b'{"text": "ok"}', "application/jsonlines", 400, 'missing field "features"'),
    (b'{"text": "ok"}', "application/json", 400, 'missing field "features"'),
    (b'{"features": []}', "application/jsonlines", 400, "non-empty list"),
    (b"[]", "application/json", 400, "no reviews"),
    (b"\n\n", "application/jsonlines", 400, "no reviews"),
    (b'["  "]', "application/json", 400, "empty"),
    (b"[1, 2]", "application/json", 400, "must be a string"),
    (b"\xff\xfe", "application/json", 400, "not UTF-8"),
    (b"review,label", "text/csv", 415, "text/csv"),
    (b'"ok"', "", 415, "not supported"),
])
def test_input_fn_rejects_bad_input_with_status_and_clear_message(body, content_type, status, message):
    with pytest.raises(inference.InferenceInputError, match=message) as info:
        inference.input_fn(body, content_type)
    assert info.value.status_code == status


def test_input_fn_caps_records_per_request():
    body = json.dumps(["x"] * (inference.MAX_RECORDS + 1)).encode()
    with pytest.raises(inference.InferenceInputError, match=f"at most {inference.MAX_RECORDS}"):
        inference.input_fn(body, "application/json")


# ---------------------------------------------------------------- predict_fn

def test_predict_fn_returns_a_distribution_per_text_in_request_order(loaded):
    texts = ["Short.", "A much longer review about the dress that fits well and looks great.", "Meh"]
    pred = inference.predict_fn({"texts": texts, "single": False}, loaded)
    assert len(pred["label_ids"]) == len(pred["probabilities"]) == 3
    for label_id, probs in zip(pred["label_ids"], pred["probabilities"]):
        assert math.isclose(sum(probs), 1.0, abs_tol=1e-5)
        assert label_id == max(range(3), key=probs.__getitem__)
    one_by_one = [inference.predict_fn({"texts": [t]}, loaded)["probabilities"][0] for t in texts]
    for batched, single in zip(pred["probabilities"], one_by_one):  # padding/sorting must not change results
        assert batched == pytest.approx(single, abs=1e-4)


def test_predict_fn_chunks_large_requests_without_changing_results(loaded):
    texts = [f"review number {i} " + "good " * i for i in range(7)]
    full = inference.predict_fn({"texts": texts}, loaded)["probabilities"]
    loaded.batch_size, saved = 2, loaded.batch_size
    try:
        chunked = inference.predict_fn({"texts": texts}, loaded)["probabilities"]
    finally:
        loaded.batch_size = saved
    for a, b in zip(chunked, full):
        assert a == pytest.approx(b, abs=1e-4)


# ---------------------------------------------------------------- output_fn

PREDICTION = {"label_ids": [0, 2, 1], "probabilities": [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]],
              "single": False, "model_version": "7", "id2label": {0: "negative", 1: "neutral", 2: "positive"}}


def test_output_fn_jsonlines_answers_sentiment_and_probability_per_line():
    lines = inference.output_fn(PREDICTION, "application/jsonlines").splitlines()
    assert [json.loads(line) for line in lines] == [
        {"predicted_label": -1, "probability": 0.7}, {"predicted_label": 1, "probability": 0.8},
        {"predicted_label": 0, "probability": 0.4}]


def test_output_fn_json_carries_label_name_all_probabilities_and_version():
    answers = json.loads(inference.output_fn(PREDICTION, "application/json"))
    assert answers[1] == {"predicted_label": 1, "label": "positive", "probability": 0.8,
                          "probabilities": {"negative": 0.1, "neutral": 0.1, "positive": 0.8}, "model_version": "7"}
    single = json.loads(inference.output_fn({**PREDICTION, "label_ids": [0], "probabilities": [[0.7, 0.2, 0.1]],
                                             "single": True}, "application/json"))
    assert single["label"] == "negative"


def test_output_fn_defaults_to_jsonlines_and_refuses_other_types():
    assert inference.output_fn(PREDICTION, "*/*") == inference.output_fn(PREDICTION, "application/jsonlines")
    with pytest.raises(inference.UnsupportedAcceptError, match="text/csv") as info:
        inference.output_fn(PREDICTION, "text/csv")
    assert info.value.status_code == 406


def test_output_fn_refuses_non_finite_probabilities():
    with pytest.raises(ArithmeticError, match="non-finite"):
        inference.output_fn({**PREDICTION, "probabilities": [[math.nan] * 3] * 3}, "application/jsonlines")


def test_handler_chain_end_to_end_on_the_labs_body(loaded):
    loaded.version = "3"
    body = inference.output_fn(inference.predict_fn(inference.input_fn(LAB_BODY, "application/jsonlines"), loaded),
                               "application/json")
    answers = json.loads(body)
    assert [a["model_version"] for a in answers] == ["3", "3"]
    assert all(a["predicted_label"] in (-1, 0, 1) for a in answers)


def test_length_chunks_group_similar_lengths_and_respect_the_batch_size():
    lengths = [120, 5, 7, 118, 6, 60, 8, 125]
    chunks = inference.length_chunks(lengths, batch_size=3)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))  # every review exactly once
    assert all(len(c) <= 3 for c in chunks)
    for c in chunks:  # padding to the chunk's longest wastes at most 25% of its tokens
        assert len(c) * max(lengths[i] for i in c) <= 1.25 * sum(lengths[i] for i in c)
    assert [lengths[i] for i in chunks[0]] == [5, 6, 7]  # shortest first
