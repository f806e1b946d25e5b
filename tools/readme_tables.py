"""Generate the docs' profile and param tables from the code they describe, so they cannot drift.

The page ``docs/profiles-and-params.md`` holds each table between ``<!-- BEGIN <name> -->`` and ``<!-- END <name> -->``:

* ``profiles`` - every training profile's settings (``include/pipeline/profiles.py``);
* ``params`` - the main DAG's other params with their defaults and descriptions.

``python tools/readme_tables.py`` rewrites the page in place (``make readme``);
``--check`` exits 1 and names the stale tables instead (``tests/unit/test_readme.py``).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]
PAGE = ROOT / "docs" / "profiles-and-params.md"
DAG_FILE = ROOT / "dags" / "review_sentiment_pipeline.py"


def _cell(value: object) -> str:
    if value is None or value == "":
        return '`""`' if value == "" else "empty"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`" if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)


def profiles_table() -> str:
    """Markdown table of the training profiles, one row per setting."""
    from include.pipeline.profiles import DEFAULT_PROFILE, HELP, PROFILES, SETTINGS

    names = list(PROFILES)
    head = ["setting", *[f"`{n}`" + (" (DAG default)" if n == DEFAULT_PROFILE else "") for n in names], "meaning"]
    rows = [[f"`{k}`", *[_cell(PROFILES[n][k]) for n in names], HELP[k]] for k in SETTINGS]
    return _table(head, rows)


def params_table() -> str:
    """Markdown table of the main DAG's params that are not profile settings."""
    from include.pipeline.profiles import SETTINGS

    params = _dag_params()
    rows = [[f"`{k}`", _cell(p.value), " ".join(p.description.split())]
            for k, p in params.items() if k not in SETTINGS]
    return _table(["param", "default", "meaning"], rows)


def _dag_params():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE))
    if bag.import_errors:
        raise SystemExit(f"{DAG_FILE}: import errors {bag.import_errors}")
    dag = bag.dags["review_sentiment_pipeline"]
    return {k: dag.params.get_param(k) for k in dag.params.keys()}


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


TABLES = {"profiles": profiles_table, "params": params_table}


def render(text: str) -> str:
    """``text`` with every generated table replaced by its current content."""
    for name, build in TABLES.items():
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{PAGE.relative_to(ROOT)} has no <!-- BEGIN {name} --> ... <!-- END {name} --> block")
        text = pattern.sub(lambda m, b=build: m.group(1) + b() + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    """Rewrite the page's tables, or with ``--check`` only report whether they are stale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a table is stale; change nothing")
    args = parser.parse_args(argv)
    current = PAGE.read_text(encoding="utf-8")
    fresh = render(current)
    if args.check:
        if fresh != current:
            print(f"{PAGE.relative_to(ROOT)} tables are stale: run `make readme`", file=sys.stderr)
            return 1
        return 0
    if fresh != current:
        PAGE.write_text(fresh, encoding="utf-8")
        print(f"{PAGE.relative_to(ROOT)} tables regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
