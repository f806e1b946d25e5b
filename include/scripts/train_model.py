"""The model and the ``transformers.Trainer`` of the training job.

``build_model`` loads the classifier of ``modeling.py`` (frozen word embeddings, optional
auxiliary star-rating head); ``ReviewTrainer`` is ``transformers.Trainer`` with what the job
adds: our batch sampler (per-epoch capped rows, length-grouped batches, dynamic padding), a
class-weighted loss plus the auxiliary rating loss in ``compute_loss``, the learning-rate
schedule fitted to the time budget, and the step figures the callbacks read (loss, gradient
norm, per-layer gradient statistics, batch shape and collate time).
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import numpy as np
import torch
from common import ID2LABEL
from modeling import build_classifier
from train_args import Args, HyperParameterError
from train_data import EpochBatches, Split, collate
from train_debugger import layer_grad_stats
from train_eval import scores
from train_schedule import BudgetSchedule
from transformers import Trainer, TrainingArguments

log = logging.getLogger("train")


def build_model(args: Args, model_path: str, train: Split) -> torch.nn.Module:
    """The classifier to fine-tune; with ``rating_aux_weight`` a ``rating_head`` submodule (so checkpoints
    and the optimizer include it; ``save_pretrained`` of the mean-pooling classifier leaves it out)."""
    torch.manual_seed(args.train.seed)
    t0 = time.monotonic()
    model = build_classifier(model_path, args.model.pooling, ID2LABEL)
    if args.model.freeze_word_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    w = args.train.rating_aux_weight
    if w > 0 and not hasattr(model, "pool"):
        raise HyperParameterError(f"hyper-parameter rating_aux_weight={w} needs pooling=mean "
                                  f"(got pooling={args.model.pooling})")
    if w > 0 and train.ratings is None:
        log.warning("rating_aux_weight=%s but the train channel has no usable star_rating column: "
                    "training without the auxiliary loss", w)
    elif w > 0:
        model.rating_head = torch.nn.Linear(model.config.hidden_size, 5)
        torch.nn.init.normal_(model.rating_head.weight, std=getattr(model.config, "initializer_range", 0.02))
        torch.nn.init.zeros_(model.rating_head.bias)
        log.info("auxiliary star-rating loss on, weight %s", w)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("loaded %s (%s, %.1fM parameters, %.1fM trained, %s pooling) in %.1fs", model_path,
             model.config.model_type, n_params / 1e6, n_train / 1e6, args.model.pooling, time.monotonic() - t0)
    return model


def training_arguments(args: Args, total_steps: int, amp_dtype: Any, staging_dir: str) -> TrainingArguments:
    """Our hyper-parameters as ``TrainingArguments``: Trainer checkpoints every ``checkpoint_steps`` into
    ``staging_dir`` (train_checkpoint.py moves each into ``checkpoint_dir``); evaluation, logging and
    reporting are the callbacks'."""
    t = args.train
    return TrainingArguments(
        output_dir=staging_dir, max_steps=total_steps, per_device_train_batch_size=t.train_batch_size,
        per_device_eval_batch_size=t.eval_batch_size, learning_rate=t.learning_rate, weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm or float("inf"), seed=t.seed, bf16=amp_dtype == torch.bfloat16,
        fp16=amp_dtype == torch.float16, use_cpu=not torch.cuda.is_available(),
        save_strategy="steps" if t.checkpoint_steps else "no", save_steps=t.checkpoint_steps or 500,
        eval_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
        remove_unused_columns=False, dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available())


class Collator:
    """Indices -> padded torch batch; keeps (collate seconds, samples, tokens, padded tokens) per batch."""

    def __init__(self, split: Split, pad_id: int, pad_to: int | None, keep_shapes: bool = True):
        self.split, self.pad_id, self.pad_to, self.keep = split, pad_id, pad_to, keep_shapes
        self.shapes: deque[tuple[float, int, int, int]] = deque()

    def __call__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        t0 = time.perf_counter()
        batch = {k: torch.from_numpy(v) for k, v in collate(self.split, np.asarray(idx), self.pad_id,
                                                            self.pad_to).items()}
        mask = batch["attention_mask"]
        if self.keep:  # the profiler takes one per optimizer step
            self.shapes.append((time.perf_counter() - t0, len(idx), int(mask.sum()), mask.numel()))
        return batch


class ReviewTrainer(Trainer):
    """``transformers.Trainer`` with the job's sampler, loss and schedule (see the module docstring)."""

    def __init__(self, *a: Any, job_args: Args, train_split: Split, valid_split: Split,
                 class_weight: np.ndarray | None, schedule: BudgetSchedule, pad_id: int, **kw: Any):
        super().__init__(*a, compute_metrics=lambda p: scores(p.label_ids, p.predictions.argmax(axis=1)), **kw)
        d = job_args.data
        self.batches = EpochBatches(train_split, job_args.train.train_batch_size, d.max_class_ratio,
                                    job_args.train.seed, d.group_by_length)
        self.collator = Collator(train_split, pad_id, None if d.dynamic_padding else d.max_seq_length)
        self.valid, self.valid_collator = valid_split, Collator(valid_split, pad_id, None, keep_shapes=False)
        self.class_weight = None if class_weight is None else torch.tensor(class_weight)
        self.aux_weight, self.schedule = job_args.train.rating_aux_weight, schedule
        self.debugger_interval = job_args.debugger.debugger_interval
        self.step_loss = self.step_grad_norm = self.step_lr = float("nan")
        self.step_layers: dict[str, dict[str, float]] | None = None

    def get_train_dataloader(self):
        loader = torch.utils.data.DataLoader(range(len(self.collator.split)), batch_sampler=self.batches,
                                             collate_fn=self.collator, pin_memory=self.args.dataloader_pin_memory)
        return self.accelerator.prepare(loader)

    def get_eval_dataloader(self, eval_dataset=None):
        order = np.argsort(self.valid.lengths, kind="stable")  # length-sorted: little padding
        size = self.args.eval_batch_size
        batches = [order[i:i + size].tolist() for i in range(0, len(order), size)]
        loader = torch.utils.data.DataLoader(range(len(self.valid)), batch_sampler=batches,
                                             collate_fn=self.valid_collator)
        return self.accelerator.prepare(loader)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:  # a function, so LambdaLR's state_dict stays tensors-and-numbers only
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer,
                                                                  lambda step: self.schedule(step))
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Class-weighted cross-entropy (+ weight x the star-rating loss) in training; plain cross-entropy
        in validation, as evaluate.py reports it."""
        labels, ratings = inputs["labels"], inputs.get("ratings")
        aux_logits = None
        if model.training and hasattr(model, "rating_head") and ratings is not None:
            # one encoder pass feeds both heads: sentiment (kept) and star rating (training only)
            pooled = model.dropout(model.pool(inputs["input_ids"], inputs["attention_mask"]))
            logits, aux_logits = model.classifier(pooled), model.rating_head(pooled)
        else:
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        weight = self.class_weight.to(logits.device) if model.training and self.class_weight is not None else None
        loss = torch.nn.functional.cross_entropy(logits.float(), labels, weight=weight)
        if model.training:
            self.step_loss = float(loss.detach())
        if aux_logits is not None:
            loss = loss + self.aux_weight * torch.nn.functional.cross_entropy(aux_logits.float(), ratings)
        return (loss, {"logits": logits.float()}) if return_outputs else loss

    def _clip_grad_norm(self, model):
        """Trainer's clipping hook: per-layer gradient statistics (every ``debugger_interval`` steps) are taken
        before clipping, and the pre-clip norm kept for the debugger rules."""
        record = (self.state.global_step + 1) % self.debugger_interval == 0
        self.step_layers = layer_grad_stats(model) if record else None
        self.step_lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
        norm = super()._clip_grad_norm(model)
        self.step_grad_norm = float(norm)
        return norm
