"""The docs' generated tables (docs/profiles-and-params.md) match the code they describe (tools/readme_tables.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "tools" / "readme_tables.py")
readme_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_tables)


def test_docs_profile_and_param_tables_are_current():
    text = readme_tables.PAGE.read_text(encoding="utf-8")
    assert readme_tables.render(text) == text, "docs/profiles-and-params.md tables are stale: run `make readme`"


def test_profile_table_shows_every_profile_value():
    from include.pipeline.profiles import PROFILES

    table = readme_tables.profiles_table()
    for key in PROFILES["quality"]:
        row = next(line for line in table.splitlines() if line.startswith(f"| `{key}` |"))
        for values in PROFILES.values():
            assert readme_tables._cell(values[key]) in row
