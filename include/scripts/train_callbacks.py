"""The training job's ``TrainerCallback``s around ``ReviewTrainer`` (train_model.py).

* ``HistoryCallback`` - validation every ``eval_steps`` and at each epoch end, the epoch and
  validation records of ``metrics.json``, best model / early stopping, MLflow epoch metrics
  and the progress lines (rate and ETA) that the Airflow task log shows;
* ``TimeBudgetCallback`` - stop once ``time_budget_s`` is spent (the learning rate is then 0,
  train_schedule.py);
* ``DebuggerCallback`` / ``ProfilerCallback`` - feed train_debugger.py's rules and
  train_profiler.py's timings; a ``stop`` rule ends training.

They share one ``Run``: the job's arguments, its ``RunState`` (what a checkpoint restores
beside Trainer's own state), the debugger, profiler, tracker and clock.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from train_args import Args
from train_debugger import Debugger
from train_profiler import Profiler
from train_schedule import BudgetSchedule, Clock
from train_tracking import Tracker
from transformers import TrainerCallback

log = logging.getLogger("train")


@dataclass
class RunState:
    """The job's records beside Trainer's state (JSON, saved in every checkpoint)."""

    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    evals: list[dict[str, Any]] = field(default_factory=list)  # one record per validation
    best: dict[str, Any] = field(default_factory=lambda: {"value": None, "step": None, "bad_evals": 0})
    epoch_loss: list[float] = field(default_factory=lambda: [0.0, 0])  # sum, count of this epoch's step losses
    since_eval_loss: list[float] = field(default_factory=lambda: [0.0, 0])
    elapsed_s: float = 0.0  # training seconds of earlier runs (before a resume)
    resumed_from: int | None = None
    stop_reason: str | None = None
    mlflow_run_id: str | None = None


@dataclass
class Run:
    """What the callbacks share; ``trainer`` is set once the trainer exists."""

    args: Args
    total_steps: int
    valid_rows: int
    debugger: Debugger
    profiler: Profiler
    schedule: BudgetSchedule
    clock: Clock
    state: RunState = field(default_factory=RunState)
    tracker: Tracker = field(default_factory=Tracker)
    trainer: Any = None
    sigterm: bool = False
    best_weights: dict[str, Any] | None = None

    def stop(self, control, reason: str) -> None:
        if not self.state.stop_reason:
            self.state.stop_reason = reason
        control.should_training_stop = True


def fmt_s(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _epoch_of(state) -> int:
    """1-based epoch the last step belongs to."""
    return math.floor(state.epoch - 1e-9) + 1 if state.epoch else 1


class HistoryCallback(TrainerCallback):
    """Validation schedule, epoch/validation records, best model, early stopping, progress lines."""

    def __init__(self, run: Run):
        self.run, self.t = run, run.args.train
        self.at_epoch_end = False
        self.last_print = time.monotonic()
        self.steps_at_start = 0

    def on_train_begin(self, args, state, control, **kw):
        self.steps_at_start, self.t0 = state.global_step, time.monotonic()

    def on_step_end(self, args, state, control, **kw):
        s, loss = self.run.state, self.run.trainer.step_loss
        if math.isfinite(loss):
            for acc in (s.epoch_loss, s.since_eval_loss):
                acc[0] += loss
                acc[1] += 1
        end_of_epoch = abs(state.epoch - round(state.epoch)) < 1e-9
        if self.t.eval_steps and state.global_step % self.t.eval_steps == 0 and not end_of_epoch:
            control.should_evaluate = True
        now = time.monotonic()
        if now - self.last_print >= self.t.log_interval_s or state.global_step == 1:
            self.progress(state)
            self.last_print = now

    def on_epoch_end(self, args, state, control, **kw):
        if not self.run.sigterm:
            self.at_epoch_end = control.should_evaluate = True

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        run, s = self.run, self.run.state
        m = {k: metrics[f"eval_{k}"] for k in ("loss", "accuracy", "macro_f1")}
        total, n = s.since_eval_loss
        train_loss = total / n if n else float("nan")
        s.since_eval_loss = [0.0, 0]
        s.evals.append({"step": state.global_step, "epoch": round(state.epoch, 4), "train_loss": train_loss,
                        "val_loss": m["loss"], "val_accuracy": m["accuracy"], "val_macro_f1": m["macro_f1"]})
        run.debugger.on_eval(state.global_step, state.epoch, train_loss, m["loss"], m["accuracy"])
        log.info("validation at step %d (epoch %.2f): loss %.4f accuracy %.4f macro-F1 %.4f (%d rows, %.1fs)",
                 state.global_step, state.epoch, m["loss"], m["accuracy"], m["macro_f1"], run.valid_rows,
                 metrics.get("eval_runtime", 0.0))
        self.track_best(m, state, control, kw["model"])
        if self.at_epoch_end:
            self.at_epoch_end = False
            self.end_epoch(m, state)

    def track_best(self, m: dict[str, float], state, control, model) -> None:
        key, best = self.t.metric_for_best_model, self.run.state.best
        value = m[key]
        if best["value"] is None or (value < best["value"] if key == "loss" else value > best["value"]):
            best.update(value=value, step=state.global_step, bad_evals=0)
            if self.t.load_best_model_at_end:
                self.run.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return
        best["bad_evals"] += 1
        p = self.t.early_stopping_patience
        if p and best["bad_evals"] >= p and not self.run.state.stop_reason:
            self.run.stop(control, f"early stopping: validation {key} did not improve on {best['value']:.4f} "
                                   f"(step {best['step']}) for {p} validation(s)")
            log.warning(self.run.state.stop_reason)

    def end_epoch(self, m: dict[str, float], state) -> None:
        s, epoch = self.run.state, _epoch_of(state)
        total, n = s.epoch_loss
        rec = {"epoch": epoch, "complete": state.epoch >= epoch - 1e-9, "step": state.global_step,
               "train_loss": total / n if n else float("nan"), "val_loss": m["loss"], "val_accuracy": m["accuracy"],
               "val_macro_f1": m["macro_f1"], "elapsed_s": round(self.run.clock.elapsed(), 2)}
        s.history.append(rec)
        s.epoch_loss = [0.0, 0]
        self.run.tracker.log_metrics({"train_loss": rec["train_loss"], "val_loss": m["loss"],
                                      "val_accuracy": m["accuracy"], "val_macro_f1": m["macro_f1"]}, step=epoch)
        log.info("epoch %d/%d done at step %d: train loss %.4f, validation loss %.4f, accuracy %.4f, macro-F1 %.4f",
                 epoch, self.t.epochs, state.global_step, rec["train_loss"], m["loss"], m["accuracy"], m["macro_f1"])

    def progress(self, state) -> None:
        run, s, step, total_steps = self.run, self.run.state, state.global_step, self.run.total_steps
        sps, tps = run.profiler.recent_rate()
        el = time.monotonic() - self.t0
        rate = (step - self.steps_at_start) / el if el > 0 else 0.0
        eta = (total_steps - step) / rate if rate > 0 else float("nan")
        if self.t.time_budget_s and eta == eta:
            eta = min(eta, max(0.0, self.t.time_budget_s - run.clock.elapsed()))
        total, n = s.epoch_loss
        tot = run.profiler.totals
        data_share = tot["data_s"] / max(1e-9, tot["data_s"] + tot["compute_s"])
        print(f"epoch {_epoch_of(state)}/{self.t.epochs} step {step}/{total_steps} "
              f"({100 * step / total_steps:.1f}%) loss {total / max(n, 1):.4f} "
              f"lr {run.trainer.lr_scheduler.get_last_lr()[0]:.2e} | {sps:.1f} samples/s {tps:.0f} tokens/s "
              f"data {data_share:.1%} | elapsed {fmt_s(run.clock.elapsed())} ETA {fmt_s(eta) if eta == eta else '?'}",
              flush=True)


class TimeBudgetCallback(TrainerCallback):
    """Ends training once the budget-fitted schedule reached progress 1 (learning rate 0)."""

    def __init__(self, run: Run):
        self.run = run

    def on_step_end(self, args, state, control, **kw):
        budget = self.run.args.train.time_budget_s
        if budget and self.run.schedule.done() and state.global_step < state.max_steps:
            if not self.run.state.stop_reason:
                log.info("stopping: time_budget_s=%g used up at step %d/%d (learning rate fully decayed)",
                         budget, state.global_step, state.max_steps)
            self.run.stop(control, f"time_budget_s={budget:g} used up at step {state.global_step}/{state.max_steps}")


class DebuggerCallback(TrainerCallback):
    """Feeds every step's loss, learning rate and gradient norm (and per-layer statistics) to the rules."""

    def __init__(self, run: Run):
        self.run = run

    def on_step_end(self, args, state, control, **kw):
        run, tr = self.run, self.run.trainer
        run.debugger.on_step(state.global_step, state.epoch, tr.step_loss, tr.step_lr, tr.step_grad_norm,
                             tr.step_layers)
        if tr.step_layers is not None and run.debugger.records:
            r = run.debugger.records[-1]
            run.tracker.log_metrics({"train_loss_step": r["loss"], "learning_rate": tr.step_lr,
                                     "grad_norm": r["grad_norm"]}, step=state.global_step)
        if run.debugger.should_stop:
            run.stop(control, f"debugger rule {run.debugger.stop_reason}")


class ProfilerCallback(TrainerCallback):
    """Step time split into collate (data) and forward/backward/optimizer (compute); eval and save time."""

    def __init__(self, run: Run):
        self.run, self.mark = run, time.perf_counter()

    def on_train_begin(self, args, state, control, **kw):
        self.run.profiler.start()

    def on_step_begin(self, args, state, control, **kw):
        self.mark = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        now, shapes = time.perf_counter(), self.run.trainer.collator.shapes
        data_s, samples, tokens, padded = shapes.popleft() if shapes else (0.0, 0, 0, 0)
        self.run.profiler.on_step(state.global_step, data_s, now - self.mark, samples, tokens, padded)
        self.mark = now

    def on_evaluate(self, args, state, control, **kw):
        now = time.perf_counter()
        self.run.profiler.eval_s += now - self.mark
        self.mark = now

    def on_save(self, args, state, control, **kw):
        now = time.perf_counter()
        self.run.profiler.checkpoint_s += now - self.mark
        self.mark = now

    def on_train_end(self, args, state, control, **kw):
        self.run.profiler.stop()
