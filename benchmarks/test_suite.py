"""How long a new user waits for `make test`: a clean clone, `make install`, then `make test`.

Clones HEAD of this repository into a temporary folder (with ``../shared`` beside it, as CI has
it), with no venv and no uv/pip cache of the project's own, then times the two phases apart:
``install_s`` (venv + the pinned lock) and ``tests_s`` (`make test`: lint and the whole suite).
The pytest summary gives ``passed`` / ``failed``; the 20 slowest tests are kept as pytest
printed them. The load average before and after says how quiet the machine was.

    .venv/bin/python benchmarks/test_suite.py [--keep] [--pytest-args "-m 'not slow'"]

Writes benchmarks/results/test_suite.json (the name: ``--name``).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 900  # issue #25: install_s + tests_s on a 2-core machine


def _clone(dest: Path) -> Path:
    repo = dest / "main"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    shared = ROOT.parent / "shared"
    if shared.is_dir():
        (dest / "shared").symlink_to(shared)
    return repo


def _timed(cmd: list[str], cwd: Path, log: Path, env: dict) -> tuple[float, int]:
    start = time.monotonic()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    return round(time.monotonic() - start, 1), rc


def _summary(text: str) -> dict:
    """passed / failed / skipped / errors from pytest's last line, and its slowest-20 block."""
    counts = {k: 0 for k in ("passed", "failed", "skipped", "errors")}
    tail = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    if tail:
        for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", tail[-1]):
            counts["errors" if word.startswith("error") else word] = int(n)
    slowest = re.findall(r"^\s*([\d.]+)s (call|setup|teardown)\s+(\S+)", text, re.M)[:20]
    return {**counts, "slowest_20": [{"s": float(s), "phase": p, "test": t} for s, p, t in slowest]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="test_suite")
    ap.add_argument("--pytest-args", default="", help="PYTEST_ARGS for make test (default: the whole suite)")
    ap.add_argument("--keep", action="store_true", help="keep the clone (its logs) afterwards")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="test-suite-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "REVIEWS_", "MLFLOW", "VIRTUAL_ENV"))}
    env["UV_CACHE_DIR"] = str(work / "uv-cache")  # a new user's empty cache: downloads are part of install_s
    env["PIP_NO_CACHE_DIR"] = "1"
    if args.pytest_args:
        env["PYTEST_ARGS"] = args.pytest_args
    load_before = os.getloadavg()
    try:
        repo = _clone(work)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
        install_s, rc_install = _timed(["make", "install"], repo, work / "install.log", env)
        if rc_install:
            raise SystemExit(f"make install failed:\n{(work / 'install.log').read_text()[-3000:]}")
        tests_s, rc_tests = _timed(["make", "test"], repo, work / "test.log", env)
        text = (work / "test.log").read_text(errors="replace")
        summary = _summary(text)
        result = {"clone_commit": commit, "install_s": install_s, "tests_s": tests_s,
                  "total_s": round(install_s + tests_s, 1), "target_s": TARGET_S,
                  "within_target": install_s + tests_s <= TARGET_S, "make_test_rc": rc_tests,
                  "pytest_args": args.pytest_args or "(whole suite)",
                  "load_average_before": [round(x, 2) for x in load_before],
                  "load_average_after": [round(x, 2) for x in os.getloadavg()], **summary}
        path = write_result(args.name, result)
        print(f"install {install_s:.0f} s + tests {tests_s:.0f} s = {install_s + tests_s:.0f} s "
              f"(target {TARGET_S} s): {summary['passed']} passed, {summary['failed']} failed, "
              f"{summary['errors']} errors; load {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}; {path}")
        if rc_tests:
            print(text[-4000:])
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    main()
