"""Validation of the training job: logits in row order, loss, and scikit-learn's metrics
(the same accuracy and macro-F1 that evaluate.py reports)."""
from __future__ import annotations

import numpy as np
from train_data import Split, collate


def predict(model, split: Split, batch_size: int, device: str, pad_id: int, amp_dtype=None) -> tuple[np.ndarray, float]:
    """Logits for every row of ``split`` (in row order) and the mean unweighted loss."""
    import torch

    model.eval()
    order = np.argsort(split.lengths, kind="stable")  # length-sorted: little padding; put back after
    logits = np.zeros((len(split), model.config.num_labels), dtype=np.float32)
    loss_sum = 0.0
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            b = {k: torch.from_numpy(v).to(device) for k, v in collate(split, idx, pad_id).items()}
            with torch.autocast(device_type=device.split(":")[0], dtype=amp_dtype, enabled=amp_dtype is not None):
                out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            lg = out.logits.float()
            loss_sum += float(torch.nn.functional.cross_entropy(lg, b["labels"], reduction="sum"))
            logits[idx] = lg.cpu().numpy()
    model.train()
    return logits, loss_sum / max(1, len(split))


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 (mean F1 over the classes present in ``y_true``)."""
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0))}


def evaluate(model, split: Split, batch_size: int, device: str, pad_id: int, amp_dtype=None) -> dict[str, float]:
    """Validation loss, accuracy and macro-F1."""
    logits, loss = predict(model, split, batch_size, device, pad_id, amp_dtype)
    return {"loss": loss, **scores(split.labels, logits.argmax(axis=1))}
