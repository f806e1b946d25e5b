"""Checkpoints of the training job in ``checkpoint_dir`` (SageMaker's ``/opt/ml/checkpoints``).

``transformers.Trainer`` writes them (``save_steps``: model, optimizer, scheduler, RNG and
trainer state) and resumes from them (``resume_from_checkpoint``: it skips the batches
already done of the same epoch plan). Around that, this module:

* publishes each checkpoint atomically: Trainer writes into a staging folder, the
  ``CheckpointCallback`` adds ``job_state.json`` (the job's records, debugger and profiler
  state and a fingerprint of the settings and data) and renames it to
  ``checkpoint-NNNNNNNN`` - SageMaker uploads that folder as it changes, and a job killed
  mid-write leaves the old or the new checkpoint, never a broken one; then it prunes all
  but the newest ``keep_checkpoints``;
* saves at each epoch end, and at the next step boundary after SIGTERM (the job then exits 143);
* ``latest`` finds the newest checkpoint written with the same fingerprint (a checkpoint of
  other hyper-parameters or data is ignored).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from common import write_json_atomic
from safetensors.torch import load_file, save_file
from train_callbacks import Run, RunState
from transformers import TrainerCallback

log = logging.getLogger("train.checkpoint")
PATTERN = re.compile(r"^checkpoint-(\d+)$")
JOB_STATE = "job_state.json"
BEST = "best_model.safetensors"


class CheckpointError(OSError):
    """The checkpoint folder cannot be used."""


def fingerprint(settings: dict[str, Any]) -> str:
    """Stable short hash of the settings a checkpoint must agree with."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def ensure_writable(folder: Path) -> None:
    """Create the checkpoint folder or fail with what to do."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise CheckpointError(f"checkpoint_dir={folder}: not writable ({exc.strerror}); set SM_CHECKPOINT_DIR "
                              "or --checkpoint_dir to a writable folder, or --checkpoint_steps 0") from exc


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Published checkpoints in ``folder`` as (step, path), oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := PATTERN.match(p.name)) and (p / JOB_STATE).is_file()]
    return sorted(found)


def latest(folder: Path, expected_fingerprint: str) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint whose fingerprint matches, with its job state."""
    for _, path in reversed(list_checkpoints(folder)):
        try:
            state = json.loads((path / JOB_STATE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("skipping unreadable checkpoint %s: %s", path, exc)
            continue
        if state.get("fingerprint") != expected_fingerprint:
            log.warning("ignoring %s: it was written with other hyper-parameters or data "
                        "(fingerprint %s, this run %s)", path, state.get("fingerprint"), expected_fingerprint)
            continue
        return path, state
    return None


class CheckpointCallback(TrainerCallback):
    """Epoch-end and SIGTERM saves; publishes Trainer's checkpoint with the job state, prunes old ones."""

    def __init__(self, run: Run, folder: Path, fingerprint: str):
        self.run, self.folder, self.fingerprint = run, folder, fingerprint
        self.every, self.keep = run.args.train.checkpoint_steps, run.args.train.keep_checkpoints

    def on_step_end(self, args, state, control, **kw):
        if self.run.sigterm:
            control.should_save, control.should_training_stop = bool(self.every), True
        elif state.global_step >= state.max_steps:
            control.should_save = False  # the finished job needs no checkpoint, the model is saved next

    def on_epoch_end(self, args, state, control, **kw):
        running = not (self.run.sigterm or self.run.state.stop_reason or state.global_step >= state.max_steps)
        if self.every and running and state.global_step % self.every:
            control.should_save = True

    def on_save(self, args, state, control, **kw):
        staged = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        run = dataclasses.replace(self.run.state, elapsed_s=self.run.clock.elapsed())
        write_json_atomic(staged / JOB_STATE, {
            "fingerprint": self.fingerprint, "global_step": state.global_step, "run": dataclasses.asdict(run),
            "debugger": self.run.debugger.state_dict(), "profiler": self.run.profiler.state_dict()}, indent=None)
        if self.run.best_weights is not None:
            save_file({k: v.contiguous() for k, v in self.run.best_weights.items()}, str(staged / BEST))
        final = self.folder / f"checkpoint-{state.global_step:08d}"
        if final.exists():  # the same step saved again: replace
            shutil.rmtree(final)
        os.replace(staged, final)
        for _, old in list_checkpoints(self.folder)[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint %s written (step %d/%d)", final.name, state.global_step, state.max_steps)


def restore(run: Run, path: Path, meta: dict[str, Any]) -> None:
    """Put a checkpoint's job state back into ``run`` (Trainer restores the rest in ``train``)."""
    run.state = RunState(**meta["run"])
    run.state.resumed_from = meta["global_step"]
    run.clock.earlier_s = run.state.elapsed_s
    run.debugger.load_state_dict(meta["debugger"])
    run.profiler.load_state_dict(meta["profiler"])
    if (path / BEST).is_file():
        run.best_weights = load_file(str(path / BEST))
