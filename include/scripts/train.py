"""Training job: fine-tune a BERT-family model (default all-MiniLM-L6-v2) into a 3-class
review-sentiment classifier, under the SageMaker training contract.

The same file runs under the local job runner and in a SageMaker Hugging Face / PyTorch
training container. It knows the world only through the contract:

* channels ``train`` and ``validation`` (``SM_CHANNEL_TRAIN`` / ``SM_CHANNEL_VALIDATION``):
  folders of ``part-NNNNN.parquet`` shards with unpadded ``input_ids`` and ``label_id``;
* hyper-parameters as ``--name value`` arguments (strings, booleans ``true``/``false``),
  with defaults taken from ``SM_HPS`` (JSON) as the SageMaker toolkit does (train_args.py);
* ``SM_MODEL_DIR`` receives the model (``save_pretrained``, safetensors, ``id2label``) and
  the tokenizer; ``SM_OUTPUT_DATA_DIR`` receives ``metrics.json``, ``debugger/`` and
  ``profiler/`` reports (and ``mlflow_run.json``); ``SM_CHECKPOINT_DIR`` (default
  ``/opt/ml/checkpoints``) holds checkpoints every ``checkpoint_steps`` steps - a re-run of
  the job resumes from the newest one;
* MLflow logging when ``MLFLOW_TRACKING_URI`` is set (optional import).

Top to bottom: parse and validate the arguments -> load and check the channels -> build the
model and ``ReviewTrainer`` (``transformers.Trainer``, train_model.py) with its callbacks
(train_callbacks.py, train_checkpoint.py) -> resume from the newest matching checkpoint ->
train -> save the model and write the reports.

Exit codes: 0 done, 2 bad input (one ``ERROR:`` line on stderr), 143 stopped by SIGTERM
after writing a checkpoint.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import ID2LABEL, ModelNotFoundError, resolve_model_dir, write_json_atomic
from train_args import Args, HyperParameterError, fail, parse_args
from train_callbacks import DebuggerCallback, HistoryCallback, ProfilerCallback, Run, TimeBudgetCallback, fmt_s
from train_checkpoint import CheckpointCallback, CheckpointError, ensure_writable, fingerprint, latest, restore
from train_data import Split, TrainingDataError, class_weights, epoch_class_counts, epoch_rows, load_channel, require_classes
from train_debugger import Debugger
from train_profiler import Profiler
from train_schedule import BudgetSchedule, Clock
from train_tracking import Tracker

log = logging.getLogger("train")


class Stopped(Exception):
    """SIGTERM arrived: a checkpoint was written; the job exits 143."""


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


def settings_fingerprint(args: Args, model_path: str, train: Split) -> str:
    """What a checkpoint must agree with to be resumed."""
    a, d, t = args, args.data, args.train
    return fingerprint({
        "model": model_path, "pooling": a.model.pooling, "freeze_emb": a.model.freeze_word_embeddings,
        "max_seq_length": d.max_seq_length, "max_train_samples": d.max_train_samples,
        "class_weights": d.class_weights, "max_class_ratio": d.max_class_ratio, "group": d.group_by_length,
        "epochs": t.epochs, "lr": t.learning_rate, "batch": t.train_batch_size, "warmup": t.warmup_ratio,
        "wd": t.weight_decay, "seed": t.seed, "aux": t.rating_aux_weight, "max_steps": t.max_steps,
        "budget": t.time_budget_s, "debug_interval": a.debugger.debugger_interval,
        "rows": len(train), "labels": int(train.labels.sum()), "tokens": int(train.lengths.sum())})


def prepare_folders(args: Args) -> None:
    t = args.train
    if t.checkpoint_steps:
        ensure_writable(Path(t.checkpoint_dir))
    for folder, name in ((t.output_data_dir, "output_data_dir"), (t.model_dir, "model_dir")):
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"{name}={folder}: cannot create it ({exc.strerror})") from exc


def build(args: Args, train: Split, valid: Split, model_path: str):
    """The model, ``ReviewTrainer`` and the callbacks' shared ``Run``."""
    from train_device import setup_device
    from train_model import ReviewTrainer, build_model, training_arguments
    from transformers import AutoTokenizer, PrinterCallback

    t, d = args.train, args.data
    counts = train.class_counts()
    # balance what an epoch shows the model (the majority class may be capped per epoch)
    weight = class_weights(epoch_class_counts(counts, d.max_class_ratio), d.class_weights)
    epoch_size = len(epoch_rows(train.labels, d.max_class_ratio, t.seed, 0))
    steps_per_epoch = math.ceil(epoch_size / t.train_batch_size)
    total_steps = min(steps_per_epoch * t.epochs, t.max_steps) if t.max_steps else steps_per_epoch * t.epochs
    device, amp_dtype = setup_device(t.num_threads, t.mixed_precision)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = build_model(args, model_path, train)
    clock = Clock()
    run = Run(args, total_steps, len(valid), Debugger(args.debugger.config()),
              Profiler(args.profiler.profiler_interval_s, device), BudgetSchedule(t.warmup_ratio, total_steps,
                                                                                  t.time_budget_s, clock), clock)
    # Trainer writes its checkpoints here (and creates the folder even when it saves none)
    staging = Path(t.checkpoint_dir) / ".staging" if t.checkpoint_steps else Path(tempfile.mkdtemp(prefix="train-"))
    shutil.rmtree(staging, ignore_errors=True)
    trainer = ReviewTrainer(
        model=model, args=training_arguments(args, total_steps, amp_dtype, str(staging)), eval_dataset=valid,
        job_args=args, train_split=train, valid_split=valid, class_weight=weight, schedule=run.schedule,
        pad_id=tokenizer.pad_token_id or 0,
        callbacks=[ProfilerCallback(run), DebuggerCallback(run), TimeBudgetCallback(run), HistoryCallback(run),
                   CheckpointCallback(run, Path(t.checkpoint_dir), settings_fingerprint(args, model_path, train))])
    trainer.remove_callback(PrinterCallback)  # our progress lines instead of Trainer's log dicts
    run.trainer = trainer
    log.info("training %d rows (%s) for %d epoch(s) = %d steps of %d, class weights %s; validating on %d rows",
             epoch_size, counts, t.epochs, total_steps, t.train_batch_size,
             None if weight is None else [round(float(x), 3) for x in weight], len(valid))
    return run, trainer, tokenizer, {"epoch_size": epoch_size, "steps_per_epoch": steps_per_epoch,
                                     "class_weight": weight, "device": device}


def fit(run: Run, trainer, model_path: str, info: dict[str, Any]) -> None:
    """Resume if a matching checkpoint exists, train; raises ``Stopped`` after a SIGTERM checkpoint."""
    args, t = run.args, run.args.train
    resume = None
    if t.checkpoint_steps and t.resume:
        found = latest(Path(t.checkpoint_dir), settings_fingerprint(args, model_path, trainer.batches.split))
        if found:
            resume, meta = found
            restore(run, resume, meta)
            log.info("resuming from %s: step %d/%d", resume, run.state.resumed_from, run.total_steps)
    run.tracker = Tracker.from_env(run_id=run.state.mlflow_run_id)
    run.state.mlflow_run_id = run.tracker.run_id
    run.tracker.log_params({**args.flat(), "train_rows": len(trainer.batches.split), "validation_rows": run.valid_rows,
                            "steps_per_epoch": info["steps_per_epoch"], "total_steps": run.total_steps,
                            "device": info["device"]})
    run.tracker.write_run_file(Path(t.output_data_dir))
    run.clock.t0 = time.monotonic()

    def on_sigterm(signum, frame) -> None:
        run.sigterm = True

    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if on_main else None
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except BaseException:
        run.tracker.end("FAILED")
        raise
    finally:
        run.profiler.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if run.sigterm:
        log.warning("SIGTERM: checkpoint written at step %d; a re-run resumes there", trainer.state.global_step)
        run.tracker.end("KILLED")
        raise Stopped()


def save_model(run: Run, trainer, tokenizer) -> dict[str, Any]:
    """The model (best weights if asked) and tokenizer to ``model_dir``; returns the final validation."""
    s, t, model = run.state, run.args.train, trainer.model
    last = s.evals[-1] if s.evals else {}
    final_eval = {"loss": last.get("val_loss"), "accuracy": last.get("val_accuracy"),
                  "macro_f1": last.get("val_macro_f1")}
    if t.load_best_model_at_end and run.best_weights is not None:
        model.load_state_dict(run.best_weights)
        log.info("loaded the best weights (validation %s %.4f at step %s)", t.metric_for_best_model,
                 s.best["value"], s.best["step"])
        if s.best["step"] != trainer.state.global_step:
            m = trainer.evaluate()
            final_eval = {k: m[f"eval_{k}"] for k in ("loss", "accuracy", "macro_f1")}
    # the serving handler truncates at what the model was trained on
    model.config.max_seq_length = run.args.data.max_seq_length
    model.save_pretrained(t.model_dir, safe_serialization=True)
    tokenizer.save_pretrained(t.model_dir)
    return final_eval


def write_reports(run: Run, trainer, info: dict[str, Any], final_eval: dict[str, Any]) -> dict[str, Any]:
    """metrics.json, debugger/ and profiler/ reports, the MLflow run's end; returns ``final``."""
    s, out_dir, split = run.state, Path(run.args.train.output_data_dir), trainer.batches.split
    dbg_paths = run.debugger.write(out_dir)
    run.profiler.write(out_dir)
    prof, results = run.profiler.summary(), run.debugger.results()
    for rule in results["rules"]:
        if rule["triggered"]:
            log.warning("debugger rule %s: %s (action %s, first at step %s, %d time(s))", rule["rule"],
                        rule["status"], rule["action"], rule["first_step"], rule["count"])
    log.info("debugger: %s; rule results in %s", ", ".join(f"{r['rule']} {r['status']}" for r in results["rules"]),
             dbg_paths["rule_results"])
    train_s, steps = run.clock.elapsed(), trainer.state.global_step
    final = {
        "train_loss": s.history[-1]["train_loss"] if s.history else None,
        "val_loss": final_eval["loss"], "val_accuracy": final_eval["accuracy"],
        "val_macro_f1": final_eval["macro_f1"], "steps": steps, "total_steps": run.total_steps,
        "epochs_completed": sum(1 for h in s.history if h["complete"]),
        "train_runtime_s": round(train_s, 2), "samples_per_s": prof["samples_per_s"],
        "tokens_per_s": prof["tokens_per_s"], "stopped_early": s.stop_reason is not None,
        "stop_reason": s.stop_reason, "resumed_from_step": s.resumed_from,
        "debugger_triggered": results["triggered"], "best_step": s.best["step"],
    }
    weights = None if info["class_weight"] is None else [float(x) for x in info["class_weight"]]
    write_json_atomic(out_dir / "metrics.json", {
        "epochs": s.history, "evaluations": s.evals, "final": final, "hyperparameters": run.args.flat(),
        "data": {"train_rows": len(split), "train_rows_per_epoch": info["epoch_size"],
                 "validation_rows": run.valid_rows,
                 "train_class_counts": {ID2LABEL[k]: v for k, v in split.class_counts().items()},
                 "class_weights": weights},
        "profiler": prof, "device": info["device"]})
    tr = run.tracker
    tr.log_metrics({f"final_{k}": v for k, v in final.items() if isinstance(v, (int, float))})
    tr.log_metrics({f"profiler_{k}": v for k, v in prof.items()})
    tr.set_tags({"debugger_triggered": ",".join(results["triggered"]) or "none",
                 "stopped_early": final["stopped_early"], "resumed_from_step": s.resumed_from})
    for sub in ("debugger", "profiler"):
        tr.log_artifacts(out_dir / sub, sub)
    if tr.active:
        tr.mlflow.log_artifact(str(out_dir / "metrics.json"))
    tr.end("FINISHED")
    log.info("done: %d steps in %s, %.1f samples/s; validation accuracy %.4f, macro-F1 %.4f; model in %s",
             steps, fmt_s(train_s), prof["samples_per_s"], final["val_accuracy"] or float("nan"),
             final["val_macro_f1"] or float("nan"), run.args.train.model_dir)
    return final


def run(args: Args) -> dict[str, Any]:
    """Load, fit, save. Returns the final metrics; raises ``Stopped`` after a SIGTERM checkpoint."""
    model_path = resolve_model_dir(args.model.model_name_or_path or None)
    train, valid = load_data(args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    prepare_folders(args)
    job, trainer, tokenizer, info = build(args, train, valid, model_path)
    fit(job, trainer, model_path, info)
    return write_reports(job, trainer, info, save_model(job, trainer, tokenizer))


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout, force=True)
    for noisy in ("httpx", "urllib3", "alembic", "transformers.modeling_utils", "transformers.trainer",
                  "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args = parse_args(argv)
        log.info("hyper-parameters: %s", json.dumps(args.flat(), sort_keys=True))
        run(args)
    except (HyperParameterError, TrainingDataError, ModelNotFoundError, CheckpointError) as exc:
        fail(str(exc))
        return 2
    except Stopped:
        return 143
    return 0


if __name__ == "__main__":
    sys.exit(main())
