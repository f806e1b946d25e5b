"""The training loop: one run of the training job from the loaded channels to the saved model.

``Trainer.fit()`` trains (dynamic padding, length-grouped batches, per-epoch capped rows,
class weights of the epoch, optional auxiliary star-rating loss, the time-budget schedule,
debugger rules, profiler, checkpoints and resume); ``save_model()`` and ``write_reports()``
produce the job's outputs. Everything a checkpoint must restore lives in one ``RunState``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import train_checkpoint as ckpt
from common import ID2LABEL, write_json_atomic
from modeling import build_classifier
from train_args import Args, HyperParameterError
from train_checkpoint import CheckpointError
from train_data import Split, class_weights, collate, epoch_class_counts, epoch_rows, plan_batches
from train_debugger import Debugger, layer_grad_stats
from train_device import setup_device
from train_eval import evaluate
from train_profiler import Profiler
from train_schedule import ProgressSchedule
from train_tracking import Tracker

log = logging.getLogger("train")


class Stopped(Exception):
    """SIGTERM arrived: a checkpoint was written; the job exits 143."""


@dataclass
class RunState:
    """Where the run is: everything a checkpoint saves besides tensors (JSON-serialisable)."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    evals: list[dict[str, Any]] = field(default_factory=list)  # one record per validation
    best: dict[str, Any] = field(default_factory=lambda: {"value": None, "step": None, "bad_evals": 0})
    epoch_loss: list[float] = field(default_factory=lambda: [0.0, 0])  # sum, count of this epoch's step losses
    since_eval_loss: list[float] = field(default_factory=lambda: [0.0, 0])
    elapsed_s: float = 0.0  # training seconds of earlier runs (before a resume)
    resumed_from: int | None = None
    stop_reason: str | None = None
    mlflow_run_id: str | None = None


def _fmt_s(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Trainer:
    """One training run: the model, its optimizer and schedule, and the run's ``RunState``."""

    def __init__(self, args: Args, train: Split, valid: Split, model_path: str):
        self.args, self.t, self.train_split, self.valid = args, args.train, train, valid
        self.model_path = model_path
        self.lengths = train.lengths
        self.counts = train.class_counts()
        # balance what an epoch shows the model (the majority class may be capped per epoch)
        self.class_weight = class_weights(epoch_class_counts(self.counts, args.data.max_class_ratio),
                                          args.data.class_weights)
        self.epoch_size = len(epoch_rows(train.labels, args.data.max_class_ratio, self.t.seed, 0))
        self.steps_per_epoch = math.ceil(self.epoch_size / self.t.train_batch_size)
        planned = self.steps_per_epoch * self.t.epochs
        self.total_steps = min(planned, self.t.max_steps) if self.t.max_steps else planned
        self.debugger = Debugger(args.debugger.config())
        self.profiler = Profiler(args.profiler.profiler_interval_s)
        self.state = RunState()
        self.best_weights: dict[str, Any] | None = None
        self.tracker = Tracker()
        self._sigterm = False
        self._run_t0 = self._last_print = time.monotonic()

    # -- setup --------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """What a checkpoint must agree with to be resumed."""
        a, d, t = self.args, self.args.data, self.t
        return ckpt.fingerprint({
            "model": self.model_path, "pooling": a.model.pooling, "freeze_emb": a.model.freeze_word_embeddings,
            "max_seq_length": d.max_seq_length, "max_train_samples": d.max_train_samples,
            "class_weights": d.class_weights, "max_class_ratio": d.max_class_ratio, "group": d.group_by_length,
            "epochs": t.epochs, "lr": t.learning_rate, "batch": t.train_batch_size, "warmup": t.warmup_ratio,
            "wd": t.weight_decay, "seed": t.seed, "aux": t.rating_aux_weight, "max_steps": t.max_steps,
            "budget": t.time_budget_s, "debug_interval": a.debugger.debugger_interval,
            "rows": len(self.train_split), "labels": int(self.train_split.labels.sum()),
            "tokens": int(self.lengths.sum()),
        })

    def build(self) -> None:
        """Load tokenizer and model; create optimizer, schedule, AMP scaler and loss."""
        import torch
        from transformers import AutoTokenizer

        self.device, self.amp_dtype = setup_device(self.t.num_threads, self.t.mixed_precision)
        self.profiler.device = self.device
        torch.manual_seed(self.t.seed)
        t0 = time.monotonic()
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.model = build_classifier(self.model_path, self.args.model.pooling, ID2LABEL)
        if self.args.model.freeze_word_embeddings:
            self.model.get_input_embeddings().weight.requires_grad_(False)
        self.rating_aux = self._attach_rating_head()
        self.model.to(self.device).train()
        n_params = sum(p.numel() for p in self.model.parameters())
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        log.info("loaded %s (%s, %.1fM parameters, %.1fM trained, %s pooling) in %.1fs", self.model_path,
                 self.model.config.model_type, n_params / 1e6, n_train / 1e6, self.args.model.pooling,
                 time.monotonic() - t0)
        no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
        trained = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = [{"params": [p for n, p in trained if not any(k in n for k in no_decay)],
                   "weight_decay": self.t.weight_decay},
                  {"params": [p for n, p in trained if any(k in n for k in no_decay)], "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=self.t.learning_rate, fused=self.device == "cuda")
        self.scheduler = ProgressSchedule(self.optimizer, self.t.learning_rate, self.t.warmup_ratio,
                                          self.total_steps, self.t.time_budget_s)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        weight = torch.tensor(self.class_weight, device=self.device) if self.class_weight is not None else None
        self.loss_fn = torch.nn.CrossEntropyLoss(weight=weight)

    def _attach_rating_head(self) -> bool:
        """Add the auxiliary star-rating head (a submodule, so checkpoints and the optimizer
        include it; ``save_pretrained`` of the mean-pooling classifier leaves it out)."""
        import torch

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
    def save_checkpoint(self) -> Path:
        """Write the full state so that a re-run continues at the next batch."""
        import torch

        t0 = time.monotonic()
        tensors = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                   "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                   "rng_cpu": torch.get_rng_state()}
        if self.device == "cuda":
            tensors["rng_cuda"] = torch.cuda.get_rng_state()
        if self.best_weights is not None:
            tensors["best_model"] = self.best_weights
        run = dataclasses.replace(self.state, elapsed_s=self.elapsed())
        meta = {"fingerprint": self._fingerprint, "total_steps": self.total_steps, "run": dataclasses.asdict(run),
                "debugger": self.debugger.state_dict(), "profiler": self.profiler.state_dict()}
        path = ckpt.save(Path(self.t.checkpoint_dir), self.state.global_step, tensors, meta, self.t.keep_checkpoints)
        self.profiler.checkpoint_s += time.monotonic() - t0
        log.info("checkpoint %s written (step %d/%d, %.1fs)", path.name, self.state.global_step, self.total_steps,
                 time.monotonic() - t0)
        return path

    def try_resume(self) -> None:
        """Load the newest checkpoint written with the same settings and data, if any."""
        import torch

        found = ckpt.latest(Path(self.t.checkpoint_dir), self._fingerprint)
        if not found:
            return
        path, meta = found
        tensors = ckpt.load_tensors(path)
        self.model.load_state_dict(tensors["model"])
        self.optimizer.load_state_dict(tensors["optimizer"])
        self.scheduler.load_state_dict(tensors["scheduler"])
        self.scaler.load_state_dict(tensors["scaler"])
        torch.set_rng_state(tensors["rng_cpu"])
        if "rng_cuda" in tensors and self.device == "cuda":
            torch.cuda.set_rng_state(tensors["rng_cuda"])
        self.best_weights = tensors.get("best_model")
        self.state = RunState(**meta["run"])
        self.state.resumed_from = self.state.global_step
        self._run_t0 = time.monotonic()
        self.debugger.load_state_dict(meta["debugger"])
        self.profiler.load_state_dict(meta["profiler"])
        log.info("resuming from %s: step %d/%d, epoch %d, batch %d of the epoch", path, self.state.global_step,
                 self.total_steps, self.state.epoch + 1, self.state.batch_in_epoch)

    # -- the run --------------------------------------------------------------------------
    def fit(self) -> None:
        """Train to the end, an early stop or the time budget. Raises ``Stopped`` on SIGTERM."""
        if self.t.checkpoint_steps:
            ckpt.ensure_writable(Path(self.t.checkpoint_dir))
        for folder, name in ((self.t.output_data_dir, "output_data_dir"), (self.t.model_dir, "model_dir")):
            try:
                Path(folder).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CheckpointError(f"{name}={folder}: cannot create it ({exc.strerror})") from exc
        self._fingerprint = self.fingerprint()
        self.build()
        self._run_t0 = time.monotonic()
        if self.t.checkpoint_steps and self.t.resume:
            self.try_resume()
        self._start_tracking()
        on_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if on_main else None
        self.profiler.start()
        try:
            self._loop()
        except Stopped:
            self.profiler.stop()
            if self.t.checkpoint_steps:
                self.save_checkpoint()
            log.warning("SIGTERM: checkpoint written at step %d; a re-run resumes there", self.state.global_step)
            self.tracker.end("KILLED")
            raise
        except BaseException:
            self.tracker.end("FAILED")
            raise
        finally:
            self.profiler.stop()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _start_tracking(self) -> None:
        self.tracker = Tracker.from_env(run_id=self.state.mlflow_run_id)
        self.state.mlflow_run_id = self.tracker.run_id
        self.tracker.log_params({**self.args.flat(), "train_rows": len(self.train_split),
                                 "validation_rows": len(self.valid), "steps_per_epoch": self.steps_per_epoch,
                                 "total_steps": self.total_steps, "device": self.device})
        self.tracker.write_run_file(Path(self.t.output_data_dir))
        log.info("training %d rows (%s) for %d epoch(s) = %d steps of %d, class weights %s; validating on %d rows",
                 self.epoch_size, self.counts, self.t.epochs, self.total_steps, self.t.train_batch_size,
                 None if self.class_weight is None else [round(float(x), 3) for x in self.class_weight],
                 len(self.valid))

    def _on_sigterm(self, signum, frame) -> None:
        self._sigterm = True

    def _loop(self) -> None:
        s = self.state
        while s.epoch < self.t.epochs and s.global_step < self.total_steps and not self._stopping():
            rows = epoch_rows(self.train_split.labels, self.args.data.max_class_ratio, self.t.seed, s.epoch)
            plan = plan_batches(self.lengths, rows, self.t.train_batch_size, self.t.seed, s.epoch,
                                self.args.data.group_by_length)
            while s.batch_in_epoch < len(plan) and s.global_step < self.total_steps:
                self._step(plan[s.batch_in_epoch], len(plan))
                end_of_epoch = s.batch_in_epoch == len(plan)
                if self.t.eval_steps and s.global_step % self.t.eval_steps == 0 and not end_of_epoch:
                    self._validate(s.epoch + s.batch_in_epoch / len(plan))
                self._check_time_budget()
                if self._sigterm:
                    raise Stopped()
                if self._stopping():
                    break
                if self.t.checkpoint_steps and s.global_step % self.t.checkpoint_steps == 0 and not end_of_epoch:
                    self.save_checkpoint()
            self._end_epoch(len(plan))

    def _step(self, rows: np.ndarray, plan_len: int) -> None:
        """One optimizer step on batch ``rows``, with its profiler, debugger and progress records."""
        s = self.state
        t0 = time.perf_counter()
        pad_to = None if self.args.data.dynamic_padding else self.args.data.max_seq_length
        batch = self._to_device(collate(self.train_split, rows, self.pad_id, pad_to))
        t1 = time.perf_counter()
        loss, norm = self.train_step(batch)
        finite = math.isfinite(loss) and math.isfinite(norm)
        s.global_step += 1
        s.batch_in_epoch += 1
        stats = layer_grad_stats(self.model) if self.debugger.wants_layer_stats(s.global_step) else None
        lr = self.scheduler.get_last_lr()[0]
        self._optimizer_step(finite)
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()  # honest compute time
        t2 = time.perf_counter()
        mask = batch["attention_mask"]
        self.profiler.on_step(s.global_step, t1 - t0, t2 - t1, len(batch["labels"]), int(mask.sum()), int(mask.numel()))
        self.debugger.on_step(s.global_step, s.epoch + s.batch_in_epoch / plan_len, loss, lr, norm, stats)
        if finite:
            for acc in (s.epoch_loss, s.since_eval_loss):
                acc[0] += loss
                acc[1] += 1
        if stats is not None and self.debugger.records:
            r = self.debugger.records[-1]
            self.tracker.log_metrics({"train_loss_step": r["loss"], "learning_rate": lr, "grad_norm": r["grad_norm"]},
                                     step=s.global_step)
        now = time.monotonic()
        if now - self._last_print >= self.t.log_interval_s or s.global_step == 1:
            self._progress()
            self._last_print = now

    def _to_device(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        if self.device != "cuda":
            return {k: torch.from_numpy(v) for k, v in batch.items()}
        return {k: torch.from_numpy(v).pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}

    def train_step(self, batch: dict[str, Any]) -> tuple[float, float]:
        """Forward, backward, clip; returns (loss, gradient norm before clipping)."""
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
            aux = torch.nn.functional.cross_entropy(aux_logits.float(), batch["ratings"])
            total = loss + self.t.rating_aux_weight * aux
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
        self.scheduler.step(self.state.global_step, self.elapsed())

    def elapsed(self) -> float:
        """Training seconds so far, across resumes."""
        return self.state.elapsed_s + time.monotonic() - self._run_t0

    def _check_time_budget(self) -> None:
        s = self.state
        if self.t.time_budget_s and self.scheduler.done() and s.global_step < self.total_steps and not s.stop_reason:
            s.stop_reason = f"time_budget_s={self.t.time_budget_s:g} used up at step {s.global_step}/{self.total_steps}"
            log.info("stopping: %s (learning rate fully decayed)", s.stop_reason)

    def _stopping(self) -> bool:
        if self.debugger.should_stop and not self.state.stop_reason:
            self.state.stop_reason = f"debugger rule {self.debugger.stop_reason}"
        return self.state.stop_reason is not None

    def _validate(self, epoch_float: float) -> dict[str, float]:
        s = self.state
        t0 = time.monotonic()
        m = evaluate(self.model, self.valid, self.t.eval_batch_size, self.device, self.pad_id, self.amp_dtype)
        self.profiler.eval_s += time.monotonic() - t0
        total, n = s.since_eval_loss
        train_loss = total / n if n else float("nan")
        s.since_eval_loss = [0.0, 0]
        s.evals.append({"step": s.global_step, "epoch": round(epoch_float, 4), "train_loss": train_loss,
                        "val_loss": m["loss"], "val_accuracy": m["accuracy"], "val_macro_f1": m["macro_f1"]})
        self.debugger.on_eval(s.global_step, epoch_float, train_loss, m["loss"], m["accuracy"])
        log.info("validation at step %d (epoch %.2f): loss %.4f accuracy %.4f macro-F1 %.4f (%d rows, %.1fs)",
                 s.global_step, epoch_float, m["loss"], m["accuracy"], m["macro_f1"], len(self.valid),
                 time.monotonic() - t0)
        self._track_best(m)
        return m

    def _track_best(self, m: dict[str, float]) -> None:
        key, best = self.t.metric_for_best_model, self.state.best
        value = m[key]
        if best["value"] is None or (value < best["value"] if key == "loss" else value > best["value"]):
            best.update(value=value, step=self.state.global_step, bad_evals=0)
            if self.t.load_best_model_at_end:
                self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            return
        best["bad_evals"] += 1
        p = self.t.early_stopping_patience
        if p and best["bad_evals"] >= p and not self.state.stop_reason:
            self.state.stop_reason = (f"early stopping: validation {key} did not improve on {best['value']:.4f} "
                                      f"(step {best['step']}) for {p} validation(s)")
            log.warning(self.state.stop_reason)

    def _end_epoch(self, plan_len: int) -> None:
        s = self.state
        m = self._validate(s.epoch + s.batch_in_epoch / plan_len)
        total, n = s.epoch_loss
        rec = {"epoch": s.epoch + 1, "complete": s.batch_in_epoch >= plan_len, "step": s.global_step,
               "train_loss": total / n if n else float("nan"), "val_loss": m["loss"], "val_accuracy": m["accuracy"],
               "val_macro_f1": m["macro_f1"], "elapsed_s": round(self.elapsed(), 2)}
        s.history.append(rec)
        self.tracker.log_metrics({"train_loss": rec["train_loss"], "val_loss": m["loss"], "val_accuracy": m["accuracy"],
                                  "val_macro_f1": m["macro_f1"]}, step=s.epoch + 1)
        log.info("epoch %d/%d done at step %d: train loss %.4f, validation loss %.4f, accuracy %.4f, macro-F1 %.4f",
                 s.epoch + 1, self.t.epochs, s.global_step, rec["train_loss"], m["loss"], m["accuracy"],
                 m["macro_f1"])
        s.epoch += 1
        s.batch_in_epoch = 0
        s.epoch_loss = [0.0, 0]
        if self.t.checkpoint_steps and not self._stopping() and s.global_step < self.total_steps:
            self.save_checkpoint()

    def _progress(self) -> None:
        s = self.state
        sps, tps = self.profiler.recent_rate()
        steps_this_run = s.global_step - (s.resumed_from or 0)
        el = time.monotonic() - self._run_t0
        rate = steps_this_run / el if el > 0 else 0.0
        eta = (self.total_steps - s.global_step) / rate if rate > 0 else float("nan")
        if self.t.time_budget_s and eta == eta:
            eta = min(eta, max(0.0, self.t.time_budget_s - self.elapsed()))
        total, n = s.epoch_loss
        tot = self.profiler.totals
        data_share = tot["data_s"] / max(1e-9, tot["data_s"] + tot["compute_s"])
        print(f"epoch {s.epoch + 1}/{self.t.epochs} step {s.global_step}/{self.total_steps} "
              f"({100 * s.global_step / self.total_steps:.1f}%) loss {total / max(n, 1):.4f} "
              f"lr {self.scheduler.get_last_lr()[0]:.2e} | {sps:.1f} samples/s {tps:.0f} tokens/s "
              f"data {data_share:.1%} | elapsed {_fmt_s(self.elapsed())} ETA {_fmt_s(eta) if eta == eta else '?'}",
              flush=True)

    # -- outputs --------------------------------------------------------------------------
    def save_model(self) -> dict[str, Any]:
        """The model (best weights if asked) and tokenizer to ``model_dir``; returns the final validation."""
        s, model_dir = self.state, Path(self.t.model_dir)
        last = s.evals[-1] if s.evals else {}
        final_eval = {"loss": last.get("val_loss"), "accuracy": last.get("val_accuracy"),
                      "macro_f1": last.get("val_macro_f1")}
        if self.t.load_best_model_at_end and self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
            log.info("loaded the best weights (validation %s %.4f at step %s)", self.t.metric_for_best_model,
                     s.best["value"], s.best["step"])
            if s.best["step"] != s.global_step:
                final_eval = evaluate(self.model, self.valid, self.t.eval_batch_size, self.device, self.pad_id,
                                      self.amp_dtype)
        # the serving handler truncates at what the model was trained on
        self.model.config.max_seq_length = self.args.data.max_seq_length
        self.model.save_pretrained(model_dir, safe_serialization=True)
        self.tokenizer.save_pretrained(model_dir)
        return final_eval

    def write_reports(self, final_eval: dict[str, Any]) -> dict[str, Any]:
        """metrics.json, debugger/ and profiler/ reports, the MLflow run's end; returns ``final``."""
        s, out_dir = self.state, Path(self.t.output_data_dir)
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
        train_s = self.elapsed()
        final = {
            "train_loss": s.history[-1]["train_loss"] if s.history else None,
            "val_loss": final_eval["loss"], "val_accuracy": final_eval["accuracy"],
            "val_macro_f1": final_eval["macro_f1"], "steps": s.global_step, "total_steps": self.total_steps,
            "epochs_completed": sum(1 for h in s.history if h["complete"]),
            "train_runtime_s": round(train_s, 2), "samples_per_s": prof["samples_per_s"],
            "tokens_per_s": prof["tokens_per_s"], "stopped_early": s.stop_reason is not None,
            "stop_reason": s.stop_reason, "resumed_from_step": s.resumed_from,
            "debugger_triggered": results["triggered"], "best_step": s.best["step"],
        }
        weights = None if self.class_weight is None else [float(x) for x in self.class_weight]
        write_json_atomic(out_dir / "metrics.json", {
            "epochs": s.history, "evaluations": s.evals, "final": final, "hyperparameters": self.args.flat(),
            "data": {"train_rows": len(self.train_split), "train_rows_per_epoch": self.epoch_size,
                     "validation_rows": len(self.valid),
                     "train_class_counts": {ID2LABEL[k]: v for k, v in self.counts.items()},
                     "class_weights": weights},
            "profiler": prof, "device": self.device})
        self._finish_tracking(final, prof, results, out_dir)
        log.info("done: %d steps in %s, %.1f samples/s; validation accuracy %.4f, macro-F1 %.4f; model in %s",
                 s.global_step, _fmt_s(train_s), prof["samples_per_s"], final["val_accuracy"] or float("nan"),
                 final["val_macro_f1"] or float("nan"), self.t.model_dir)
        return final

    def _finish_tracking(self, final: dict[str, Any], prof: dict[str, Any], results: dict[str, Any],
                         out_dir: Path) -> None:
        tr = self.tracker
        tr.log_metrics({f"final_{k}": v for k, v in final.items() if isinstance(v, (int, float))})
        tr.log_metrics({f"profiler_{k}": v for k, v in prof.items()})
        tr.set_tags({"debugger_triggered": ",".join(results["triggered"]) or "none",
                     "stopped_early": final["stopped_early"], "resumed_from_step": self.state.resumed_from})
        for sub in ("debugger", "profiler"):
            tr.log_artifacts(out_dir / sub, sub)
        if tr.active:
            tr.mlflow.log_artifact(str(out_dir / "metrics.json"))
        tr.end("FINISHED")
