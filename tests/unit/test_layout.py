"""The layout's import rules (DESIGN.md): imports run one way, dags -> include/pipeline ->
{data, model, serving, jobs, analytics} -> common; include never imports plugins; the job
scripts import nothing of ours but their siblings; Airflow code never imports job scripts."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INCLUDE = ROOT / "include"
CONCERNS = ("data", "model", "serving", "jobs", "analytics")
# what each package of include/ may import from include/ (besides itself)
ALLOWED = {
    "common": set(),
    "data": {"common"},
    "model": {"common"},
    "serving": {"common", "model"},
    "jobs": {"common"},
    "analytics": {"common", "data"},
    "pipeline": {"common", *CONCERNS},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_concern_imports_only_the_floors_below_it(package):
    bad = []
    for path in _files(INCLUDE / package):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] != "include" or len(parts) < 2 or parts[1] in (package, "__init__"):
                continue
            if parts[1] not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_include_never_imports_plugins_or_dags():
    plugin_modules = {p.stem for p in (ROOT / "plugins").glob("*.py")} | {
        p.name for p in (ROOT / "plugins").iterdir() if p.is_dir()}
    bad = [f"{p.relative_to(ROOT)} imports {n}" for p in _files(INCLUDE) for n in _imports(p)
           if n.split(".")[0] in plugin_modules | {"dags", "plugins"}]
    assert not bad, "\n".join(bad)


def test_job_scripts_import_only_their_siblings():
    scripts = INCLUDE / "scripts"
    siblings = {p.stem for p in scripts.glob("*.py")}
    bad = [f"{p.relative_to(ROOT)} imports {n}" for p in _files(scripts) for n in _imports(p)
           if n.split(".")[0] in ("include", "dags", "plugins", "tests") and n.split(".")[-1] not in siblings]
    assert not bad, "\n".join(bad)


def test_airflow_side_code_never_imports_job_scripts():
    # Only the endpoint (which loads a model package) and the tests touch container code.
    airflow_side = _files(ROOT / "dags") + _files(ROOT / "plugins") + [
        p for p in _files(INCLUDE) if p.parent.name != "scripts"]
    bad = [f"{p.relative_to(ROOT)} imports {n}" for p in airflow_side for n in _imports(p)
           if n.startswith("include.scripts")]
    assert not bad, "\n".join(bad)


def test_dag_files_import_only_the_pipeline_package_of_include():
    bad = [f"{p.relative_to(ROOT)} imports {n}" for p in _files(ROOT / "dags") for n in _imports(p)
           if n.startswith("include.") and not n.startswith("include.pipeline")]
    assert not bad, "\n".join(bad)
