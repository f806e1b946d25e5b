"""A processing job's entry point on SageMaker: install ``requirements.txt``, then run the script.

    python3 /opt/ml/processing/input/code/job_entry.py preprocess.py [arguments...]

What the SageMaker SDK's FrameworkProcessor does with its ``runproc.sh``: the images lack some
of what the scripts import (pandas, pyarrow, matplotlib, scikit-learn in the Hugging Face
inference image), so the job installs them at start - but only when one is missing, so an
image that holds them all (the project image of ``make aws-image``, or the local runner's
environment) starts at once and needs no internet egress. Then the script replaces this
process (same pid, same stdout), with the remaining arguments. Standard library only.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements.txt"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def missing(requirements: Path = REQUIREMENTS) -> list[str]:
    """The distributions ``requirements`` names that are not installed here."""
    if not requirements.is_file():
        return []
    out = []
    for line in requirements.read_text(encoding="utf-8").splitlines():
        m = _NAME.match(line.split("#", 1)[0])
        if not m:
            continue
        try:
            importlib.metadata.version(m.group(1))
        except importlib.metadata.PackageNotFoundError:
            out.append(m.group(1))
    return out


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: job_entry.py <script.py> [arguments...]")
    absent = missing()
    if absent:
        print(f"job_entry: installing {REQUIREMENTS.name} (missing here: {', '.join(absent)})", flush=True)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--no-cache-dir", "-q", "-r",
                               str(REQUIREMENTS)])
    script = Path(argv[0]) if Path(argv[0]).is_absolute() else HERE / argv[0]
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, str(script), *argv[1:]])


if __name__ == "__main__":
    main(sys.argv[1:])
