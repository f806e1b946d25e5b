"""Training throughput: our loop vs a plain baseline, same model and batch.

Both arms fine-tune the same model (same initial weights - MiniLM with the mean-pooling head
of ``modeling.py`` - same optimizer, batch size and thread count) on the same real reviews:

* ours, exactly what ``include/scripts/train.py`` does: ``train_data.plan_batches(
  group_by_length=True)`` + ``collate`` padded per batch, bf16 autocast when the CPU has
  native bf16 (``train_device.cpu_has_native_bf16``; fp32 otherwise), word embeddings frozen;
* baseline: random batches padded to ``max_seq_length`` (what a plain loop with
  ``padding="max_length"`` does), fp32, every weight trained.

The arms run in alternating blocks of ``--block-steps`` steps within one process, so load
from other jobs on a shared machine hits both alike; each arm does the same number of steps.
"Equal accuracy" is checked twice: the logits of a batch padded dynamically and to full
width must agree (padding is masked, so the maths is the same), and both trained models are
scored on the same balanced held-out reviews.

Writes ``benchmarks/results/train_throughput.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "include" / "scripts"), str(Path(__file__).resolve().parent)]

from _common import cpu_flags, write_result  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-s", type=float, default=360, help="wall seconds of training for both arms together")
    p.add_argument("--block-steps", type=int, default=4, help="steps per arm before switching")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--train-rows", type=int, default=6000)
    p.add_argument("--eval-rows-per-class", type=int, default=100)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = train.py's choice)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--name", default="train_throughput")
    return p.parse_args(argv)


def load_real(a: argparse.Namespace):
    """Real reviews tokenized like preprocess.py: a balanced eval set and training rows."""
    from common import default_model_dir
    from train_data import Split
    from transformers import AutoTokenizer

    from include.data.landing import load_kaggle_reviews

    df = load_kaggle_reviews()
    label = np.select([df["star_rating"] <= 2, df["star_rating"] == 3], [0, 1], 2)
    rng = np.random.default_rng(a.seed)
    perm = rng.permutation(len(df))
    ev = np.concatenate([perm[label[perm] == c][:a.eval_rows_per_class] for c in range(3)])
    rest = np.setdiff1d(perm, ev, assume_unique=True)
    tr = rng.permutation(rest)[:a.train_rows]
    tok = AutoTokenizer.from_pretrained(default_model_dir())

    def split(idx, name):
        ids = tok(df["review_body"].iloc[idx].tolist(), truncation=True, max_length=a.max_seq_length)["input_ids"]
        return Split(name, Path(name), [np.asarray(x, dtype=np.int32) for x in ids], label[idx].astype(np.int64))

    return split(tr, "train"), split(ev, "eval"), tok.pad_token_id


class Arm:
    """One model + optimizer and the batches it trains on."""

    def __init__(self, name: str, init_state, model_dir: str, lr: float, batches, pad_to,
                 amp_dtype=None, freeze_word_embeddings: bool = False):
        import torch
        from common import ID2LABEL
        from modeling import build_classifier
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        self.name, self.batches, self.pad_to, self.amp_dtype = name, batches, pad_to, amp_dtype
        self.model = build_classifier(model_dir, "mean", ID2LABEL)
        self.model.load_state_dict(init_state)
        if freeze_word_embeddings:
            self.model.get_input_embeddings().weight.requires_grad_(False)
        self.model.train()
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=lr,
                                     weight_decay=0.01)
        self.i, self.seconds, self.samples, self.tokens, self.padded = 0, 0.0, 0, 0, 0

    def step(self, split, pad_id: int) -> None:
        import torch
        from train_data import collate

        t0 = time.perf_counter()
        b = {k: torch.from_numpy(v) for k, v in collate(split, self.batches[self.i % len(self.batches)], pad_id,
                                                         self.pad_to).items()}
        with torch.autocast("cpu", dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), b["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.seconds += time.perf_counter() - t0
        self.i += 1
        self.samples += len(b["labels"])
        self.tokens += int(b["attention_mask"].sum())
        self.padded += int(b["attention_mask"].numel())


def padding_equivalence(model_dir: str, split, pad_id: int, width: int) -> float:
    """Max |logit difference| between dynamic and full-width padding of the same batch."""
    import torch
    from common import ID2LABEL
    from modeling import build_classifier
    from train_data import collate

    m = build_classifier(model_dir, "mean", ID2LABEL).eval()
    idx = np.argsort(split.lengths)[:16]  # short rows, so the two paddings really differ
    with torch.inference_mode():
        outs = []
        for pad_to in (None, width):
            b = {k: torch.from_numpy(v) for k, v in collate(split, idx, pad_id, pad_to).items()}
            outs.append(m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits)
    return float((outs[0] - outs[1]).abs().max())


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    import torch
    from common import ID2LABEL, available_cores, default_model_dir
    from modeling import build_classifier
    from train_data import plan_batches
    from train_device import auto_threads, cpu_has_native_bf16
    from train_eval import evaluate

    threads = a.threads or auto_threads(available_cores())
    torch.set_num_threads(threads)
    torch.manual_seed(a.seed)
    model_dir = default_model_dir()
    train, ev, pad_id = load_real(a)
    init = build_classifier(model_dir, "mean", ID2LABEL).state_dict()
    rows = np.arange(len(train))
    amp = torch.bfloat16 if cpu_has_native_bf16() else None
    ours = Arm("ours", init, model_dir, a.learning_rate,
               plan_batches(train.lengths, rows, a.batch_size, a.seed, 0, group_by_length=True), None,
               amp_dtype=amp, freeze_word_embeddings=True)
    base = Arm("baseline", init, model_dir, a.learning_rate,
               plan_batches(train.lengths, rows, a.batch_size, a.seed, 0, group_by_length=False), a.max_seq_length)
    print(f"{len(train)} train rows, {len(ev)} eval rows, {threads} thread(s), budget {a.budget_s:.0f}s", flush=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < a.budget_s:
        for arm in (ours, base):
            for _ in range(a.block_steps):
                arm.step(train, pad_id)
        print(f"  {ours.i} steps each: ours {ours.samples / ours.seconds:.1f} samples/s, baseline "
              f"{base.samples / base.seconds:.1f} samples/s", flush=True)
    acc = {arm.name: evaluate(arm.model, ev, 64, "cpu", pad_id) for arm in (ours, base)}
    diff = padding_equivalence(model_dir, ev, pad_id, a.max_seq_length)
    sps, bsps = ours.samples / ours.seconds, base.samples / base.seconds
    result = {
        "samples_per_s": round(sps, 2), "baseline_samples_per_s": round(bsps, 2), "speedup": round(sps / bsps, 3),
        "tokens_per_s": round(ours.tokens / ours.seconds, 1),
        "baseline_padded_tokens_per_s": round(base.padded / base.seconds, 1),
        "padding_share": round(1 - ours.tokens / ours.padded, 4),
        "baseline_padding_share": round(1 - base.tokens / base.padded, 4),
        "steps_per_arm": ours.i, "batch_size": a.batch_size, "max_seq_length": a.max_seq_length, "threads": threads,
        "seconds_ours": round(ours.seconds, 1), "seconds_baseline": round(base.seconds, 1),
        "cpu_flags": cpu_flags(), "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "mixed_precision": "bf16" if amp is not None else "fp32", "freeze_word_embeddings": True,
        "eval_rows": len(ev), "accuracy": round(acc["ours"]["accuracy"], 4),
        "baseline_accuracy": round(acc["baseline"]["accuracy"], 4),
        "padding_equivalence_max_abs_logit_diff": diff,
        "data": "Women's E-Commerce Clothing Reviews (shipped), tokenized with the MiniLM tokenizer",
        "method": "same model/init/optimizer/batch; alternating blocks of steps in one process; ours = "
                  "length-grouped dynamic padding + bf16 autocast (native-bf16 CPUs) + frozen word embeddings, "
                  "baseline = random batches padded to max_seq_length, fp32, all weights trained",
    }
    path = write_result(a.name, result)
    print(f"ours {sps:.1f} samples/s vs baseline {bsps:.1f} samples/s: speedup {sps / bsps:.2f}x over "
          f"{ours.i} steps each; held-out accuracy {acc['ours']['accuracy']:.3f} vs {acc['baseline']['accuracy']:.3f} "
          f"({len(ev)} rows); padding-equivalence max |dlogit| {diff:.2e}\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
