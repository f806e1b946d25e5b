"""Would ``transformers.Trainer`` keep our training throughput and accuracy? A measured probe.

The same model (MiniLM + the mean-pooling head of ``modeling.py`` + the auxiliary
star-rating head), the same batches (``train_data``: per-epoch capped rows, length-grouped
batches, dynamic padding), class-weighted + auxiliary loss in ``compute_loss``, frozen word
embeddings, the same optimizer settings and linear warm-up/decay, trained for the same
``--steps`` optimizer steps two ways on the split ``preprocess.py`` makes from the shipped
reviews:

* ``ours``: ``include/scripts/train.py`` as a subprocess (the job as the pipeline runs it);
* ``hf``: ``transformers.Trainer`` (needs ``accelerate``) with a batch sampler that has
  ``set_epoch`` and a ``compute_loss`` override.

Reported: samples/s of the training loop and test accuracy / macro-F1 of each.
Writes ``benchmarks/results/hf_trainer_probe.json``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "include" / "scripts"
sys.path[:0] = [str(ROOT), str(SCRIPTS), str(Path(__file__).resolve().parent)]

from _common import write_result  # noqa: E402 - needs the benchmarks folder on sys.path
from model_quality import run_preprocess  # noqa: E402
from trainer_equivalence import test_scores, train  # noqa: E402

HPS = {"learning_rate": 8e-5, "batch": 16, "max_class_ratio": 3.0, "rating_aux_weight": 0.5, "warmup_ratio": 0.06}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--name", default="hf_trainer_probe")
    return p.parse_args(argv)


def hf_train(features: Path, out: Path, a: argparse.Namespace) -> tuple[dict, object]:
    """N steps with transformers.Trainer; returns (figures, trained model)."""
    import torch
    from common import ID2LABEL, default_model_dir
    from modeling import build_classifier
    from train_data import class_weights, collate, epoch_class_counts, epoch_rows, load_channel, plan_batches
    from train_device import cpu_has_native_bf16
    from transformers import Trainer, TrainerCallback, TrainingArguments

    split = load_channel(features / "train", "train", a.max_seq_length)
    lengths, bs, ratio = split.lengths, HPS["batch"], HPS["max_class_ratio"]

    class EpochBatches(torch.utils.data.Sampler):
        """This epoch's capped rows in length-grouped batches; ``set_epoch`` redraws them."""

        def __init__(self) -> None:
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self):
            rows = epoch_rows(split.labels, ratio, a.seed, self.epoch)
            return (b.tolist() for b in plan_batches(lengths, rows, bs, a.seed, self.epoch, True))

        def __len__(self) -> int:
            return math.ceil(len(epoch_rows(split.labels, ratio, a.seed, 0)) / bs)

    def collate_fn(idx: list[int]) -> dict:
        return {k: torch.from_numpy(v) for k, v in collate(split, np.asarray(idx), 0).items()}

    weight = torch.tensor(class_weights(epoch_class_counts(split.class_counts(), ratio), "balanced"))

    class ReviewTrainer(Trainer):
        def get_train_dataloader(self):
            return torch.utils.data.DataLoader(range(len(split)), batch_sampler=EpochBatches(), collate_fn=collate_fn)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            pooled = model.dropout(model.pool(inputs["input_ids"], inputs["attention_mask"]))
            logits = model.classifier(pooled)
            loss = torch.nn.functional.cross_entropy(logits.float(), inputs["labels"], weight=weight)
            aux = torch.nn.functional.cross_entropy(model.rating_head(pooled).float(), inputs["ratings"])
            return loss + HPS["rating_aux_weight"] * aux

    class Clock(TrainerCallback):
        def on_train_begin(self, *args, **kw):
            self.t0 = time.perf_counter()

        def on_train_end(self, *args, **kw):
            self.seconds = time.perf_counter() - self.t0

    torch.manual_seed(a.seed)
    model = build_classifier(default_model_dir(), "mean", ID2LABEL)
    model.get_input_embeddings().weight.requires_grad_(False)
    model.rating_head = torch.nn.Linear(model.config.hidden_size, 5)  # initialised as train_model.py does
    torch.nn.init.normal_(model.rating_head.weight, std=model.config.initializer_range)
    torch.nn.init.zeros_(model.rating_head.bias)
    args = TrainingArguments(output_dir=str(out), max_steps=a.steps, per_device_train_batch_size=bs,
                             learning_rate=HPS["learning_rate"], weight_decay=0.01, max_grad_norm=1.0,
                             warmup_steps=round(HPS["warmup_ratio"] * a.steps), lr_scheduler_type="linear",
                             bf16=cpu_has_native_bf16(), use_cpu=True, seed=a.seed, report_to="none",
                             save_strategy="no", eval_strategy="no", logging_steps=50, disable_tqdm=True,
                             remove_unused_columns=False, dataloader_num_workers=0)
    clock = Clock()
    trainer = ReviewTrainer(model=model, args=args, callbacks=[clock])
    trainer.train()
    samples = sum(len(b) for b in itertools.islice(_cycle(EpochBatches()), a.steps))
    return {"steps": trainer.state.global_step, "train_loop_s": round(clock.seconds, 1),
            "samples_per_s": round(samples / clock.seconds, 2)}, model


def _cycle(sampler):
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from sampler
        epoch += 1


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    import torch
    from train_data import load_channel
    from train_eval import predict, scores

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory(prefix="hf_trainer_probe-") as tmp:
        work = Path(tmp)
        pre = argparse.Namespace(source=None, limit=0, max_seq_length=a.max_seq_length, train_split=0.82,
                                 validation_split=0.05, seed=a.seed)
        run_preprocess(work, pre)
        eq = argparse.Namespace(steps=a.steps, max_seq_length=a.max_seq_length, seed=a.seed, threads=a.threads)
        wall, metrics = train(SCRIPTS, work / "features", work / "ours" / "job", eq)
        ours = {"steps": metrics["final"]["steps"], "samples_per_s": metrics["final"]["samples_per_s"],
                **test_scores(work / "ours" / "job" / "model", work / "features", a.max_seq_length)}
        print("ours", json.dumps(ours), flush=True)
        hf, model = hf_train(work / "features", work / "hf", a)
        test = load_channel(work / "features" / "test", "test", a.max_seq_length)
        logits, loss = predict(model, test, 64, "cpu", 0)
        hf.update(test_loss=round(loss, 4), **{f"test_{k}": round(v, 4)
                                              for k, v in scores(test.labels, logits.argmax(1)).items()})
        print("hf", json.dumps(hf), flush=True)
    result = {"steps": a.steps, "threads": a.threads, "ours": ours, "hf_trainer": hf,
              "throughput_ratio_hf_over_ours": round(hf["samples_per_s"] / ours["samples_per_s"], 3),
              "load_average_after": [round(x, 2) for x in os.getloadavg()], "hyperparameters": HPS,
              "method": "same split, model, batches, loss and optimizer settings; --steps optimizer steps each, "
                        "run one after the other; ours = profiler loop time, hf = on_train_begin..on_train_end"}
    path = write_result(a.name, result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
