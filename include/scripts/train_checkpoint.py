"""Checkpoints for train.py: atomic save every N steps, find the latest, resume exactly.

A checkpoint is a folder ``checkpoint-NNNNNNNN`` (the global step) holding ``state.pt``
(model, optimizer, scheduler, grad-scaler and RNG states) and ``trainer_state.json``
(position in the epoch plan, history, debugger/profiler state and a fingerprint of the
settings and data). It is written under a temporary name and renamed, so a job killed
mid-write leaves either the old or the new checkpoint, never a broken one. A resumed
run ignores checkpoints whose fingerprint differs (other data or hyper-parameters).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from common import write_json_atomic

log = logging.getLogger("train.checkpoint")
PATTERN = re.compile(r"^checkpoint-(\d+)$")


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
    """Complete checkpoints in ``folder`` as (step, path), oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = PATTERN.match(p.name)
        if m and (p / "trainer_state.json").is_file() and (p / "state.pt").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest(folder: Path, expected_fingerprint: str) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint whose fingerprint matches, with its trainer state."""
    for _, path in reversed(list_checkpoints(folder)):
        try:
            state = json.loads((path / "trainer_state.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("skipping unreadable checkpoint %s: %s", path, exc)
            continue
        if state.get("fingerprint") != expected_fingerprint:
            log.warning("ignoring %s: it was written with other hyper-parameters or data "
                        "(fingerprint %s, this run %s)", path, state.get("fingerprint"), expected_fingerprint)
            continue
        return path, state
    return None


def save(folder: Path, step: int, tensors: dict[str, Any], trainer_state: dict[str, Any], keep: int) -> Path:
    """Write checkpoint ``step`` atomically and prune all but the newest ``keep``."""
    import torch

    final = folder / f"checkpoint-{step:08d}"
    tmp = folder / f".checkpoint-{step:08d}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(tensors, tmp / "state.pt")
    write_json_atomic(tmp / "trainer_state.json", trainer_state, indent=None)
    if final.exists():  # same step saved again (e.g. epoch end == interval): replace
        shutil.rmtree(final)
    os.replace(tmp, final)
    for _, old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_tensors(path: Path) -> dict[str, Any]:
    """The ``state.pt`` of a checkpoint (CPU tensors)."""
    import torch

    return torch.load(path / "state.pt", map_location="cpu", weights_only=True)
