"""Shared helpers for benchmarks: machine description and result writing."""
from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform's guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The CPU flags that decide training/inference speed here (AVX2 vs AVX512-BF16/AMX), from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4", "vnni")))
    except OSError:
        pass
    return []


def git_commit() -> str:
    """HEAD of the project's repository (``unknown`` outside git)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info() -> dict:
    """cores, cpu_model, cpu_flags, date, git_commit, python and the load average when written
    (other work on the machine slows every figure: a result taken under load says so)."""
    return {"cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "cpu_model": cpu_model(), "cpu_flags": cpu_flags(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git_commit": git_commit(), "python": platform.python_version(),
            "load_average_1m_at_write": round(os.getloadavg()[0], 2)}


def write_result(name: str, payload: dict) -> Path:
    """Write ``benchmarks/results/<name>.json`` (machine info first) atomically; return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    dest = RESULTS / f"{name}.json"
    tmp = dest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**machine_info(), **payload}, indent=1, default=str))
    tmp.replace(dest)
    return dest


def sh(cmd: list[str], env: dict) -> float:
    """Run ``cmd`` in the project root; return its wall time (a failure ends the benchmark)."""
    import time

    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return time.monotonic() - start
