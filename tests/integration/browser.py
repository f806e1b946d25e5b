"""Headless Chromium for UI tests: Debian's ``chromium`` package (installed with apt-get when it is
missing), driven by the ``playwright`` package. Playwright is only ever pointed at that binary; it
never downloads a browser of its own."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
# --no-sandbox: the tests run as root (Chromium refuses its sandbox there); no background
# networking: nothing outside loopback is reachable anyway.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# Screenshots are kept here (as well as in the test's tmp dir); override with UI_TEST_ARTIFACTS.
ARTIFACTS = Path(os.environ.get("UI_TEST_ARTIFACTS", ROOT / "test-artifacts" / "ui"))


class ChromiumUnavailableError(RuntimeError):
    """Debian's chromium is not installed and could not be installed."""


def install_chromium() -> Path:
    """``/usr/bin/chromium``, installed with ``apt-get install -y chromium`` when missing."""
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get") is None:
        raise ChromiumUnavailableError(f"{CHROMIUM} is missing and there is no apt-get to install it: "
                                       "install Debian's (or your distribution's) chromium package")
    if os.geteuid() != 0:
        raise ChromiumUnavailableError(f"{CHROMIUM} is missing; installing it needs root: "
                                       "run `sudo apt-get install -y chromium` (or `sudo make chromium`)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise ChromiumUnavailableError(f"`{' '.join(cmd)}` failed ({proc.returncode}); the UI tests need "
                                           f"Debian's chromium at {CHROMIUM}:\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
    if not CHROMIUM.exists():
        raise ChromiumUnavailableError(f"apt-get installed chromium but {CHROMIUM} is still missing")
    return CHROMIUM


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Path of Debian's chromium, installed on first use; the test fails (not skips) without it."""
    try:
        return install_chromium()
    except ChromiumUnavailableError as exc:
        pytest.fail(str(exc))


def keep_artifact(path: Path) -> Path:
    """Copy a test artifact (a screenshot) into ``ARTIFACTS``; returns the copy's path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(path, ARTIFACTS / path.name))


def main() -> int:
    """``python -m tests.integration.browser``: install chromium if missing (``make chromium``)."""
    try:
        print(f"chromium: {install_chromium()}")
    except ChromiumUnavailableError as exc:
        print(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
