"""The classifier heads (include/scripts/modeling.py): save/load round trip, masking, errors."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from include.scripts.common import ID2LABEL
from include.scripts.modeling import (
    HEAD_FILE,
    ClassifierLoadError,
    MeanPoolingClassifier,
    build_classifier,
    load_classifier,
)


def _batch(tokenizer, texts, pad_to=None):
    enc = tokenizer(texts, padding="max_length" if pad_to else True, max_length=pad_to, truncation=True,
                    return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def test_mean_head_round_trips_through_save_and_load(classifier_dir, model_dir, tokenizer, tmp_path):
    torch.manual_seed(1)
    model = build_classifier(model_dir, "mean", ID2LABEL).eval()
    torch.nn.init.normal_(model.classifier.weight, std=0.5)  # a head clearly unlike a fresh one
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["classifier_pooling"] == "mean" and cfg["id2label"]["0"] == "negative"
    assert (tmp_path / HEAD_FILE).is_file()
    reloaded = load_classifier(tmp_path)
    assert isinstance(reloaded, MeanPoolingClassifier) and not reloaded.training
    ids, mask = _batch(tokenizer, ["Love this dress, fits perfectly.", "Returned it: the seams came apart."])
    with torch.inference_mode():
        assert torch.allclose(model(input_ids=ids, attention_mask=mask).logits,
                              reloaded(input_ids=ids, attention_mask=mask).logits, atol=1e-6)


def test_padding_does_not_change_the_mean_pooled_logits(classifier_dir, tokenizer):
    model = load_classifier(classifier_dir)
    text = ["Runs small, order a size up. Lovely colour though."]
    with torch.inference_mode():
        tight = model(*_batch(tokenizer, text)).logits
        padded = model(*_batch(tokenizer, text, pad_to=64)).logits
    assert torch.allclose(tight, padded, atol=1e-5)


def test_mean_pooling_starts_from_the_sentence_embedding(minilm_dir, tokenizer):
    """The pooled vector is all-MiniLM-L6-v2's sentence embedding: similar reviews are close."""
    model = build_classifier(minilm_dir, "mean", ID2LABEL).eval()
    ids, mask = _batch(tokenizer, ["This top is gorgeous and fits great", "Beautiful blouse, great fit",
                                   "The zipper broke after one wash"])
    with torch.inference_mode():
        states = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        emb = torch.nn.functional.normalize((states * m).sum(1) / m.sum(1), dim=-1)
    assert float(emb[0] @ emb[1]) > float(emb[0] @ emb[2]) + 0.2


def test_cls_pooling_is_the_plain_transformers_classifier(model_dir, tmp_path):
    model = build_classifier(model_dir, "cls", ID2LABEL)
    assert type(model).__name__ == "BertForSequenceClassification"
    model.save_pretrained(tmp_path)
    assert type(load_classifier(tmp_path)).__name__ == "BertForSequenceClassification"


def test_mean_model_without_its_head_file_is_a_clear_error(classifier_dir, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(classifier_dir, copy)
    (copy / HEAD_FILE).unlink()
    with pytest.raises(ClassifierLoadError, match=f"{HEAD_FILE}: missing"):
        load_classifier(copy)


def test_unknown_pooling_is_refused(model_dir):
    with pytest.raises(ValueError, match="pooling='max'"):
        build_classifier(model_dir, "max", ID2LABEL)
