"""The review classifier: a pre-trained encoder with a mean-pooling classification head.

all-MiniLM-L6-v2 was trained (sentence-transformers) to make sentence embeddings by *mean
pooling* its token states; its [CLS] state and BERT pooler were never trained for that.
A logistic-regression probe on the frozen features of 2,100 balanced real reviews scores
0.60 with mean pooling against 0.50 with the BERT pooler ([CLS] + tanh layer, what
``BertForSequenceClassification`` uses), so this head starts from what the model learned
and fine-tuning converges in fewer steps - which is what a 2-core time budget needs.

A saved classifier is an ordinary ``save_pretrained`` encoder folder (``config.json`` with
``classifier_pooling: "mean"``, ``id2label``, the encoder's ``model.safetensors``) plus
``classifier_head.safetensors``. ``load_classifier`` reads both; folders without
``classifier_pooling`` load as ``AutoModelForSequenceClassification`` (``cls`` pooling).

Self-contained (torch + transformers only): it ships inside ``model.tar.gz`` as
``code/modeling.py`` beside ``code/inference.py``.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

POOLING_KEY = "classifier_pooling"
POOLINGS = ("mean", "cls")
HEAD_FILE = "classifier_head.safetensors"


class ClassifierLoadError(ValueError):
    """A model folder that claims a mean-pooling head but does not hold one."""


class MeanPoolingClassifier(torch.nn.Module):
    """``encoder`` -> mean of the unmasked token states -> dropout -> linear layer.

    Quacks like a transformers sequence classifier where the pipeline needs it:
    ``config``, ``forward(...).logits``, ``save_pretrained``, ``get_input_embeddings``.
    """

    def __init__(self, encoder: torch.nn.Module, config: Any) -> None:
        super().__init__()
        self.encoder = encoder
        # the encoder's own config object (from_pretrained copies the one passed in): one source
        # of truth for labels, pooling and the attention implementation it was built with
        self.config = encoder.config
        for key in ("num_labels", "id2label", "label2id", POOLING_KEY, "problem_type"):
            if hasattr(config, key):
                setattr(self.config, key, getattr(config, key))
        config = self.config
        p = getattr(config, "classifier_dropout", None)
        if p is None:
            p = getattr(config, "hidden_dropout_prob", 0.1)
        self.dropout = torch.nn.Dropout(p)
        self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels)
        # BERT's own head initialisation: small normal weights, zero bias
        std = getattr(config, "initializer_range", 0.02)
        torch.nn.init.normal_(self.classifier.weight, std=std)
        torch.nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs: Any) -> SequenceClassifierOutput:
        """Logits (and the cross-entropy loss when ``labels`` are given)."""
        logits = self.classifier(self.dropout(self.pool(input_ids, attention_mask, **kwargs)))
        loss = torch.nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """The review vector: mean of the token states where ``attention_mask`` is 1."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.encoder.get_input_embeddings()

    def save_pretrained(self, out_dir: str | os.PathLike, **kwargs: Any) -> None:
        """The encoder as a ``save_pretrained`` folder, the head as ``classifier_head.safetensors``."""
        from safetensors.torch import save_file

        setattr(self.config, POOLING_KEY, "mean")
        self.encoder.save_pretrained(out_dir, **kwargs)
        head = {k: v.detach().contiguous().cpu() for k, v in self.classifier.state_dict().items()}
        save_file(head, os.path.join(out_dir, HEAD_FILE), metadata={"format": "pt"})


def _load_encoder(path: str, config: Any) -> torch.nn.Module:
    try:  # BERT/RoBERTa-style encoders: no pooler, the mean head replaces it
        return AutoModel.from_pretrained(path, config=config, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_pretrained(path, config=config)


def build_classifier(model_path: str, pooling: str, id2label: dict[int, str]) -> torch.nn.Module:
    """A classifier to fine-tune, from a pre-trained encoder folder; the head is new."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r}: use one of {', '.join(POOLINGS)}")
    labels = {int(k): v for k, v in id2label.items()}
    kw = {"num_labels": len(labels), "id2label": labels, "label2id": {v: k for k, v in labels.items()}}
    if pooling == "cls":
        return AutoModelForSequenceClassification.from_pretrained(
            model_path, problem_type="single_label_classification", **kw)
    config = AutoConfig.from_pretrained(model_path, problem_type="single_label_classification", **kw)
    setattr(config, POOLING_KEY, "mean")
    return MeanPoolingClassifier(_load_encoder(model_path, config), config)


def load_classifier(model_dir: str | os.PathLike) -> torch.nn.Module:
    """A fine-tuned classifier saved by ``save_pretrained`` (either head), in eval mode."""
    from safetensors.torch import load_file

    model_dir = str(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    if getattr(config, POOLING_KEY, "cls") != "mean":
        return AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    head_path = os.path.join(model_dir, HEAD_FILE)
    if not os.path.isfile(head_path):
        raise ClassifierLoadError(f"{head_path}: missing - config.json says {POOLING_KEY}=mean, so the "
                                  "classification head must be saved beside the encoder")
    model = MeanPoolingClassifier(_load_encoder(model_dir, config), config)
    head = load_file(head_path)
    try:
        model.classifier.load_state_dict(head)
    except RuntimeError as exc:
        raise ClassifierLoadError(f"{head_path}: does not fit {config.hidden_size} hidden units x "
                                  f"{config.num_labels} labels ({exc})") from exc
    return model.eval()
